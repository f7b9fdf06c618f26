"""The contract every ``wattpool.bus.Bus`` implementation passes.

Each test runs once per implementation in ``BUS_FACTORIES``. To add one (NATS, for
example), add a single ``("name", factory)`` entry to that list: the factory is an
async function that returns a connected, empty bus. Everything else is shared.

The tests only use the public ``Bus`` interface, and they never assume delivery is
instant: they wait (with a deadline) for what must arrive, and use a sentinel
message where they must show that something does *not* arrive.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from wattpool.bus import Bus, BusClosed, BusTimeout, Msg
from wattpool.bus.local import LocalBus
from wattpool.bus.nats import NatsBus
from wattpool.protocol import (
    DesiredState,
    Gpu,
    Hardware,
    Heartbeat,
    InstanceSpec,
    InstanceStatus,
    decode,
    encode,
    heartbeat_subject,
)

from natstools import LazyNatsServer

pytestmark = pytest.mark.timeout(30)

BusFactory = Callable[[], Awaitable[Bus]]


async def _local_bus() -> Bus:
    return LocalBus()


# One nats-server for this module, started by the first NATS test (or skipped
# without a nats-server binary, see tests/natstools.py).
_nats_server = LazyNatsServer()


@pytest.fixture(scope="module", autouse=True)
def _stop_nats_server() -> Iterator[None]:
    yield
    _nats_server.cleanup()


async def _nats_bus() -> Bus:
    return await NatsBus.connect(_nats_server.get().url, name="bus-contract")


# One entry per implementation.
BUS_FACTORIES: list[tuple[str, BusFactory]] = [
    ("local", _local_bus),
    ("nats", _nats_bus),
]

# How long to wait for something that must arrive, and how long to keep watching
# for something that must not.
ARRIVE_S = 5.0
QUIET_S = 0.2


@pytest.fixture(params=[factory for _, factory in BUS_FACTORIES],
                ids=[name for name, _ in BUS_FACTORIES])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    factory: BusFactory = request.param
    instance = await factory()
    try:
        yield instance
    finally:
        await instance.close()


class Collector:
    """A subscription handler that records every message it gets."""

    def __init__(self, fail_on: bytes | None = None) -> None:
        self.msgs: list[Msg] = []
        self.fail_on = fail_on
        self._changed = asyncio.Event()

    async def __call__(self, msg: Msg) -> None:
        self.msgs.append(msg)
        self._changed.set()
        if self.fail_on is not None and msg.data == self.fail_on:
            raise RuntimeError("handler failure on purpose")

    @property
    def data(self) -> list[bytes]:
        return [m.data for m in self.msgs]

    async def wait_for(self, count: int, timeout: float = ARRIVE_S) -> None:
        deadline = time.monotonic() + timeout
        while len(self.msgs) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"expected {count} message(s), got {len(self.msgs)}: {self.data[:10]!r}"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass


async def wait_total(collectors: list[Collector], count: int) -> None:
    deadline = time.monotonic() + ARRIVE_S
    while sum(len(c.msgs) for c in collectors) < count:
        if time.monotonic() > deadline:
            got = [len(c.msgs) for c in collectors]
            raise AssertionError(f"expected {count} messages in total, got {got}")
        await asyncio.sleep(0.01)


async def assert_no_more(bus: Bus, subject: str, gone: Collector, had: list[bytes]) -> None:
    """After ``gone`` unsubscribed: a message published now reaches a new subscriber
    (the sentinel: once it has the message, ``gone`` would have had it too) and not
    ``gone``, which still holds ``had``."""
    sentinel = Collector()
    await bus.subscribe(subject, sentinel)
    await bus.publish(subject, b"after")
    await sentinel.wait_for(1)
    await asyncio.sleep(QUIET_S)
    assert gone.data == had


async def responder(bus: Bus, subject: str, reply_with: Callable[[bytes], list[bytes]],
                    delay_s: float = 0.0) -> None:
    """Subscribe a handler that answers each request with the given replies."""

    async def on_request(msg: Msg) -> None:
        assert msg.reply is not None, "a request must carry a reply subject"
        for data in reply_with(msg.data):
            if delay_s:
                await asyncio.sleep(delay_s)
            await bus.publish(msg.reply, data)

    await bus.subscribe(subject, on_request)


# --- publish / subscribe ------------------------------------------------------


async def test_publish_reaches_matching_subscriber(bus: Bus) -> None:
    got = Collector()
    await bus.subscribe("a.b", got)
    await bus.publish("a.b", b"hello", reply="some.inbox")
    await got.wait_for(1)
    assert got.msgs[0].subject == "a.b"
    assert got.msgs[0].data == b"hello"
    assert got.msgs[0].reply == "some.inbox"


async def test_subscriber_does_not_get_other_subjects(bus: Bus) -> None:
    got = Collector()
    await bus.subscribe("a.b", got)
    await bus.publish("a.c", b"other")
    await bus.publish("a.b.c", b"longer")
    await bus.publish("a", b"shorter")
    await bus.publish("a.b", b"mine")
    await got.wait_for(1)
    await asyncio.sleep(QUIET_S)
    assert got.data == [b"mine"]


async def test_star_wildcard_matches_exactly_one_token(bus: Bus) -> None:
    got = Collector()
    await bus.subscribe("a.*", got)
    await bus.publish("a.b", b"1")
    await bus.publish("a.b.c", b"too long")  # `a.*` does not match a.b.c
    await bus.publish("a", b"too short")
    await bus.publish("x.b", b"other prefix")
    await bus.publish("a.z", b"2")
    await got.wait_for(2)
    await asyncio.sleep(QUIET_S)
    assert got.data == [b"1", b"2"]
    # The message carries the concrete subject, not the pattern.
    assert [m.subject for m in got.msgs] == ["a.b", "a.z"]


async def test_star_wildcard_in_the_middle(bus: Bus) -> None:
    got = Collector()
    await bus.subscribe("wp.*.infer", got)
    await bus.publish("wp.n1.infer", b"1")
    await bus.publish("wp.n1.cancel", b"no")
    await bus.publish("wp.n1.x.infer", b"no")
    await bus.publish("wp.n2.infer", b"2")
    await got.wait_for(2)
    await asyncio.sleep(QUIET_S)
    assert got.data == [b"1", b"2"]


async def test_gt_wildcard_matches_one_or_more_trailing_tokens(bus: Bus) -> None:
    got = Collector()
    await bus.subscribe("a.>", got)
    await bus.publish("a", b"no trailing token")  # `a.>` does not match a
    await bus.publish("b.c", b"other prefix")
    await bus.publish("a.b", b"1")
    await bus.publish("a.b.c", b"2")
    await bus.publish("a.b.c.d.e", b"3")
    await got.wait_for(3)
    await asyncio.sleep(QUIET_S)
    assert got.data == [b"1", b"2", b"3"]
    assert [m.subject for m in got.msgs] == ["a.b", "a.b.c", "a.b.c.d.e"]


async def test_publish_without_subscriber_does_not_fail(bus: Bus) -> None:
    await bus.publish("nobody.listens", b"x")
    await bus.publish("nobody.listens", b"x", reply="also.nobody")
    # The bus still works afterwards.
    got = Collector()
    await bus.subscribe("nobody.listens", got)
    await bus.publish("nobody.listens", b"now")
    await got.wait_for(1)
    assert got.data == [b"now"]


async def test_every_plain_subscriber_gets_every_message(bus: Bus) -> None:
    subs = [Collector() for _ in range(3)]
    for sub in subs:
        await bus.subscribe("fan.out", sub)
    wildcard = Collector()
    await bus.subscribe("fan.*", wildcard)
    sent = [f"m{i}".encode() for i in range(10)]
    for data in sent:
        await bus.publish("fan.out", data)
    for sub in [*subs, wildcard]:
        await sub.wait_for(len(sent))
    await asyncio.sleep(QUIET_S)
    for sub in [*subs, wildcard]:
        assert sub.data == sent


async def test_queue_group_delivers_each_message_to_exactly_one_member(bus: Bus) -> None:
    members = [Collector(), Collector()]
    for member in members:
        await bus.subscribe("work", member, queue="workers")
    sent = [str(i).encode() for i in range(100)]
    for data in sent:
        await bus.publish("work", data)
    await wait_total(members, 100)
    await asyncio.sleep(QUIET_S)
    got = [d for m in members for d in m.data]
    assert len(got) == 100  # nobody got a message twice
    assert sorted(got) == sorted(sent)  # and none was lost
    assert all(len(m.msgs) > 0 for m in members), [len(m.msgs) for m in members]


async def test_queue_group_and_plain_subscribers_coexist(bus: Bus) -> None:
    group_a = [Collector(), Collector(), Collector()]
    group_b = [Collector()]
    plain = Collector()
    for member in group_a:
        await bus.subscribe("jobs.new", member, queue="a")
    for member in group_b:
        await bus.subscribe("jobs.new", member, queue="b")
    await bus.subscribe("jobs.new", plain)
    sent = [str(i).encode() for i in range(30)]
    for data in sent:
        await bus.publish("jobs.new", data)
    await wait_total(group_a, 30)
    await wait_total(group_b, 30)
    await plain.wait_for(30)
    await asyncio.sleep(QUIET_S)
    # Each group as a whole gets every message once; plain subscribers get all.
    assert sorted(d for m in group_a for d in m.data) == sorted(sent)
    assert group_b[0].data == sent
    assert plain.data == sent


async def test_order_is_preserved_for_one_publisher(bus: Bus) -> None:
    got = Collector()
    await bus.subscribe("ordered", got)
    sent = [i.to_bytes(4, "big") for i in range(1000)]
    for data in sent:
        await bus.publish("ordered", data)
    await got.wait_for(1000)
    assert got.data == sent


async def test_unsubscribe_stops_deliveries(bus: Bus) -> None:
    gone = Collector()
    sub = await bus.subscribe("topic", gone)
    await bus.publish("topic", b"before")
    await gone.wait_for(1)
    await sub.unsubscribe()
    await assert_no_more(bus, "topic", gone, [b"before"])
    # Unsubscribing twice is harmless.
    await sub.unsubscribe()


async def test_unsubscribe_drops_messages_not_yet_handled(bus: Bus) -> None:
    release = asyncio.Event()
    handled: list[bytes] = []
    started = asyncio.Event()

    async def slow(msg: Msg) -> None:
        started.set()
        await release.wait()
        handled.append(msg.data)

    sub = await bus.subscribe("slow", slow)
    await bus.publish("slow", b"first")
    await bus.publish("slow", b"second")
    await asyncio.wait_for(started.wait(), ARRIVE_S)
    await sub.unsubscribe()  # "second" was published but is not handled yet
    release.set()
    await asyncio.sleep(QUIET_S)
    assert b"second" not in handled


async def test_failing_handler_does_not_stop_later_deliveries(bus: Bus) -> None:
    got = Collector(fail_on=b"boom")
    await bus.subscribe("fragile", got)
    await bus.publish("fragile", b"1")
    await bus.publish("fragile", b"boom")
    await bus.publish("fragile", b"2")
    await got.wait_for(3)
    await bus.publish("fragile", b"3")
    await got.wait_for(4)
    assert got.data == [b"1", b"boom", b"2", b"3"]


# --- inline subscriptions (callbacks that never await) ---------------------


class InlineCollector(Collector):
    def __call__(self, msg: Msg) -> None:  # type: ignore[override]
        self.msgs.append(msg)
        self._changed.set()
        if self.fail_on is not None and msg.data == self.fail_on:
            raise RuntimeError("callback failure on purpose")


async def test_inline_subscription_gets_every_message_in_order(bus: Bus) -> None:
    got, plain = InlineCollector(), Collector()
    await bus.subscribe_inline("inline.ordered", got)
    await bus.subscribe("inline.*", plain)
    sent = [i.to_bytes(4, "big") for i in range(500)]
    for data in sent:
        await bus.publish("inline.ordered", data, reply="_INBOX.r")
    await got.wait_for(500)
    await plain.wait_for(500)
    assert got.data == sent == plain.data
    assert {m.reply for m in got.msgs} == {"_INBOX.r"}
    assert {m.subject for m in got.msgs} == {"inline.ordered"}


async def test_inline_subscription_survives_a_failing_callback_and_unsubscribes(
    bus: Bus,
) -> None:
    got = InlineCollector(fail_on=b"boom")
    sub = await bus.subscribe_inline("inline.fragile", got)
    for data in (b"1", b"boom", b"2"):
        await bus.publish("inline.fragile", data)
    await got.wait_for(3)
    assert got.data == [b"1", b"boom", b"2"]
    await sub.unsubscribe()
    await assert_no_more(bus, "inline.fragile", got, [b"1", b"boom", b"2"])
    await sub.unsubscribe()  # twice is harmless


async def test_reply_inboxes_get_their_own_replies_until_closed(bus: Bus) -> None:
    await responder(bus, "svc.three", lambda data: [data + b"." + bytes([48 + i])
                                                    for i in range(3)])
    first, second = InlineCollector(), InlineCollector()
    inbox_1, sub_1 = await bus.reply_inbox(first)
    inbox_2, sub_2 = await bus.reply_inbox(second)
    assert inbox_1 != inbox_2
    await bus.publish("svc.three", b"a", reply=inbox_1)
    await bus.publish("svc.three", b"b", reply=inbox_2)
    await first.wait_for(3)
    await second.wait_for(3)
    assert first.data == [b"a.0", b"a.1", b"a.2"]
    assert second.data == [b"b.0", b"b.1", b"b.2"]
    assert {m.subject for m in first.msgs} == {inbox_1}
    await sub_1.unsubscribe()
    await bus.publish(inbox_1, b"late")  # closed: dropped
    await bus.publish(inbox_2, b"still")  # the sentinel: sent after, so it arrives after
    await second.wait_for(4)
    await asyncio.sleep(QUIET_S)
    assert len(first.msgs) == 3 and second.data[-1] == b"still"
    await sub_1.unsubscribe()  # twice is harmless
    await sub_2.unsubscribe()


async def test_one_mib_payload_arrives_intact(bus: Bus) -> None:
    payload = os.urandom(1024 * 1024)
    got = Collector()
    await bus.subscribe("big", got)
    await bus.publish("big", payload)
    await got.wait_for(1)
    assert len(got.data[0]) == len(payload)
    assert got.data[0] == payload


async def test_published_bytes_are_not_shared_with_the_publisher(bus: Bus) -> None:
    got = Collector()
    await bus.subscribe("copy", got)
    buf = bytearray(b"original")
    await bus.publish("copy", buf)  # type: ignore[arg-type]  # bytes-like
    buf[:] = b"changed!"
    await got.wait_for(1)
    assert got.data == [b"original"]
    assert isinstance(got.data[0], bytes)


# --- request / reply and streams ------------------------------------------------


async def test_request_gets_the_reply(bus: Bus) -> None:
    await responder(bus, "svc.echo", lambda data: [b"echo:" + data])
    reply = await bus.request("svc.echo", b"ping", timeout=ARRIVE_S)
    assert reply == b"echo:ping"


async def test_request_returns_the_first_of_several_replies(bus: Bus) -> None:
    await responder(bus, "svc.chatty", lambda data: [b"first", b"second"])
    assert await bus.request("svc.chatty", b"", timeout=ARRIVE_S) == b"first"
    # The bus is still usable afterwards, and the late second reply goes nowhere.
    assert await bus.request("svc.chatty", b"", timeout=ARRIVE_S) == b"first"


async def test_request_to_a_queue_group_is_answered_once(bus: Bus) -> None:
    calls: list[bytes] = []

    async def member(msg: Msg) -> None:
        calls.append(msg.data)
        assert msg.reply is not None
        await bus.publish(msg.reply, b"done")

    await bus.subscribe("svc.grouped", member, queue="g")
    await bus.subscribe("svc.grouped", member, queue="g")
    for i in range(4):
        assert await bus.request("svc.grouped", str(i).encode(), timeout=ARRIVE_S) == b"done"
    assert sorted(calls) == [b"0", b"1", b"2", b"3"]


async def test_concurrent_requests_get_their_own_replies(bus: Bus) -> None:
    await responder(bus, "svc.double", lambda data: [str(int(data) * 2).encode()])
    replies = await asyncio.gather(
        *(bus.request("svc.double", str(i).encode(), timeout=ARRIVE_S) for i in range(20))
    )
    assert replies == [str(i * 2).encode() for i in range(20)]


async def test_request_without_responder_times_out(bus: Bus) -> None:
    timeout = 0.3
    start = time.monotonic()
    with pytest.raises(BusTimeout):
        await bus.request("svc.nobody", b"hello?", timeout=timeout)
    elapsed = time.monotonic() - start
    # An implementation may give up early (NATS "no responders"), never much late.
    assert elapsed < timeout + 1.0, elapsed


async def test_request_with_slow_responder_times_out(bus: Bus) -> None:
    await responder(bus, "svc.slow", lambda data: [b"late"], delay_s=0.6)
    start = time.monotonic()
    with pytest.raises(BusTimeout):
        await bus.request("svc.slow", b"", timeout=0.2)
    elapsed = time.monotonic() - start
    assert 0.15 <= elapsed < 0.55, elapsed


async def test_stream_yields_replies_in_order_then_times_out_when_idle(bus: Bus) -> None:
    await responder(bus, "svc.count", lambda data: [str(i).encode() for i in range(5)])
    received: list[bytes] = []
    idle_timeout = 0.3
    last = time.monotonic()
    with pytest.raises(BusTimeout):
        async for item in bus.stream(
            "svc.count", b"", first_timeout=ARRIVE_S, idle_timeout=idle_timeout
        ):
            received.append(item)
            last = time.monotonic()
    silence = time.monotonic() - last
    assert received == [b"0", b"1", b"2", b"3", b"4"]
    assert idle_timeout * 0.8 <= silence < idle_timeout + 1.0, silence


async def test_stream_idle_timeout_applies_between_replies(bus: Bus) -> None:
    # Replies 0.1 s apart: well inside a 1 s idle timeout, so all arrive.
    await responder(bus, "svc.drip", lambda data: [b"a", b"b", b"c"], delay_s=0.1)
    received: list[bytes] = []
    with pytest.raises(BusTimeout):
        async for item in bus.stream("svc.drip", b"", first_timeout=ARRIVE_S, idle_timeout=0.5):
            received.append(item)
    assert received == [b"a", b"b", b"c"]


async def test_stream_first_timeout(bus: Bus) -> None:
    start = time.monotonic()
    with pytest.raises(BusTimeout):
        async for _ in bus.stream("svc.silent", b"", first_timeout=0.2, idle_timeout=10.0):
            pytest.fail("no reply was sent")
    assert time.monotonic() - start < 1.5


async def test_stream_caller_can_stop_early(bus: Bus) -> None:
    await responder(bus, "svc.many", lambda data: [str(i).encode() for i in range(10)])
    received: list[bytes] = []
    stream = bus.stream("svc.many", b"", first_timeout=ARRIVE_S, idle_timeout=ARRIVE_S)
    async for item in stream:
        received.append(item)
        if len(received) == 3:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    assert received == [b"0", b"1", b"2"]
    # The bus keeps working.
    assert await bus.request("svc.many", b"", timeout=ARRIVE_S) == b"0"


# --- close ---------------------------------------------------------------------


async def test_publish_after_close_raises_bus_closed(bus: Bus) -> None:
    await bus.close()
    with pytest.raises(BusClosed):
        await bus.publish("anything", b"x")


async def test_subscribe_after_close_raises_bus_closed(bus: Bus) -> None:
    await bus.close()

    async def handler(msg: Msg) -> None:  # pragma: no cover - never called
        pass

    with pytest.raises(BusClosed):
        await bus.subscribe("anything", handler)


async def test_close_is_idempotent(bus: Bus) -> None:
    got = Collector()
    await bus.subscribe("x", got)
    await bus.close()
    await bus.close()


# --- the real protocol over the bus --------------------------------------------


def _heartbeat() -> Heartbeat:
    return Heartbeat(
        node_id="node-1",
        seq=7,
        hardware=Hardware(
            cpu_count=16,
            memory_total=64 * 2**30,
            memory_available=48 * 2**30,
            gpus=[Gpu(index=0, name="H200", memory_total=141 * 2**30, memory_used=2**30,
                      power_watts=312.5)],
        ),
        instances=[
            InstanceStatus(instance_id="inst-1", model_id="m", state="ready", in_flight=2,
                           context_length=4096),
        ],
        in_flight=2,
    )


async def test_heartbeat_request_gets_desired_state(bus: Bus) -> None:
    seen: list[Heartbeat] = []

    async def control_plane(msg: Msg) -> None:
        beat = decode(msg.data, Heartbeat)
        seen.append(beat)
        reply = DesiredState(
            node_id=beat.node_id,
            instances=[
                InstanceSpec(instance_id=s.instance_id, model_id=s.model_id,
                             engine="synthetic", source="synthetic:tiny",
                             args={"seed": str(beat.seq)})
                for s in beat.instances
            ],
        )
        assert msg.reply is not None
        await bus.publish(msg.reply, encode(reply))

    await bus.subscribe("wp.v1.hb.*", control_plane, queue="control")
    beat = _heartbeat()
    data = await bus.request(heartbeat_subject(beat.node_id), encode(beat), timeout=ARRIVE_S)
    desired = decode(data, DesiredState)

    assert seen == [beat]  # the control plane decoded exactly what was sent
    assert desired.node_id == "node-1"
    assert desired.known is True
    assert desired.v == 1
    assert desired.instances == [
        InstanceSpec(instance_id="inst-1", model_id="m", engine="synthetic",
                     source="synthetic:tiny", args={"seed": "7"})
    ]
