"""llama.cpp through llama-cpp-python's OpenAI-compatible server.

Two things llama-cpp-python's server does not do, done here:
  * streamed responses carry no token counts, so the adapter counts them with the
    engine's own tokenizer (``/extras/tokenize/count``): the prompt exactly, the
    completion as ``max_tokens`` when it ran to the limit, else by re-tokenizing the
    generated text (exact for ordinary text; see docs/architecture.md);
  * base models like the shipped Gemma 270M carry no chat template, so chat
    requests for Gemma models are rendered with Gemma's turn format here and sent
    as completions. Other models use the template in their GGUF.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import httpx

from wattpool.engines.base import (
    PASSTHROUGH_PARAMS,
    EngineAdapter,
    EngineCall,
    EngineRequestError,
    remaining_tokens,
)
from wattpool.engines.chat_template import GEMMA_END_OF_TURN, render_gemma
from wattpool.engines.models import resolve_model
from wattpool.protocol import Continuation, InstanceSpec, RequestKind, Usage


def uses_gemma_template(spec: InstanceSpec) -> bool:
    template = spec.args.get("chat_template")
    if template:
        return template == "gemma"
    return "gemma" in spec.source.lower() or "gemma" in spec.model_id.lower()


class LlamaCppAdapter(EngineAdapter):
    name = "llamacpp"

    def prepare(self, spec: InstanceSpec, data_dir: Path) -> Path | None:
        return resolve_model(spec.source, data_dir).path

    def command(
        self, spec: InstanceSpec, model_path: Path | None, port: int, threads: int | None
    ) -> list[str]:
        if model_path is None:
            raise ValueError("llama.cpp needs a model path")
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model", str(model_path),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--n_ctx", str(spec.context_length),
            "--n_threads", str(threads or os.cpu_count() or 1),
        ]

    async def _count_tokens(self, client: httpx.AsyncClient, text: str) -> int:
        resp = await client.post("/extras/tokenize/count", json={"input": text})
        resp.raise_for_status()
        return int(resp.json()["count"])

    async def build_call(
        self,
        client: httpx.AsyncClient,
        spec: InstanceSpec,
        kind: RequestKind,
        body: dict[str, Any],
        default_max_tokens: int,
        continuation: Continuation | None = None,
    ) -> EngineCall:
        params = {k: body[k] for k in PASSTHROUGH_PARAMS if body.get(k) is not None}
        messages: list[dict[str, Any]] = list(body.get("messages") or [])  # type: ignore[call-overload]
        if kind == "chat" and uses_gemma_template(spec):
            prompt: str | None = render_gemma(messages)
            stops = params.get("stop") or []
            stops = [stops] if isinstance(stops, str) else list(stops)
            params["stop"] = [*stops, GEMMA_END_OF_TURN]
            path, param_name = "/v1/completions", "messages"
        elif kind == "chat":
            prompt = None
            path, param_name = "/v1/chat/completions", "messages"
        else:
            prompt = str(body["prompt"])
            path, param_name = "/v1/completions", "prompt"

        if prompt is not None:
            prompt_tokens = await self._count_tokens(client, prompt)
        else:
            joined = "\n".join(str(m.get("content") or "") for m in messages)
            prompt_tokens = await self._count_tokens(client, joined)

        ctx = spec.context_length
        raw_requested = body.get("max_tokens") or body.get("max_completion_tokens")
        requested = int(raw_requested) if raw_requested else None  # type: ignore[call-overload]
        if prompt_tokens >= ctx or (requested and prompt_tokens + requested > ctx):
            completion = requested or 0
            raise EngineRequestError(
                f"This model's maximum context length is {ctx} tokens. However, you requested "
                f"{prompt_tokens + completion} tokens ({prompt_tokens} in the {param_name}, "
                f"{completion} in the completion). Please reduce the length of the "
                f"{param_name} or completion.",
                code="context_length_exceeded",
                param=param_name,
            )
        budget = requested or min(default_max_tokens, ctx - prompt_tokens)
        max_tokens = remaining_tokens(budget, continuation)
        payload: dict[str, Any] = {**params, "max_tokens": max_tokens, "stream": True}
        if prompt is not None:
            # A continuation is the same prompt with what was already generated after it.
            payload["prompt"] = prompt + (continuation.text if continuation else "")
        else:
            # The engine applies this model's own template; the partial answer can only be
            # given as an assistant turn (approximate continuation, see docs).
            extra = [{"role": "assistant", "content": continuation.text}] if continuation else []
            payload["messages"] = [*messages, *extra]
        return EngineCall(
            path=path,
            payload=payload,
            max_tokens=max_tokens,
            prompt=prompt,
            prompt_tokens=prompt_tokens,
        )

    async def final_usage(
        self,
        client: httpx.AsyncClient,
        call: EngineCall,
        reported: Usage | None,
        text: str,
        finish_reason: str | None,
    ) -> Usage:
        if reported is not None:
            return reported
        assert call.prompt_tokens is not None
        if finish_reason == "length":
            completion = call.max_tokens
        elif text:
            # The count endpoint adds a BOS token; generated text has none.
            completion = max(0, await self._count_tokens(client, text) - 1)
        else:
            completion = 0
        return Usage(prompt_tokens=call.prompt_tokens, completion_tokens=completion)
