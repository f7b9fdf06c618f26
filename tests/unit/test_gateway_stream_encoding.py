"""The streaming hot path's encoders: the gateway's pre-built SSE deltas and the bridge's
engine-stream parser, which sends one delta per network read."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wattpool.gateway.responses import ResponseBuilder, sse
from wattpool.node.bridge import _EngineStream

TEXTS = ["alpha ", 'quote " and back\\slash', "line\nbreak\ttab", "é ü 日本 🙂", "\x00\x1f"]


@pytest.mark.parametrize("kind", ["chat", "completion"])
@pytest.mark.parametrize("include_usage", [True, False], ids=["with usage", "without usage"])
def test_delta_event_is_the_delta_chunk_as_sse(kind: str, include_usage: bool) -> None:
    builder = ResponseBuilder(kind, "chatcmpl-x", 'model "m"', 1700000000,  # type: ignore[arg-type]
                              include_usage)
    for text in TEXTS:
        event = builder.delta_event(text)
        assert event == sse(builder.delta_chunk(text))
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
        assert json.loads(event[6:]) == builder.delta_chunk(text)


class _Reply:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, **fields: Any) -> None:
        self.sent.append(fields)


def _event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def test_engine_stream_sends_one_delta_per_read() -> None:
    reply = _Reply()
    stream = _EngineStream(reply)  # type: ignore[arg-type]
    a = _event({"choices": [{"delta": {"role": "assistant", "content": "a "}}]})
    b = _event({"choices": [{"delta": {"content": "b "}}]})
    c = _event({"choices": [{"text": "c ", "finish_reason": "length"}]})
    usage = _event({"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}})
    await stream.feed(a[:10])  # an event split across reads waits for its end
    assert reply.sent == []
    await stream.feed(a[10:] + b)  # two events in one read: one delta of two tokens
    await stream.feed(c.replace(b"\n", b"\r\n") + usage + b"data: [DONE]\n\n")
    assert reply.sent == [{"kind": "delta", "text": "a b ", "tokens": 2},
                          {"kind": "delta", "text": "c ", "tokens": 1}]
    assert stream.done and stream.finish_reason == "length"
    assert stream.reported is not None and stream.reported.completion_tokens == 3
    assert "".join(stream.text_parts) == "a b c "


async def test_engine_stream_accepts_what_json_accepts() -> None:
    reply = _Reply()
    stream = _EngineStream(reply)  # type: ignore[arg-type]
    # NaN is not JSON, but Python's json module (and some engines) write it.
    await stream.feed(b'data: {"choices": [{"text": "x", "logprob": NaN}]}\n\n')
    assert reply.sent == [{"kind": "delta", "text": "x", "tokens": 1}]


async def test_engine_stream_takes_odd_but_valid_events_through_the_generic_path() -> None:
    reply = _Reply()
    stream = _EngineStream(reply)  # type: ignore[arg-type]
    odd = [
        {"choices": None, "id": "x"},  # no choices: nothing to send
        {"choices": [{"delta": None, "text": "t", "finish_reason": None}]},
        {"choices": [{"delta": {"content": "d", "role": 1}}], "usage": {}},
        {"choices": [], "usage": {"prompt_tokens": 4.0, "completion_tokens": 2.0}},
        {"choices": [{"delta": {}, "finish_reason": "stop"}], "extra": {"nested": [1, 2]}},
    ]
    await stream.feed(b"".join(_event(e) for e in odd) + b"data: [DONE]\n\n")
    assert reply.sent == [{"kind": "delta", "text": "td", "tokens": 2}]
    assert stream.reported is not None
    assert (stream.reported.prompt_tokens, stream.reported.completion_tokens) == (4, 2)
    assert stream.finish_reason == "stop" and stream.done
