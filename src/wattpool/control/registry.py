"""The live fleet view, in memory, rebuilt from heartbeats.

The router reads it on every request, so it never touches SQL. The control plane
writes durable copies of node and instance state to the store off this path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wattpool.clock import Clock
from wattpool.policy.audit import Reputation
from wattpool.protocol import Hardware, Heartbeat, InstanceSpec, InstanceState


@dataclass(slots=True)
class NodeView:
    node_id: str
    name: str
    hardware: Hardware
    last_seen: float  # clock.monotonic()
    reachable: bool = True
    engines: tuple[str, ...] = ()  # engines the node runs; empty means any
    unreachable_since: float | None = None
    power_state: str = "on"  # as the node reports it: on, draining, curtailed
    reputation: Reputation = field(default_factory=Reputation)  # from audits


@dataclass(slots=True)
class InstanceView:
    spec: InstanceSpec
    node_id: str
    state: InstanceState = "scheduled"
    in_flight: int = 0
    restarts: int = 0
    error: str | None = None

    @property
    def instance_id(self) -> str:
        return self.spec.instance_id

    @property
    def model_id(self) -> str:
        return self.spec.model_id


@dataclass(slots=True)
class Registry:
    clock: Clock
    heartbeat_timeout_s: float
    nodes: dict[str, NodeView] = field(default_factory=dict)
    instances: dict[str, InstanceView] = field(default_factory=dict)
    # model_id -> context length, for every deployed model (what /v1/models lists)
    models: dict[str, int] = field(default_factory=dict)
    # node_id -> audit reputation, kept for nodes not (yet) in ``nodes``: a node that
    # comes back, or one seen first after a restart, starts from what it had earned.
    reputations: dict[str, Reputation] = field(default_factory=dict)

    def add_node(
        self, node_id: str, name: str, hardware: Hardware, engines: tuple[str, ...] = ()
    ) -> NodeView:
        view = NodeView(node_id, name, hardware, self.clock.monotonic(), engines=engines,
                        reputation=self.reputations.get(node_id, Reputation()))
        self.nodes[node_id] = view
        return view

    def record_heartbeat(self, beat: Heartbeat) -> list[InstanceView]:
        """Apply a heartbeat; returns the instances whose reported state changed.

        A node or instance not seen before is added: every replica builds its view
        from heartbeats alone, so a replica that just started routes within one period.
        """
        node = self.nodes.get(beat.node_id)
        if node is None:
            node = self.add_node(beat.node_id, beat.name or beat.node_id, beat.hardware)
        node.hardware = beat.hardware
        node.engines = tuple(beat.engines)
        node.power_state = beat.power_state
        node.last_seen = self.clock.monotonic()
        node.reachable = True
        node.unreachable_since = None
        changed = []
        for status in beat.instances:
            view = self.instances.get(status.instance_id)
            if view is None:
                spec = InstanceSpec(instance_id=status.instance_id, model_id=status.model_id,
                                    engine="", source="",
                                    context_length=status.context_length)
                view = InstanceView(spec=spec, node_id=beat.node_id)
                self.instances[status.instance_id] = view
            if view.node_id != beat.node_id:
                continue
            if (status.state, status.restarts, status.error) != (
                view.state, view.restarts, view.error
            ):
                changed.append(view)
            view.state = status.state
            view.in_flight = status.in_flight
            view.restarts = status.restarts
            view.error = status.error
        # An instance the node no longer reports (agent restarted) is not running there.
        reported = {s.instance_id for s in beat.instances}
        for view in self.instances.values():
            if view.node_id == beat.node_id and view.instance_id not in reported \
                    and view.state in ("ready", "loading", "failed"):
                view.state, view.in_flight = "scheduled", 0
                changed.append(view)
        return changed

    def mark_unreachable(self) -> list[NodeView]:
        """Nodes whose heartbeats stopped; they leave routing at once."""
        now = self.clock.monotonic()
        lost = []
        for node in self.nodes.values():
            if node.reachable and now - node.last_seen > self.heartbeat_timeout_s:
                node.reachable = False
                node.unreachable_since = now
                lost.append(node)
        return lost
