"""The in-process bus: one asyncio loop, NATS semantics, no network.

Each subscription has its own queue and delivery task, so a slow handler delays
only its own subscription (as a NATS client's per-subscription pending queue
does) and messages to one subscriber keep their order. An inline subscription
(``subscribe_inline``) has neither: its callback runs inside ``publish``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import defaultdict

from wattpool.bus.base import (
    Bus,
    BusClosed,
    Callback,
    Handler,
    Msg,
    Subscription,
    call_inline,
    subject_matches,
)

log = logging.getLogger(__name__)


class _LocalSubscription(Subscription):
    def __init__(self, bus: LocalBus, subject: str, handler: Handler, queue: str | None) -> None:
        self.bus = bus
        self.subject = subject
        self.handler = handler
        self.queue_group = queue
        self.pending: asyncio.Queue[Msg | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(
            self._deliver())
        self.active = True

    def deliver(self, msg: Msg) -> None:
        self.pending.put_nowait(msg)

    async def _deliver(self) -> None:
        while True:
            msg = await self.pending.get()
            if msg is None or not self.active:
                return  # after unsubscribe, queued messages are dropped (as in NATS)
            try:
                await self.handler(msg)
            except Exception:
                # A failing handler must not kill delivery for later messages.
                log.exception("bus handler for %s failed", self.subject)

    async def unsubscribe(self) -> None:
        if not self.active:
            return
        self.active = False
        self.bus._remove(self)
        self.pending.put_nowait(None)


class _InlineSubscription(Subscription):
    def __init__(self, bus: LocalBus, subject: str, callback: Callback) -> None:
        self.bus = bus
        self.subject = subject
        self.callback = callback
        self.queue_group: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.active = True

    def deliver(self, msg: Msg) -> None:
        call_inline(self.callback, msg)

    async def unsubscribe(self) -> None:
        if self.active:
            self.active = False
            self.bus._remove(self)


_Sub = _LocalSubscription | _InlineSubscription


class LocalBus(Bus):
    def __init__(self) -> None:
        self._subs: list[_Sub] = []
        # Subscriptions by exact subject, and those with wildcards: a stream's chunks go
        # to its own inbox, so publishing must not test every open inbox's subject.
        self._exact: defaultdict[str, list[_Sub]] = defaultdict(list)
        self._wild: list[_Sub] = []
        self._round_robin: defaultdict[tuple[str, str], itertools.count[int]] = defaultdict(
            itertools.count
        )
        self._closed = False

    async def publish(self, subject: str, data: bytes, reply: str | None = None) -> None:
        if self._closed:
            raise BusClosed("bus is closed")
        msg = Msg(subject=subject, data=bytes(data), reply=reply)
        groups: dict[tuple[str, str], list[_Sub]] = {}
        exact = self._exact.get(subject, ())
        wild = [s for s in self._wild if subject_matches(s.subject, subject)]
        for sub in (*exact, *wild) if wild else exact:
            if sub.queue_group is None:
                sub.deliver(msg)
            else:
                groups.setdefault((sub.subject, sub.queue_group), []).append(sub)
        for key, members in groups.items():
            chosen = members[next(self._round_robin[key]) % len(members)]
            chosen.deliver(msg)

    async def subscribe(
        self, subject: str, handler: Handler, queue: str | None = None
    ) -> Subscription:
        if self._closed:
            raise BusClosed("bus is closed")
        return self._add(_LocalSubscription(self, subject, handler, queue))

    async def subscribe_inline(self, subject: str, callback: Callback) -> Subscription:
        if self._closed:
            raise BusClosed("bus is closed")
        return self._add(_InlineSubscription(self, subject, callback))

    def _add(self, sub: _Sub) -> Subscription:
        subject = sub.subject
        self._subs.append(sub)
        if _is_wild(subject):
            self._wild.append(sub)
        else:
            self._exact[subject].append(sub)
        return sub

    def _remove(self, sub: _Sub) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        if _is_wild(sub.subject):
            if sub in self._wild:
                self._wild.remove(sub)
            return
        members = self._exact.get(sub.subject)
        if members is not None and sub in members:
            members.remove(sub)
            if not members:
                del self._exact[sub.subject]

    async def close(self) -> None:
        self._closed = True
        subs = list(self._subs)
        for sub in subs:
            await sub.unsubscribe()
        await asyncio.gather(*(s.task for s in subs if s.task is not None),
                             return_exceptions=True)


def _is_wild(subject: str) -> bool:
    return any(token in ("*", ">") for token in subject.split("."))
