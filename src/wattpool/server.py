"""`wattpool server`: gateway + control plane as a service, for many machines.

Any number of replicas run against one database (PostgreSQL) and one NATS: all of
them serve HTTP and keep a live registry from heartbeats; the leader (advisory
lock) places instances and answers joins and heartbeats. Nodes join over NATS.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from wattpool.bus.nats import NatsBus
from wattpool.config import Settings
from wattpool.control.leader import leadership_for
from wattpool.control.natsauth import NatsAuthority
from wattpool.control.service import Deployment
from wattpool.runtime import GatewayService

log = logging.getLogger(__name__)


class PoolServer(GatewayService):
    def __init__(self, settings: Settings, deployments: Sequence[Deployment]) -> None:
        if not settings.nats_url:
            raise ValueError("wattpool server needs --nats-url (the fleet bus)")
        super().__init__(settings)
        self.deployments = list(deployments)

    async def start(self) -> None:
        s = self.settings
        db = await self._open_state()
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

        self.control = self._control_plane(
            self.deployments, replace_grace_s=s.replace_grace_s,
            leadership=leadership_for(db), trust_joins=False, issue_credentials=issue,
        )
        await self.control.start()
        await self._start_gateway()


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
