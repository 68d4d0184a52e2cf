"""Fixtures for end-to-end tests: the service and the gateway emulator on loopback.

Every service these fixtures start is held to the release invariant (tests/support/residue.py)
on the way out, with no opt-out: once the test's HTTP client session is closed, the server
(still running) must hold no session, connection or handler, no task it started may remain,
and the emulators must see no request or speech-to-text session still open; then the same
again after `server.stop()`. And for every test here, with or without these fixtures: no task
that the test's event loop did not have before the test may outlive it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from support.residue import Leftovers, snapshot_tasks, wait_released
from support.service import Service

from gateway_client import GatewayClient
from gateway_client.emulator import GatewayEmulator
from realtime.core.config import SessionConfig
from realtime.emulators.stt import SttEmulator
from realtime.server import Server, ServerSettings

RELEASE_DEADLINE_S = 5.0  # how long releasing may take once the clients are gone
_INVARIANT_FAILED = pytest.StashKey[bool]()  # a fixture already reported what was left
_CALL_FAILED = pytest.StashKey[bool]()  # the test itself failed


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_CALL_FAILED] = True
    return report


@pytest.fixture
def settings() -> ServerSettings:
    return ServerSettings(
        host="127.0.0.1", port=0, default_config=SessionConfig.from_defaults(model="gpt-4.1", resume_window_ms=0)
    )


@pytest.fixture
async def emulator() -> AsyncIterator[GatewayEmulator]:
    async with GatewayEmulator(host="127.0.0.1", port=0, token_delay=0.005) as emu:
        yield emu


@pytest.fixture
async def stt() -> AsyncIterator[SttEmulator]:
    async with SttEmulator(
        script=["hello there", "how are you"], word_ms=150, silence_ms=300
    ) as emu:
        yield emu


@asynccontextmanager
async def released_service(
    settings: ServerSettings,
    emulator: GatewayEmulator,
    *,
    stt: SttEmulator | None = None,
    max_retries: int | None = 0,
    on_failure: Callable[[], None] = lambda: None,
) -> AsyncIterator[Service]:
    """The service for one test; on the way out, fail unless it released everything.

    The test's client session is closed first (every client leaves: WebSockets the test left
    open are dropped), then the invariant is checked with the server running, then
    `server.stop()`, then checked again. Both checks run even if the first fails, and one
    error names everything still held in each phase.
    """
    emulators: tuple[Any, ...] = (emulator,) if stt is None else (emulator, stt)
    if stt is not None:
        settings = replace(settings, stt_url=stt.url + "/v3/ws", stt_api_key=None)
    retries: dict[str, Any] = {} if max_retries is None else {"max_retries": max_retries}
    before_start = snapshot_tasks()
    async with GatewayClient(base_url=emulator.base_url, api_key=None, **retries) as gateway:
        server = Server(settings, gateway)
        await server.start()
        after_start = snapshot_tasks()  # tasks the server keeps while it runs are its own
        phases: list[Leftovers] = []
        try:
            async with aiohttp.ClientSession() as http:
                yield Service(server, emulator, http)
            phases.append(
                await wait_released(
                    server,
                    emulators=emulators,
                    baseline_tasks=after_start,
                    deadline=RELEASE_DEADLINE_S,
                    phase="clients gone, server running",
                )
            )
        finally:
            await server.stop()
        phases.append(
            await wait_released(
                server,
                emulators=emulators,
                baseline_tasks=before_start,
                deadline=RELEASE_DEADLINE_S,
                phase="after server.stop()",
            )
        )
    failed = [p for p in phases if not p.clean]
    if failed:
        on_failure()
        raise AssertionError(
            "the service did not release everything it took (DESIGN.md principle 3):\n"
            + "\n".join(p.describe() for p in failed)
        )


def _mark_failed(request: pytest.FixtureRequest) -> Callable[[], None]:
    def mark() -> None:
        request.node.stash[_INVARIANT_FAILED] = True

    return mark


@pytest.fixture
async def service(
    request: pytest.FixtureRequest, settings: ServerSettings, emulator: GatewayEmulator
) -> AsyncIterator[Service]:
    async with released_service(settings, emulator, on_failure=_mark_failed(request)) as svc:
        yield svc


@pytest.fixture
async def audio_service(
    request: pytest.FixtureRequest,
    settings: ServerSettings,
    emulator: GatewayEmulator,
    stt: SttEmulator,
) -> AsyncIterator[Service]:
    async with released_service(
        settings, emulator, stt=stt, max_retries=None, on_failure=_mark_failed(request)
    ) as svc:
        yield svc


@pytest.fixture
def serve(
    request: pytest.FixtureRequest, emulator: GatewayEmulator
) -> Callable[..., AbstractAsyncContextManager[Service]]:
    """For tests that need their own settings: `async with serve(settings) as svc: ...`.

    Same invariant as `service` (pass `stt=` for an audio-capable server).
    """

    def make(
        settings: ServerSettings, *, stt: SttEmulator | None = None, max_retries: int | None = 0
    ) -> AbstractAsyncContextManager[Service]:
        return released_service(
            settings,
            emulator,
            stt=stt,
            max_retries=max_retries,
            on_failure=_mark_failed(request),
        )

    return make


@pytest.fixture(autouse=True)
async def _no_task_outlives_the_test(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """After every test (and all its fixtures), the loop runs no task the test brought.

    Not checked when the test or a fixture's invariant already failed: what it left is then
    part of that failure, and reported there.
    """
    before = snapshot_tasks()
    yield
    stash = request.node.stash
    if stash.get(_CALL_FAILED, False) or stash.get(_INVARIANT_FAILED, False):
        return
    left = await wait_released(
        None, baseline_tasks=before, deadline=RELEASE_DEADLINE_S, phase="after the test"
    )
    if not left.clean:
        raise AssertionError("a task outlived its test:\n" + left.describe())
