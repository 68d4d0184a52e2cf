"""Shared fixtures for gateway_client tests: the LLM Gateway emulator on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from gateway_client.emulator import GatewayEmulator

EmulatorFactory = Callable[..., Awaitable[GatewayEmulator]]


@pytest.fixture
async def make_emulator() -> AsyncIterator[EmulatorFactory]:
    """Start emulators with any constructor arguments; all are stopped after the test."""
    started: list[GatewayEmulator] = []

    async def make(**kwargs: Any) -> GatewayEmulator:
        kwargs.setdefault("host", "127.0.0.1")
        kwargs.setdefault("port", 0)
        emu = GatewayEmulator(**kwargs)
        await emu.start()
        started.append(emu)
        return emu

    try:
        yield make
    finally:
        for emu in reversed(started):
            await emu.stop()


@pytest.fixture
async def emulator(
    request: pytest.FixtureRequest, make_emulator: EmulatorFactory
) -> GatewayEmulator:
    """A started emulator on 127.0.0.1:0. Parametrize indirectly with a dict of kwargs."""
    kwargs: dict[str, Any] = getattr(request, "param", None) or {}
    return await make_emulator(**kwargs)
