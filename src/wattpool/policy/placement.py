"""How many instances of each model run where.

A function of (deployments, nodes, current instances) -> the instances that should
exist. It keeps what already runs on live nodes (moving weights is expensive), drops
instances of deployments that no longer exist or beyond their replica count, and
places each missing one on a live node that can hold the model and does not already
run it, preferring, in order: a site that holds no replica of it yet, a region with
fewer of its replicas (so one site's failure or curtailment does not take the model
down), cheaper power, and then the most free memory. Nodes of a curtailed site get no
new instances; what already runs there stays, since curtailment ends.
"""

from __future__ import annotations

from collections import Counter
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
    site_id: str = ""  # "" when the node has no site (each such node is its own site)
    region: str = ""
    price_per_mwh: float = 0.0  # the site's power price now
    curtailed: bool = False  # the site is curtailed: place nothing new there


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
                and runs(node_id, dep.engine) and not live[node_id].curtailed
            ]
            if not fits:
                unplaced[dep.deployment_id] = (
                    f"{dep.replicas - len(placed)} replica(s) need a live node with "
                    f"{dep.memory_bytes / 2**30:.1f} GiB free"
                    + (f" that runs {dep.engine}" if dep.engine else "")
                )
                break
            sites = Counter(_site(live[p.node_id]) for p in placed if p.node_id in live)
            regions = Counter(live[p.node_id].region for p in placed if p.node_id in live)
            node_id = max(fits, key=lambda n: (
                -sites[_site(live[n])], -regions[live[n].region], -live[n].price_per_mwh,
                free[n], n))
            p = Placement(new_instance_id(), dep.deployment_id, dep.model_id, node_id)
            placed.append(p)
            kept.append(p)
            free[node_id] -= dep.memory_bytes
    return PlacementPlan(placements=kept, unplaced=unplaced)


def _site(node: NodeCapacity) -> str:
    return node.site_id or f"node:{node.node_id}"
