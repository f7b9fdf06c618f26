"""How many instances of each model run where.

A function of (deployments, nodes, current instances) -> the instances that should
exist. It keeps what already runs on live nodes (moving weights is expensive), drops
instances of deployments that no longer exist or beyond their replica count, and
places the missing ones on the live node with the most free memory that can hold
the model and does not already run it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    deployment_id: str
    model_id: str
    replicas: int
    memory_bytes: int  # what one instance needs
    engine: str = ""  # engine the instance runs on; nodes may restrict which they run


@dataclass(frozen=True, slots=True)
class NodeCapacity:
    node_id: str
    live: bool
    memory_bytes: int  # memory available for models (GPU memory, else RAM)
    engines: frozenset[str] = frozenset()  # engines the node runs; empty means any


@dataclass(frozen=True, slots=True)
class Placement:
    instance_id: str
    deployment_id: str
    model_id: str
    node_id: str


@dataclass(frozen=True, slots=True)
class PlacementPlan:
    placements: list[Placement]
    # deployment_id -> why replicas are missing (no node fits, ...)
    unplaced: dict[str, str]


def plan_placement(
    deployments: Sequence[DeploymentSpec],
    nodes: Sequence[NodeCapacity],
    current: Sequence[Placement],
    new_instance_id: Callable[[], str],
) -> PlacementPlan:
    live = {n.node_id: n for n in nodes if n.live}

    def runs(node_id: str, engine: str) -> bool:
        allowed = live[node_id].engines
        return not allowed or not engine or engine in allowed

    free = {n.node_id: n.memory_bytes for n in live.values()}
    by_id = {d.deployment_id: d for d in deployments}
    kept: list[Placement] = []
    per_deployment: dict[str, list[Placement]] = {d.deployment_id: [] for d in deployments}

    for p in current:
        dep = by_id.get(p.deployment_id)
        if dep is None or p.node_id not in live:
            continue
        placed = per_deployment[dep.deployment_id]
        if len(placed) >= dep.replicas or any(q.node_id == p.node_id for q in placed):
            continue
        per_deployment[dep.deployment_id].append(p)
        free[p.node_id] -= dep.memory_bytes
        kept.append(p)

    unplaced: dict[str, str] = {}
    for dep in deployments:
        placed = per_deployment[dep.deployment_id]
        while len(placed) < dep.replicas:
            used_nodes = {p.node_id for p in placed}
            fits = [
                node_id
                for node_id, mem in free.items()
                if node_id not in used_nodes and mem >= dep.memory_bytes
                and runs(node_id, dep.engine)
            ]
            if not fits:
                unplaced[dep.deployment_id] = (
                    f"{dep.replicas - len(placed)} replica(s) need a live node with "
                    f"{dep.memory_bytes / 2**30:.1f} GiB free"
                    + (f" that runs {dep.engine}" if dep.engine else "")
                )
                break
            node_id = max(fits, key=lambda n: (free[n], n))
            p = Placement(new_instance_id(), dep.deployment_id, dep.model_id, node_id)
            placed.append(p)
            kept.append(p)
            free[node_id] -= dep.memory_bytes
    return PlacementPlan(placements=kept, unplaced=unplaced)
