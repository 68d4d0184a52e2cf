"""Fixtures for end-to-end tests: the service and the gateway emulator on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest
from support.service import Service

from gateway_client import GatewayClient
from gateway_client.emulator import GatewayEmulator
from realtime.core.config import SessionConfig
from realtime.emulators.stt import SttEmulator
from realtime.server import Server, ServerSettings


@pytest.fixture
def settings() -> ServerSettings:
    return ServerSettings(
        host="127.0.0.1", port=0, default_config=SessionConfig.from_defaults(model="gpt-4.1")
    )


@pytest.fixture
async def emulator() -> AsyncIterator[GatewayEmulator]:
    async with GatewayEmulator(host="127.0.0.1", port=0, token_delay=0.005) as emu:
        yield emu


@pytest.fixture
async def service(settings: ServerSettings, emulator: GatewayEmulator) -> AsyncIterator[Service]:
    async with (
        GatewayClient(base_url=emulator.base_url, api_key=None, max_retries=0) as gateway,
        Server(settings, gateway) as server,
        aiohttp.ClientSession() as http,
    ):
        yield Service(server, emulator, http)


@pytest.fixture
async def stt() -> AsyncIterator[SttEmulator]:
    async with SttEmulator(
        script=["hello there", "how are you"], word_ms=150, silence_ms=300
    ) as emu:
        yield emu


@pytest.fixture
async def audio_service(
    settings: ServerSettings, emulator: GatewayEmulator, stt: SttEmulator
) -> AsyncIterator[Service]:
    with_stt = replace(settings, stt_url=stt.url + "/v3/ws", stt_api_key=None)
    async with (
        GatewayClient(base_url=emulator.base_url, api_key=None) as gw,
        Server(with_stt, gw) as server,
        aiohttp.ClientSession() as http,
    ):
        yield Service(server, emulator, http)
