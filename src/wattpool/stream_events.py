"""The fields of an OpenAI stream event (``data: {...}`` of a streamed completion) that
wattpool reads, as typed msgspec structs.

Two readers: the node bridge, parsing an engine's stream, and the load generator, timing
a server's. Decoding into these skips every field nobody reads (~2.5x faster than
building dicts). An event they refuse (a number where text should be, a usage without
its counts, NaN) is for the caller to read as generic JSON.
"""

from __future__ import annotations

from typing import Any

import msgspec


class EventDelta(msgspec.Struct):
    content: str | None = None


class EventChoice(msgspec.Struct):
    delta: EventDelta | None = None
    text: str | None = None  # a completion's choice (no delta)
    finish_reason: str | None = None

    def piece(self) -> str | None:
        """The text this choice carries: a chat delta's content, or a completion's text."""
        return self.delta.content if self.delta is not None else self.text


class EventUsage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int


class StreamEvent(msgspec.Struct):
    choices: list[EventChoice] = []
    usage: EventUsage | None = None
    error: Any = None  # an error event's object, as sent


decode_stream_event = msgspec.json.Decoder(StreamEvent).decode
