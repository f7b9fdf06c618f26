"""wattpool.policy.placement.plan_placement."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable

from wattpool.policy.placement import (
    DeploymentSpec,
    NodeCapacity,
    Placement,
    PlacementPlan,
    plan_placement,
)

GiB = 2**30


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"new-{next(counter)}"


def dep(deployment_id: str, replicas: int = 1, memory_gib: float = 1, model_id: str = "")\
        -> DeploymentSpec:
    return DeploymentSpec(deployment_id, model_id or f"model-{deployment_id}", replicas,
                          int(memory_gib * GiB))


def node(node_id: str, memory_gib: float, live: bool = True) -> NodeCapacity:
    return NodeCapacity(node_id, live, int(memory_gib * GiB))


def nodes_of(plan: PlacementPlan, deployment_id: str) -> list[str]:
    return sorted(p.node_id for p in plan.placements if p.deployment_id == deployment_id)


def check_invariants(plan: PlacementPlan, deployments: list[DeploymentSpec],
                     nodes: list[NodeCapacity]) -> None:
    """What every plan must satisfy, whatever the input."""
    by_id = {d.deployment_id: d for d in deployments}
    live = {n.node_id: n for n in nodes if n.live}
    ids_seen = [p.instance_id for p in plan.placements]
    assert len(ids_seen) == len(set(ids_seen)), "instance ids are unique"
    for p in plan.placements:
        assert p.deployment_id in by_id, "only existing deployments"
        assert p.node_id in live, "only live nodes"
        assert p.model_id == by_id[p.deployment_id].model_id
    per_dep = Counter(p.deployment_id for p in plan.placements)
    for d in deployments:
        assert per_dep[d.deployment_id] <= d.replicas
    pairs = Counter((p.deployment_id, p.node_id) for p in plan.placements)
    assert max(pairs.values(), default=0) <= 1, "never two replicas on one node"


def test_places_on_the_node_with_most_free_memory_that_fits() -> None:
    deployments = [dep("d", memory_gib=4)]
    nodes = [node("small", 2), node("big", 80), node("medium", 24)]
    plan = plan_placement(deployments, nodes, [], ids())
    assert plan.placements == [Placement("new-1", "d", "model-d", "big")]
    assert plan.unplaced == {}


def test_a_bigger_dead_node_is_not_used() -> None:
    deployments = [dep("d", memory_gib=4)]
    nodes = [node("dead", 500, live=False), node("alive", 8)]
    plan = plan_placement(deployments, nodes, [], ids())
    assert nodes_of(plan, "d") == ["alive"]


def test_skips_nodes_where_it_does_not_fit() -> None:
    deployments = [dep("d", memory_gib=10)]
    nodes = [node("a", 9.99), node("b", 10), node("c", 3)]
    plan = plan_placement(deployments, nodes, [], ids())
    assert nodes_of(plan, "d") == ["b"]  # exactly enough memory fits


def test_respects_replicas() -> None:
    deployments = [dep("d", replicas=3)]
    nodes = [node(f"n{i}", 10 + i) for i in range(5)]
    plan = plan_placement(deployments, nodes, [], ids())
    assert nodes_of(plan, "d") == ["n2", "n3", "n4"]  # the three with most memory
    assert {p.instance_id for p in plan.placements} == {"new-1", "new-2", "new-3"}
    check_invariants(plan, deployments, nodes)


def test_never_two_replicas_on_one_node() -> None:
    deployments = [dep("d", replicas=3, memory_gib=1)]
    nodes = [node("huge", 1000), node("tiny", 2)]  # huge could hold all three
    plan = plan_placement(deployments, nodes, [], ids())
    assert nodes_of(plan, "d") == ["huge", "tiny"]
    assert "d" in plan.unplaced
    assert plan.unplaced["d"].startswith("1 replica(s)")
    check_invariants(plan, deployments, nodes)


def test_keeps_existing_placements_on_live_nodes() -> None:
    deployments = [dep("d", replicas=2)]
    nodes = [node("small", 4), node("big", 100), node("bigger", 200)]
    current = [Placement("old-1", "d", "model-d", "small"),
               Placement("old-2", "d", "model-d", "big")]
    plan = plan_placement(deployments, nodes, current, ids())
    # A fresh plan would use "bigger" and "big"; nothing moves to get there.
    assert plan.placements == current
    assert plan.unplaced == {}


def test_tops_up_missing_replicas_without_moving_existing_ones() -> None:
    deployments = [dep("d", replicas=3)]
    nodes = [node("a", 4), node("b", 100), node("c", 50)]
    current = [Placement("old-1", "d", "model-d", "a")]
    plan = plan_placement(deployments, nodes, current, ids())
    assert plan.placements[0] == current[0]
    assert nodes_of(plan, "d") == ["a", "b", "c"]
    check_invariants(plan, deployments, nodes)


def test_re_places_instances_of_a_dead_node() -> None:
    deployments = [dep("d", replicas=2)]
    nodes = [node("a", 10), node("b", 10, live=False), node("c", 8)]
    current = [Placement("old-a", "d", "model-d", "a"), Placement("old-b", "d", "model-d", "b")]
    plan = plan_placement(deployments, nodes, current, ids())
    assert Placement("old-a", "d", "model-d", "a") in plan.placements
    assert all(p.instance_id != "old-b" for p in plan.placements)
    assert nodes_of(plan, "d") == ["a", "c"]
    replacement = next(p for p in plan.placements if p.node_id == "c")
    assert replacement.instance_id == "new-1"
    check_invariants(plan, deployments, nodes)


def test_instances_of_an_unknown_node_are_re_placed() -> None:
    deployments = [dep("d")]
    plan = plan_placement(deployments, [node("a", 10)],
                          [Placement("old", "d", "model-d", "forgotten")], ids())
    assert plan.placements == [Placement("new-1", "d", "model-d", "a")]


def test_drops_instances_of_removed_deployments() -> None:
    deployments = [dep("kept")]
    nodes = [node("a", 10)]
    current = [Placement("i1", "kept", "model-kept", "a"),
               Placement("i2", "removed", "model-removed", "a")]
    plan = plan_placement(deployments, nodes, current, ids())
    assert plan.placements == [current[0]]
    assert plan.unplaced == {}


def test_drops_instances_beyond_the_replica_count() -> None:
    deployments = [dep("d", replicas=1)]
    nodes = [node("a", 10), node("b", 10), node("c", 10)]
    current = [Placement("i1", "d", "model-d", "a"), Placement("i2", "d", "model-d", "b"),
               Placement("i3", "d", "model-d", "c")]
    plan = plan_placement(deployments, nodes, current, ids())
    assert plan.placements == [current[0]]


def test_zero_replicas_removes_everything() -> None:
    deployments = [dep("d", replicas=0)]
    plan = plan_placement(deployments, [node("a", 10)],
                          [Placement("i1", "d", "model-d", "a")], ids())
    assert plan == PlacementPlan(placements=[], unplaced={})


def test_unplaced_reason_when_nothing_fits() -> None:
    deployments = [dep("huge", replicas=2, memory_gib=64)]
    nodes = [node("a", 16), node("b", 32), node("c", 1000, live=False)]
    plan = plan_placement(deployments, nodes, [], ids())
    assert plan.placements == []
    assert plan.unplaced == {"huge": "2 replica(s) need a live node with 64.0 GiB free"}


def test_no_nodes_at_all() -> None:
    plan = plan_placement([dep("d", memory_gib=0.5)], [], [], ids())
    assert plan.placements == []
    assert plan.unplaced == {"d": "1 replica(s) need a live node with 0.5 GiB free"}


def test_memory_is_accounted_across_deployments() -> None:
    # One node with 10 GiB: 6 + 3 fit, the next 3 does not (1 GiB left).
    deployments = [dep("a", memory_gib=6), dep("b", memory_gib=3), dep("c", memory_gib=3)]
    nodes = [node("n", 10)]
    plan = plan_placement(deployments, nodes, [], ids())
    assert nodes_of(plan, "a") == ["n"]
    assert nodes_of(plan, "b") == ["n"]
    assert nodes_of(plan, "c") == []
    assert set(plan.unplaced) == {"c"}


def test_memory_is_accounted_for_existing_placements() -> None:
    # "a" already holds 7 GiB on n1 (10 GiB): the new 4 GiB instance goes to n2 (5 GiB),
    # although n1 has more memory in total.
    deployments = [dep("old", memory_gib=7), dep("new", memory_gib=4)]
    nodes = [node("n1", 10), node("n2", 5)]
    current = [Placement("i-old", "old", "model-old", "n1")]
    plan = plan_placement(deployments, nodes, current, ids())
    assert nodes_of(plan, "new") == ["n2"]


def test_placement_spreads_by_remaining_free_memory() -> None:
    # After "first" takes 8 of a's 10 GiB, b (6 GiB) has more free memory than a (2).
    deployments = [dep("first", memory_gib=8), dep("second", memory_gib=1)]
    nodes = [node("a", 10), node("b", 6)]
    plan = plan_placement(deployments, nodes, [], ids())
    assert nodes_of(plan, "first") == ["a"]
    assert nodes_of(plan, "second") == ["b"]


def test_memory_freed_by_a_removed_deployment_is_reused() -> None:
    deployments = [dep("new", memory_gib=8)]
    nodes = [node("n", 10)]
    current = [Placement("gone", "removed", "model-removed", "n")]
    plan = plan_placement(deployments, nodes, current, ids())
    assert plan.placements == [Placement("new-1", "new", "model-new", "n")]


def test_many_deployments_fill_a_fleet_consistently() -> None:
    deployments = [dep(f"d{i}", replicas=1 + i % 3, memory_gib=1 + i % 4) for i in range(12)]
    nodes = [node(f"n{i}", 8 + 3 * i, live=i != 2) for i in range(6)]
    plan = plan_placement(deployments, nodes, [], ids())
    check_invariants(plan, deployments, nodes)
    capacity = {n.node_id: n.memory_bytes for n in nodes}
    used: Counter[str] = Counter()
    mem = {d.deployment_id: d.memory_bytes for d in deployments}
    for p in plan.placements:
        used[p.node_id] += mem[p.deployment_id]
    for node_id, total in used.items():
        assert total <= capacity[node_id], node_id
    for d in deployments:
        placed = len(nodes_of(plan, d.deployment_id))
        assert (placed == d.replicas) == (d.deployment_id not in plan.unplaced)
    # Planning again from the result changes nothing (stable).
    again = plan_placement(deployments, nodes, plan.placements, ids())
    assert again.placements == plan.placements


def test_duplicate_current_replicas_on_one_node_are_not_kept() -> None:
    deployments = [dep("d", replicas=2)]
    nodes = [node("a", 10), node("b", 10)]
    current = [Placement("i1", "d", "model-d", "a"), Placement("i2", "d", "model-d", "a")]
    plan = plan_placement(deployments, nodes, current, ids())
    check_invariants(plan, deployments, nodes)
    assert nodes_of(plan, "d") == ["a", "b"]


def test_nodes_that_restrict_engines_get_only_those() -> None:
    deployments = [
        DeploymentSpec("syn", "synthetic", 2, 2**20, engine="synthetic"),
        DeploymentSpec("llm", "gemma", 1, 2**20, engine="llamacpp"),
    ]
    nodes = [
        NodeCapacity("s1", True, 2**30, frozenset({"synthetic"})),
        NodeCapacity("s2", True, 2**30, frozenset({"synthetic"})),
        NodeCapacity("l1", True, 2**29, frozenset({"llamacpp"})),
    ]
    plan = plan_placement(deployments, nodes, [], ids())
    where = sorted((p.deployment_id, p.node_id) for p in plan.placements)
    assert where == [("llm", "l1"), ("syn", "s1"), ("syn", "s2")]
    alone = plan_placement(deployments[1:], nodes[:2], [], ids())
    assert alone.placements == []
    assert "that runs llamacpp" in alone.unplaced["llm"]


# --- sites, regions, price, curtailment ---------------------------------------------------


def site_node(node_id: str, site: str, region: str, price: float = 50.0,
              memory_gib: int = 16, curtailed: bool = False) -> NodeCapacity:
    return NodeCapacity(node_id, True, memory_gib * 2**30, site_id=site, region=region,
                        price_per_mwh=price, curtailed=curtailed)


def test_replicas_spread_over_sites_before_doubling_up() -> None:
    # Site a has the two roomiest nodes; the second replica still goes to site b.
    nodes = [site_node("a1", "a", "us-tx", memory_gib=64), site_node("a2", "a", "us-tx",
             memory_gib=64), site_node("b1", "b", "us-tx", memory_gib=8)]
    plan = plan_placement([DeploymentSpec("d", "m", 2, 4 * 2**30)], nodes, [], ids())
    assert sorted(p.node_id[0] for p in plan.placements) == ["a", "b"]


def test_replicas_spread_over_regions_then_prefer_cheap_power() -> None:
    nodes = [site_node("tx1", "tx-a", "us-tx", price=20), site_node("tx2", "tx-b", "us-tx",
             price=25), site_node("ny1", "ny-a", "us-ny", price=90),
             site_node("ny2", "ny-b", "us-ny", price=60)]
    plan = plan_placement([DeploymentSpec("d", "m", 2, 2**30)], nodes, [], ids())
    # One per region (a region's outage costs one replica), the cheapest in each.
    assert sorted(p.node_id for p in plan.placements) == ["ny2", "tx1"]
    plan = plan_placement([DeploymentSpec("d", "m", 3, 2**30)], nodes, [], ids())
    assert sorted(p.node_id for p in plan.placements) == ["ny2", "tx1", "tx2"]


def test_curtailed_site_gets_nothing_new_but_keeps_what_runs() -> None:
    nodes = [site_node("c1", "c", "us-tx", price=5, curtailed=True),
             site_node("c2", "c", "us-tx", price=5, curtailed=True),
             site_node("o1", "o", "us-ny", price=80)]
    running = [Placement("i-old", "d", "m", "c1")]
    plan = plan_placement([DeploymentSpec("d", "m", 2, 2**30)], nodes, running, ids())
    assert sorted(p.node_id for p in plan.placements) == ["c1", "o1"]
    plan = plan_placement([DeploymentSpec("d", "m", 3, 2**30)], nodes, running, ids())
    assert "d" in plan.unplaced and len(plan.placements) == 2
