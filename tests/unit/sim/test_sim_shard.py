"""wattpool.sim.shard: a sharded run agrees with the unsharded one within a stated
tolerance, and the split keeps each shard a small copy of the fleet."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from wattpool.sim.engine import Simulation
from wattpool.sim.metrics import check_invariants, summarize
from wattpool.sim.runner import RunSpec, Setup, prepare
from wattpool.sim.shard import run_sharded, split

# What "agrees" means (docs/simulator.md, "Sharded runs"): the sharded run is a different
# random draw of the same system, so it is held to about the spread between two seeds of
# the unsharded run, with room for the one systematic effect seen (a shard of 50 sites
# has fewer cheap sites to choose from: energy per token up to ~7 % higher at 100 sites).
TOLERANCE = {
    "goodput_rps": ("relative", 0.02),
    "slo_attainment": ("absolute", 0.015),
    "prefix_hit_rate": ("absolute", 0.03),
    "energy_usd_per_mtok": ("relative", 0.10),
    "ttft_p50": ("relative", 0.10),
    "tpot_p50": ("relative", 0.05),
}


@pytest.fixture(scope="module")
def setup() -> Setup:
    # 100 sites, three simulated minutes at 70 % of capacity: ~10,000 requests.
    return prepare(RunSpec(sites=100, duration_s=180.0, load=0.7, seed=11))


def key_metrics(summary: dict[str, object]) -> dict[str, float]:
    ttft = summary["ttft_s"]
    tpot = summary["tpot_s"]
    assert isinstance(ttft, dict) and isinstance(tpot, dict)
    return {"goodput_rps": float(summary["goodput_rps"]),  # type: ignore[arg-type]
            "slo_attainment": float(summary["slo_attainment"]),  # type: ignore[arg-type]
            "prefix_hit_rate": float(summary["prefix_hit_rate"]),  # type: ignore[arg-type]
            "energy_usd_per_mtok": float(summary["energy_usd_per_mtok"]),  # type: ignore[arg-type]
            "ttft_p50": float(ttft["p50"]), "tpot_p50": float(tpot["p50"])}


def test_two_shards_agree_with_one_process_within_the_tolerance(setup: Setup) -> None:
    whole = Simulation(setup.fleet, setup.workload, "wattpool", seed=11).run()
    halves = run_sharded(setup.fleet, setup.workload, "wattpool", seed=11, shards=2)
    assert check_invariants(halves) == []
    a, b = key_metrics(summarize(whole)), key_metrics(summarize(halves))
    for name, (kind, tol) in TOLERANCE.items():
        gap = abs(b[name] - a[name]) / (abs(a[name]) if kind == "relative" else 1.0)
        assert gap <= tol, f"{name}: unsharded {a[name]}, sharded {b[name]} ({kind} {tol})"
    # Every request was simulated once, in one shard, and its tokens are conserved.
    assert halves.counters["decisions"] >= setup.workload.n
    assert len(halves.status) == setup.workload.n
    assert float(halves.site_tokens.sum()) == pytest.approx(
        float((halves.prompt + halves.output)[halves.status == 1].sum()))


def test_one_shard_is_exactly_the_unsharded_simulation(setup: Setup) -> None:
    whole = summarize(Simulation(setup.fleet, setup.workload, "round-robin", seed=3).run())
    one = summarize(run_sharded(setup.fleet, setup.workload, "round-robin", seed=3,
                                shards=1))
    assert one == whole


def test_the_split_deals_every_stratum_evenly_and_keeps_conversations_whole(
        setup: Setup) -> None:
    fleet, wl = setup.fleet, setup.workload
    plan = split(fleet, wl, 2, seed=11)
    for k in range(2):
        assert abs(len(plan.sites(k)) - len(fleet.sites) / 2) <= 10
    strata: Counter[tuple[str, str, int, int]] = Counter(
        (s.region, s.gpu, s.gpus, int(plan.site_shard[i])) for i, s in enumerate(fleet.sites))
    for (region, gpu, gpus, _k), count in strata.items():
        other = strata.get((region, gpu, gpus, 1 - _k), 0)
        assert abs(count - other) <= 1
    # A conversation's turns all go to one shard (their caches stay together).
    for conv in np.unique(wl.conv[wl.turn > 0])[:200].tolist():
        assert len(set(plan.request_shard[wl.conv == conv].tolist())) == 1
    assert set(plan.request_shard.tolist()) == {0, 1}


def test_a_failing_shard_raises_with_its_traceback(setup: Setup) -> None:
    with pytest.raises(RuntimeError, match="shard 0 failed"):
        run_sharded(setup.fleet, setup.workload, "no-such-policy", seed=1, shards=2)
