"""`wattpool server`: gateway + control plane as a service, for many machines.

Any number of replicas run against one database (PostgreSQL) and one NATS: all of
them serve HTTP and keep a live registry from heartbeats; the leader (advisory
lock) places instances and answers joins and heartbeats. Nodes join over NATS.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.engine import Engine

from wattpool.bus.nats import NatsBus
from wattpool.clock import SystemClock
from wattpool.config import Settings
from wattpool.control.leader import leadership_for
from wattpool.control.limits import Limiter
from wattpool.control.natsauth import NatsAuthority
from wattpool.control.service import ControlPlane, Deployment
from wattpool.gateway.metrics import GatewayMetrics
from wattpool.runtime import _Server, bind_listener, build_gateway, make_limiter
from wattpool.store import UsageWriter, make_engine, migrate

log = logging.getLogger(__name__)


class PoolServer:
    def __init__(self, settings: Settings, deployments: Sequence[Deployment]) -> None:
        if not settings.nats_url:
            raise ValueError("wattpool server needs --nats-url (the fleet bus)")
        self.settings = settings
        self.deployments = list(deployments)
        self.db: Engine | None = None
        self.bus: NatsBus | None = None
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

    async def start(self) -> None:
        s = self.settings
        self.listener = bind_listener(s.host, s.port)
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = make_engine(s.resolved_database_url())
        await asyncio.to_thread(migrate, self.db)
        creds = s.nats_file(s.nats_creds, "service.creds")
        authority_file = s.nats_file(s.nats_authority, "authority.json")
        assert s.nats_url is not None
        self.bus = await NatsBus.connect(
            s.nats_url, name="wattpool-server", user_credentials=str(creds) if creds else None,
        )
        issue = None
        if authority_file is not None:
            authority = NatsAuthority.load(authority_file)

            def issue(node_id: str, public_key: str) -> str:
                return authority.node_jwt(node_id, public_key)

        self.control = ControlPlane(
            self.bus, self.db, SystemClock(), self.deployments,
            heartbeat_interval_s=s.heartbeat_interval_s,
            heartbeat_timeout_s=s.heartbeat_timeout_s,
            reconcile_interval_s=s.reconcile_interval_s,
            audit_interval_s=s.audit_interval_s,
            replace_grace_s=s.replace_grace_s,
            leadership=leadership_for(self.db),
            trust_joins=False,
            issue_credentials=issue,
        )
        await self.control.start()
        self.usage = UsageWriter(
            self.db, flush_interval_s=s.usage_flush_interval_s, batch_size=s.usage_batch_size,
            buffer_size=s.usage_buffer_size,
        )
        await self.usage.start()
        self.limiter = make_limiter(s)
        self.server = build_gateway(s, self.bus, self.control, self.usage, self.metrics,
                                    self.db, self.limiter)

    async def serve(self) -> None:
        assert self.server is not None and self.listener is not None
        await self.server.serve(sockets=[self.listener])

    async def stop(self) -> None:
        if self.control is not None:
            await self.control.stop()
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


def write_nats_setup(data_dir: Path, host: str, port: int) -> dict[str, Path]:
    """Create the NATS authority, a nats-server config and the server's credentials."""
    folder = data_dir / "nats"
    folder.mkdir(parents=True, exist_ok=True)
    authority_path = folder / "authority.json"
    if authority_path.exists():
        authority = NatsAuthority.load(authority_path)
    else:
        authority = NatsAuthority.create()
        authority.save(authority_path)
    config_path = folder / "nats-server.conf"
    config_path.write_text(authority.server_config(port=port, host=host))
    creds_path = folder / "service.creds"
    _, creds = authority.service_creds()
    creds_path.write_text(creds)
    creds_path.chmod(0o600)
    return {"authority": authority_path, "config": config_path, "creds": creds_path}
