"""What only the NATS bus has: payloads over max_payload, reconnects, permissions.

The shared contract (test_bus_contract.py) runs on NATS too; these tests cover
behaviour that needs a real server: message parts (docs/bus.md), a server
restart, connection options and server-side errors.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from wattpool.bus import BusClosed, BusError, BusTimeout, Msg
from wattpool.bus import nats as nats_bus
from wattpool.bus.nats import HEADER_RESERVE, NatsBus

from natstools import NatsServer, free_port, serve

pytestmark = pytest.mark.timeout(60)

FIVE_MIB = 5 * 1024 * 1024
SMALL_MAX_PAYLOAD = 64 * 1024
ARRIVE_S = 10.0


@pytest.fixture(scope="module", params=[None, SMALL_MAX_PAYLOAD], ids=["1MiB", "64KiB"])
def server(request: pytest.FixtureRequest) -> Iterator[NatsServer]:
    """A server with the default max_payload (1 MiB) and one with 64 KiB."""
    yield from serve(max_payload=request.param)


@pytest.fixture
async def buses(server: NatsServer) -> AsyncIterator[tuple[NatsBus, NatsBus]]:
    """Two connections, so messages really cross the server."""
    a = await NatsBus.connect(server.url, name="a")
    b = await NatsBus.connect(server.url, name="b")
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


class Inbox:
    def __init__(self) -> None:
        self.msgs: list[Msg] = []
        self.changed = asyncio.Event()

    async def __call__(self, msg: Msg) -> None:
        self.msgs.append(msg)
        self.changed.set()

    async def wait_for(self, count: int, timeout: float = ARRIVE_S) -> None:
        async with asyncio.timeout(timeout):
            while len(self.msgs) < count:
                self.changed.clear()
                await self.changed.wait()


async def until(predicate: Callable[[], object], timeout: float = ARRIVE_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_subscribe_is_in_force_for_other_connections_on_return(
    buses: tuple[NatsBus, NatsBus],
) -> None:
    """As with LocalBus, a message published after subscribe returns reaches it, even
    from another connection (NATS needs a round trip for that)."""
    a, b = buses
    for i in range(200):
        got = Inbox()
        sub = await a.subscribe(f"fresh.{i}", got)
        await b.publish(f"fresh.{i}", b"x")
        await got.wait_for(1)
        await sub.unsubscribe()


# --- payloads over max_payload -------------------------------------------------


async def test_server_max_payload_is_known(buses: tuple[NatsBus, NatsBus],
                                           server: NatsServer) -> None:
    a, _ = buses
    expected = SMALL_MAX_PAYLOAD if server.config is not None else 1024 * 1024
    assert a.max_payload == expected


async def test_five_mib_through_publish_subscribe(buses: tuple[NatsBus, NatsBus]) -> None:
    a, b = buses
    exact, wildcard = Inbox(), Inbox()
    await a.subscribe("blob.put", exact)
    await a.subscribe("blob.*", wildcard)
    payload = os.urandom(FIVE_MIB)
    await b.publish("blob.put", payload, reply="blob.done")
    await b.publish("blob.put", b"small after big")
    await exact.wait_for(2)
    await wildcard.wait_for(2)
    for inbox in (exact, wildcard):
        assert [len(m.data) for m in inbox.msgs] == [FIVE_MIB, len(b"small after big")]
        assert inbox.msgs[0].data == payload  # one handler call with the whole payload
        assert inbox.msgs[0].subject == "blob.put"
        assert inbox.msgs[0].reply == "blob.done"
        assert inbox.msgs[1].reply is None
    assert all(not s.partials for s in a._subs)  # nothing left behind


async def test_sizes_around_the_limit(buses: tuple[NatsBus, NatsBus]) -> None:
    a, b = buses
    limit = a.max_payload
    part = limit - HEADER_RESERVE
    sizes = [0, 1, part, limit, limit + 1, 2 * part, 2 * part + 1, 3 * limit]
    got = Inbox()
    await a.subscribe("edge", got)
    payloads = [os.urandom(n) for n in sizes]
    for payload in payloads:
        await b.publish("edge", payload)
    await got.wait_for(len(sizes))
    assert [m.data for m in got.msgs] == payloads  # intact and in order


async def test_concurrent_large_publishes_do_not_mix(buses: tuple[NatsBus, NatsBus]) -> None:
    a, b = buses
    got = Inbox()
    await a.subscribe("mix", got)
    payloads = [os.urandom(2 * 1024 * 1024 + i) for i in range(4)]
    # Parts of different messages interleave on the wire; the ids keep them apart.
    await asyncio.gather(*(b.publish("mix", p) for p in payloads),
                         *(a.publish("mix", p) for p in payloads))
    await got.wait_for(8)
    assert sorted(m.data for m in got.msgs) == sorted(payloads * 2)


async def test_five_mib_request_and_stream_replies(buses: tuple[NatsBus, NatsBus]) -> None:
    a, b = buses
    request = os.urandom(FIVE_MIB)
    replies = [os.urandom(FIVE_MIB), b"tiny", os.urandom(FIVE_MIB + 7)]

    async def responder(msg: Msg) -> None:
        assert msg.reply is not None
        assert msg.data == request
        for reply in replies:
            await a.publish(msg.reply, reply)

    await a.subscribe("svc.big", responder)
    got: list[bytes] = []
    with pytest.raises(BusTimeout):
        async for item in b.stream("svc.big", request, first_timeout=ARRIVE_S,
                                   idle_timeout=2.0):
            got.append(item)
    assert got == replies
    assert await b.request("svc.big", request, timeout=ARRIVE_S) == replies[0]


async def test_queue_group_drops_large_messages_loudly(
    buses: tuple[NatsBus, NatsBus], caplog: pytest.LogCaptureFixture
) -> None:
    """Parts would be spread over the group's members: dropped, with an error log."""
    a, b = buses
    members = [Inbox(), Inbox()]
    for member in members:
        await a.subscribe("jobs", member, queue="workers")
    plain = Inbox()
    await b.subscribe("jobs", plain)
    payload = os.urandom(3 * a.max_payload)
    with caplog.at_level(logging.ERROR, logger="wattpool.bus.nats"):
        await b.publish("jobs", payload)
        await b.publish("jobs", b"small")
        await plain.wait_for(2)
        await until(lambda: sum(len(m.msgs) for m in members) == 1)
        await asyncio.sleep(0.2)
    assert plain.msgs[0].data == payload  # plain subscribers still get it whole
    assert [m.data for member in members for m in member.msgs] == [b"small"]
    errors = [r for r in caplog.records if "queue group 'workers'" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in caplog.records]


