"""The NATS bus: the ``Bus`` interface over nats-py (see docs/bus.md).

NATS already has the semantics base.py describes, so this is a thin adapter with
three additions:

* payloads over the server's ``max_payload`` are split into parts on the same
  subject and put together again before the handler sees them (plain
  subscriptions only: a queue group would scatter the parts over its members);
* ``stream``/``request`` end at once with ``BusTimeout`` on NATS "no responders";
* the connection reconnects forever, so a node outlives a NATS restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

from nats import errors as nats_errors
from nats.aio.client import Client
from nats.aio.msg import Msg as NatsMsg
from nats.aio.subscription import Subscription as NatsSubscription

from wattpool.bus.base import (
    Bus,
    BusClosed,
    BusError,
    BusTimeout,
    Callback,
    Handler,
    Msg,
    Subscription,
    call_inline,
)

log = logging.getLogger(__name__)

# Headers of one part of a payload larger than the server's max_payload.
HDR_MSG_ID = "Wp-Msg-Id"
HDR_PART = "Wp-Part"
HDR_PARTS = "Wp-Parts"
# The server counts headers against max_payload; ours take about 100 bytes.
HEADER_RESERVE = 256
# Incomplete part sets are dropped after this long (bounds memory if parts are lost).
PARTIAL_TTL_S = 30.0
MAX_PARTS = 100_000

# NATS answers a request nobody subscribes to with an empty "503" status message.
STATUS_HEADER = "Status"
NO_RESPONDERS = "503"

RECONNECT_WAIT_S = 0.5
# Errors that mean the connection is gone; nats-py reconnects by itself.
_CONNECTION_ERRORS = (OSError, TimeoutError, nats_errors.StaleConnectionError,
                      nats_errors.NoServersError, nats_errors.ConnectionClosedError)
# Per-subscription buffer before NATS drops messages (slow consumer): room for
# token streams and multi-MiB payloads.
PENDING_MSGS_LIMIT = 65_536
PENDING_BYTES_LIMIT = 64 * 1024 * 1024
# How long close() lets running handlers finish before cancelling them.
HANDLER_GRACE_S = 5.0
SLOW_CONSUMER_LOG_EVERY_S = 5.0
# subscribe() waits this long at most for the server to confirm the subscription.
SUBSCRIBE_FLUSH_S = 2.0
CLOSE_FLUSH_S = 1.0


@contextlib.contextmanager
def _as_bus_errors(action: str) -> Iterator[None]:
    try:
        yield
    except (nats_errors.ConnectionClosedError, nats_errors.ConnectionDrainingError) as exc:
        raise BusClosed("bus is closed") from exc
    except nats_errors.Error as exc:
        raise BusError(f"{action} failed: {exc!r}") from exc


@dataclass
class _Partial:
    """The parts of one large message received so far."""

    count: int
    reply: str | None
    timer: asyncio.TimerHandle
    parts: dict[int, bytes] = field(default_factory=dict)


class _NatsSubscription(Subscription):
    def __init__(
        self, bus: NatsBus, subject: str, handler: Handler | None, queue: str | None,
        on_no_responders: Callable[[], None] | None = None, inline: Callback | None = None,
    ) -> None:
        self.bus = bus
        self.subject = subject
        self.handler = handler
        self.inline = inline
        self.queue = queue
        self.on_no_responders = on_no_responders
        self.active = True
        self.nats_sub: NatsSubscription | None = None
        self.partials: dict[str, _Partial] = {}

    async def on_message(self, nmsg: NatsMsg) -> None:
        """nats-py callback: one task per subscription, so messages stay in order."""
        if not self.active:
            return  # queued before unsubscribe: dropped, as LocalBus does
        headers = nmsg.headers
        if headers and STATUS_HEADER in headers and not nmsg.data:
            if headers[STATUS_HEADER] == NO_RESPONDERS and self.on_no_responders is not None:
                self.on_no_responders()
            return  # status messages are NATS's, never a handler's
        if headers and HDR_PARTS in headers:
            msg = self._add_part(nmsg, headers)
            if msg is None:
                return
        else:
            msg = Msg(subject=nmsg.subject, data=nmsg.data, reply=nmsg.reply or None)
        if self.inline is not None:  # never awaits: no task needed to finish it
            call_inline(self.inline, msg)
            return
        # nats-py's unsubscribe cancels this task; the shield lets the running
        # handler finish anyway (as with LocalBus), e.g. one that unsubscribes itself.
        task = asyncio.get_running_loop().create_task(self._run(msg))
        self.bus._handler_tasks.add(task)
        task.add_done_callback(self.bus._handler_tasks.discard)
        await asyncio.shield(task)

    async def _run(self, msg: Msg) -> None:
        assert self.handler is not None  # a subscription has a handler or a callback
        try:
            await self.handler(msg)
        except Exception:
            # A failing handler must not stop later deliveries.
            log.exception("bus handler for %s failed", self.subject)

    def _add_part(self, nmsg: NatsMsg, headers: dict[str, str]) -> Msg | None:
        """Store one part; return the whole message once every part is here."""
        try:
            msg_id = headers[HDR_MSG_ID]
            index = int(headers[HDR_PART])
            count = int(headers[HDR_PARTS])
        except (KeyError, ValueError):
            log.warning("malformed message part on %s dropped: %r", nmsg.subject, headers)
            return None
        if not (0 < count <= MAX_PARTS and 0 <= index < count):
            log.warning("message part %d/%d on %s dropped", index, count, nmsg.subject)
            return None
        if self.queue is not None:
            # A queue group spreads parts over its members, so no member could
            # reassemble them: drop the message loudly (once: part 0 goes to one member).
            if index == 0:
                log.error(
                    "message of %d parts on %s dropped: queue group %r cannot take payloads "
                    "over max_payload (see docs/bus.md)", count, nmsg.subject, self.queue,
                )
            return None
        partial = self.partials.get(msg_id)
        if partial is None:
            timer = asyncio.get_running_loop().call_later(PARTIAL_TTL_S, self._expire, msg_id)
            partial = _Partial(count=count, reply=nmsg.reply or None, timer=timer)
            self.partials[msg_id] = partial
        if index >= partial.count:
            log.warning("message part %d/%d on %s dropped", index, partial.count, nmsg.subject)
            return None
        partial.parts[index] = nmsg.data
        if len(partial.parts) < partial.count:
            return None
        del self.partials[msg_id]
        partial.timer.cancel()
        data = b"".join(partial.parts[i] for i in range(partial.count))
        return Msg(subject=nmsg.subject, data=data, reply=partial.reply)

    def _expire(self, msg_id: str) -> None:
        partial = self.partials.pop(msg_id, None)
        if partial is not None:
            log.warning("incomplete message on %s dropped: %d of %d parts after %.0fs",
                        self.subject, len(partial.parts), partial.count, PARTIAL_TTL_S)

    def deactivate(self) -> None:
        self.active = False
        for partial in self.partials.values():
            partial.timer.cancel()
        self.partials.clear()
        self.bus._subs.discard(self)

    async def unsubscribe(self) -> None:
        if not self.active:
            return
        self.deactivate()
        if self.nats_sub is not None:
            # Closed connection or subscription already gone: nothing left to stop.
            with contextlib.suppress(nats_errors.Error):
                await self.nats_sub.unsubscribe()


class _ReplyInbox(Subscription):
    """One inbox of NatsBus's reply mux: unsubscribing only forgets its callback."""

    def __init__(self, replies: dict[str, Callback], subject: str) -> None:
        self.replies, self.subject = replies, subject

    async def unsubscribe(self) -> None:
        self.replies.pop(self.subject, None)


