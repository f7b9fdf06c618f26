"""Chooses the instance for a request: registry snapshot in, policy decision out."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace

from wattpool.control.registry import InstanceView, Registry
from wattpool.policy.routing import RouteDecision, pick_least_loaded


class Router:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        # Requests this process has in flight per instance. Heartbeats lag; this does not.
        self.local_in_flight: Counter[str] = Counter()

    def knows_model(self, model_id: str) -> bool:
        return model_id in self.registry.models

    def decide(self, model_id: str, exclude: Iterable[str] = ()) -> RouteDecision:
        snapshots = [
            replace(s, in_flight=self._weighted_load(
                s.node_id, max(s.in_flight, self.local_in_flight[s.instance_id])))
            for s in self.registry.snapshots(model_id)
        ]
        return pick_least_loaded(model_id, snapshots, exclude)

    def _weighted_load(self, node_id: str, in_flight: int) -> int:
        """A node with a lowered reputation looks busier, so it gets less traffic."""
        node = self.registry.nodes.get(node_id)
        weight = node.reputation.traffic_weight if node is not None else 1.0
        if weight >= 1.0 or weight <= 0.0:
            return in_flight
        return math.ceil((in_flight + 1) / weight) - 1

    def pick(self, model_id: str, exclude: Iterable[str] = ()) -> InstanceView | None:
        decision = self.decide(model_id, exclude)
        if decision.chosen is None:
            return None
        return self.registry.instances.get(decision.chosen.instance_id)

    def ready_instances(self, model_id: str) -> int:
        return sum(1 for s in self.registry.snapshots(model_id) if s.ready)

    def node_reachable(self, node_id: str) -> bool:
        node = self.registry.nodes.get(node_id)
        return node is not None and node.reachable

    def acquire(self, instance_id: str) -> None:
        self.local_in_flight[instance_id] += 1

    def release(self, instance_id: str) -> None:
        self.local_in_flight[instance_id] -= 1
        if self.local_in_flight[instance_id] <= 0:
            del self.local_in_flight[instance_id]
