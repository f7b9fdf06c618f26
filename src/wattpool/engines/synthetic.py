"""Adapter for the synthetic engine (engines/synthetic_server.py).

For tests, load and chaos only: it generates deterministic filler words at a set
speed and is never presented as inference.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx

from wattpool.engines.base import (
    PASSTHROUGH_PARAMS,
    EngineAdapter,
    EngineCall,
    remaining_tokens,
)
from wattpool.protocol import Continuation, InstanceSpec, RequestKind


class SyntheticAdapter(EngineAdapter):
    name = "synthetic"
    health_path = "/health"

    def command(
        self, spec: InstanceSpec, model_path: Path | None, port: int, threads: int | None
    ) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "wattpool.engines.synthetic_server",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--model-id", spec.model_id,
            "--context-length", str(spec.context_length),
        ]
        for arg in ("ttft_s", "tokens_per_s", "error_rate", "seed"):
            if arg in spec.args:
                argv += [f"--{arg.replace('_', '-')}", spec.args[arg]]
        return argv

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
        requested = int(
            body.get("max_tokens") or body.get("max_completion_tokens") or default_max_tokens
        )
        max_tokens = remaining_tokens(requested, continuation)
        payload: dict[str, Any] = {
            **params,
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if continuation is not None:
            # Same prompt, token positions resuming where the first node stopped.
            payload["wp_token_offset"] = continuation.tokens
        if kind == "chat":
            payload["messages"] = body["messages"]
            return EngineCall("/v1/chat/completions", payload, max_tokens)
        payload["prompt"] = body["prompt"]
        return EngineCall("/v1/completions", payload, max_tokens)
