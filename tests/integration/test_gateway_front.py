"""The completion routes' own ASGI path (gateway/completions_asgi.py), in one process.

Real parts: the in-process bus, the control plane on SQLite and the gateway app; the
dispatcher's ``run`` is replaced where a test needs a node that misbehaves or is slow.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from wattpool.gateway.completions_asgi import CompletionsFront
from wattpool.protocol import InferChunk
from wattpool.store import list_usage

from gatewaytools import Gateway, in_process_gateway


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with in_process_gateway(tmp_path) as gw:
        yield gw


def delta(seq: int, text: str) -> InferChunk:
    return InferChunk(request_id="r", seq=seq, kind="delta", text=text)


class SlowNode:
    """A dispatcher ``run`` that sends ``deltas`` and then never answers again."""

    def __init__(self, deltas: int) -> None:
        self.deltas = deltas
        self.waiting = asyncio.Event()
        self.closed = asyncio.Event()

    async def run(self, *args: Any, **kwargs: Any) -> AsyncIterator[InferChunk]:
        try:
            for seq in range(self.deltas):
                yield delta(seq, f"t{seq} ")
            self.waiting.set()
            await asyncio.sleep(60)
        finally:
            self.closed.set()  # the real dispatcher publishes its cancel to the node here


async def call_front(front: CompletionsFront, body: dict[str, Any], gone: asyncio.Event,
                     ) -> list[dict[str, Any]]:
    """One POST /v1/completions through the front as a server would make it; the client
    disconnects when ``gone`` is set. Returns what the front sent."""
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": json.dumps(body).encode(),
                 "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/completions",
             "headers": [(b"content-type", b"application/json")], "query_string": b""}
    await asyncio.wait_for(front(scope, receive, send), 5)  # type: ignore[arg-type]
    return sent


async def hang_up_after(gateway: Gateway, monkeypatch: pytest.MonkeyPatch, *, deltas: int,
                        ) -> list[dict[str, Any]]:
    """A streamed completion whose node sends ``deltas`` and goes quiet; the client then
    hangs up. Checks the work was stopped; returns what the front sent."""
    node = SlowNode(deltas=deltas)
    monkeypatch.setattr(gateway.dispatcher, "run", node.run)
    gone = asyncio.Event()
    call = asyncio.create_task(call_front(
        gateway.front, {"model": "m", "prompt": "hi", "stream": True}, gone))
    await asyncio.wait_for(node.waiting.wait(), 5)
    gone.set()
    sent = await call
    assert node.closed.is_set()
    return sent


async def test_disconnect_while_waiting_for_first_token_stops_the_work(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent = await hang_up_after(gateway, monkeypatch, deltas=0)
    assert sent == []  # no one to answer
    assert gateway.in_flight("/v1/completions") == 0
    await gateway.usage.flush()
    (record,) = list_usage(gateway.usage.engine)
    assert (record.status, record.http_status) == ("cancelled", 499)


async def test_disconnect_mid_stream_stops_the_work(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch,
) -> None:
    start, *bodies = await hang_up_after(gateway, monkeypatch, deltas=2)
    headers = dict(start["headers"])
    assert start["status"] == 200
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    request_id = headers[b"x-request-id"].decode()
    assert [b["more_body"] for b in bodies] == [True, True]  # never ended as if complete
    assert gateway.in_flight("/v1/completions") == 0
    record = await gateway.record(request_id)
    assert (record.status, record.completion_tokens) == ("cancelled", 2)


async def test_unexpected_error_is_an_openai_500_with_request_id(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> AsyncIterator[InferChunk]:
        raise RuntimeError("secret internals")
        yield  # an async generator, like Dispatcher.run

    monkeypatch.setattr(gateway.dispatcher, "run", broken)
    before = gateway.count("/v1/chat/completions", 500)
    with caplog.at_level(logging.ERROR):
        resp = await gateway.client.post("/v1/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert resp.status_code == 500
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {"error": {
        "message": "The server had an error while processing your request.",
        "type": "server_error", "param": None, "code": None}}
    assert "secret" not in resp.text
    assert "secret internals" in caplog.text  # the log has the traceback
    assert gateway.count("/v1/chat/completions", 500) == before + 1
    assert gateway.in_flight("/v1/chat/completions") == 0
    record = await gateway.record(resp.headers["x-request-id"])
    assert (record.status, record.http_status) == ("error", 500)


async def test_api_errors_keep_their_shape_headers_and_request_id(gateway: Gateway) -> None:
    resp = await gateway.client.post("/v1/completions", content=b"{not json")
    assert resp.status_code == 400
    assert resp.headers["x-request-id"].startswith("req_")
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
    too_big = await gateway.client.post("/v1/completions", content=b"x" * 10_001)
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "request_too_large"
    assert too_big.headers["x-request-id"] != resp.headers["x-request-id"]
    assert gateway.count("/v1/completions", 413) == 1


async def test_the_rest_still_goes_through_fastapi(gateway: Gateway) -> None:
    wrong_method = await gateway.client.get("/v1/chat/completions")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert wrong_method.headers["x-request-id"].startswith("req_")
    assert gateway.count("/v1/chat/completions", 405) == 1
    models = await gateway.client.get("/v1/models")
    assert models.status_code == 200 and models.headers["x-request-id"].startswith("req_")
    assert (await gateway.client.get("/nothing")).json()["error"]["code"] == "not_found"