class NatsBus(Bus):
    """A ``Bus`` on one NATS connection. Create it with ``await NatsBus.connect(...)``."""

    def __init__(self, on_state: Callable[[str], None] | None = None) -> None:
        self._nc = Client()
        self._on_state = on_state
        self._subs: set[_NatsSubscription] = set()
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._connected_once = False
        self._last_error: BaseException | None = None
        self._connection_errors = 0
        self._slow_logged: dict[int, float] = {}
        # The reply mux (see reply_inbox): inbox subject -> callback, under one wildcard
        # subscription made on first use.
        self._replies: dict[str, Callback] = {}
        self._reply_prefix: str | None = None
        self._reply_lock = asyncio.Lock()
        self._reply_seq = 0

    @classmethod
    async def connect(
        cls,
        servers: str | list[str],
        *,
        name: str | None = None,
        user_credentials: str | None = None,
        user: str | None = None,
        password: str | None = None,
        inbox_prefix: str | None = None,
        connect_timeout: float = 5.0,
        on_state: Callable[[str], None] | None = None,
    ) -> NatsBus:
        """Connect, or raise BusError after ``connect_timeout`` seconds.

        Once connected, the bus reconnects forever (every RECONNECT_WAIT_S) and
        resubscribes by itself; ``on_state`` hears "disconnected", "reconnected"
        and "closed".
        """
        bus = cls(on_state)
        try:
            # nats-py retries the first connect forever too (max_reconnect_attempts=-1),
            # so the overall deadline is ours.
            await asyncio.wait_for(
                bus._nc.connect(
                    servers=servers, name=name, user=user, password=password,
                    user_credentials=user_credentials, inbox_prefix=inbox_prefix or "_INBOX",
                    error_cb=bus._on_error, disconnected_cb=bus._on_disconnected,
                    reconnected_cb=bus._on_reconnected, closed_cb=bus._on_closed,
                    connect_timeout=connect_timeout, reconnect_time_wait=RECONNECT_WAIT_S,
                    max_reconnect_attempts=-1,
                ),
                connect_timeout,
            )
        except (TimeoutError, OSError, nats_errors.Error) as exc:
            bus._closing = True
            await bus._nc.close()  # stop the connect loop
            cause = bus._last_error or exc
            raise BusError(f"cannot connect to NATS at {servers}: {cause!r}") from exc
        bus._connection_errors = 0
        bus._connected_once = True
        return bus

    # --- the Bus interface --------------------------------------------------------

    @property
    def max_payload(self) -> int:
        """The largest single NATS message; larger payloads travel in parts."""
        return self._nc.max_payload

    @property
    def connected(self) -> bool:
        return self._nc.is_connected

    def new_inbox(self) -> str:
        # nats-py's inbox honours inbox_prefix, which permissions may require.
        return self._nc.new_inbox()

    async def publish(self, subject: str, data: bytes, reply: str | None = None) -> None:
        self._check_open()
        data = bytes(data)  # no copy for bytes; callers may reuse a bytearray
        limit = self._nc.max_payload
        # E.g. OutboundBufferLimitError: disconnected and the resend buffer is full.
        with _as_bus_errors(f"publish to {subject}"):
            if len(data) <= limit:
                await self._nc.publish(subject, data, reply=reply or "")
            else:
                await self._publish_parts(subject, data, reply, limit)

    async def _publish_parts(self, subject: str, data: bytes, reply: str | None,
                             limit: int) -> None:
        part_size = limit - HEADER_RESERVE
        if part_size <= 0:
            raise BusError(f"server max_payload {limit} is too small for message parts")
        count = -(-len(data) // part_size)
        msg_id = secrets.token_hex(16)
        for index in range(count):
            headers = {HDR_MSG_ID: msg_id, HDR_PART: str(index), HDR_PARTS: str(count)}
            part = data[index * part_size:(index + 1) * part_size]
            await self._nc.publish(subject, part, reply=reply or "", headers=headers)

    async def subscribe(
        self, subject: str, handler: Handler, queue: str | None = None
    ) -> Subscription:
        sub = await self._subscribe(subject, handler, queue)
        # A round trip, so the server knows the subscription when we return: then a
        # message published afterwards on another connection reaches it, as with LocalBus.
        await self._sync(SUBSCRIBE_FLUSH_S)
        return sub

    async def subscribe_inline(self, subject: str, callback: Callback) -> Subscription:
        sub = await self._subscribe(subject, None, None, inline=callback)
        await self._sync(SUBSCRIBE_FLUSH_S)
        return sub

    async def reply_inbox(self, callback: Callback) -> tuple[str, Subscription]:
        self._check_open()
        if self._reply_prefix is None:
            async with self._reply_lock:
                if self._reply_prefix is None:
                    prefix = self.new_inbox()  # random, and under the inbox_prefix
                    await self.subscribe_inline(f"{prefix}.*", self._on_reply)
                    self._reply_prefix = f"{prefix}."
        self._reply_seq += 1
        subject = f"{self._reply_prefix}{self._reply_seq}"
        self._replies[subject] = callback
        return subject, _ReplyInbox(self._replies, subject)

    def _on_reply(self, msg: Msg) -> None:
        callback = self._replies.get(msg.subject)
        if callback is not None:  # else: its inbox was closed, dropped as unsubscribed
            callback(msg)

    async def _sync(self, timeout: float) -> None:
        """Wait until the server has processed what this connection sent so far."""
        if not self._nc.is_connected:
            return  # nats-py resends subscriptions on reconnect
        with contextlib.suppress(nats_errors.Error, TimeoutError):
            # nats-py's flush() writes its PING straight to the socket, ahead of
            # commands still queued for its flusher task (our SUB): let those out first.
            await asyncio.wait_for(self._nc._flush_pending(force_flush=True), timeout)
            await self._nc.flush(timeout=timeout)

    async def _subscribe(
        self, subject: str, handler: Handler | None, queue: str | None,
        on_no_responders: Callable[[], None] | None = None, inline: Callback | None = None,
    ) -> _NatsSubscription:
        self._check_open()
        sub = _NatsSubscription(self, subject, handler, queue, on_no_responders, inline)
        with _as_bus_errors(f"subscribe to {subject}"):
            sub.nats_sub = await self._nc.subscribe(
                subject, queue=queue or "", cb=sub.on_message,
                pending_msgs_limit=PENDING_MSGS_LIMIT, pending_bytes_limit=PENDING_BYTES_LIMIT,
            )
        self._subs.add(sub)
        return sub

    async def stream(
        self, subject: str, data: bytes, first_timeout: float, idle_timeout: float
    ) -> AsyncIterator[bytes]:
        """As ``Bus.stream``, but "no responders" ends it at once with BusTimeout."""
        inbox = self.new_inbox()
        replies: asyncio.Queue[bytes | None] = asyncio.Queue()  # None: nobody listens

        async def on_reply(msg: Msg) -> None:
            replies.put_nowait(msg.data)

        sub = await self._subscribe(inbox, on_reply, None,
                                    on_no_responders=lambda: replies.put_nowait(None))
        try:
            await self.publish(subject, data, reply=inbox)
            timeout = first_timeout
            while True:
                try:
                    item = await asyncio.wait_for(replies.get(), timeout)
                except TimeoutError:
                    raise BusTimeout(f"no reply on {subject} within {timeout:.1f}s") from None
                if item is None:
                    raise BusTimeout(f"no responders on {subject}")
                yield item
                timeout = idle_timeout
        finally:
            await sub.unsubscribe()

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        for sub in list(self._subs):
            sub.deactivate()
        nc = self._nc
        if not nc.is_closed:
            await self._sync(CLOSE_FLUSH_S)  # what was published reaches the server
            await nc.close()
        running = self._handler_tasks - {asyncio.current_task()}
        if running:
            _, late = await asyncio.wait(running, timeout=HANDLER_GRACE_S)
            for task in late:
                task.cancel()

    def _check_open(self) -> None:
        if self._closing or self._nc.is_closed:
            raise BusClosed("bus is closed")

    # --- connection events (nats-py callbacks) -----------------------------------

    def _notify(self, state: str) -> None:
        try:
            if self._on_state is not None:
                self._on_state(state)
        except Exception:
            log.exception("bus on_state(%r) callback failed", state)

    async def _on_disconnected(self) -> None:
        if self._closing:
            return  # our own close(); _on_closed reports it
        log.warning("NATS connection lost; reconnecting every %.1fs", RECONNECT_WAIT_S)
        self._notify("disconnected")

    async def _on_reconnected(self) -> None:
        url = self._nc.connected_url
        where = f"{url.hostname}:{url.port}" if url is not None else "?"  # no credentials
        log.warning("NATS reconnected to %s", where)
        self._connection_errors = 0
        self._notify("reconnected")

    async def _on_closed(self) -> None:
        if not self._connected_once:
            return  # connect() failed and raised; nothing was open
        log.info("NATS connection closed")
        self._notify("closed")

    async def _on_error(self, exc: Exception) -> None:
        """Errors from nats-py are logged here, never raised to the caller."""
        self._last_error = exc
        if isinstance(exc, nats_errors.SlowConsumerError):
            now = time.monotonic()
            if now - self._slow_logged.get(exc.sid, 0.0) >= SLOW_CONSUMER_LOG_EVERY_S:
                self._slow_logged[exc.sid] = now
                log.warning("slow consumer on %s: its pending limit is full, NATS messages "
                            "were dropped", exc.subject)
            return
        if isinstance(exc, _CONNECTION_ERRORS) or not self._nc.is_connected:
            # A lost connection or a failed (re)connect attempt, which repeats every
            # RECONNECT_WAIT_S while the server is away: log the first one only.
            self._connection_errors += 1
            level = logging.WARNING if self._connection_errors == 1 else logging.DEBUG
            log.log(level, "NATS connection problem: %r", exc)
            return
        log.error("NATS error: %s", exc)  # e.g. a permissions violation
