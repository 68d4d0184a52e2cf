"""The release invariant: once its clients are gone, the service holds nothing it took.

DESIGN.md, principle 3: every task has an owner that waits for it, and everything taken is
released. After a test (and again after `server.stop()`), these must all be zero:

- every value of `server.residue()` (sessions, connections, handlers, gauges, ... whatever
  keys the server reports);
- the asyncio tasks that did not exist before the server started (the caller passes that
  snapshot), except the caller's own task and the emulators' server-side tasks, which the
  emulators' own counters stand for;
- the emulators' counters of work in progress: `GatewayEmulator.open_requests` (chat requests
  whose handler still runs) and `SttEmulator.open_sessions` (speech-to-text sessions whose
  handler still runs).

Releasing takes a moment after a client closes (a close frame to flush, a handler to return),
so the check polls until a deadline: the deadline is how long release may take, not a
measure of speed. `open_fds` counts this process's file descriptors, for tests that compare
before and after.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

EMULATOR_COUNTERS = ("open_requests", "open_sessions")
_REPO = str(Path(__file__).resolve().parents[2]) + os.sep
_LIBRARY = re.compile(r"^.*/(site-packages|lib/python3\.\d+)/")


class HasResidue(Protocol):
    def residue(self) -> Mapping[str, int]: ...


def snapshot_tasks() -> set[asyncio.Task[Any]]:
    """The tasks alive now: the baseline that later leftovers are compared with."""
    return set(asyncio.all_tasks())


def open_fds() -> int:
    """How many file descriptors this process has open (Linux: /proc/self/fd)."""
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Leftovers:
    """What was still held when the deadline passed (or nothing, when `clean`)."""

    phase: str
    counters: dict[str, int] = field(default_factory=dict)  # only the ones off their mark
    tasks: list[str] = field(default_factory=list)  # one description per leftover task
    waited_s: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.counters and not self.tasks

    def describe(self) -> str:
        if self.clean:
            return f"{self.phase}: released everything (after {self.waited_s:.2f} s)"
        lines = [f"{self.phase}: still held after {self.waited_s:.1f} s (all must be 0):"]
        lines.extend(f"  {name} = {value}" for name, value in self.counters.items())
        if self.tasks:
            lines.append(f"  {len(self.tasks)} task(s) that did not exist before remain:")
            groups: dict[str, list[str]] = {}
            for task in self.tasks:
                name, _, what = task.partition(": ")
                groups.setdefault(what, []).append(name)
            for what, names in sorted(groups.items(), key=lambda g: -len(g[1])):
                shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
                lines.append(f"    {len(names)} x {what}  ({shown})")
        return "\n".join(lines)


def counters(server: HasResidue | None, emulators: Iterable[Any] = ()) -> dict[str, int]:
    """Every counter of the invariant by name, zero or not."""
    out: dict[str, int] = {}
    if server is not None:
        out.update({f"server.residue()[{k!r}]": int(v) for k, v in server.residue().items()})
    for emu in emulators:
        for name in EMULATOR_COUNTERS:
            value = getattr(emu, name, None)  # GatewayEmulator.open_requests may not exist yet
            if value is not None:
                out[f"{type(emu).__name__}.{name}"] = int(value)
    return out


async def wait_released(
    server: HasResidue | None,
    *,
    emulators: Iterable[Any] = (),
    baseline_tasks: set[asyncio.Task[Any]],
    deadline: float = 5.0,
    phase: str = "release",
) -> Leftovers:
    """Poll until nothing is held, or `deadline` seconds passed; what was left, if anything."""
    emulators = tuple(emulators)
    ports = {p for p in (getattr(e, "port", None) for e in emulators) if isinstance(p, int)}
    start = time.monotonic()
    while True:
        held = {k: v for k, v in counters(server, emulators).items() if v != 0}
        tasks = leftover_tasks(baseline_tasks, exclude_ports=ports)
        waited = time.monotonic() - start
        if (not held and not tasks) or waited >= deadline:
            return Leftovers(phase, held, [describe_task(t) for t in tasks], waited)
        await asyncio.sleep(0.02)


async def assert_released(
    server: HasResidue | None,
    *,
    emulators: Iterable[Any] = (),
    baseline_tasks: set[asyncio.Task[Any]],
    deadline: float = 5.0,
    phase: str = "release",
) -> None:
    """Fail, naming each counter and task still held, unless all is released by `deadline`."""
    left = await wait_released(
        server, emulators=emulators, baseline_tasks=baseline_tasks, deadline=deadline, phase=phase
    )
    if not left.clean:
        raise AssertionError(left.describe())


# ---- tasks -----------------------------------------------------------------------------------


def leftover_tasks(
    baseline: set[asyncio.Task[Any]], *, exclude_ports: Iterable[int] = ()
) -> list[asyncio.Task[Any]]:
    """Tasks alive now that were not in `baseline`: not the caller's, not an emulator's."""
    me = asyncio.current_task()
    ports = set(exclude_ports)
    found = [t for t in asyncio.all_tasks() if t not in baseline and t is not me]
    return [t for t in found if _served_port(t) not in ports]


def coroutine_chain(task: asyncio.Task[Any]) -> list[tuple[str, str]]:
    """(qualified name, file:line) of each coroutine from the task's own down to where it waits."""
    chain: list[tuple[str, str]] = []
    coro: Any = task.get_coro()
    while coro is not None and len(chain) < 40:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        name = getattr(coro, "__qualname__", type(coro).__name__)
        where = ""
        if frame is not None:
            where = f"{_short(frame.f_code.co_filename)}:{frame.f_lineno}"
        chain.append((name, where))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return chain


def describe_task(task: asyncio.Task[Any]) -> str:
    """`name: outer() > ... > inner() at file:line`: what started it and where it waits."""
    chain = coroutine_chain(task)
    names = " > ".join(n for n, _ in chain) or repr(task.get_coro())
    where = next((w for _, w in reversed(chain) if w), "")
    return f"{task.get_name()}: {names}" + (f"  [waiting at {where}]" if where else "")


def _short(path: str) -> str:
    """A path relative to the repository, site-packages or the standard library."""
    if path.startswith(_REPO):
        return path[len(_REPO) :]
    return _LIBRARY.sub("", path)


def _served_port(task: asyncio.Task[Any]) -> int | None:
    """The local port of the connection this task serves, when it is a server-side task.

    An aiohttp request handler's `self` is a RequestHandler (its transport's sockname); a
    websockets server task holds its `ServerConnection` (`local_address`). A client-side
    connection has an ephemeral local port, so it is never mistaken for an emulator's.
    """
    coro: Any = task.get_coro()
    depth = 0
    while coro is not None and depth < 40:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            for name in ("self", "connection"):
                port = _local_port(frame.f_locals.get(name))
                if port is not None:
                    return port
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        depth += 1
    return None


def _local_port(obj: Any) -> int | None:
    if obj is None:
        return None
    kind = type(obj).__name__
    address: Any = None
    if kind == "RequestHandler":
        transport = getattr(obj, "transport", None)
        if transport is not None:
            address = transport.get_extra_info("sockname")
    elif kind == "ServerConnection":
        address = getattr(obj, "local_address", None)
    if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[1], int):
        return address[1]
    return None
