"""Sends one request to an instance over the bus and yields its chunks.

Failover. Before the first token, a failed, silent or unreachable instance is
replaced by the next one the router picks. After the first token the stream is
*continued* on another instance: it gets the prompt plus the text already sent and
generates only the rest, so the client sees one unbroken stream and every token is
counted once. Up to ``attempts`` instances are tried per request.

A node that dies sends nothing more, so while waiting for a chunk the dispatcher
also watches the registry: a node marked unreachable (no heartbeat within the
heartbeat timeout) ends the attempt at once rather than after the idle timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec

from wattpool.bus import Bus, Msg
from wattpool.control.registry import InstanceView
from wattpool.control.router import Router
from wattpool.gateway.admission import AdmissionController, PriorityClass, QueueTimeout, Ticket
from wattpool.gateway.errors import APIError
from wattpool.protocol import (
    CancelRequest,
    Continuation,
    InferChunk,
    InferRequest,
    RequestKind,
    Usage,
    cancel_subject,
    decode,
    encode,
    infer_subject,
)

log = logging.getLogger(__name__)
WATCH_PERIOD_S = 0.25


class _AttemptFailed(Exception):
    """This instance cannot finish the request; another one may."""


class _Preempted(Exception):
    """A batch request gives its slot to interactive work; it continues later."""


@dataclass(slots=True)
class DispatchTrace:
    """Where a request went; read by the caller for metering."""

    node_id: str | None = None
    instance_id: str | None = None
    attempts: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    continuations: int = 0
    preemptions: int = 0
    finished: bool = False
    ticket: Ticket | None = None


class Dispatcher:
    def __init__(
        self, bus: Bus, router: Router, *, attempts: int, ack_timeout_s: float,
        first_token_timeout_s: float, idle_timeout_s: float, retry_after_s: int,
        admission: AdmissionController | None = None,
    ) -> None:
        self.bus = bus
        self.router = router
        self.admission = admission
        self.attempts = attempts
        self.ack_timeout_s = ack_timeout_s
        self.first_token_timeout_s = first_token_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.retry_after_s = retry_after_s

    def no_capacity(self, model: str, detail: str | None) -> APIError:
        message = f"No instance of model '{model}' is ready to serve; try again shortly."
        if detail:
            message += f" Last failure: {detail}"
        return APIError(
            503, message, type="server_error", code="no_capacity",
            headers={"Retry-After": str(self.retry_after_s)},
        )

    async def _admit(self, request_id: str, model: str, klass: PriorityClass) -> Ticket | None:
        if self.admission is None:
            return None
        try:
            return await self.admission.acquire(request_id, model, klass)
        except QueueTimeout as exc:
            raise APIError(503, f"{exc}; try again shortly.", type="server_error",
                           code="no_capacity",
                           headers={"Retry-After": str(self.retry_after_s)}) from None

    async def run(
        self, request_id: str, kind: RequestKind, model: str, body: dict[str, Any],
        trace: DispatchTrace, klass: PriorityClass = "interactive",
    ) -> AsyncIterator[InferChunk]:
        trace.ticket = await self._admit(request_id, model, klass)
        try:
            async for chunk in self._run_admitted(request_id, kind, model, body, trace, klass):
                yield chunk
        finally:
            if self.admission is not None and trace.ticket is not None:
                self.admission.release(trace.ticket)

    async def _run_admitted(
        self, request_id: str, kind: RequestKind, model: str, body: dict[str, Any],
        trace: DispatchTrace, klass: PriorityClass,
    ) -> AsyncIterator[InferChunk]:
        sent_text: list[str] = []
        sent_tokens = 0
        last_failure: str | None = None
        while len(trace.failed) < self.attempts:
            inst = self.router.pick(model, exclude=trace.failed)
            if inst is None:
                break
            # Count the request against the instance before any await, so requests that
            # arrive together see each other and spread out.
            self.router.acquire(inst.instance_id)
            trace.attempts.append(inst.instance_id)
            trace.node_id, trace.instance_id = inst.node_id, inst.instance_id
            continuation = (
                Continuation(text="".join(sent_text), tokens=sent_tokens) if sent_text else None
            )
            if continuation is not None:
                trace.continuations += 1
                log.info("%s: continuing on %s after %d tokens", request_id,
                         inst.instance_id, sent_tokens)
            tokens_before = sent_tokens
            request = InferRequest(request_id=request_id, instance_id=inst.instance_id,
                                   kind=kind, body=body, continuation=continuation)
            try:
                async for chunk in self._attempt(inst, request, trace.ticket):
                    if chunk.kind == "delta":
                        sent_text.append(chunk.text)
                        sent_tokens += chunk.tokens or 1
                    elif chunk.kind == "final" and chunk.usage is not None:
                        # The node counted its own call; add what earlier nodes sent.
                        chunk.usage = Usage(
                            prompt_tokens=chunk.usage.prompt_tokens,
                            completion_tokens=tokens_before + chunk.usage.completion_tokens,
                        )
                    if chunk.kind in ("final", "error"):
                        trace.finished = True
                    yield chunk
                    if trace.finished:
                        return
            except _AttemptFailed as exc:
                last_failure = str(exc)
                trace.failed.append(inst.instance_id)
                log.info("%s: %s failed (%s)", request_id, inst.instance_id, exc)
            except _Preempted:
                assert self.admission is not None and trace.ticket is not None
                trace.preemptions += 1
                log.warning("%s: batch stream preempted after %d tokens (for %s); it waits "
                            "for a free slot and continues", request_id, sent_tokens,
                            trace.ticket.preempted_for)
                self.admission.release(trace.ticket)
                trace.ticket = None
                try:
                    trace.ticket = await self.admission.acquire(request_id, model, klass)
                except QueueTimeout as exc:
                    last_failure = f"preempted and not resumed: {exc}"
                    break
            finally:
                self.router.release(inst.instance_id)
        if sent_text:
            trace.finished = True
            yield InferChunk(
                request_id=request_id, seq=0, kind="error", status=503,
                error_type="server_error", error_code="no_capacity",
                error_message=f"the stream was interrupted and no instance could continue it "
                              f"({last_failure})",
            )
            return
        raise self.no_capacity(model, last_failure)

    async def _attempt(
        self, inst: InstanceView, request: InferRequest, ticket: Ticket | None
    ) -> AsyncIterator[InferChunk]:
        """Chunks of one instance's answer; raises _AttemptFailed when it cannot finish."""
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_reply(msg: Msg) -> None:
            queue.put_nowait(msg.data)

        inbox = self.bus.new_inbox()
        sub = await self.bus.subscribe(inbox, on_reply)
        finished = False
        try:
            await self.bus.publish(infer_subject(inst.node_id), encode(request), reply=inbox)
            acked = False
            expected_seq = 0
            last_heard = time.monotonic()
            while True:
                if ticket is not None and ticket.preempt.is_set():
                    raise _Preempted()
                if not acked:
                    limit = self.ack_timeout_s
                elif expected_seq <= 1:
                    limit = self.first_token_timeout_s
                else:
                    limit = self.idle_timeout_s
                try:
                    raw = await asyncio.wait_for(queue.get(), WATCH_PERIOD_S)
                except TimeoutError:
                    if not self.router.node_reachable(inst.node_id):
                        raise _AttemptFailed(f"node {inst.node_id} unreachable") from None
                    if time.monotonic() - last_heard > limit:
                        what = "accept the request" if not acked else "send the next chunk"
                        raise _AttemptFailed(
                            f"node {inst.node_id} did not {what} within {limit:.1f}s"
                        ) from None
                    continue
                last_heard = time.monotonic()
                try:
                    chunk = decode(raw, InferChunk)
                except msgspec.DecodeError as exc:
                    raise _AttemptFailed(f"malformed chunk: {exc}") from None
                if chunk.seq != expected_seq:
                    raise _AttemptFailed(f"chunk {chunk.seq} arrived, {expected_seq} expected")
                expected_seq += 1
                if chunk.kind == "ack":
                    acked = True
                    continue
                if chunk.kind == "error" and chunk.retriable:
                    raise _AttemptFailed(chunk.error_message or "node error")
                if chunk.kind in ("final", "error"):
                    finished = True
                yield chunk
                if finished:
                    return
        finally:
            with anyio.CancelScope(shield=True):
                await sub.unsubscribe()
                if not finished:
                    # Client gone, node failed or silent: make sure the engine stops.
                    await self.bus.publish(cancel_subject(inst.node_id),
                                           encode(CancelRequest(request_id=request.request_id)))
