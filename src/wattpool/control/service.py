"""The control plane service: join, heartbeats, liveness and placement.

Everything that reaches SQL goes through ``_persist`` on a worker thread, so a slow
database never delays a heartbeat reply or a routing decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy.engine import Engine

from wattpool.bus import Bus, Msg, Subscription
from wattpool.clock import Clock
from wattpool.control.registry import InstanceView, Registry
from wattpool.control.router import Router
from wattpool.policy.placement import DeploymentSpec, NodeCapacity, Placement, plan_placement
from wattpool.protocol import (
    HEARTBEAT_ALL,
    JOIN,
    DesiredState,
    Heartbeat,
    InstanceSpec,
    JoinReply,
    JoinRequest,
    decode,
    encode,
)
from wattpool.store import repo

log = logging.getLogger(__name__)
QUEUE_GROUP = "control"
# last_seen is for people reading `wattpool status`; routing uses the in-memory view.
LAST_SEEN_WRITE_PERIOD_S = 10.0


@dataclass(frozen=True, slots=True)
class Deployment:
    """A model the operator wants served, and how."""

    deployment_id: str
    model_id: str
    engine: str
    source: str
    context_length: int
    replicas: int = 1
    memory_bytes: int = 0
    args: dict[str, str] = field(default_factory=dict)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


class ControlPlane:
    def __init__(
        self,
        bus: Bus,
        db: Engine,
        clock: Clock,
        deployments: Sequence[Deployment],
        *,
        heartbeat_interval_s: float,
        heartbeat_timeout_s: float,
        reconcile_interval_s: float,
    ) -> None:
        self.bus = bus
        self.db = db
        self.clock = clock
        self.deployments = {d.deployment_id: d for d in deployments}
        self.heartbeat_interval_s = heartbeat_interval_s
        self.reconcile_interval_s = reconcile_interval_s
        self.registry = Registry(clock=clock, heartbeat_timeout_s=heartbeat_timeout_s)
        for d in deployments:
            self.registry.models[d.model_id] = d.context_length
        self.router = Router(self.registry)
        self._placements: dict[str, Placement] = {}
        self._subs: list[Subscription] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._writes: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        await asyncio.to_thread(self._persist_deployments)
        self._subs.append(await self.bus.subscribe(JOIN, self._on_join, queue=QUEUE_GROUP))
        self._subs.append(
            await self.bus.subscribe(HEARTBEAT_ALL, self._on_heartbeat, queue=QUEUE_GROUP)
        )
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._background()))

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    # --- bus handlers ----------------------------------------------------------

    async def _on_join(self, msg: Msg) -> None:
        try:
            req = decode(msg.data, JoinRequest)
        except msgspec.DecodeError as exc:
            reply = JoinReply(accepted=False, error=f"malformed join request: {exc}")
        else:
            # The in-process pool trusts its local node; token checks come with NATS.
            node_id = req.node_id or new_id("node")
            self.registry.add_node(node_id, req.name, req.hardware)
            self._persist(
                repo.upsert_node, self.db, node_id, req.name,
                msgspec.to_builtins(req.hardware), "ready", datetime.now(UTC),
            )
            reply = JoinReply(
                accepted=True, node_id=node_id, heartbeat_interval_s=self.heartbeat_interval_s
            )
            self.reconcile()
        if msg.reply:
            await self.bus.publish(msg.reply, encode(reply))

    async def _on_heartbeat(self, msg: Msg) -> None:
        beat = decode(msg.data, Heartbeat)
        if beat.node_id not in self.registry.nodes:
            reply = DesiredState(node_id=beat.node_id, known=False)
        else:
            node = self.registry.nodes[beat.node_id]
            came_back = not node.reachable
            for view in self.registry.record_heartbeat(beat):
                self._persist_instance(view)
            if came_back:
                log.info("node %s is reachable again", beat.node_id)
                self._persist(repo.set_node_state, self.db, beat.node_id, "ready")
            reply = DesiredState(
                node_id=beat.node_id, instances=self.registry.desired_for(beat.node_id)
            )
        if msg.reply:
            await self.bus.publish(msg.reply, encode(reply))

    # --- background ------------------------------------------------------------

    async def _background(self) -> None:
        last_seen_written = self.clock.monotonic()
        while True:
            await asyncio.sleep(min(self.reconcile_interval_s, self.heartbeat_interval_s))
            if self.clock.monotonic() - last_seen_written >= LAST_SEEN_WRITE_PERIOD_S:
                last_seen_written = self.clock.monotonic()
                self._persist(self._write_last_seen)
            for node in self.registry.mark_unreachable():
                log.warning("node %s stopped heartbeating; out of routing", node.node_id)
                self._persist(repo.set_node_state, self.db, node.node_id, "unreachable")
            self.reconcile()

    def reconcile(self) -> None:
        """Make the desired instances match the deployments (pure policy decides)."""
        specs = [
            DeploymentSpec(d.deployment_id, d.model_id, d.replicas, d.memory_bytes)
            for d in self.deployments.values()
        ]
        nodes = [
            NodeCapacity(n.node_id, n.reachable, n.hardware.accelerator_memory
                         + self._memory_in_use(n.node_id))
            for n in self.registry.nodes.values()
        ]
        plan = plan_placement(
            specs, nodes, list(self._placements.values()), lambda: new_id("inst")
        )
        wanted = {p.instance_id: p for p in plan.placements}
        for instance_id in set(self._placements) - set(wanted):
            view = self.registry.instances.pop(instance_id, None)
            if view is not None:
                view.state = "stopped"
                self._persist_instance(view)
        for instance_id, p in wanted.items():
            if instance_id in self._placements:
                continue
            dep = self.deployments[p.deployment_id]
            spec = InstanceSpec(
                instance_id=instance_id, model_id=dep.model_id, engine=dep.engine,
                source=dep.source, context_length=dep.context_length, args=dict(dep.args),
            )
            view = InstanceView(spec=spec, node_id=p.node_id)
            self.registry.instances[instance_id] = view
            log.info("placed %s (%s) on %s", instance_id, dep.model_id, p.node_id)
            self._persist_instance(view, p.deployment_id)
        self._placements = wanted
        for dep_id, why in plan.unplaced.items():
            log.debug("deployment %s not fully placed: %s", dep_id, why)

    def _memory_in_use(self, node_id: str) -> int:
        """Memory our own instances on the node already hold (the probe sees it as used)."""
        return sum(
            self.deployments[p.deployment_id].memory_bytes
            for p in self._placements.values()
            if p.node_id == node_id and p.deployment_id in self.deployments
        )

    # --- persistence (off the hot path) ------------------------------------------

    def _write_last_seen(self) -> None:
        now = datetime.now(UTC)
        for node in list(self.registry.nodes.values()):
            if node.reachable:
                repo.upsert_node(self.db, node.node_id, node.name,
                                 msgspec.to_builtins(node.hardware), "ready", now)

    def record_shutdown(self) -> None:
        """Blocking: mark every instance stopped and every node offline (pool shutdown)."""
        for view in self.registry.instances.values():
            repo.upsert_instance(
                self.db, view.instance_id, view.model_id, view.node_id, "stopped",
                restarts=view.restarts, error=None,
                deployment_id=self._placements[view.instance_id].deployment_id
                if view.instance_id in self._placements else None,
            )
        for node in self.registry.nodes.values():
            repo.set_node_state(self.db, node.node_id, "offline")

    def _persist_deployments(self) -> None:
        for d in self.deployments.values():
            repo.upsert_model(self.db, d.model_id, d.source, d.engine, d.context_length)
            repo.upsert_deployment(self.db, d.deployment_id, d.model_id, d.replicas)

    def _persist_instance(self, view: InstanceView, deployment_id: str | None = None) -> None:
        if deployment_id is None and view.instance_id in self._placements:
            deployment_id = self._placements[view.instance_id].deployment_id
        self._persist(
            repo.upsert_instance, self.db, view.instance_id, view.model_id, view.node_id,
            view.state, restarts=view.restarts, error=view.error, deployment_id=deployment_id,
        )

    def _persist(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        # Writes run in order on one worker thread chain so state never goes backwards.
        previous = list(self._writes)

        async def write() -> None:
            if previous:
                await asyncio.gather(*previous, return_exceptions=True)
            try:
                await asyncio.to_thread(fn, *args, **kwargs)
            except Exception:
                log.exception("store write %s failed", getattr(fn, "__name__", fn))

        task = asyncio.get_running_loop().create_task(write())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
