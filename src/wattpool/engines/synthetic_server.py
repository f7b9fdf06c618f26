"""Synthetic OpenAI-compatible engine for tests, load and chaos.

THIS IS NOT INFERENCE. It runs no model: it emits a fixed, deterministic sequence of filler
words at a configured speed, and can inject faults (HTTP 500s, a crash mid-stream). wattpool
starts it exactly like a real engine so the whole stack can be exercised without GPUs or weights;
it must never be presented to users as a model. Its /v1/models entry says
``"owned_by": "wattpool-synthetic"``.

Determinism rule: completion token k (0-based) is always ``token_text(k)``, whatever the prompt,
so a stream can be reproduced or continued from any position.

Run: ``python -m wattpool.engines.synthetic_server --host 127.0.0.1 --port PORT --model-id NAME``
(see ``parse_args`` for the other flags). ``create_app`` serves it in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import asdict, dataclass
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

OWNED_BY = "wattpool-synthetic"
DEFAULT_MAX_TOKENS = 16
# Longest single wait between client-disconnect checks, so long TTFTs still notice a hang-up.
_POLL_S = 0.05

# 50 distinct words; none is a substring of another, so stop strings match where expected.
WORDS: tuple[str, ...] = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
    "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
    "sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
    "amber", "birch", "cedar", "dune", "ember", "fjord", "garnet", "harbor", "iris",
    "jasper", "kelp", "lagoon", "maple", "nectar", "opal", "pebble", "quartz", "raven",
    "saffron", "thistle", "umber", "velvet", "willow", "yarrow",
)  # fmt: skip

STAT_KEYS = (
    "requests_started", "requests_completed", "requests_cancelled", "requests_failed",
    "tokens_generated", "active",
)  # fmt: skip

Kind = Literal["chat", "text"]


# Set in a node's environment to make its synthetic engine "serve a different model":
# the audit tests use it to play a cheating node. Never set by wattpool itself.
CHEAT_SHIFT = int(os.environ.get("WATTPOOL_SYNTHETIC_CHEAT_SHIFT", "0") or 0)


def token_text(k: int) -> str:
    """Text of completion token k (0-based); depends on nothing else."""
    return WORDS[(k + CHEAT_SHIFT) % len(WORDS)] + " "


def count_tokens(text: str) -> int:
    """Synthetic tokenizer: whitespace-separated words, at least 1."""
    return max(1, len(text.split()))


@dataclass
class SyntheticConfig:
    model_id: str = "synthetic"
    host: str = "127.0.0.1"
    port: int = 8000
    ttft_s: float = 0.02
    tokens_per_s: float = 200.0  # 0 = no pacing
    context_length: int = 2048
    error_rate: float = 0.0
    seed: int = 0
    die_after_tokens: int | None = None  # counted from when it was set


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status)


@dataclass
class _Job:
    kind: Kind
    prompt_tokens: int
    stream: bool
    include_usage: bool
    pieces: list[str]  # per-token text, from plan_completion
    finish: str

    def usage(self, completion_tokens: int) -> dict[str, int]:
        p, c = self.prompt_tokens, completion_tokens
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def plan_completion(
    max_tokens: int, stop: Sequence[str], offset: int = 0
) -> tuple[list[str], str]:
    """Per-token text pieces and the finish reason.

    Tokens are deterministic, so the whole completion is planned up front; that lets a stop
    string spanning several tokens be cut out cleanly before any of its text is streamed.
    A token that only carries (part of) the stop string yields an empty piece but still counts.
    """
    stops = [s for s in stop if s]
    longest = max((len(s) for s in stops), default=0)
    text = ""
    spans: list[tuple[int, int]] = []
    for k in range(max_tokens):
        start = len(text)
        text += token_text(offset + k)
        spans.append((start, len(text)))
        if not stops:
            continue
        # Only matches ending in this token are new; earlier ones were checked already.
        frm = max(0, start - longest + 1)
        hits = [i for s in stops if (i := text.find(s, frm)) != -1]
        if hits:
            final = text[: min(hits)]
            return [final[a:b] for a, b in spans], "stop"
    return [text[a:b] for a, b in spans], "length"


def _positive_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, f"'{key}' must be a positive integer", param=key)
    return value


def _message_text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):  # content parts: only text parts carry words
        parts = [p for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return " ".join(str(p.get("text", "")) for p in parts)
    raise ApiError(400, "message 'content' must be a string or a list of parts", param="messages")


def parse_job(body: dict[str, Any], kind: Kind, context_length: int) -> _Job:
    """Validate an OpenAI request body; raises ApiError (400) on anything unusable."""
    if kind == "chat":
        param = "messages"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list", param=param)
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise ApiError(400, "each message needs a 'role' and 'content'", param=param)
        prompt = "\n".join(_message_text(m.get("content")) for m in messages)
        max_tokens = _positive_int(body, "max_tokens") or _positive_int(
            body, "max_completion_tokens"
        )
    else:
        param = "prompt"
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise ApiError(400, "'prompt' must be a string", param=param)
        max_tokens = _positive_int(body, "max_tokens")
    max_tokens = max_tokens or DEFAULT_MAX_TOKENS

    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise ApiError(400, "'stop' must be a string or a list of strings", param="stop")

    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))

    prompt_tokens = count_tokens(prompt)
    if prompt_tokens >= context_length or prompt_tokens + max_tokens > context_length:
        msg = (
            f"This model's maximum context length is {context_length} tokens. However, you "
            f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {param}, "
            f"{max_tokens} in the completion). Please reduce the length of the {param} "
            "or completion."
        )
        raise ApiError(400, msg, param=param, code="context_length_exceeded")
    stream = bool(body.get("stream"))
    # Continuation (a stream moved from a failed node) resumes at token position k, so the
    # continued stream equals the uninterrupted one.
    offset = body.get("wp_token_offset") or 0
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ApiError(400, "'wp_token_offset' must be a non-negative integer",
                       param="wp_token_offset")
    pieces, finish = plan_completion(max_tokens, stop, offset)
    return _Job(kind, prompt_tokens, stream, include_usage, pieces, finish)


def _sse(obj: dict[str, Any] | str) -> str:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n"


class SyntheticEngine:
    """Run-time state: live config, fault RNG and counters."""

    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._tokens_since_armed = 0

    def set_faults(self, body: dict[str, Any]) -> None:
        """Apply a /admin/faults body; all fields are checked before any is applied."""
        highest = {"error_rate": 1.0, "ttft_s": float("inf"), "tokens_per_s": float("inf")}
        updates: dict[str, Any] = {}
        for key, value in body.items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if key in highest:
                if not number or not 0 <= value <= highest[key]:
                    raise ApiError(400, f"'{key}' must be in [0, {highest[key]}]", param=key)
                updates[key] = float(value)
            elif key == "die_after_tokens":
                if value is not None and not (number and isinstance(value, int) and value >= 0):
                    raise ApiError(400, "'die_after_tokens' must be an int >= 0 or null", param=key)
                updates[key] = value
            else:
                raise ApiError(400, f"unknown fault field '{key}'", param=key)
        for key, value in updates.items():
            setattr(self.config, key, value)
        if "die_after_tokens" in updates:
            self._tokens_since_armed = 0

    def roll_fault(self) -> bool:
        # Always draw, so the fault sequence depends only on the seed and the request order.
        return self.rng.random() < self.config.error_rate

    @staticmethod
    async def _wait_until(deadline: float, request: Request, checks: list[float]) -> bool:
        """Sleep until deadline; False once the client has gone.

        Starlette already cancels a stream whose client hangs up; this poll is the fallback
        (and covers non-streamed requests). It runs at most every _POLL_S per request, since
        checking on every token costs real CPU at thousands of tokens/s. checks[0] holds the
        time of the next due check.
        """
        while True:
            remaining = deadline - time.monotonic()
            await asyncio.sleep(max(0.0, min(remaining, _POLL_S)))
            now = time.monotonic()
            if now >= checks[0]:
                if await request.is_disconnected():
                    return False
                checks[0] = now + _POLL_S
            if remaining <= _POLL_S:
                return True

    def _maybe_die(self) -> None:
        limit = self.config.die_after_tokens
        if limit is None or self._tokens_since_armed < limit:
            return
        sys.stderr.write("synthetic engine: die_after_tokens reached, exiting abruptly\n")
        sys.stderr.flush()
        os._exit(1)

    async def generate(self, pieces: list[str], request: Request) -> AsyncIterator[str]:
        """Yield each token's piece at the configured pace, keeping the counters.

        Stops early (no more tokens) when the client disconnects or this generator is
        cancelled or closed; either way the request counts as cancelled.
        """
        stats = self.stats
        stats["requests_started"] += 1
        stats["active"] += 1
        outcome = "requests_cancelled"
        try:
            deadline = time.monotonic() + self.config.ttft_s
            checks = [0.0]
            for k, piece in enumerate(pieces):
                if k:
                    tps = self.config.tokens_per_s  # re-read: /admin/faults applies mid-stream
                    deadline += 1.0 / tps if tps > 0 else 0.0
                self._maybe_die()  # also covers die_after_tokens=0 and other requests' tokens
                if not await self._wait_until(deadline, request, checks):
                    return
                stats["tokens_generated"] += 1
                self._tokens_since_armed += 1
                yield piece
                # Checked after the yield so a streamed token is on the wire before the crash.
                self._maybe_die()
            outcome = "requests_completed"
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception:
            outcome = "requests_failed"
            raise
        finally:
            stats["active"] -= 1
            stats[outcome] += 1

    async def stream(self, job: _Job, request: Request) -> AsyncIterator[str]:
        """SSE events for one request, shaped like OpenAI's chunks."""
        chat = job.kind == "chat"
        head = self._head(job, "chat.completion.chunk")
        extra = {"usage": None} if job.include_usage else {}

        def chunk(piece: str | None, finish_reason: str | None, first: bool = False) -> str:
            if chat:
                delta = {"role": "assistant"} if first else {}
                choice: dict[str, Any] = {
                    "index": 0,
                    "delta": delta | ({} if piece is None else {"content": piece}),
                }
            else:
                choice = {"text": piece or "", "index": 0}
            choice |= {"logprobs": None, "finish_reason": finish_reason}
            return _sse({**head, "choices": [choice], **extra})

        produced = 0
        async with aclosing(self.generate(job.pieces, request)) as tokens:
            async for piece in tokens:
                produced += 1
                # The role rides on the first token, so the first chunk marks real TTFT.
                if chat and produced == 1:
                    yield chunk(piece, None, first=True)
                elif piece:
                    yield chunk(piece, None)
        if produced < len(job.pieces):
            return  # client gone: nobody to finish for
        yield chunk(None, job.finish)
        if job.include_usage:
            yield _sse({**head, "choices": [], "usage": job.usage(produced)})
        yield _sse("[DONE]")

    async def complete(self, job: _Job, request: Request) -> JSONResponse:
        text_parts: list[str] = []
        async with aclosing(self.generate(job.pieces, request)) as tokens:
            async for piece in tokens:
                text_parts.append(piece)
        if len(text_parts) < len(job.pieces):
            # Client went away; this reply is never read.
            return ApiError(499, "client disconnected", "server_error").response()
        text = "".join(text_parts)
        chat = job.kind == "chat"
        message = {"role": "assistant", "content": text}
        choice: dict[str, Any] = (
            {"index": 0, "message": message} if chat else {"text": text, "index": 0}
        )
        choice |= {"logprobs": None, "finish_reason": job.finish}
        head = self._head(job, "chat.completion")
        return JSONResponse({**head, "choices": [choice], "usage": job.usage(len(text_parts))})

    def _head(self, job: _Job, chat_object: str) -> dict[str, Any]:
        """Fields shared by OpenAI completion objects and chunks."""
        chat = job.kind == "chat"
        head: dict[str, Any] = {
            "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex,
            "object": chat_object if chat else "text_completion",
            "created": int(time.time()),
            "model": self.config.model_id,
        }
        return {**head, "system_fingerprint": None} if chat else head

    async def handle(self, request: Request, kind: Kind) -> JSONResponse | StreamingResponse:
        body = await _read_json(request)
        job = parse_job(body, kind, self.config.context_length)
        if self.roll_fault():
            self.stats["requests_started"] += 1
            self.stats["requests_failed"] += 1
            raise ApiError(500, "synthetic fault", "server_error", code="synthetic_fault")
        if not job.stream:
            return await self.complete(job, request)
        return StreamingResponse(
            self.stream(job, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


async def _read_json(request: Request, *, allow_empty: bool = False) -> dict[str, Any]:
    raw = await request.body()
    if allow_empty and not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"invalid JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "the JSON body must be an object")
    return body


def create_app(config: SyntheticConfig) -> FastAPI:
    """The synthetic engine as an ASGI app (die_after_tokens exits the hosting process)."""
    engine = SyntheticEngine(config)
    app = FastAPI(title="wattpool synthetic engine (not inference)", docs_url=None, redoc_url=None)
    app.state.engine = engine

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        entry = {"id": config.model_id, "object": "model", "created": 0, "owned_by": OWNED_BY}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> JSONResponse | StreamingResponse:
        return await engine.handle(request, "text")

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        return await engine.handle(request, "chat")

    @app.get("/stats")
    async def stats() -> dict[str, int]:
        return dict(engine.stats)

    @app.post("/admin/faults")
    async def faults(request: Request) -> dict[str, Any]:
        engine.set_faults(await _read_json(request, allow_empty=True))
        return asdict(engine.config)

    return app


def parse_args(argv: Sequence[str] | None = None) -> SyntheticConfig:
    p = argparse.ArgumentParser(
        prog="python -m wattpool.engines.synthetic_server",
        description="Synthetic OpenAI-compatible engine for tests and load. NOT inference.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-id", required=True)
    p.add_argument("--ttft-s", type=float, default=0.02, help="delay before the first token")
    p.add_argument("--tokens-per-s", type=float, default=200.0, help="pace; 0 = unpaced")
    p.add_argument("--context-length", type=int, default=2048)
    p.add_argument("--error-rate", type=float, default=0.0, help="probability of a 500")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault RNG")
    p.add_argument("--die-after-tokens", type=int, default=None, help="crash after N tokens")
    a = p.parse_args(argv)
    if a.ttft_s < 0 or a.tokens_per_s < 0 or not 0 <= a.error_rate <= 1 or a.context_length < 2:
        p.error("need ttft-s >= 0, tokens-per-s >= 0, 0 <= error-rate <= 1, context-length >= 2")
    return SyntheticConfig(**vars(a))  # argparse dests are the field names


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_args(argv)
    # timeout_graceful_shutdown: open streams must not hold up a SIGTERM for long.
    app = create_app(config)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=1)  # fmt: skip


if __name__ == "__main__":
    main()
