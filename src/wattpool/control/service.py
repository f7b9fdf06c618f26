"""The control plane service: join, heartbeats, liveness and placement.

Every replica keeps a live registry from heartbeats (for its router). The leader
(see leader.py) also answers joins and heartbeats, places instances, and writes
fleet state. Everything that reaches SQL runs on a worker thread, in order, so a
slow database never delays a heartbeat reply or a routing decision.
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
from wattpool.control.audit import Auditor
from wattpool.control.leader import Leadership
from wattpool.control.power import PowerWatch
from wattpool.control.registry import InstanceView, Registry
from wattpool.control.router import Router
from wattpool.economics.payouts import PayoutPolicy
from wattpool.policy.audit import Reputation
from wattpool.policy.placement import DeploymentSpec, NodeCapacity, Placement, plan_placement
from wattpool.protocol import (
    CURTAIL,
    HEARTBEAT_ALL,
    JOIN,
    CurtailSignal,
    DesiredState,
    Heartbeat,
    InstanceSpec,
    JoinReply,
    JoinRequest,
    decode,
    encode,
)
from wattpool.store import fleet, ledger, repo

log = logging.getLogger(__name__)
# last_seen is for people reading `wattpool status`; routing uses the in-memory view.
LAST_SEEN_WRITE_PERIOD_S = 10.0
# Issues a NATS user JWT for (node_id, public_key); None without NATS auth.
CredentialIssuer = Callable[[str, str], str]


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


class JoinRefused(Exception):
    pass


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
        replace_grace_s: float = 0.0,
        leadership: Leadership | None = None,
        trust_joins: bool = True,
        issue_credentials: CredentialIssuer | None = None,
        audit_interval_s: float = 0.0,
        route_slots: int = 4,
        power_poll_s: float = 5.0,
        payout_policy: PayoutPolicy | None = None,
        ledger_interval_s: float = 30.0,
    ) -> None:
        self.bus = bus
        self.db = db
        self.clock = clock
        self.deployments = {d.deployment_id: d for d in deployments}
        self.heartbeat_interval_s = heartbeat_interval_s
        self.reconcile_interval_s = reconcile_interval_s
        self.replace_grace_s = replace_grace_s
        self.leadership = leadership or Leadership()
        self.leadership.on_change = self._leadership_changed
        self.trust_joins = trust_joins
        self.issue_credentials = issue_credentials
        self.registry = Registry(clock=clock, heartbeat_timeout_s=heartbeat_timeout_s)
        for d in deployments:
            self.registry.models[d.model_id] = d.context_length
        self.router = Router(self.registry, slots=route_slots)
        self.auditor = Auditor(bus, self.registry, lambda: self.is_leader,
                               interval_s=audit_interval_s, on_fail=self._audit_failed,
                               on_verdict=self._store_reputation)
        self.payout_policy = payout_policy
        self.ledger_interval_s = ledger_interval_s
        self._placements: dict[str, Placement] = {}
        self._specs: dict[str, InstanceSpec] = {}
        # False between winning leadership and adopting the stored placements: placing
        # before that would duplicate (and then drop) instances that already run.
        self._adopted = False
        self._take_over_lock = asyncio.Lock()
        # site_id -> the active curtailment signal; every replica keeps it (failover).
        self.curtailed: dict[str, CurtailSignal] = {}
        self.router.curtailed_sites = self.curtailed
        self.power = PowerWatch(db, self.router, self._publish_curtail, lambda: self.is_leader,
                                period_s=power_poll_s)
        self._subs: list[Subscription] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._writes: set[asyncio.Task[Any]] = set()

    @property
    def is_leader(self) -> bool:
        return self.leadership.is_leader

    async def start(self) -> None:
        self._subs.append(await self.bus.subscribe(JOIN, self._on_join))
        self._subs.append(await self.bus.subscribe(HEARTBEAT_ALL, self._on_heartbeat))
        self._subs.append(await self.bus.subscribe(CURTAIL, self._on_curtail))
        # Before leadership starts: winning it runs _take_over, which must be the only
        # thing in flight then.
        await self._restore_state()
        await self.leadership.start()
        await self.auditor.start()
        if self.is_leader:
            await self._take_over()  # before any join, so old placements are adopted first
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._background()))
        self._tasks.append(loop.create_task(self.power.run()))

    async def stop(self) -> None:
        await self.auditor.stop()
        for sub in self._subs:
            await sub.unsubscribe()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        await self.leadership.stop()

    def _leadership_changed(self, leader: bool) -> None:
        self._adopted = False
        if leader:
            self._tasks.append(asyncio.get_running_loop().create_task(self._take_over()))

    async def _take_over(self) -> None:
        """New leader: write the deployments, adopt the placements already in the store."""
        # Winning leadership (a task) and start() may both get here: adopt once.
        async with self._take_over_lock:
            if self._adopted or not self.is_leader:
                return
            await self._adopt()

    async def _adopt(self) -> None:
        await asyncio.to_thread(self._persist_deployments)
        rows = await asyncio.to_thread(repo.list_instances, self.db)
        self._placements, self._specs = {}, {}
        for row in rows:
            dep = self.deployments.get(row.deployment_id or "")
            if dep is None or row.state == "stopped" or row.node_id is None:
                continue
            self._placements[row.id] = Placement(row.id, dep.deployment_id, dep.model_id,
                                                 row.node_id)
            self._specs[row.id] = self._spec_for(row.id, dep)
        log.info("leader: adopted %d placement(s) from the store", len(self._placements))
        self._adopted = True
        self.reconcile()

    # --- bus handlers ----------------------------------------------------------

    async def _on_join(self, msg: Msg) -> None:
        if not self.is_leader:
            return  # the leader answers; a node retries until there is one
        try:
            req = decode(msg.data, JoinRequest)
            reply = await self._join(req)
        except msgspec.DecodeError as exc:
            reply = JoinReply(accepted=False, error=f"malformed join request: {exc}")
        except (JoinRefused, fleet.FleetError) as exc:
            reply = JoinReply(accepted=False, error=str(exc))
        if msg.reply:
            await self.bus.publish(msg.reply, encode(reply))

    async def _join(self, req: JoinRequest) -> JoinReply:
        site_id: str | None = None
        site_name: str | None = None
        if req.node_id and (req.node_id in self.registry.nodes or not self.trust_joins):
            known = {n.id: n for n in await asyncio.to_thread(repo.list_nodes, self.db)}
            row = known.get(req.node_id)
            if row is None and not self.trust_joins:
                raise JoinRefused(f"unknown node {req.node_id}; join with a new token")
            if row is not None and row.public_key and row.public_key != req.public_key:
                raise JoinRefused("this node id belongs to another key")
            node_id = req.node_id
        elif self.trust_joins:
            node_id = req.node_id or new_id("node")
        elif req.token:
            node_id = new_id("node")
            site = await asyncio.to_thread(fleet.consume_join_token, self.db, req.token, node_id)
            site_id, site_name = site.id, site.name
        else:
            raise JoinRefused("a join token is required: wattpool tokens create --site NAME")
        self.registry.add_node(node_id, req.name, req.hardware, tuple(req.engines))
        if site_id is not None:
            self.router.node_site[node_id] = site_id
        await asyncio.to_thread(
            repo.upsert_node, self.db, node_id, req.name, msgspec.to_builtins(req.hardware),
            "ready", datetime.now(UTC), site_id=site_id, public_key=req.public_key,
        )
        user_jwt = None
        if self.issue_credentials is not None and req.public_key:
            user_jwt = self.issue_credentials(node_id, req.public_key)
        log.info("node %s (%s) joined%s", node_id, req.name,
                 f" site {site_name}" if site_name else "")
        self.reconcile()
        return JoinReply(accepted=True, node_id=node_id, site=site_name, user_jwt=user_jwt,
                         heartbeat_interval_s=self.heartbeat_interval_s)

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = decode(msg.data, Heartbeat)
        except msgspec.DecodeError:
            log.warning("malformed heartbeat on %s dropped", msg.subject)
            return
        if msg.subject.rsplit(".", 1)[-1] != beat.node_id:
            log.warning("heartbeat for %s on %s dropped", beat.node_id, msg.subject)
            return
        is_new = beat.node_id not in self.registry.nodes
        came_back = not is_new and not self.registry.nodes[beat.node_id].reachable
        changed = self.registry.record_heartbeat(beat)
        if not self.is_leader or not self._adopted:
            return  # only a leader that knows the placements may tell a node what to run
        if is_new or came_back:
            log.info("node %s is %s", beat.node_id, "reachable again" if came_back else "here")
            self._persist(repo.upsert_node, self.db, beat.node_id, beat.name or beat.node_id,
                          msgspec.to_builtins(beat.hardware), "ready", datetime.now(UTC))
        for view in changed:
            self._persist_instance(view)
        if msg.reply:
            curtail = self._power_for(beat.node_id)
            reply = DesiredState(node_id=beat.node_id, seq=beat.seq,
                                 instances=self._desired_for(beat.node_id),
                                 power="curtailed" if curtail else "on",
                                 reason=curtail.reason if curtail else None)
            await self.bus.publish(msg.reply, encode(reply))

    def _desired_for(self, node_id: str) -> list[InstanceSpec]:
        return [self._specs[i] for i, p in self._placements.items() if p.node_id == node_id]

    async def _on_curtail(self, msg: Msg) -> None:
        try:
            signal = decode(msg.data, CurtailSignal)
        except msgspec.DecodeError:
            log.warning("malformed curtailment signal dropped")
            return
        if signal.active:
            log.warning("site %s curtailed within %.0fs: %s", signal.site_name,
                        signal.within_s, signal.reason)
            self.curtailed[signal.site_id] = signal
        else:
            log.warning("site %s: curtailment over", signal.site_name)
            self.curtailed.pop(signal.site_id, None)
        # Learn which nodes belong to which site (joins before this process started).
        rows = await asyncio.to_thread(repo.list_nodes, self.db)
        self.router.node_site.update({r.id: r.site_id for r in rows if r.site_id})

    async def _publish_curtail(self, signal: CurtailSignal) -> None:
        await self.bus.publish(CURTAIL, encode(signal))

    async def _restore_state(self) -> None:
        """Curtailments still open, and audit reputations, hold across restarts."""
        try:
            site_rows, rows, open_by_site = await asyncio.to_thread(self.power.read_store)
        except Exception:
            log.exception("could not read curtailments and reputations from the store")
            return
        self.router.node_site.update({r.id: r.site_id for r in rows if r.site_id})
        for r in rows:
            if r.reputation is not None:
                rep = Reputation(r.reputation, r.audits_passed, r.audits_failed)
                self.registry.reputations[r.id] = rep
                if r.id in self.registry.nodes:
                    self.registry.nodes[r.id].reputation = rep
        sites = {s.id: s for s in site_rows}
        open_ones = list(open_by_site.values())
        for c in open_ones:
            name = sites[c.site_id].name if c.site_id in sites else c.site_id
            self.curtailed[c.site_id] = CurtailSignal(site_id=c.site_id, site_name=name,
                                                      active=True, within_s=c.within_s,
                                                      reason=c.reason)
        if open_ones:
            log.warning("%d site(s) still curtailed: %s", len(open_ones),
                        ", ".join(s.site_name for s in self.curtailed.values()))

    def _power_for(self, node_id: str) -> CurtailSignal | None:
        site = self.router.node_site.get(node_id)
        return self.curtailed.get(site) if site else None

    # --- background ------------------------------------------------------------

    async def _background(self) -> None:
        last_seen_written = self.clock.monotonic()
        last_ledger_run = self.clock.monotonic()
        while True:
            await asyncio.sleep(min(self.reconcile_interval_s, self.heartbeat_interval_s) / 2)
            lost = self.registry.mark_unreachable()
            if not self.is_leader:
                continue
            for node in lost:
                log.warning("node %s stopped heartbeating; out of routing", node.node_id)
                self._persist(repo.set_node_state, self.db, node.node_id, "unreachable")
            if self.clock.monotonic() - last_seen_written >= LAST_SEEN_WRITE_PERIOD_S:
                last_seen_written = self.clock.monotonic()
                self._persist(self._write_last_seen)
            if self.payout_policy is not None and \
                    self.clock.monotonic() - last_ledger_run >= self.ledger_interval_s:
                last_ledger_run = self.clock.monotonic()
                self._persist(self._settle_ledger, self.payout_policy)
            self.reconcile()

    def _placeable(self, node_id: str) -> bool:
        """Live for placement: reachable, or lost for less than the grace period."""
        node = self.registry.nodes[node_id]
        if node.reachable:
            return True
        since = node.unreachable_since or self.clock.monotonic()
        return self.clock.monotonic() - since < self.replace_grace_s

    def reconcile(self) -> None:
        """Make the desired instances match the deployments (pure policy decides)."""
        if not self.is_leader or not self._adopted:
            return
        specs = [
            DeploymentSpec(d.deployment_id, d.model_id, d.replicas, d.memory_bytes, d.engine)
            for d in self.deployments.values()
        ]
        nodes = [self._capacity(n.node_id) for n in self.registry.nodes.values()]
        plan = plan_placement(
            specs, nodes, list(self._placements.values()), lambda: new_id("inst")
        )
        wanted = {p.instance_id: p for p in plan.placements}
        for instance_id in set(self._placements) - set(wanted):
            self._specs.pop(instance_id, None)
            view = self.registry.instances.pop(instance_id, None)
            if view is not None:
                view.state = "stopped"
                self._persist_instance(view, self._placements[instance_id].deployment_id)
                log.info("unplaced %s from %s", instance_id, view.node_id)
            self.router.forget_instance(instance_id)
        for instance_id, p in wanted.items():
            if instance_id in self._placements:
                continue
            dep = self.deployments[p.deployment_id]
            self._specs[instance_id] = self._spec_for(instance_id, dep)
            view = InstanceView(spec=self._specs[instance_id], node_id=p.node_id)
            self.registry.instances[instance_id] = view
            log.info("placed %s (%s) on %s", instance_id, dep.model_id, p.node_id)
            self._persist_instance(view, p.deployment_id)
        self._placements = wanted
        for dep_id, why in plan.unplaced.items():
            log.debug("deployment %s not fully placed: %s", dep_id, why)

    def _capacity(self, node_id: str) -> NodeCapacity:
        """What placement knows of a node: memory, engines, and its site's power."""
        n = self.registry.nodes[node_id]
        site = self.router.node_site.get(node_id, "")
        return NodeCapacity(
            node_id, self._placeable(node_id),
            n.hardware.accelerator_memory + self._memory_in_use(node_id), frozenset(n.engines),
            site_id=site, region=self.router.site_region.get(site, ""),
            price_per_mwh=self.router.site_prices.get(site, 0.0),
            curtailed=bool(site) and site in self.curtailed,
        )

    @staticmethod
    def _spec_for(instance_id: str, dep: Deployment) -> InstanceSpec:
        return InstanceSpec(
            instance_id=instance_id, model_id=dep.model_id, engine=dep.engine,
            source=dep.source, context_length=dep.context_length, args=dict(dep.args),
        )

    def _memory_in_use(self, node_id: str) -> int:
        """Memory our own instances on the node already hold (the probe sees it as used)."""
        return sum(
            self.deployments[p.deployment_id].memory_bytes
            for p in self._placements.values()
            if p.node_id == node_id and p.deployment_id in self.deployments
        )

    # --- persistence (off the hot path) ------------------------------------------

    def _settle_ledger(self, policy: PayoutPolicy) -> None:
        """Charge usage the gateways could not post, and mature credit past its window."""
        charged = ledger.post_unposted_usage(self.db, policy)
        matured = ledger.mature_due(self.db, datetime.now(UTC))
        if charged or matured.charges:
            log.info("ledger: charged %d late request(s); %d charge(s) now payable",
                     charged, matured.charges)

    def _store_reputation(self, node_id: str, rep: Reputation) -> None:
        self._persist(repo.set_reputation, self.db, node_id, rep.score, rep.passes, rep.fails)

    def _audit_failed(self, node_id: str, audit_id: str) -> None:
        """A failed audit costs the node the credit still inside its challenge window."""
        if self.payout_policy is None:
            return

        def claw_back() -> None:
            done = ledger.claw_back(self.db, node_id, at=datetime.now(UTC), audit_id=audit_id)
            if done.charges:
                log.warning("ledger: node %s failed audit %s; %d pending charge(s), %.6f USD "
                            "clawed back", node_id, audit_id, done.charges, done.micros / 1e6)

        self._persist(claw_back)

    def _write_last_seen(self) -> None:
        now = datetime.now(UTC)
        for node in list(self.registry.nodes.values()):
            if node.reachable:
                repo.upsert_node(self.db, node.node_id, node.name,
                                 msgspec.to_builtins(node.hardware), "ready", now)

    def record_shutdown(self) -> None:
        """Blocking: mark every instance stopped and every node offline (pool shutdown)."""
        for view in self.registry.instances.values():
            placement = self._placements.get(view.instance_id)
            repo.upsert_instance(
                self.db, view.instance_id, view.model_id, view.node_id, "stopped",
                restarts=view.restarts, error=None,
                deployment_id=placement.deployment_id if placement else None,
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
