"""wattpool.sim.engine: a 100-site simulation keeps its invariants, for every policy."""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest

from wattpool.policy.baselines import POLICY_NAMES
from wattpool.sim.clock import SimClock
from wattpool.sim.engine import Simulation
from wattpool.sim.faults import DONE, REJECTED
from wattpool.sim.metrics import check_invariants, summarize
from wattpool.sim.runner import RunSpec, Setup, prepare
from wattpool.sim.types import SimConfig
from wattpool.sim.workload import Workload


@pytest.fixture(scope="module")
def setup() -> Setup:
    # 100 sites, two simulated minutes of the Azure arrivals at 70 % of capacity.
    return prepare(RunSpec(sites=100, duration_s=120.0, load=0.7, seed=11))


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_every_request_finishes_or_is_rejected_with_a_reason(setup: Setup,
                                                             policy: str) -> None:
    res = Simulation(setup.fleet, setup.workload, policy, seed=11).run()
    assert check_invariants(res) == []
    assert np.all((res.status == DONE) | (res.status == REJECTED))
    assert all(res.reasons[int(r)] for r in np.flatnonzero(res.status == REJECTED))
    # Tokens are conserved: a finished request got exactly its output, across attempts.
    done = res.status == DONE
    assert np.array_equal(res.delivered[done], res.output[done])
    assert (res.status == DONE).mean() > 0.95


def test_faults_move_streams_without_losing_tokens(setup: Setup) -> None:
    fleet = setup.fleet
    # Every instance fails about twice a minute; sites are curtailed every few minutes.
    sites = [replace(s, mtbf_h=0.01, mttr_s=20.0, curtail_per_day=500.0, curtail_s=30.0)
             for s in fleet.sites]
    stormy = replace(fleet, sites=sites)
    res = Simulation(stormy, setup.workload, "wattpool", seed=11).run()
    assert res.counters["failures"] > 100
    assert res.counters["curtailments"] > 10
    assert res.counters["migrations"] > 0
    assert check_invariants(res) == []
    rejected = res.status == REJECTED
    assert np.all(res.delivered[rejected] < res.output[rejected])


def test_a_fleet_with_nothing_up_rejects_everything_with_the_reason(setup: Setup) -> None:
    sites = [replace(s, curtail_above=-1e9) for s in setup.fleet.sites]  # always curtailed
    first = Workload(**{f.name: getattr(setup.workload, f.name)[:500]
                        for f in fields(Workload)})
    res = Simulation(replace(setup.fleet, sites=sites), first, "least-loaded", seed=11).run()
    assert np.all(res.status == REJECTED)
    assert set(res.reasons.values()) == {
        f"0/{sum(setup.fleet.instances_per_site())} instances available: "
        f"{sum(setup.fleet.instances_per_site())} curtailed"}
    assert check_invariants(res) == []


def test_runs_are_deterministic_and_the_clock_is_virtual(setup: Setup) -> None:
    clock = SimClock()
    a = summarize(Simulation(setup.fleet, setup.workload, "wattpool", seed=5,
                             clock=clock).run())
    b = summarize(Simulation(setup.fleet, setup.workload, "wattpool", seed=5).run())
    assert a == b
    assert clock.monotonic() >= float(setup.workload.t[-1])  # the loop moved the clock


def test_without_faults_nothing_fails(setup: Setup) -> None:
    cfg = SimConfig(faults=False)
    res = Simulation(setup.fleet, setup.workload, "power-of-two", cfg, seed=1).run()
    assert res.counters["failures"] == res.counters["curtailments"] == 0
    assert res.counters["errors"] == 0
    assert (res.status == DONE).all()


def test_policies_may_keep_their_own_prefix_estimate(setup: Setup) -> None:
    cfg = SimConfig(router_prefix_estimate=True)
    res = Simulation(setup.fleet, setup.workload, "prefix-threshold", cfg, seed=1).run()
    assert check_invariants(res) == []
    assert res.cached.sum() > 0
