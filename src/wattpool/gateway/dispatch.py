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
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from wattpool.bus import Bus, Msg
from wattpool.control.registry import InstanceView
from wattpool.control.router import RouteHints, Router, prompt_text_of
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


class _Inbox:
    """The chunks sent to one attempt's inbox.

    Waiting costs a future and a timer, not a task: ``asyncio.wait_for`` wraps its
    awaitable in a new task on every call, and a stream waits once per chunk. ``put``
    is an inline bus callback: on the in-process bus a chunk reaches the waiting
    stream without a delivery task in between.
    """

    def __init__(self) -> None:
        self.items: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, msg: Msg) -> None:
        self.items.append(msg.data)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """Whether a chunk is there, waiting up to ``timeout`` seconds for one."""
        if self.items:
            return True
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        return bool(self.items)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


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
    power_wait_s: float = 0.0  # a batch request's wait for cheap power
    finished: bool = False
    ticket: Ticket | None = None


class Dispatcher:
    def __init__(
        self, bus: Bus, router: Router, *, attempts: int, ack_timeout_s: float,
        first_token_timeout_s: float, idle_timeout_s: float, retry_after_s: int,
        admission: AdmissionController | None = None,
        batch_price_ceiling: float | None = None, batch_deadline_s: float = 300.0,
    ) -> None:
        self.bus = bus
        self.router = router
        self.batch_price_ceiling = batch_price_ceiling
        self.batch_deadline_s = batch_deadline_s
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

    async def _wait_for_cheap_power(self, request_id: str, model: str,
                                    trace: DispatchTrace) -> float | None:
        """Wait, up to the batch deadline, until an instance runs on cheap power.

        Returns the price ceiling when such an instance is ready (route there), None when
        the deadline passed or the model has no ready instance at all (route anywhere: the
        usual capacity rules then apply).
        """
        ceiling = self.batch_price_ceiling
        assert ceiling is not None
        started = time.monotonic()
        deadline = started + self.batch_deadline_s
        while True:
            if self.router.has_ready(model, max_price=ceiling):
                trace.power_wait_s = time.monotonic() - started
                return ceiling
            if not self.router.has_ready(model) or time.monotonic() >= deadline:
                trace.power_wait_s = time.monotonic() - started
                if trace.power_wait_s > 0.5:
                    log.info("%s: no power at or under %g/MWh within %.0fs; runs anyway",
                             request_id, ceiling, trace.power_wait_s)
                return None
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

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
        max_price = None
        if klass == "batch" and self.batch_price_ceiling is not None:
            max_price = await self._wait_for_cheap_power(request_id, model, trace)
        trace.ticket = await self._admit(request_id, model, klass)
        try:
            async for chunk in self._run_admitted(request_id, kind, model, body, trace, klass,
                                                  max_price):
                yield chunk
        finally:
            if self.admission is not None and trace.ticket is not None:
                self.admission.release(trace.ticket)

    async def _run_admitted(
        self, request_id: str, kind: RequestKind, model: str, body: dict[str, Any],
        trace: DispatchTrace, klass: PriorityClass, max_price: float | None = None,
    ) -> AsyncIterator[InferChunk]:
        sent_text: list[str] = []
        sent_tokens = 0
        last_failure: str | None = None
        text = prompt_text_of(body)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        hints = RouteHints(text, max_tokens if isinstance(max_tokens, int) else None)
        cheap = RouteHints(text, hints.max_tokens, max_price) if max_price is not None else None
        while len(trace.failed) < self.attempts:
            # Batch work that waited for cheap power goes there if it still can.
            inst = self.router.pick(model, trace.failed, cheap) if cheap else None
            inst = inst or self.router.pick(model, trace.failed, hints)
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
        """Chunks of one instance's answer; raises _AttemptFailed when it cannot finish.

        Deltas that wait in the inbox together (the client, or this gateway, fell behind
        the node) are yielded as one: their text joined, their token counts added.
        """
        box = _Inbox()
        inbox, sub = await self.bus.reply_inbox(box.put)
        finished = False
        try:
            await self.bus.publish(infer_subject(inst.node_id), encode(request), reply=inbox)
            acked = False
            expected_seq = 0
            last_heard = time.monotonic()
            held: InferChunk | None = None  # decoded, not yet yielded
            while True:
                if ticket is not None and ticket.preempt.is_set():
                    raise _Preempted()
                if held is not None:
                    chunk, held = held, None
                else:
                    if not box.items:
                        if not acked:
                            limit = self.ack_timeout_s
                        elif expected_seq <= 1:
                            limit = self.first_token_timeout_s
                        else:
                            limit = self.idle_timeout_s
                        if not await box.wait(WATCH_PERIOD_S):
                            if not self.router.node_reachable(inst.node_id):
                                raise _AttemptFailed(f"node {inst.node_id} unreachable")
                            if time.monotonic() - last_heard > limit:
                                what = ("accept the request" if not acked
                                        else "send the next chunk")
                                raise _AttemptFailed(
                                    f"node {inst.node_id} did not {what} within {limit:.1f}s")
                            continue
                        last_heard = time.monotonic()
                    chunk = self._next_chunk(box, expected_seq)
                    expected_seq += 1
                if chunk.kind == "ack":
                    acked = True
                    continue
                if chunk.kind == "error" and chunk.retriable:
                    raise _AttemptFailed(chunk.error_message or "node error")
                if chunk.kind == "delta":
                    chunk.tokens = chunk.tokens or 1
                    while box.items:  # coalesce what is already here
                        more = self._next_chunk(box, expected_seq)
                        expected_seq += 1
                        if more.kind != "delta":
                            held = more
                            break
                        chunk.text += more.text
                        chunk.tokens += more.tokens or 1
                if chunk.kind in ("final", "error"):
                    finished = True
                yield chunk
                if finished:
                    return
        finally:
            # A cancellation reaches a task once (the gateway's hang-up, see
            # completions_asgi.Hangup), and brings it here: these awaits then run to the
            # end. Neither bus suspends in them (closing a reply inbox is bookkeeping; a
            # publish is buffered), so no second one can cut them short either.
            await sub.unsubscribe()
            if not finished:
                # Client gone, node failed or silent: make sure the engine stops.
                await self.bus.publish(cancel_subject(inst.node_id),
                                       encode(CancelRequest(request_id=request.request_id)))

    @staticmethod
    def _next_chunk(box: _Inbox, expected_seq: int) -> InferChunk:
        try:
            chunk = decode(box.items.popleft(), InferChunk)
        except msgspec.DecodeError as exc:
            raise _AttemptFailed(f"malformed chunk: {exc}") from None
        if chunk.seq != expected_seq:
            raise _AttemptFailed(f"chunk {chunk.seq} arrived, {expected_seq} expected")
        return chunk
