"""Admission by priority class when capacity is short.

Each model has ``slots`` = ready instances x slots per instance. A request holds a
slot while it runs. When none is free it waits in a queue ordered by class
(interactive before batch) then arrival, up to its class's deadline, and then gets
503 with Retry-After. An interactive request that has to wait asks the youngest
running batch request to yield: that batch stream is *preempted*, gives its slot
back, waits in the queue like any other request, and later continues from the text
it already sent (continuation), so its client still gets one complete response.

Capacity is counted per gateway replica; the nodes' own queues absorb the rest.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

log = logging.getLogger(__name__)

PriorityClass = Literal["interactive", "batch"]
RANK: dict[str, int] = {"interactive": 0, "batch": 1}
PUMP_PERIOD_S = 0.1  # waiting requests re-check capacity (instances come and go)


class QueueTimeout(Exception):
    """No slot became free within the class's deadline."""


@dataclass(eq=False)
class Ticket:
    request_id: str
    model: str
    klass: PriorityClass
    granted_at: float = 0.0
    # Set when an interactive request needs this (batch) slot: yield it soon.
    preempt: asyncio.Event = field(default_factory=asyncio.Event)
    preempted_for: str | None = None


@dataclass
class _ModelQueue:
    holders: dict[str, Ticket] = field(default_factory=dict)
    waiting: list[tuple[int, int, Ticket, asyncio.Future[None]]] = field(default_factory=list)


class AdmissionController:
    def __init__(
        self,
        slots_for_model: Callable[[str], int],
        *,
        queue_timeout_s: float,
        batch_queue_timeout_s: float,
        preemption: bool = True,
    ) -> None:
        self.slots_for_model = slots_for_model
        self.deadline_s = {"interactive": queue_timeout_s, "batch": batch_queue_timeout_s}
        self.preemption = preemption
        self._queues: dict[str, _ModelQueue] = {}
        self._seq = itertools.count()
        self.preemptions = 0

    def _queue(self, model: str) -> _ModelQueue:
        return self._queues.setdefault(model, _ModelQueue())

    def waiting(self, model: str) -> int:
        return len(self._queue(model).waiting)

    async def acquire(self, request_id: str, model: str, klass: PriorityClass) -> Ticket:
        ticket = Ticket(request_id, model, klass)
        q = self._queue(model)
        slots = self.slots_for_model(model)
        if slots == 0 and not q.holders:
            # Nothing is ready at all (loading, restarting): say so now, do not queue.
            raise QueueTimeout(f"no instance of model '{model}' is ready")
        if not q.waiting and len(q.holders) < slots:
            self._grant(q, ticket)
            return ticket
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (RANK[klass], next(self._seq), ticket, future)
        heapq.heappush(q.waiting, entry)
        if klass == "interactive":
            self._preempt_batch(q, ticket)
        deadline = time.monotonic() + self.deadline_s[klass]
        try:
            while not future.done():
                self._pump(q, model)
                if future.done():
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise QueueTimeout(
                        f"no capacity for model '{model}' within {self.deadline_s[klass]:.0f}s"
                    )
                try:
                    await asyncio.wait_for(asyncio.shield(future), min(PUMP_PERIOD_S, left))
                except TimeoutError:
                    continue
            return ticket
        except BaseException:
            if entry in q.waiting:
                q.waiting.remove(entry)
                heapq.heapify(q.waiting)
            if future.done() and not future.cancelled() and ticket.request_id in q.holders:
                self.release(ticket)  # granted while we were giving up: hand it on
            raise

    def _grant(self, q: _ModelQueue, ticket: Ticket) -> None:
        ticket.granted_at = time.monotonic()
        ticket.preempt = asyncio.Event()
        ticket.preempted_for = None
        q.holders[ticket.request_id] = ticket

    def _pump(self, q: _ModelQueue, model: str) -> None:
        if not q.waiting:
            return  # the usual case on release; counting the ready slots costs a fleet scan
        slots = self.slots_for_model(model)
        while q.waiting and len(q.holders) < slots:
            _, _, ticket, future = heapq.heappop(q.waiting)
            if future.done():
                continue
            self._grant(q, ticket)
            future.set_result(None)

    def _preempt_batch(self, q: _ModelQueue, waiter: Ticket) -> None:
        if not self.preemption:
            return
        candidates = [t for t in q.holders.values()
                      if t.klass == "batch" and not t.preempt.is_set()]
        already = sum(1 for t in q.holders.values() if t.preempt.is_set())
        interactive_waiting = sum(1 for rank, _, _, f in q.waiting if rank == 0 and not f.done())
        if not candidates or already >= interactive_waiting:
            return  # enough slots are already being freed for the interactive queue
        victim = max(candidates, key=lambda t: t.granted_at)  # youngest loses least work
        victim.preempted_for = waiter.request_id
        victim.preempt.set()
        self.preemptions += 1
        log.warning("preempting batch request %s (model %s) for interactive request %s: "
                    "capacity short", victim.request_id, waiter.model, waiter.request_id)

    def release(self, ticket: Ticket) -> None:
        q = self._queue(ticket.model)
        if q.holders.pop(ticket.request_id, None) is not None:
            self._pump(q, ticket.model)
