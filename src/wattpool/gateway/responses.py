"""OpenAI response objects, built by the gateway from the node's text deltas."""

from __future__ import annotations

from typing import Any

import msgspec

from wattpool.protocol import RequestKind, Usage

encode_json = msgspec.json.Encoder().encode


def sse(obj: dict[str, Any]) -> bytes:
    """One server-sent event holding ``obj`` as compact JSON."""
    return b"data: " + encode_json(obj) + b"\n\n"


def usage_dict(usage: Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


class ResponseBuilder:
    def __init__(self, kind: RequestKind, response_id: str, model: str, created: int,
                 include_usage: bool) -> None:
        self.kind = kind
        self.id = response_id
        self.model = model
        self.created = created
        self.include_usage = include_usage
        # A streamed delta differs from the next only in its text, so the event is built
        # once as two byte strings around the text: a delta then costs one string encode
        # instead of a dict and a whole JSON document per token.
        marker = "\x00text\x00"
        template = sse(self.delta_chunk(marker))
        self._delta_head, _, self._delta_tail = template.partition(encode_json(marker))

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        chunk: dict[str, Any] = {
            "id": self.id, "object": obj, "created": self.created, "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def role_chunk(self) -> dict[str, Any] | None:
        if self.kind != "chat":
            return None
        return self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                             "logprobs": None, "finish_reason": None}])

    def delta_chunk(self, text: str) -> dict[str, Any]:
        if self.kind == "chat":
            return self._chunk([{"index": 0, "delta": {"content": text}, "logprobs": None,
                                 "finish_reason": None}])
        return self._chunk([{"index": 0, "text": text, "logprobs": None, "finish_reason": None}])

    def delta_event(self, text: str) -> bytes:
        """``sse(self.delta_chunk(text))``, without building it each time."""
        return self._delta_head + encode_json(text) + self._delta_tail

    def finish_chunk(self, finish_reason: str) -> dict[str, Any]:
        if self.kind == "chat":
            return self._chunk([{"index": 0, "delta": {}, "logprobs": None,
                                 "finish_reason": finish_reason}])
        return self._chunk([{"index": 0, "text": "", "logprobs": None,
                             "finish_reason": finish_reason}])

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        chunk = self._chunk([])
        chunk["usage"] = usage_dict(usage)
        return chunk

    def full(self, text: str, finish_reason: str, usage: Usage | None) -> dict[str, Any]:
        if self.kind == "chat":
            choice: dict[str, Any] = {
                "index": 0, "message": {"role": "assistant", "content": text},
                "logprobs": None, "finish_reason": finish_reason,
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None,
                      "finish_reason": finish_reason}
            obj = "text_completion"
        return {
            "id": self.id, "object": obj, "created": self.created, "model": self.model,
            "choices": [choice], "usage": usage_dict(usage),
        }
