"""A faithful local stand-in for AssemblyAI's LLM Gateway (see docs/gateway_emulator.md).

Run it: ``python -m gateway_client.emulator --port 8081`` (``--help`` lists the options).
In-process::

    from gateway_client.emulator import GatewayEmulator, Fault

    async with GatewayEmulator(port=0) as emu:
        ...  # point a client at emu.base_url; inspect emu.requests; push emu.faults

Modules: :mod:`.server` (the aiohttp app and :class:`GatewayEmulator`), :mod:`.cli` (the
command line), and the pure parts :mod:`.validate`, :mod:`.reply`, :mod:`.schema`,
:mod:`.faults` and :mod:`.models`. The dependencies point one way: ``cli`` -> ``server`` ->
the pure modules; nothing imports ``cli`` but ``__main__``.
"""

from gateway_client.emulator.faults import FAULT_KINDS, Fault, FaultKind, RecordedRequest
from gateway_client.emulator.models import MODELS, ModelInfo
from gateway_client.emulator.server import GatewayEmulator

__all__ = [
    "FAULT_KINDS",
    "MODELS",
    "Fault",
    "FaultKind",
    "GatewayEmulator",
    "ModelInfo",
    "RecordedRequest",
]
