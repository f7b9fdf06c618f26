"""Composes the one-machine pool: gateway + control plane + one local node, one process.

``Pool`` owns the lifecycle: it starts the parts in dependency order and stops
them in reverse, so that every engine subprocess is gone when ``stop`` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Generator
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy.engine import Engine

from wattpool.bus import Bus
from wattpool.bus.local import LocalBus
from wattpool.clock import SystemClock
from wattpool.config import Settings
from wattpool.control.limits import Limiter, LocalLimiter, RedisLimiter
from wattpool.control.service import ControlPlane, Deployment
from wattpool.engines.models import default_model_id, estimate_memory_bytes
from wattpool.gateway.admission import AdmissionController
from wattpool.gateway.app import GatewayContext, create_app
from wattpool.gateway.dispatch import Dispatcher
from wattpool.gateway.metrics import GatewayMetrics
from wattpool.gateway.tenancy import Tenancy
from wattpool.node.agent import NodeAgent
from wattpool.store import UsageWriter, ledger, make_engine, migrate, tenants

log = logging.getLogger(__name__)


def default_deployment(settings: Settings) -> Deployment:
    """The one deployment of ``wattpool up``: the configured model on the local node."""
    model_id = settings.model_id or default_model_id(settings.model)
    if settings.engine == "synthetic" and not settings.model_id:
        model_id = "synthetic"  # never let fake tokens pass for the real model
    args: dict[str, str] = {}
    if settings.engine == "synthetic":
        args = {"ttft_s": str(settings.synthetic_ttft_s),
                "tokens_per_s": str(settings.synthetic_tokens_per_s)}
        memory = 64 * 2**20
    else:
        local = Path(settings.model).expanduser()
        memory = estimate_memory_bytes(local if local.is_file() else None,
                                       settings.context_length)
    return Deployment(
        deployment_id=f"dep_{model_id.replace('/', '_')}", model_id=model_id,
        engine=settings.engine, source=settings.model, context_length=settings.context_length,
        replicas=1, memory_bytes=memory, args=args,
    )


LOCAL_TENANT = "local"


def create_first_keys(db: Engine) -> tuple[str, str] | None:
    """On a pool's first start: tenant 'local' with an API key and an admin key."""
    if tenants.list_tenants(db):
        return None
    tenants.add_tenant(db, LOCAL_TENANT)
    api_key, _ = tenants.create_key(db, LOCAL_TENANT, name="first key")
    admin_key, _ = tenants.create_key(db, LOCAL_TENANT, name="admin", is_admin=True)
    return api_key, admin_key


class ListenError(Exception):
    """The gateway cannot listen where it was asked to."""


def bind_listener(host: str, port: int) -> socket.socket:
    """Bind the gateway's socket before anything else starts, so a taken port fails fast."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot resolve host {host!r}: {exc}") from None
    family, kind, proto, _, address = infos[0]
    # With proto given, asyncio sets TCP_NODELAY on accepted connections; without it
    # small SSE writes wait for the client's delayed ACK (~40 ms per streamed response).
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the pool handles SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def make_limiter(s: Settings) -> Limiter:
    """Redis when configured (exact across replicas), else limits per process."""
    if s.redis_url:
        return RedisLimiter(s.redis_url)
    return LocalLimiter()


def build_gateway(
    s: Settings, bus: Bus, control: ControlPlane, usage: UsageWriter, metrics: GatewayMetrics,
    db: Engine, limiter: Limiter,
) -> _Server:
    """The gateway (FastAPI on uvicorn) over a control plane's router."""
    router = control.router
    admission = AdmissionController(
        lambda model: router.ready_instances(model) * s.instance_slots,
        queue_timeout_s=s.queue_timeout_s, batch_queue_timeout_s=s.batch_queue_timeout_s,
        preemption=s.preemption,
    )
    dispatcher = Dispatcher(
        bus, router, attempts=s.dispatch_attempts,
        ack_timeout_s=s.ack_timeout_s, first_token_timeout_s=s.first_token_timeout_s,
        idle_timeout_s=s.idle_timeout_s, retry_after_s=s.retry_after_s, admission=admission,
        batch_price_ceiling=s.batch_price_ceiling, batch_deadline_s=s.batch_queue_timeout_s,
    )
    app = create_app(GatewayContext(
        router=control.router, dispatcher=dispatcher, usage=usage,
        metrics=metrics, max_body_bytes=s.max_body_bytes, is_leader=lambda: control.is_leader,
        tenancy=Tenancy(db, limiter, open_access=s.open_access), bus=bus,
    ))
    return _Server(uvicorn.Config(
        app, host=s.host, port=s.port, log_level="warning", access_log=False,
        lifespan="off", timeout_graceful_shutdown=5,
    ))


