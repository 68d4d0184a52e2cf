"""`serve --write-timeout` and `--max-connections`: documented, validated, and wired through.

Guards the bug that the server settings `write_timeout_s` and `max_connections` existed with
no way for an operator to set them: `serve` always ran with the defaults.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys

import pytest
from support.rawws import RawWs, Refused


def _serve(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "realtime", "serve", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_explains_the_connection_limits():
    """The flags are listed in `serve --help`."""
    out = _serve("--help").stdout
    assert "--write-timeout" in out
    assert "--max-connections" in out


@pytest.mark.parametrize(
    "flags",
    [
        ["--write-timeout", "0"],
        ["--write-timeout", "-1"],
        ["--max-connections", "-1"],  # 0 is valid: derived from the open-file limit
    ],
)
def test_serve_refuses_limits_that_cannot_work(flags: list[str]):
    """A limit that cannot work is refused with the flag's name, before anything starts."""
    result = _serve(*flags)
    assert result.returncode == 2, result.stderr
    assert flags[0] in result.stderr
    assert "unrecognized arguments" not in result.stderr  # the flag exists; its value is wrong


async def test_max_connections_flag_reaches_the_server():
    """`--max-connections 1`: the second WebSocket upgrade gets 503 over_capacity."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("ASSEMBLYAI_API_KEY", "LLM_GATEWAY_URL")
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "realtime",
        "serve",
        "--port",
        "0",
        "--max-connections",
        "1",
        "--write-timeout",
        "2.5",
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    first: RawWs | None = None
    try:
        assert proc.stderr is not None
        port = None
        while port is None:
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            assert line, "the server exited before listening"
            found = re.search(rb"listening on ws://127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
        first = await RawWs.connect(port, "/v1/realtime")
        created = await first.wait_for("session.created")
        assert created["role"] == "participant"
        with pytest.raises(Refused) as refused:
            extra = await RawWs.connect(port, "/v1/realtime")
            extra.close()
        assert refused.value.status == 503
        assert refused.value.json()["error"]["code"] == "over_capacity"
    finally:
        if first is not None:
            first.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
