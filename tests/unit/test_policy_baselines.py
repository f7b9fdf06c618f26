"""wattpool.policy.baselines: the comparison policies, one interface."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wattpool.policy.baselines import (
    POLICY_NAMES,
    LeastLoadedPolicy,
    PowerOfTwoPolicy,
    PrefixThresholdPolicy,
    RoundRobinPolicy,
    make_policy,
)
from wattpool.policy.candidates import Candidate, CandidateTable, RequestSpec


def cand(name: str, **kw: object) -> Candidate:
    base: dict[str, object] = {"instance_id": name, "node_id": name, "model_id": "m",
                               "region": "eu", "max_batch": 8}
    base.update(kw)
    return Candidate(**base)  # type: ignore[arg-type]


def req(**kw: object) -> RequestSpec:
    base: dict[str, object] = {"model_id": "m", "prompt_tokens": 256, "output_tokens": 16}
    base.update(kw)
    return RequestSpec(**base)  # type: ignore[arg-type]


def rng() -> np.random.Generator:
    return np.random.default_rng(3)


def test_make_policy_knows_every_name_and_refuses_others() -> None:
    for name in POLICY_NAMES:
        assert make_policy(name).name == name
    with pytest.raises(ValueError, match="unknown policy 'random'"):
        make_policy("random")


def test_round_robin_rotates_and_skips_what_is_filtered() -> None:
    table = CandidateTable.from_candidates([cand("a"), cand("b", draining=True), cand("c")])
    policy = RoundRobinPolicy()
    got = [policy.choose(req(), table, rng()).chosen for _ in range(5)]
    assert got == ["a", "c", "a", "c", "a"]


def test_round_robin_ignores_load() -> None:
    table = CandidateTable.from_candidates([cand("a", in_flight=7), cand("b")])
    policy = RoundRobinPolicy()
    assert [policy.choose(req(), table, rng()).chosen for _ in range(2)] == ["a", "b"]


def test_least_loaded_counts_queued_too_and_ties_go_to_the_lowest_id() -> None:
    table = CandidateTable.from_candidates([cand("z"), cand("b", queued=1), cand("a")])
    assert LeastLoadedPolicy().choose(req(), table, rng()).chosen == "a"


def test_power_of_two_takes_the_lighter_of_its_pair() -> None:
    table = CandidateTable.from_candidates([cand("busy", in_flight=6), cand("light")])
    picks = {PowerOfTwoPolicy().choose(req(), table, np.random.default_rng(s)).chosen
             for s in range(20)}
    # With two candidates the pair is either both (light wins) or one drawn twice.
    assert "light" in picks


def test_prefix_threshold_follows_a_long_match_while_balanced() -> None:
    policy = PrefixThresholdPolicy(block_tokens=64)
    hashes = [1, 2, 3, 4]
    request = req(block_hashes=hashes, prompt_tokens=4 * 64 + 1)
    table = CandidateTable.from_candidates([cand("a"), cand("b", in_flight=3)])
    policy.observe(request, table, 1)
    assert policy.choose(request, table, rng()).chosen == "b"  # 99 % cached


def test_prefix_threshold_goes_to_the_smallest_tree_on_a_short_match() -> None:
    policy = PrefixThresholdPolicy(block_tokens=64)
    table = CandidateTable.from_candidates([cand("a"), cand("b")])
    policy.observe(req(block_hashes=[1, 2, 3]), table, 0)  # a's tree is bigger
    short = req(block_hashes=[1, 9, 9, 9], prompt_tokens=4 * 64)  # 25 % match on a
    assert policy.choose(short, table, rng()).chosen == "b"


def test_prefix_threshold_balances_when_loads_diverge() -> None:
    policy = PrefixThresholdPolicy(block_tokens=64, abs_threshold=4)
    request = req(block_hashes=[1, 2], prompt_tokens=2 * 64)
    table = CandidateTable.from_candidates([cand("a", in_flight=20, max_queue=64),
                                            cand("b", in_flight=1)])
    policy.observe(request, table, 0)
    assert policy.choose(request, table, rng()).chosen == "b"


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_says_why_nothing_fits(name: str) -> None:
    table = CandidateTable.from_candidates([cand("a", curtailed=True), cand("b", ready=False)])
    d = make_policy(name).choose(req(), table, rng())
    assert d.chosen is None
    assert d.reason == "0/2 instances available: 1 curtailed, 1 not ready"


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_explains_on_request(name: str) -> None:
    table = CandidateTable.from_candidates([cand("a"), cand("b", draining=True)])
    d = make_policy(name).choose(req(), table, rng(), explain=True)
    assert d.chosen == "a"
    assert d.report is not None
    assert {r.instance_id: r.dropped_by for r in d.report} == {"a": None, "b": "health"}


snapshots = st.lists(st.tuples(st.integers(0, 9), st.booleans()), min_size=0, max_size=12)


@settings(max_examples=200, deadline=None)
@given(snapshots, st.sets(st.integers(0, 11), max_size=4))
def test_least_loaded_is_fewest_in_flight_then_lowest_id(
        rows: list[tuple[int, bool]], tried: set[int]) -> None:
    """The rule, stated plainly: among ready, untried instances, the fewest requests in
    flight; ties to the lowest id."""
    ids = [f"i{k:02d}" for k in range(len(rows))]
    exclude = {f"i{k:02d}" for k in tried}
    eligible = [(load, iid) for iid, (load, ready) in zip(ids, rows, strict=True)
                if ready and iid not in exclude]
    want = min(eligible)[1] if eligible else None
    table = CandidateTable.from_candidates([cand(iid, in_flight=load, ready=ready,
                                                 max_queue=10**6)
                                            for iid, (load, ready) in zip(ids, rows,
                                                                          strict=True)])
    got = LeastLoadedPolicy().choose(req(exclude=frozenset(exclude)), table, rng())
    assert got.chosen == want
