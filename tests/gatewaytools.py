"""An in-process gateway for tests: the control plane on SQLite, the in-process bus and
the gateway app behind an httpx client, with no node joined until a test adds one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from wattpool.bus.local import LocalBus
from wattpool.clock import SystemClock
from wattpool.control.service import ControlPlane, Deployment
from wattpool.gateway.app import GatewayContext, create_app
from wattpool.gateway.completions_asgi import CompletionsFront
from wattpool.gateway.dispatch import Dispatcher
from wattpool.gateway.metrics import GatewayMetrics
from wattpool.store import UsageWriter, list_usage, make_engine, migrate


@dataclass
class Gateway:
    front: CompletionsFront
    client: httpx.AsyncClient
    usage: UsageWriter
    metrics: GatewayMetrics
    dispatcher: Dispatcher

    async def record(self, request_id: str) -> Any:
        await self.usage.flush()
        (record,) = list_usage(self.usage.engine, request_id=request_id)
        return record

    def count(self, route: str, status: int) -> float:
        value = self.metrics.registry.get_sample_value(
            "wattpool_requests_total", {"route": route, "status": str(status)})
        return value or 0.0

    def in_flight(self, route: str) -> float:
        return self.metrics.registry.get_sample_value(
            "wattpool_requests_in_flight", {"route": route}) or 0.0


@asynccontextmanager
async def in_process_gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    """Model ``m`` deployed on the synthetic engine; a 10,000-byte body limit."""
    db = make_engine(f"sqlite:///{tmp_path / 'pool.db'}")
    migrate(db)
    bus = LocalBus()
    control = ControlPlane(
        bus, db, SystemClock(),
        [Deployment("dep_m", "m", "synthetic", "m", context_length=128, memory_bytes=1)],
        heartbeat_interval_s=1, heartbeat_timeout_s=3, reconcile_interval_s=1,
    )
    await control.start()
    usage = UsageWriter(db, flush_interval_s=0.05, batch_size=10, buffer_size=100)
    await usage.start()
    dispatcher = Dispatcher(bus, control.router, attempts=2, ack_timeout_s=0.5,
                            first_token_timeout_s=5, idle_timeout_s=5, retry_after_s=7)
    metrics = GatewayMetrics()
    front = create_app(GatewayContext(control.router, dispatcher, usage, metrics,
                                      max_body_bytes=10_000))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=front),
                                     base_url="http://gw") as client:
            yield Gateway(front, client, usage, metrics, dispatcher)
    finally:
        await usage.stop()
        await control.stop()
        await bus.close()
        db.dispose()
