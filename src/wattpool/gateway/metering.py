"""Times one request, prices it, and writes its usage record exactly once."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio

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
        self.ctx.metrics.ttft.labels(self.route, self.model).observe(self.ttft_s)

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
        # Shielded: a client that hangs up while we price and record must not lose the record.
        with anyio.CancelScope(shield=True):
            await self._record(status, http_status, usage)

    async def _record(self, status: str, http_status: int, usage: Usage | None) -> None:
        m = self.ctx.metrics
        duration = time.monotonic() - self.started
        m.latency.labels(self.route, self.model).observe(duration)
        if usage is not None:
            prompt, completion = usage.prompt_tokens, usage.completion_tokens
        else:
            # The engine never reported (client gone, node lost): the prompt as estimated
            # at admission, and each delivered chunk as one token.
            prompt = self.admission.token_estimate if self.admission and self.delivered else 0
            completion = self.delivered
        if prompt:
            m.tokens.labels(self.model, "prompt").inc(prompt)
        if completion:
            m.tokens.labels(self.model, "completion").inc(completion)
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
