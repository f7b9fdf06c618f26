"""wattpool.policy.geo_placement.plan_sites: fit, spread, cheap power, no needless moves."""

from __future__ import annotations

import itertools
from collections import Counter

from wattpool.policy.geo_placement import ModelSpec, SitePlacement, SiteView, plan_sites

GB = 2**30


def ids() -> itertools.count[int]:
    return itertools.count(1)


def new_id_factory() -> object:
    counter = ids()
    return lambda: f"inst-{next(counter)}"


def site(name: str, region: str = "us", *, gpus: int = 8, mem: int = 80, price: float = 50.0,
         live: bool = True, curtailed: bool = False) -> SiteView:
    return SiteView(name, region, gpus, mem * GB, "H100", live, curtailed, price)


def model(replicas: int, mem_gb: int = 140, **kw: object) -> ModelSpec:
    return ModelSpec("dep", "llama-70b", replicas, mem_gb * GB, **kw)  # type: ignore[arg-type]


def test_an_instance_takes_the_gpus_its_memory_needs() -> None:
    plan = plan_sites([model(1)], [site("s1", mem=24)], [], new_id_factory())
    assert [p.gpus for p in plan.placements] == [6]  # 140 GB over 24 GB cards


def test_a_site_too_small_is_not_used_and_the_reason_is_given() -> None:
    plan = plan_sites([model(2)], [site("tiny", gpus=1, mem=24), site("ok")], [],
                      new_id_factory())
    assert [p.site_id for p in plan.placements] == ["ok"]
    assert "1 replica(s) need 140 GiB" in plan.unplaced["dep"]


def test_replicas_spread_over_sites_and_regions() -> None:
    sites = [site(f"us-{k}", "us", price=10.0) for k in range(4)] + [
        site(f"eu-{k}", "eu", price=90.0) for k in range(4)]
    plan = plan_sites([model(4, max_region_share=0.5)], sites, [], new_id_factory())
    per_region = Counter(p.site_id.split("-")[0] for p in plan.placements)
    assert per_region == {"us": 2, "eu": 2}  # cheap US capped at half the replicas
    assert len({p.site_id for p in plan.placements}) == 4  # one per site


def test_cheap_power_and_nearby_demand_win_within_the_caps() -> None:
    sites = [site("dear", "us", price=200.0), site("cheap", "us", price=20.0),
             site("far-cheap", "ap", price=20.0)]
    rtt = {("us", "us"): 5.0, ("us", "ap"): 180.0, ("ap", "ap"): 5.0, ("ap", "us"): 180.0}
    plan = plan_sites([model(1)], sites, [], new_id_factory(), demand={"us": 1.0},
                      rtt_ms=lambda a, b: rtt[(a, b)])
    assert [p.site_id for p in plan.placements] == ["cheap"]


def test_running_instances_stay_even_when_cheaper_sites_appear() -> None:
    current = [SitePlacement("old", "dep", "llama-70b", "dear", 2)]
    sites = [site("dear", price=300.0), site("cheap", price=5.0)]
    plan = plan_sites([model(1)], sites, current, new_id_factory())
    assert plan.placements == current and not plan.started and not plan.stopped


def test_a_move_needs_permission_and_a_real_gain() -> None:
    current = [SitePlacement("old", "dep", "llama-70b", "dear", 2)]
    sites = [site("dear", price=300.0), site("cheap", price=5.0)]
    moved = plan_sites([model(1)], sites, current, new_id_factory(), max_moves=1)
    assert [p.site_id for p in moved.placements] == ["cheap"]
    assert moved.stopped == current and "moved old from dear to cheap" in moved.notes["dep"][-1]
    slight = [site("dear", price=100.0), site("cheap", price=95.0)]
    kept = plan_sites([model(1)], slight, current, new_id_factory(), max_moves=1)
    assert kept.placements == current  # 5 % cheaper is not worth a weight download


def test_instances_on_a_dead_site_are_replaced_elsewhere() -> None:
    current = [SitePlacement("a", "dep", "llama-70b", "gone", 2),
               SitePlacement("b", "dep", "llama-70b", "alive", 2)]
    sites = [site("gone", live=False), site("alive"), site("spare", "eu")]
    plan = plan_sites([model(2)], sites, current, new_id_factory())
    assert {p.site_id for p in plan.placements} == {"alive", "spare"}
    assert [p.instance_id for p in plan.stopped] == ["a"]


def test_curtailed_sites_keep_what_runs_but_get_nothing_new() -> None:
    current = [SitePlacement("a", "dep", "llama-70b", "cut", 2)]
    sites = [site("cut", curtailed=True), site("other", "eu")]
    plan = plan_sites([model(2)], sites, current, new_id_factory())
    assert {p.site_id for p in plan.placements} == {"cut", "other"}
    assert [p.site_id for p in plan.started] == ["other"]


def test_extra_replicas_stop_dearest_first() -> None:
    current = [SitePlacement("x", "dep", "llama-70b", "dear", 2),
               SitePlacement("y", "dep", "llama-70b", "cheap", 2)]
    plan = plan_sites([model(1)], [site("dear", price=99.0), site("cheap", price=1.0)],
                      current, new_id_factory())
    assert [p.instance_id for p in plan.placements] == ["y"]
    assert [p.instance_id for p in plan.stopped] == ["x"]


def test_gpus_are_not_double_booked_across_models() -> None:
    a = ModelSpec("a", "m-a", 1, 140 * GB)
    b = ModelSpec("b", "m-b", 1, 140 * GB)
    plan = plan_sites([a, b], [site("only", gpus=2)], [], new_id_factory())
    assert len(plan.placements) == 1 and "b" in plan.unplaced
