"""Reply.start_with against the uvicorn we ship: a stream's head and its first text
leave in one socket write (the client wakes once for its first token), and the bytes on
the wire are what two plain sends give."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import uvicorn

from wattpool.gateway.completions_asgi import Reply

FIRST = b"data: first\n\n"
REST = b"data: rest\n\n"


class _Spy:
    """The connection's transport, with every write recorded."""

    def __init__(self, real: Any, writes: list[bytes]) -> None:
        self._real, self._writes = real, writes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def write(self, data: bytes) -> None:
        self._writes.append(data)
        self._real.write(data)


async def _serve(http: str, merge: bool) -> tuple[httpx.Response, list[bytes]]:
    writes: list[bytes] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        cycle = send.__self__  # uvicorn's RequestResponseCycle
        cycle.transport = _Spy(cycle.transport, writes)
        reply = Reply(send, "req_1", "/v1/chat/completions", None)
        headers = [(b"content-type", b"text/event-stream")]
        if merge:
            await reply.start_with(200, headers, FIRST)
        else:
            await reply.start(200, headers)
            await send({"type": "http.response.body", "body": FIRST, "more_body": True})
        await send({"type": "http.response.body", "body": REST, "more_body": False})

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, http=http,
                                           lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):  # up to 5 s
            if server.started:
                break
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(trust_env=False) as client:
            resp = await client.post(f"http://127.0.0.1:{port}/v1/chat/completions")
    finally:
        server.should_exit = True
        await task
    return resp, writes


@pytest.mark.parametrize("http", ["httptools", "h11"])
async def test_head_and_first_part_leave_in_one_write(http: str) -> None:
    merged, writes = await _serve(http, merge=True)
    plain, plain_writes = await _serve(http, merge=False)
    assert merged.status_code == plain.status_code == 200
    assert merged.content == plain.content == FIRST + REST
    assert merged.headers["content-type"] == "text/event-stream"
    # Plain: the head, then the first part, each a write of its own (h11 also writes
    # the body's end apart).
    assert plain_writes[0].startswith(b"HTTP/1.1 200") and FIRST not in plain_writes[0]
    assert len(writes) == len(plain_writes) - 1
    assert writes[0].startswith(b"HTTP/1.1 200") and FIRST in writes[0]


async def test_a_send_that_is_not_uvicorns_gets_two_messages() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:  # a plain function: no transport
        sent.append(message)

    await Reply(send, "req_1", "/v1/completions", None).start_with(200, [], FIRST)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1]["body"] == FIRST and sent[1]["more_body"] is True
