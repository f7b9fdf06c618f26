"""A node at a site: join the pool over NATS with a token, then serve.

First start: the node makes its own NATS key pair, connects with the token's
joiner credentials (which may only ask to join), and sends the token's secret and
its public key. The control plane answers with the node id and a NATS user JWT
for that key, allowing only the node's own subjects. The seed never leaves the
node. Later starts reuse the identity in ``<data_dir>/node/identity.json``.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from wattpool.bus.nats import NatsBus
from wattpool.config import Settings
from wattpool.control import natsauth
from wattpool.control.jointoken import JoinToken
from wattpool.node.agent import NodeAgent
from wattpool.node.probe import probe
from wattpool.protocol import JOIN, JoinReply, JoinRequest, decode, encode

log = logging.getLogger(__name__)


class NodeSetupError(Exception):
    """The node cannot join; the message tells the operator what to do."""


def _creds_file(folder: Path, jwt: str, seed: str, name: str) -> Path:
    path = folder / name
    path.touch(mode=0o600)
    path.write_text(natsauth.creds_text(jwt, seed))
    return path


class SiteNode:
    def __init__(self, settings: Settings, token: str | None) -> None:
        if not settings.nats_url:
            raise NodeSetupError("pass --nats nats://HOST:4222 (the pool's NATS)")
        self.settings = settings
        self.token = token
        self.engines = tuple(e.strip() for e in (settings.node_engines or "").split(",")
                             if e.strip())
        self.bus: NatsBus | None = None
        self.agent: NodeAgent | None = None

    @property
    def node_dir(self) -> Path:
        return self.settings.data_dir / "node"

    async def _first_join(self, agent_name: str) -> dict[str, str]:
        if not self.token:
            raise NodeSetupError("this node has not joined a pool yet: pass --token "
                                 "(from 'wattpool tokens create --site NAME')")
        token = JoinToken.decode(self.token)
        public_key, seed = natsauth.new_user_keypair()
        assert self.settings.nats_url is not None
        with tempfile.TemporaryDirectory() as tmp:
            creds = inbox = None
            if token.joiner is not None:
                creds = str(_creds_file(Path(tmp), token.joiner.jwt, token.joiner.seed,
                                        "joiner.creds"))
                inbox = f"_INBOX.{token.joiner.inbox}"
            bus = await NatsBus.connect(self.settings.nats_url, name=f"join:{agent_name}",
                                        user_credentials=creds, inbox_prefix=inbox)
            try:
                request = JoinRequest(name=agent_name, hardware=probe(), token=token.secret,
                                      public_key=public_key, engines=list(self.engines))
                raw = await bus.request(JOIN, encode(request), timeout=15.0)
            finally:
                await bus.close()
        reply = decode(raw, JoinReply)
        if not reply.accepted or not reply.node_id:
            raise NodeSetupError(f"the pool refused to join: {reply.error}")
        log.info("joined site %s as %s", reply.site, reply.node_id)
        identity = {"node_id": reply.node_id, "name": agent_name, "public_key": public_key,
                    "seed": seed, "nats_url": self.settings.nats_url}
        if reply.user_jwt:
            identity["jwt"] = reply.user_jwt
        return identity

    async def start(self) -> str:
        s = self.settings
        agent = NodeAgent(
            None,  # type: ignore[arg-type]  # the bus is attached below, once we know who we are
            s.data_dir, name=s.node_name, threads=s.engine_threads,
            heartbeat_interval_s=s.heartbeat_interval_s,
            engine_start_timeout_s=s.engine_start_timeout_s,
            engine_restart_backoff_s=s.engine_restart_backoff_s,
            default_max_tokens=s.default_max_tokens, idle_timeout_s=s.idle_timeout_s,
            engines=self.engines,
        )
        identity = agent.load_identity()
        if "seed" not in identity:
            identity = await self._first_join(agent.name)
            agent.save_identity(identity)
        agent.public_key = identity["public_key"]
        creds = None
        if identity.get("jwt"):
            creds = str(_creds_file(self.node_dir, identity["jwt"], identity["seed"],
                                    "node.creds"))
        assert s.nats_url is not None
        self.bus = await NatsBus.connect(
            s.nats_url, name=f"node:{identity['node_id']}", user_credentials=creds,
            inbox_prefix=natsauth.node_inbox_prefix(identity["node_id"]),
        )
        agent.bus = self.bus
        self.agent = agent
        await agent.start()
        assert agent.node_id is not None
        return agent.node_id

    async def stop(self) -> None:
        if self.agent is not None and self.agent.bus is not None:
            await self.agent.stop()
        if self.bus is not None:
            await self.bus.close()
