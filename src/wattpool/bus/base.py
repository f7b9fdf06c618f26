"""The Bus interface.

A bus moves opaque bytes between subjects, with NATS semantics so that the NATS
implementation is a thin adapter:

* subjects are dot-separated tokens; a subscription may use ``*`` (one token)
  and ``>`` (one or more trailing tokens);
* ``publish`` is fire-and-forget and never fails because nobody listens;
* a subscription with a ``queue`` group shares messages with the other members
  of that group (each message goes to one member); plain subscriptions get all;
* messages from one publisher to one subscriber arrive in order;
* ``request`` sends one message and waits for one reply; ``stream`` sends one
  message and yields replies until the caller stops.

tests/contract/test_bus_contract.py is the contract every implementation passes.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


class BusError(Exception):
    """Base class of bus failures."""


class BusTimeout(BusError):
    """No reply arrived in time."""


class BusClosed(BusError):
    """The bus was closed."""


@dataclass(frozen=True, slots=True)
class Msg:
    subject: str
    data: bytes
    reply: str | None = None


Handler = Callable[[Msg], Awaitable[None]]
# A handler that only hands the message on (appends it to a buffer, wakes a waiter):
# it neither blocks nor awaits, so a bus may call it where the message arrives.
Callback = Callable[[Msg], None]


def call_inline(callback: Callback, msg: Msg) -> None:
    """Deliver to an inline subscription: a callback that raises is logged, and the
    subscription carries on, as with a handler."""
    try:
        callback(msg)
    except Exception:
        log.exception("bus callback for %s failed", msg.subject)


class Subscription(abc.ABC):
    @abc.abstractmethod
    async def unsubscribe(self) -> None: ...


class Bus(abc.ABC):
    @abc.abstractmethod
    async def publish(self, subject: str, data: bytes, reply: str | None = None) -> None: ...

    @abc.abstractmethod
    async def subscribe(
        self, subject: str, handler: Handler, queue: str | None = None
    ) -> Subscription: ...

    async def subscribe_inline(self, subject: str, callback: Callback) -> Subscription:
        """``subscribe`` for a ``Callback``, with the same delivery guarantees.

        A bus may run it without a delivery task per subscription or per message: a
        stream's inbox and a node's request subject take one message per token or per
        request, and a task hop each was a large part of the cost of a stream.
        """

        async def handler(msg: Msg) -> None:
            callback(msg)

        return await self.subscribe(subject, handler)

    @abc.abstractmethod
    async def close(self) -> None: ...

    def new_inbox(self) -> str:
        # 128 random bits; os.urandom directly, as a UUID object costs ~10x more and
        # every dispatch attempt makes an inbox.
        return f"_INBOX.{os.urandom(16).hex()}"

    async def reply_inbox(self, callback: Callback) -> tuple[str, Subscription]:
        """A new inbox subject whose messages go to ``callback``, and its subscription.

        For replies to a request this process publishes next, on this bus: the inbox
        need not be known to the server before that publish (it travels on the same
        connection, after the inbox). A bus may serve all its reply inboxes with one
        subscription (NatsBus does: a subscription each cost a server round trip, a task
        and two protocol messages a request); unsubscribing stops delivery as usual.
        """
        inbox = self.new_inbox()
        return inbox, await self.subscribe_inline(inbox, callback)

    async def request(self, subject: str, data: bytes, timeout: float) -> bytes:
        """Send one message and return the first reply, or raise BusTimeout."""
        stream = self.stream(subject, data, first_timeout=timeout, idle_timeout=timeout)
        try:
            async for reply in stream:
                return reply
        finally:
            await stream.aclose()
        raise BusTimeout(f"no reply on {subject}")  # pragma: no cover - stream raises first

    async def stream(
        self, subject: str, data: bytes, first_timeout: float, idle_timeout: float
    ) -> AsyncIterator[bytes]:
        """Send one message and yield every reply sent to its inbox.

        Raises BusTimeout when the first reply takes longer than ``first_timeout``
        or a later one longer than ``idle_timeout``. The caller ends the stream by
        breaking out of the loop (or ``aclose``); the inbox is then unsubscribed.
        """
        inbox = self.new_inbox()
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_reply(msg: Msg) -> None:
            queue.put_nowait(msg.data)

        sub = await self.subscribe(inbox, on_reply)
        try:
            await self.publish(subject, data, reply=inbox)
            timeout = first_timeout
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    raise BusTimeout(f"no reply on {subject} within {timeout:.1f}s") from None
                yield item
                timeout = idle_timeout
        finally:
            await sub.unsubscribe()


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, ``>`` is the rest (at least one)."""
    pattern_tokens = pattern.split(".")
    subject_tokens = subject.split(".")
    for i, token in enumerate(pattern_tokens):
        if token == ">":
            return len(subject_tokens) > i
        if i >= len(subject_tokens):
            return False
        if token != "*" and token != subject_tokens[i]:
            return False
    return len(pattern_tokens) == len(subject_tokens)
