"""The node agent: joins the pool, heartbeats, runs what the control plane wants.

The agent only dials out: it sends join and heartbeat requests and serves the
inference subject of its own node id. Each heartbeat reply carries the whole
desired state, so a lost message is healed by the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from pathlib import Path

from wattpool.bus import Bus, BusError, Msg, Subscription
from wattpool.node.bridge import InferBridge
from wattpool.node.probe import probe
from wattpool.node.supervisor import Supervisor
from wattpool.protocol import (
    JOIN,
    DesiredState,
    Heartbeat,
    JoinReply,
    JoinRequest,
    decode,
    encode,
    heartbeat_subject,
)

log = logging.getLogger(__name__)


class JoinRefused(Exception):
    pass


class NodeAgent:
    def __init__(
        self,
        bus: Bus,
        data_dir: Path,
        *,
        name: str | None = None,
        token: str | None = None,
        threads: int | None = None,
        heartbeat_interval_s: float = 2.0,
        engine_start_timeout_s: float = 300.0,
        engine_restart_backoff_s: float = 1.0,
        default_max_tokens: int = 256,
        idle_timeout_s: float = 60.0,
        public_key: str | None = None,
        engines: tuple[str, ...] = (),
    ) -> None:
        self.bus = bus
        self.data_dir = data_dir
        self.name = name or socket.gethostname()
        self.token = token
        self.heartbeat_interval_s = heartbeat_interval_s
        self.default_max_tokens = default_max_tokens
        self.idle_timeout_s = idle_timeout_s
        self.public_key = public_key
        self.engines = engines
        self.node_id: str | None = None
        self.supervisor = Supervisor(
            data_dir, threads, engine_start_timeout_s, engine_restart_backoff_s, self._poke
        )
        self.bridge: InferBridge | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._seq = 0
        self._applied_seq = 0
        self._reply_inbox = ""
        self._reply_sub: Subscription | None = None
        self._last_answer = time.monotonic()
        self._warned_silent = False
        self.power_state = "on"

    @property
    def identity_file(self) -> Path:
        return self.data_dir / "node" / "identity.json"

    def _poke(self) -> None:
        """Send a heartbeat now: an instance changed state."""
        self._wake.set()

    def load_identity(self) -> dict[str, str]:
        if self.identity_file.exists():
            return dict(json.loads(self.identity_file.read_text()))
        return {}

    def save_identity(self, identity: dict[str, str]) -> None:
        """The identity may hold the node's NATS seed: readable by its owner only."""
        self.identity_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.identity_file.with_suffix(".tmp")
        tmp.touch(mode=0o600)
        tmp.write_text(json.dumps(identity, indent=2))
        tmp.replace(self.identity_file)

    async def join(self) -> str:
        identity = self.load_identity()
        request = JoinRequest(
            name=self.name, hardware=probe(), token=self.token,
            node_id=identity.get("node_id"), public_key=self.public_key,
            engines=list(self.engines),
        )
        reply = decode(await self.bus.request(JOIN, encode(request), timeout=10.0), JoinReply)
        if not reply.accepted or not reply.node_id:
            raise JoinRefused(reply.error or "join refused")
        identity.update(node_id=reply.node_id, name=self.name)
        if reply.user_jwt:
            identity["jwt"] = reply.user_jwt
        self.save_identity(identity)
        self.heartbeat_interval_s = reply.heartbeat_interval_s or self.heartbeat_interval_s
        log.info("joined the pool as %s (%s)", reply.node_id, self.name)
        return reply.node_id

    async def start(self) -> None:
        self.node_id = await self.join_with_retry()
        self.bridge = InferBridge(
            self.bus, self.node_id, self.supervisor, self.default_max_tokens, self.idle_timeout_s
        )
        await self.bridge.start()
        self._reply_inbox = self.bus.new_inbox()
        self._reply_sub = await self.bus.subscribe(self._reply_inbox, self._on_desired)
        await self.heartbeat_once()
        self._task = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    async def join_with_retry(self) -> str:
        """Join, waiting for a control plane to answer; a refusal is final."""
        delay = 1.0
        while True:
            try:
                return await self.join()
            except BusError as exc:
                log.warning("no answer from the control plane (%s); retrying in %.0fs",
                            exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)

    async def heartbeat_once(self) -> None:
        assert self.node_id is not None
        self._seq += 1
        beat = Heartbeat(
            node_id=self.node_id,
            seq=self._seq,
            name=self.name,
            engines=list(self.engines),
            hardware=probe(),
            instances=self.supervisor.statuses(),
            in_flight=self.bridge.in_flight if self.bridge else 0,
            power_state=self.power_state,
        )
        # Fire and forget: the answer arrives on our inbox whenever a leader sends it, so
        # a missing leader never slows the heartbeats other replicas route by.
        await self.bus.publish(heartbeat_subject(self.node_id), encode(beat),
                               reply=self._reply_inbox)
        silent = time.monotonic() - self._last_answer
        if silent > 5 * self.heartbeat_interval_s and not self._warned_silent:
            self._warned_silent = True
            log.warning("no control plane has answered heartbeats for %.0fs; running what "
                        "was last asked", silent)

    async def _on_desired(self, msg: Msg) -> None:
        desired = decode(msg.data, DesiredState)
        if desired.seq < self._applied_seq:
            return  # an answer to an older heartbeat arrived late
        self._applied_seq = desired.seq
        self._last_answer = time.monotonic()
        self._warned_silent = False
        if not desired.known:
            log.warning("control plane does not know this node; joining again")
            await self.join()
            return
        if desired.power == "curtailed":
            await self._curtail(desired.reason or "curtailment")
            return
        if self.power_state != "on":
            log.warning("curtailment over: taking work again")
            self.power_state = "on"
            if self.bridge is not None:
                self.bridge.resume()
            self._poke()
        await self.supervisor.apply(desired.instances)

    async def _curtail(self, reason: str) -> None:
        """Shed load now: no new work, in-flight streams to other sites, engines off."""
        if self.power_state == "curtailed":
            return
        started = time.monotonic()
        self.power_state = "draining"
        self._poke()  # every gateway stops routing here at its next heartbeat
        moved = await self.bridge.drain(reason) if self.bridge else 0
        await self.supervisor.apply([])
        self.power_state = "curtailed"
        self._poke()
        log.warning("curtailed (%s): moved %d stream(s), engines stopped in %.2fs",
                    reason, moved, time.monotonic() - started)

    async def _heartbeat_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.heartbeat_interval_s)
            self._wake.clear()
            try:
                await self.heartbeat_once()
            except BusError as exc:
                log.warning("heartbeat failed: %s", exc)
            except Exception:
                log.exception("heartbeat failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._reply_sub is not None:
            await self._reply_sub.unsubscribe()
        if self.bridge is not None:
            await self.bridge.stop()
        await self.supervisor.stop()
