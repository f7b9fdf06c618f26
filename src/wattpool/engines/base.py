"""The engine adapter interface.

An engine is a subprocess serving an OpenAI-compatible HTTP API on a loopback port.
The node agent's supervisor starts it with ``command()`` and the bridge turns each
bus request into one streamed engine call with ``build_call()``; the bridge parses
the engine's SSE stream itself and asks the adapter only what differs per engine.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from wattpool.protocol import SAMPLING_PARAMS, Continuation, InstanceSpec, RequestKind, Usage


class EngineRequestError(Exception):
    """A request the engine must not run (bad input); goes back to the client as-is."""

    def __init__(
        self, message: str, *, status: int = 400, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param


@dataclass(slots=True)
class EngineCall:
    """One streamed HTTP call to the engine."""

    path: str  # "/v1/completions" or "/v1/chat/completions"
    payload: dict[str, Any]
    max_tokens: int
    prompt: str | None = None  # the exact prompt text, when the adapter rendered it
    prompt_tokens: int | None = None  # of the client's prompt, when the adapter counted
    extra: dict[str, Any] = field(default_factory=dict)


PASSTHROUGH_PARAMS = SAMPLING_PARAMS


def remaining_tokens(requested: int, continuation: Continuation | None) -> int:
    """Tokens still to generate; a continuation has used some of the budget already."""
    done = continuation.tokens if continuation else 0
    return max(1, requested - done)


class EngineAdapter(abc.ABC):
    name: str

    def prepare(self, spec: InstanceSpec, data_dir: Path) -> Path | None:
        """Blocking preparation before start (resolve or assemble model weights)."""
        return None

    @abc.abstractmethod
    def command(
        self, spec: InstanceSpec, model_path: Path | None, port: int, threads: int | None
    ) -> list[str]:
        """argv that serves the engine on 127.0.0.1:port."""

    health_path: str = "/v1/models"

    @abc.abstractmethod
    async def build_call(
        self,
        client: httpx.AsyncClient,
        spec: InstanceSpec,
        kind: RequestKind,
        body: dict[str, Any],
        default_max_tokens: int,
        continuation: Continuation | None = None,
    ) -> EngineCall:
        """Turn a validated OpenAI request into an engine call (may raise EngineRequestError).

        With a continuation the call generates what follows ``continuation.text``, at most
        the requested length minus ``continuation.tokens``.
        """

    async def final_usage(
        self,
        client: httpx.AsyncClient,
        call: EngineCall,
        reported: Usage | None,
        text: str,
        finish_reason: str | None,
    ) -> Usage:
        """Token counts of a finished call; by default what the engine reported."""
        if reported is None:
            raise RuntimeError(f"engine {self.name} reported no usage")
        return reported
