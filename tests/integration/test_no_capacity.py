"""503 with Retry-After when a model is deployed but no instance is ready.

Real parts in one process: the in-process bus, the control plane on SQLite and the
gateway app, with no node joined yet.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from wattpool.bus import Msg
from wattpool.bus.nats import NatsBus
from wattpool.clock import SystemClock
from wattpool.control.registry import Registry
from wattpool.control.router import Router
from wattpool.gateway.dispatch import Dispatcher, DispatchTrace
from wattpool.gateway.errors import APIError
from wattpool.protocol import Hardware, Heartbeat, InstanceStatus
from wattpool.store import UsageWriter, list_usage

from gatewaytools import in_process_gateway
from natstools import NatsServer


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, UsageWriter]]:
    async with in_process_gateway(tmp_path) as gw:
        yield gw.client, gw.usage


async def test_no_ready_instance_is_503_with_retry_after(
    gateway: tuple[httpx.AsyncClient, UsageWriter],
) -> None:
    client, usage = gateway
    resp = await client.post("/v1/completions", json={"model": "m", "prompt": "hi"})
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "7"
    assert resp.json()["error"]["code"] == "no_capacity"
    assert (await client.get("/readyz")).status_code == 503
    await usage.flush()
    (record,) = list_usage(usage.engine, request_id=resp.headers["x-request-id"])
    assert (record.status, record.http_status) == ("error", 503)



async def test_requests_arriving_together_spread_over_instances() -> None:
    """The router counts a request against its instance before yielding to the loop.

    Over NATS, subscribing to a reply inbox waits on the network, so requests that
    arrive together interleave there; each must already see the others' load.
    """
    registry = Registry(clock=SystemClock(), heartbeat_timeout_s=60)
    registry.models["m"] = 128
    for node in ("a", "b", "c"):
        registry.record_heartbeat(Heartbeat(
            node_id=node, seq=1,
            hardware=Hardware(cpu_count=1, memory_total=1, memory_available=1),
            instances=[InstanceStatus(instance_id=f"i-{node}", model_id="m", state="ready")]))
    picked: list[str] = []

    async def node_that_never_answers(msg: Msg) -> None:
        picked.append(msg.subject.split(".")[3])

    with NatsServer() as server:
        bus = await NatsBus.connect(server.url)
        for node in ("a", "b", "c"):
            await bus.subscribe(f"wp.v1.node.{node}.infer", node_that_never_answers)
        dispatcher = Dispatcher(bus, Router(registry), attempts=1, ack_timeout_s=0.3,
                                first_token_timeout_s=1, idle_timeout_s=1, retry_after_s=1)

        async def one(i: int) -> None:
            with contextlib.suppress(APIError):
                async for _ in dispatcher.run(f"r{i}", "completion", "m", {"prompt": "x"},
                                              DispatchTrace()):
                    pass

        await asyncio.gather(*(one(i) for i in range(9)))
        await bus.close()
    assert sorted(picked) == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