async def test_incomplete_part_sets_expire(
    buses: tuple[NatsBus, NatsBus], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = buses
    monkeypatch.setattr(nats_bus, "PARTIAL_TTL_S", 0.2)
    got = Inbox()
    sub = await a.subscribe("lossy", got)
    # Part 0 of 2 only, as if the rest were lost.
    headers = {"Wp-Msg-Id": "lost", "Wp-Part": "0", "Wp-Parts": "2"}
    with caplog.at_level(logging.WARNING, logger="wattpool.bus.nats"):
        await b._nc.publish("lossy", b"half", headers=headers)
        await until(lambda: "lost" in sub.partials)  # type: ignore[attr-defined]
        await until(lambda: not sub.partials)  # type: ignore[attr-defined]
    assert any("incomplete message on lossy" in r.getMessage() for r in caplog.records)
    await b.publish("lossy", b"next")
    await got.wait_for(1)
    assert [m.data for m in got.msgs] == [b"next"]


# --- reconnect -------------------------------------------------------------------


@pytest.fixture
def own_server() -> Iterator[NatsServer]:
    yield from serve()


async def test_subscription_and_request_survive_a_server_restart(
    own_server: NatsServer,
) -> None:
    states: dict[str, list[str]] = {"a": [], "b": []}
    a = await NatsBus.connect(own_server.url, name="a", on_state=states["a"].append)
    b = await NatsBus.connect(own_server.url, name="b", on_state=states["b"].append)
    try:
        ticks = Inbox()
        await a.subscribe("tick", ticks)

        async def echo(msg: Msg) -> None:
            assert msg.reply is not None
            await a.publish(msg.reply, b"echo:" + msg.data)

        await a.subscribe("svc.echo", echo)
        await b.publish("tick", b"before")
        await ticks.wait_for(1)

        own_server.restart()
        restarted = time.monotonic()
        await until(lambda: states["a"] == states["b"] == ["disconnected", "reconnected"])
        assert a.connected and b.connected
        # The subscriptions were renewed on the new server.
        await b.publish("tick", b"after")
        await ticks.wait_for(2)
        assert [m.data for m in ticks.msgs] == [b"before", b"after"]
        while True:
            try:
                assert await b.request("svc.echo", b"hi", timeout=0.5) == b"echo:hi"
                break
            except BusTimeout:
                assert time.monotonic() - restarted < 5.0, "request failed after restart"
        assert time.monotonic() - restarted < 5.0
    finally:
        await a.close()
        await b.close()
    assert states["a"][-1] == "closed"


async def test_close_twice_then_bus_closed(own_server: NatsServer) -> None:
    states: list[str] = []
    bus = await NatsBus.connect(own_server.url, on_state=states.append)
    await bus.subscribe("x", Inbox())
    await bus.close()
    await bus.close()
    assert states == ["closed"]
    with pytest.raises(BusClosed):
        await bus.publish("x", b"1")
    with pytest.raises(BusClosed):
        await bus.request("x", b"1", timeout=0.5)


async def test_close_while_the_server_is_down(own_server: NatsServer) -> None:
    states: list[str] = []
    bus = await NatsBus.connect(own_server.url, on_state=states.append)
    own_server.stop()
    await until(lambda: states == ["disconnected"])
    start = time.monotonic()
    await bus.close()  # stops the reconnect loop without waiting for a server
    assert time.monotonic() - start < 2.0
    assert states == ["disconnected", "closed"]


async def test_unsubscribe_lets_the_running_handler_finish(own_server: NatsServer) -> None:
    """As with LocalBus: unsubscribe (even from inside the handler) drops queued
    messages but does not cancel the handler that is running."""
    bus = await NatsBus.connect(own_server.url)
    try:
        finished: list[bytes] = []
        subs = []

        async def once(msg: Msg) -> None:
            await subs[0].unsubscribe()
            await asyncio.sleep(0.05)
            finished.append(msg.data)

        subs.append(await bus.subscribe("once", once))
        await bus.publish("once", b"1")
        await bus.publish("once", b"2")
        await until(lambda: finished)
        await asyncio.sleep(0.2)
        assert finished == [b"1"]
    finally:
        await bus.close()


async def test_connect_fails_with_bus_error_in_time() -> None:
    port = free_port()  # nobody listens there
    start = time.monotonic()
    with pytest.raises(BusError, match="cannot connect"):
        await NatsBus.connect(f"nats://127.0.0.1:{port}", connect_timeout=1.0)
    assert time.monotonic() - start < 3.0


# --- inbox prefix and permissions ----------------------------------------------


@pytest.fixture
def secured_server(tmp_path: Path) -> Iterator[NatsServer]:
    """User `node` may only use `ok.>` and replies under `_INBOX_node.>`."""
    config = tmp_path / "auth.conf"
    config.write_text("""
authorization {
  users = [
    {user: "node", password: "pw", permissions: {
      publish: {allow: ["ok.>", "_INBOX_node.>"]},
      subscribe: {allow: ["ok.>", "_INBOX_node.>"]}
    }}
  ]
}
""")
    server = NatsServer(config=config)
    with server:
        yield server


async def test_inbox_prefix_and_permission_errors(
    secured_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    bus = await NatsBus.connect(secured_server.url, user="node", password="pw",
                                inbox_prefix="_INBOX_node")
    try:
        assert bus.new_inbox().startswith("_INBOX_node.")

        async def echo(msg: Msg) -> None:
            assert msg.reply is not None
            await bus.publish(msg.reply, msg.data)

        await bus.subscribe("ok.echo", echo)
        # The request's inbox is allowed only because it honours the prefix.
        assert await bus.request("ok.echo", b"hi", timeout=ARRIVE_S) == b"hi"
        with caplog.at_level(logging.ERROR, logger="wattpool.bus.nats"):
            await bus.publish("forbidden.subject", b"x")  # the server refuses: logged
            await until(lambda: any("ermissions" in r.getMessage() for r in caplog.records))
        # Still connected and working.
        assert await bus.request("ok.echo", b"again", timeout=ARRIVE_S) == b"again"
    finally:
        await bus.close()


async def test_bad_credentials_fail_to_connect(secured_server: NatsServer) -> None:
    with pytest.raises(BusError, match="cannot connect"):
        await NatsBus.connect(secured_server.url, user="node", password="wrong",
                              connect_timeout=1.5)
