"""End to end over loopback: `seq` on every message and resuming a dropped session
(PROTOCOL.md "Resuming a session")."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from support.service import Client, Service, assert_guarantees, turn


def seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [m["seq"] for m in messages]


async def drop(c: Client) -> None:
    """Vanish without a close frame, as a phone losing its network does."""
    transport = c.ws._response.connection.transport  # type: ignore[union-attr]
    transport.abort()
    await c.wait_closed()


async def resume(service: Service, query: str) -> Client:
    ws = await service.http.ws_connect(f"{service.ws_url}?{query}")
    client = Client(ws)
    await client.start()
    await client.wait_type("session.resumed")
    return client


async def refusal(service: Service, query: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{service.server.port}/v1/realtime?{query}"
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    async with service.http.get(url, headers=headers) as r:
        body = await r.json()
        return r.status, body["error"]["code"]


async def test_every_message_carries_a_contiguous_seq(service: Service):
    c = await service.connect()
    created = c.messages[0]
    assert created["seq"] == 0 and created["resume_token"]
    await c.send(turn(0, "hello"))
    await c.send({"type": "nope"})  # an error to this client takes a seq too
    await c.wait_type("response.done")
    await c.wait_type("error")
    viewer = await service.connect(f"role=viewer&session_id={created['session_id']}")
    assert "resume_token" not in viewer.messages[0]
    await c.send(turn(1, "again"))
    await c.wait_type("response.done", 2)
    await viewer.wait_type("response.done")
    numbers = seqs(c.messages[1:])
    assert numbers == list(range(1, len(numbers) + 1))
    joined_at = viewer.messages[0]["seq"]
    later = seqs(viewer.messages[1:])
    assert later == list(range(joined_at + 1, joined_at + 1 + len(later)))
    await viewer.close()
    await c.close()


async def test_a_participant_dropped_mid_reply_resumes_with_nothing_lost(service: Service):
    """Dropped mid-reply, the reply keeps streaming into the replay log; resumed with its
    last_seq the client gets every missed message once, in order, then live ones."""
    service.emulator.token_delay = 0.01
    service.emulator.reply_words = 60
    c = await service.connect(session={"resume_window_ms": 10_000})
    sid, token = c.messages[0]["session_id"], c.messages[0]["resume_token"]
    await c.send(turn(0, "tell me a long story"))
    await c.wait_type("response.delta", 5)
    await drop(c)
    seen = [m for m in c.messages if "seq" in m and m["type"] != "session.created"]
    last = seen[-1]["seq"]
    await asyncio.sleep(0.1)  # the reply goes on streaming while nobody is connected
    back = await resume(service, f"session_id={sid}&resume_token={token}&last_seq={last}")
    resumed = back.messages[0]
    assert resumed["replayed_from"] == last + 1 and resumed["session_id"] == sid
    done = (await back.wait_type("response.done"))[0]
    after = back.messages[1:]
    assert seqs(after) == list(range(last + 1, last + 1 + len(after)))
    everything = seen + after
    assert_guarantees([m for m in everything if m["type"] != "session.updated"])
    deltas = "".join(m["delta"] for m in everything if m["type"] == "response.delta")
    assert deltas == done["text"]
    # The session is live again: a new turn gets a reply on the resumed connection.
    await back.send(turn(1, "thanks"))
    await back.wait_type("response.done", 2)
    await back.send({"type": "Termination"})
    assert await back.wait_closed() == 1000


async def test_resume_refusals(service: Service):
    c = await service.connect(session={"resume_window_ms": 10_000})
    sid, token = c.messages[0]["session_id"], c.messages[0]["resume_token"]
    await c.send(turn(0, "hello"))
    await c.wait_type("response.done")
    assert await refusal(service, f"session_id={sid}&resume_token=wrong&last_seq=1") == (
        403,
        "forbidden",
    )
    assert await refusal(service, f"session_id=s_nope&resume_token={token}&last_seq=1") == (
        404,
        "no_such_session",
    )
    status, code = await refusal(service, f"session_id={sid}&resume_token={token}&last_seq=x")
    assert (status, code) == (400, "invalid_request")
    # Older than the replay log: the log keeps the last 4,096 messages.
    for seq in range(5000):
        service.server.sessions[sid].replay.append((10_000 + seq, b"{}"))
    assert await refusal(service, f"session_id={sid}&resume_token={token}&last_seq=0") == (
        409,
        "resume_gap",
    )
    await c.send({"type": "Termination"})  # a resumable session ends with its input
    assert await c.wait_closed() == 1000


async def test_the_window_expires_and_the_session_ends(service: Service):
    c = await service.connect(session={"resume_window_ms": 200})
    sid, token = c.messages[0]["session_id"], c.messages[0]["resume_token"]
    await drop(c)
    assert sid in service.server.sessions  # detached, waiting for its participant
    async with asyncio.timeout(5):
        while sid in service.server.sessions:
            await asyncio.sleep(0.02)
    assert await refusal(service, f"session_id={sid}&resume_token={token}&last_seq=0") == (
        404,
        "no_such_session",
    )


async def test_window_zero_ends_the_session_with_its_last_participant(service: Service):
    service.emulator.token_delay = 0.02
    c = await service.connect(session={"resume_window_ms": 0})
    sid = c.messages[0]["session_id"]
    viewer = await service.connect(f"role=viewer&session_id={sid}")
    await c.send(turn(0, "tell me a long story"))
    await viewer.wait_type("response.delta")
    await drop(c)
    cancelled = (await viewer.wait_type("response.cancelled"))[0]
    assert cancelled["reason"] == "client"
    assert await viewer.wait_closed() == 1000
    assert_guarantees(viewer.messages)


async def test_a_viewer_may_resume_from_its_last_seq(service: Service):
    owner = await service.connect(session={"resume_window_ms": 10_000})
    sid = owner.messages[0]["session_id"]
    viewer = await service.connect(f"role=viewer&session_id={sid}")
    await owner.send(turn(0, "hello"))
    await viewer.wait_type("response.done")
    last = viewer.messages[-1]["seq"]
    await viewer.close()
    await owner.send(turn(1, "again"))
    await owner.wait_type("response.done", 2)
    back = await resume(service, f"role=viewer&session_id={sid}&last_seq={last}")
    await back.wait_type("response.done")
    assert seqs(back.messages[1:])[0] == last + 1
    await owner.send({"type": "Termination"})
    assert await back.wait_closed() == 1000
    assert await owner.wait_closed() == 1000


async def test_aiohttp_client_sees_session_resumed_first(service: Service):
    """session.resumed is the first message of a resumed connection, with the snapshot."""
    c = await service.connect(session={"resume_window_ms": 10_000})
    sid, token = c.messages[0]["session_id"], c.messages[0]["resume_token"]
    await c.send(turn(0, "my name is sonny"))
    done = (await c.wait_type("response.done"))[0]
    last = c.messages[-1]["seq"]
    await drop(c)
    ws = await service.http.ws_connect(
        f"{service.ws_url}?session_id={sid}&resume_token={token}&last_seq={last}"
    )
    first = await ws.receive_json()
    assert first["type"] == "session.resumed" and first["seq"] == last
    assert first["history"][-1] == {"turn_order": 0, "role": "assistant", "text": done["text"]}
    await ws.send_json({"type": "Termination"})
    async for _ in ws:
        pass
    assert ws.close_code == aiohttp.WSCloseCode.OK