class GatewayService:
    """What `wattpool up` and `wattpool server` share: the listener, the database, a
    control plane, usage metering, limits and the gateway, started and stopped in order.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db: Engine | None = None
        self.bus: Bus | None = None
        self.control: ControlPlane | None = None
        self.usage: UsageWriter | None = None
        self.server: _Server | None = None
        self.listener: socket.socket | None = None
        self.limiter: Limiter | None = None
        self.metrics = GatewayMetrics()

    @property
    def port(self) -> int:
        assert self.listener is not None
        return int(self.listener.getsockname()[1])

    async def _open_state(self) -> Engine:
        """Bind the port first (a taken port fails fast), then the migrated database."""
        s = self.settings
        self.listener = bind_listener(s.host, s.port)
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = make_engine(s.resolved_database_url())
        await asyncio.to_thread(migrate, self.db)
        return self.db

    def _control_plane(self, deployments: list[Deployment], **options: Any) -> ControlPlane:
        s = self.settings
        assert self.bus is not None and self.db is not None
        return ControlPlane(
            self.bus, self.db, SystemClock(), deployments,
            heartbeat_interval_s=s.heartbeat_interval_s,
            heartbeat_timeout_s=s.heartbeat_timeout_s,
            reconcile_interval_s=s.reconcile_interval_s,
            audit_interval_s=s.audit_interval_s,
            route_slots=s.instance_slots,
            power_poll_s=s.power_poll_s,
            payout_policy=s.payout_policy(),
            ledger_interval_s=s.ledger_interval_s,
            **options,
        )

    async def _start_gateway(self) -> None:
        s = self.settings
        assert self.bus is not None and self.db is not None and self.control is not None
        policy, db = s.payout_policy(), self.db
        self.usage = UsageWriter(
            self.db, flush_interval_s=s.usage_flush_interval_s, batch_size=s.usage_batch_size,
            buffer_size=s.usage_buffer_size,
            charge=lambda batch: ledger.post_usage(db, batch, policy),
        )
        await self.usage.start()
        self.limiter = make_limiter(s)
        self.server = build_gateway(s, self.bus, self.control, self.usage, self.metrics,
                                    self.db, self.limiter)

    async def serve(self) -> None:
        """Serve HTTP until ``server.should_exit`` is set."""
        assert self.server is not None and self.listener is not None
        await self.server.serve(sockets=[self.listener])

    async def _control_stopped(self) -> None:
        """Hook between stopping the control plane and the rest."""

    async def stop(self) -> None:
        # Reverse order of start: nothing new comes in, then state.
        if self.control is not None:
            await self.control.stop()
            await self._control_stopped()
        if self.usage is not None:
            await self.usage.stop()
        if self.limiter is not None:
            await self.limiter.aclose()
        if self.bus is not None:
            await self.bus.close()
        if self.db is not None:
            self.db.dispose()
        if self.listener is not None:
            self.listener.close()


class Pool(GatewayService):
    """`wattpool up`: the service above, an in-process bus and one local node."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.deployment = default_deployment(settings)
        self.agent: NodeAgent | None = None
        # (API key, admin key) when this start created them; shown once, never stored.
        self.first_run_keys: tuple[str, str] | None = None

    @property
    def model_id(self) -> str:
        return self.deployment.model_id

    async def start(self) -> None:
        s = self.settings
        db = await self._open_state()
        self.bus = LocalBus()
        self.control = self._control_plane([self.deployment])
        await self.control.start()
        await self._start_gateway()
        self.agent = NodeAgent(
            self.bus, s.data_dir, name=s.node_name, threads=s.engine_threads,
            heartbeat_interval_s=s.heartbeat_interval_s,
            engine_start_timeout_s=s.engine_start_timeout_s,
            engine_restart_backoff_s=s.engine_restart_backoff_s,
            default_max_tokens=s.default_max_tokens, idle_timeout_s=s.idle_timeout_s,
        )
        await self.agent.start()
        if not s.open_access:
            self.first_run_keys = await asyncio.to_thread(create_first_keys, db)

    def instance_states(self) -> list[tuple[str, str, str | None]]:
        """(instance id, state, error) of every desired instance."""
        if self.control is None:
            return []
        return [(v.instance_id, v.state, v.error)
                for v in self.control.registry.instances.values()]

    async def stop(self) -> None:
        # The engines go first, so nothing is left running when state closes.
        if self.agent is not None:
            await self.agent.stop()
        await super().stop()

    async def _control_stopped(self) -> None:
        # The local node went down with us: say so for `wattpool status`.
        assert self.control is not None
        await asyncio.to_thread(self.control.record_shutdown)


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
