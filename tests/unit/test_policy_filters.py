"""wattpool.policy.filters: each filter's mask and its reasons, as tables."""

from __future__ import annotations

import numpy as np
import pytest

from wattpool.policy.candidates import Candidate, CandidateTable, RequestSpec
from wattpool.policy.filters import (
    CapacityFilter,
    ExcludeFilter,
    HealthFilter,
    RegionFilter,
    default_filters,
    first_failure,
    passing,
)


def cand(name: str, **kw: object) -> Candidate:
    base: dict[str, object] = {"instance_id": name, "node_id": f"node-{name}", "model_id": "m",
                               "region": "eu", "max_batch": 4, "max_queue": 8}
    base.update(kw)
    return Candidate(**base)  # type: ignore[arg-type]


def req(**kw: object) -> RequestSpec:
    base: dict[str, object] = {"model_id": "m", "prompt_tokens": 100, "output_tokens": 10}
    base.update(kw)
    return RequestSpec(**base)  # type: ignore[arg-type]


def run_filter(f: object, table: CandidateTable, request: RequestSpec) -> list[bool]:
    rows = np.arange(table.n)
    return f.mask(request, table, table.m, rows).tolist()  # type: ignore[attr-defined]


@pytest.mark.parametrize(("candidate", "passes", "why"), [
    (cand("a"), True, "healthy"),
    (cand("a", ready=False), False, "not ready"),
    (cand("a", draining=True), False, "draining"),
    (cand("a", curtailed=True), False, "curtailed"),
    (cand("a", quarantined=True), False, "quarantined"),
    (cand("a", ready=False, curtailed=True), False, "not ready"),
    (cand("a", curtailed=True, quarantined=True), False, "quarantined"),
], ids=["a healthy instance passes", "not ready is dropped", "draining is dropped",
        "curtailed is dropped", "quarantined is dropped", "not ready is said first",
        "quarantine is said before curtailment"])
def test_health_filter(candidate: Candidate, passes: bool, why: str) -> None:
    table = CandidateTable.from_candidates([candidate])
    f = HealthFilter()
    assert run_filter(f, table, req()) == [passes]
    assert f.why(req(), table, 0) == why


def test_exclude_filter_drops_only_the_tried_instances() -> None:
    table = CandidateTable.from_candidates([cand("a"), cand("b"), cand("c")])
    f = ExcludeFilter()
    assert run_filter(f, table, req(exclude=frozenset({"b", "unknown"}))) == [True, False, True]
    assert run_filter(f, table, req()) == [True, True, True]
    assert f.why(req(), table, 1) == "already tried for this request"
    assert f.unresolvable


@pytest.mark.parametrize(("candidate", "passes", "why"), [
    (cand("a", queued=7, max_queue=8), True, None),
    (cand("a", queued=8, max_queue=8), False, "queue full (8/8)"),
    (cand("a", kv_used=0.97), True, None),
    (cand("a", kv_used=0.99), False, "KV cache full (99%)"),
], ids=["a queue below its limit passes", "a full queue is dropped",
        "KV just below the limit passes", "a full KV cache is dropped"])
def test_capacity_filter(candidate: Candidate, passes: bool, why: str | None) -> None:
    table = CandidateTable.from_candidates([candidate])
    f = CapacityFilter()
    assert run_filter(f, table, req()) == [passes]
    if why:
        assert f.why(req(), table, 0) == why


def test_region_filter_allows_named_regions_only() -> None:
    table = CandidateTable.from_candidates([cand("a", region="eu"), cand("b", region="us")])
    eu = table.regions.index("eu")
    f = RegionFilter()
    assert run_filter(f, table, req()) == [True, True]
    assert run_filter(f, table, req(allowed_regions=frozenset({eu}))) == [True, False]
    assert f.why(req(), table, 1) == "region us not allowed"
    assert f.unresolvable


def test_passing_needs_every_filter() -> None:
    table = CandidateTable.from_candidates([
        cand("ok"), cand("tried"), cand("down", ready=False), cand("full", queued=8)])
    request = req(exclude=frozenset({"tried"}))
    ok = passing(default_filters(), request, table, table.m, np.arange(table.n))
    assert ok.tolist() == [True, False, False, False]


def test_first_failure_names_the_filter_and_whether_waiting_helps() -> None:
    table = CandidateTable.from_candidates([cand("ok"), cand("tried", curtailed=True),
                                            cand("cut", curtailed=True)])
    request = req(exclude=frozenset({"tried"}))
    filters = default_filters()
    assert first_failure(filters, request, table, 0) is None
    # Exclusion comes first: the tried instance is "already tried", not "curtailed".
    assert first_failure(filters, request, table, 1) == (
        "exclude", "already tried for this request", True)
    assert first_failure(filters, request, table, 2) == ("health", "curtailed", False)
