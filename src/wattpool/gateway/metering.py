"""Times one request, prices it, and writes its usage record exactly once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from wattpool.gateway.dispatch import DispatchTrace
from wattpool.protocol import RequestKind, Usage
from wattpool.store import UsageRecord

if TYPE_CHECKING:
    from wattpool.gateway.app import GatewayContext
    from wattpool.gateway.tenancy import Admission


class Meter:
    def __init__(self, ctx: GatewayContext, request_id: str, kind: RequestKind, model: str,
                 route: str, trace: DispatchTrace, started: float, klass: str,
                 admission: Admission | None = None) -> None:
        self.ctx, self.request_id, self.kind, self.model = ctx, request_id, kind, model
        self.route, self.trace, self.started = route, trace, started
        self.klass = klass
        self.admission = admission
        self.ttft_s: float | None = None
        self.delivered = 0  # text chunks (tokens) delivered to the client
        self.recorded = False

    def first_token(self) -> None:
        self.ttft_s = time.monotonic() - self.started
        m = self.ctx.metrics
        m.child(m.ttft, self.route, self.model).observe(self.ttft_s)

    async def tokens(self, count: int) -> None:
        """``count`` tokens reached the client (one delta may carry several)."""
        self.delivered += count
        if self.admission is not None and self.ctx.tenancy is not None:
            await self.ctx.tenancy.on_tokens(self.admission, count)

    async def abandon(self) -> None:
        """The client left before the end: bill what was delivered."""
        if not self.recorded:
            await self.done("cancelled", 499)

    async def done(self, status: str, http_status: int, usage: Usage | None = None) -> None:
        if self.recorded:
            return
        self.recorded = True
        # A client that hangs up while we price and record must not lose the record.
        await run_to_end(self._record(status, http_status, usage))

    async def _record(self, status: str, http_status: int, usage: Usage | None) -> None:
        m = self.ctx.metrics
        duration = time.monotonic() - self.started
        m.child(m.latency, self.route, self.model).observe(duration)
        if usage is not None:
            prompt, completion = usage.prompt_tokens, usage.completion_tokens
        else:
            # The engine never reported (client gone, node lost): the prompt as estimated
            # at admission, and each delivered chunk as one token.
            prompt = self.admission.token_estimate if self.admission and self.delivered else 0
            completion = self.delivered
        if prompt:
            m.child(m.tokens, self.model, "prompt").inc(prompt)
        if completion:
            m.child(m.tokens, self.model, "completion").inc(completion)
        if self.trace.continuations:
            m.continuations.labels(self.model).inc(self.trace.continuations)
        if self.trace.preemptions:
            m.preemptions.labels(self.model).inc(self.trace.preemptions)
        if len(self.trace.failed) > self.trace.continuations:
            m.retries.labels(self.model).inc(len(self.trace.failed) - self.trace.continuations)
        cost = 0
        tenancy = self.ctx.tenancy
        if tenancy is not None and (prompt or completion):
            cost = await tenancy.cost(self.model, prompt, completion, self.klass)
        if tenancy is not None and self.admission is not None:
            await tenancy.finish(self.admission, prompt, cost)
        caller = self.admission.caller if self.admission else None
        self.ctx.usage.record(UsageRecord(
            request_id=self.request_id, kind=self.kind, model_id=self.model,
            node_id=self.trace.node_id, instance_id=self.trace.instance_id,
            prompt_tokens=prompt, completion_tokens=completion,
            ttft_ms=self.ttft_s * 1000 if self.ttft_s is not None else None,
            duration_ms=duration * 1000, status=status,  # type: ignore[arg-type]
            http_status=http_status,
            tenant_id=caller.tenant_id if caller else None,
            key_id=caller.key_id if caller else None,
            priority_class=self.klass, cost_micros=cost,
        ))


_unfinished: set[asyncio.Task[Any]] = set()  # run_to_end's tasks whose caller was cancelled


async def run_to_end(coro: Coroutine[Any, Any, None]) -> None:
    """Await ``coro`` so that cancelling the caller does not cut it short.

    Started eagerly: most of the time (prices cached, no key to charge) it never
    suspends, and then costs no task at all. If it does suspend, the rest runs in a task
    of its own; a cancellation of the caller is raised only once that task has ended.
    """
    try:
        waiting = coro.send(None)
    except StopIteration:
        return
    task = asyncio.get_running_loop().create_task(_resume(coro, waiting))
    _unfinished.add(task)
    task.add_done_callback(_unfinished.discard)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await asyncio.wait([task])  # a second cancel leaves it to finish on its own
        raise


async def _resume(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Drive ``coro`` on from where ``run_to_end`` left it: it yielded ``waiting`` (a
    future, as a coroutine awaiting one does to its task) and goes on once that is done."""
    while True:
        if waiting is not None:
            await asyncio.wait([waiting])  # never cancels the future it waits for
        else:
            await asyncio.sleep(0)  # a bare yield: give the loop one turn
        try:
            waiting = coro.send(None)
        except StopIteration:
            return
