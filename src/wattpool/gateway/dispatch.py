"""Sends one request to an instance over the bus and yields its chunks.

Before the first token a failed or silent instance is replaced by the next one
the router picks (up to ``attempts``). After the first token an error ends the
stream; moving a stream mid-way (continuation) is the fleet issue's work.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio

from wattpool.bus import Bus, BusTimeout
from wattpool.control.router import Router
from wattpool.gateway.errors import APIError
from wattpool.protocol import (
    CancelRequest,
    InferChunk,
    InferRequest,
    RequestKind,
    cancel_subject,
    decode,
    encode,
    infer_subject,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class DispatchTrace:
    """Where a request went; read by the caller for metering."""

    node_id: str | None = None
    instance_id: str | None = None
    attempts: list[str] = field(default_factory=list)
    finished: bool = False


class Dispatcher:
    def __init__(
        self, bus: Bus, router: Router, *, attempts: int, ack_timeout_s: float,
        first_token_timeout_s: float, idle_timeout_s: float, retry_after_s: int,
    ) -> None:
        self.bus = bus
        self.router = router
        self.attempts = attempts
        self.ack_timeout_s = ack_timeout_s
        self.stream_timeout_s = max(first_token_timeout_s, idle_timeout_s)
        self.retry_after_s = retry_after_s

    def no_capacity(self, model: str, detail: str | None) -> APIError:
        message = f"No instance of model '{model}' is ready to serve; try again shortly."
        if detail:
            message += f" Last failure: {detail}"
        return APIError(
            503, message, type="server_error", code="no_capacity",
            headers={"Retry-After": str(self.retry_after_s)},
        )

    async def run(
        self, request_id: str, kind: RequestKind, model: str, body: dict[str, Any],
        trace: DispatchTrace,
    ) -> AsyncIterator[InferChunk]:
        last_failure: str | None = None
        for _ in range(self.attempts):
            inst = self.router.pick(model, exclude=trace.attempts)
            if inst is None:
                break
            trace.attempts.append(inst.instance_id)
            trace.node_id, trace.instance_id = inst.node_id, inst.instance_id
            request = InferRequest(
                request_id=request_id, instance_id=inst.instance_id, kind=kind, body=body
            )
            self.router.acquire(inst.instance_id)
            stream = self.bus.stream(
                infer_subject(inst.node_id), encode(request),
                first_timeout=self.ack_timeout_s, idle_timeout=self.stream_timeout_s,
            )
            sent_text = False
            expected_seq = 0
            try:
                async for raw in stream:
                    chunk = decode(raw, InferChunk)
                    if chunk.seq != expected_seq:
                        log.warning("%s: chunk %d after %d", request_id, chunk.seq,
                                    expected_seq - 1)
                    expected_seq = chunk.seq + 1
                    if chunk.kind == "ack":
                        continue
                    if chunk.kind == "error" and chunk.retriable and not sent_text:
                        last_failure = chunk.error_message
                        log.info("%s: %s failed before first token (%s); retrying",
                                 request_id, inst.instance_id, chunk.error_message)
                        break
                    sent_text = sent_text or chunk.kind == "delta"
                    yield chunk
                    if chunk.kind in ("final", "error"):
                        trace.finished = True
                        return
            except BusTimeout as exc:
                if sent_text:
                    trace.finished = True
                    yield InferChunk(
                        request_id=request_id, seq=expected_seq, kind="error", status=504,
                        error_message=f"the node went silent mid-stream: {exc}",
                        error_type="server_error",
                    )
                    return
                last_failure = str(exc)
                log.info("%s: %s timed out (%s); retrying", request_id, inst.instance_id, exc)
            finally:
                self.router.release(inst.instance_id)
                await stream.aclose()
                if not trace.finished:
                    # Client gone, node silent or failed: make sure the engine stops.
                    with anyio.CancelScope(shield=True):
                        await self.bus.publish(
                            cancel_subject(inst.node_id),
                            encode(CancelRequest(request_id=request_id)),
                        )
            if sent_text:
                return
        raise self.no_capacity(model, last_failure)
