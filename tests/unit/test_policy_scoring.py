"""wattpool.policy.scoring.ScoringPolicy: choices, explanations, sampling, both paths."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wattpool.policy import candidates as cols
from wattpool.policy.candidates import Candidate, CandidateTable, RequestSpec
from wattpool.policy.decision import explain, explain_text
from wattpool.policy.scoring import DEFAULT_WEIGHTS, ScoringPolicy


def cand(name: str, **kw: object) -> Candidate:
    base: dict[str, object] = {"instance_id": name, "node_id": name, "model_id": "m",
                               "region": "eu", "max_batch": 8, "prefill_tps": 2000.0,
                               "decode_tps": 25.0, "watts": 100.0, "price_per_mwh": 50.0,
                               "rtt_ms": 20.0}
    base.update(kw)
    return Candidate(**base)  # type: ignore[arg-type]


def req(**kw: object) -> RequestSpec:
    base: dict[str, object] = {"model_id": "m", "prompt_tokens": 1024, "output_tokens": 128}
    base.update(kw)
    return RequestSpec(**base)  # type: ignore[arg-type]


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def pick(policy: ScoringPolicy, cands: list[Candidate], **kw: object) -> str | None:
    table = CandidateTable.from_candidates(cands)
    return policy.choose(req(**kw), table, rng()).chosen


@pytest.mark.parametrize(("cands", "expected"), [
    ([cand("busy", in_flight=7), cand("idle")], "idle"),
    ([cand("far", rtt_ms=250.0), cand("near", rtt_ms=5.0)], "near"),
    ([cand("dear", price_per_mwh=300.0), cand("cheap", price_per_mwh=10.0)], "cheap"),
    ([cand("flaky", error_rate=0.6), cand("solid")], "solid"),
    ([cand("slow", prefill_tps=300.0, decode_tps=10.0), cand("fast")], "fast"),
    ([cand("down", ready=False), cand("busy", in_flight=7)], "busy"),
], ids=["an idle instance beats a busy one", "a near site beats a far one",
        "cheap power beats dear power", "a reliable node beats a flaky one",
        "a fast GPU beats a slow one", "anything up beats a better one that is down"])
def test_default_policy_prefers(cands: list[Candidate], expected: str) -> None:
    assert pick(ScoringPolicy(), cands) == expected


def test_prefix_affinity_wins_until_the_holder_is_too_busy() -> None:
    policy = ScoringPolicy(weights={"prefix": 3.0, "load": 1.0})
    hashes = [11, 12, 13, 14]
    request = req(block_hashes=hashes, prompt_tokens=4 * 64 + 10)
    warm, cold = cand("warm"), cand("cold")
    table = CandidateTable.from_candidates([warm, cold])
    policy.observe(request, table, 0)  # the policy remembers it sent this prompt to warm
    assert policy.choose(request, table, rng()).chosen == "warm"
    # Past the imbalance threshold affinity yields: one hot prefix cannot pile up.
    busy = CandidateTable.from_candidates([cand("warm", in_flight=8, queued=2), cold])
    assert policy.choose(request, busy, rng()).chosen == "cold"


def test_forget_drops_affinity() -> None:
    policy = ScoringPolicy(weights={"prefix": 1.0})
    request = req(block_hashes=[1, 2], prompt_tokens=200)
    table = CandidateTable.from_candidates([cand("a"), cand("b")])
    policy.observe(request, table, 1)
    assert policy.choose(request, table, rng()).matched_tokens == 128
    policy.forget("b")
    assert policy.choose(request, table, rng()).matched_tokens == 0


def test_nothing_fits_counts_the_reasons() -> None:
    policy = ScoringPolicy()
    cands = [cand("a", curtailed=True), cand("b", curtailed=True), cand("c", queued=16,
                                                                        max_queue=16),
             cand("d", ready=False)]
    d = policy.choose(req(), CandidateTable.from_candidates(cands), rng())
    assert d.chosen is None and d.row == -1
    assert d.reason == "0/4 instances available: 2 curtailed, 1 queue full, 1 not ready"
    assert not d.unresolvable  # curtailment ends, queues drain: answer 503, retry later


def test_only_unresolvable_reasons_say_so() -> None:
    d = ScoringPolicy().choose(req(exclude=frozenset({"a"})),
                               CandidateTable.from_candidates([cand("a")]), rng())
    assert d.unresolvable and d.reason == "0/1 instances available: 1 already tried for this " \
                                          "request"


def test_no_instance_of_the_model() -> None:
    d = ScoringPolicy().choose(req(model_id="ghost"), CandidateTable([]), rng())
    assert d.chosen is None and "no instance of model 'ghost'" in d.reason


def test_explanation_has_every_candidate_with_parts_or_a_reason() -> None:
    cands = [cand("a"), cand("b", in_flight=4), cand("c", draining=True)]
    d = ScoringPolicy().choose(req(), CandidateTable.from_candidates(cands), rng(),
                               explain=True)
    body = explain(d)
    assert body["chosen"] == "a"
    assert body["dropped"] == {"c": "health: draining"}
    assert set(body["scores"]) == {"a", "b"}
    assert set(body["scores"]["a"]) == {*DEFAULT_WEIGHTS, "total"}
    assert body["scores"]["a"]["total"] > body["scores"]["b"]["total"]
    total = sum(DEFAULT_WEIGHTS[k] * v for k, v in body["scores"]["a"].items() if k != "total")
    assert body["scores"]["a"]["total"] == pytest.approx(total, abs=0.05)
    text = explain_text(d)
    assert "chose a" in text and "c: health: draining" in text


def test_an_explained_decision_chooses_what_the_fast_one_does() -> None:
    cands = [cand(f"i{k}", in_flight=k % 5, price_per_mwh=10.0 * k, rtt_ms=7.0 * k)
             for k in range(10)]
    table = CandidateTable.from_candidates(cands)
    fast = ScoringPolicy().choose(req(), table, rng())
    slow = ScoringPolicy().choose(req(), table, rng(), explain=True)
    assert fast.chosen == slow.chosen


def test_a_sample_without_eligible_rows_falls_back_to_everyone() -> None:
    # 200 candidates, one eligible: an 8-row sample almost never holds it.
    cands = [cand(f"i{k:03d}", curtailed=k != 137) for k in range(200)]
    policy = ScoringPolicy(sample=8, full_scan_limit=16)
    d = policy.choose(req(), CandidateTable.from_candidates(cands), rng())
    assert d.chosen == "i137"


def test_large_sets_are_sampled_small_ones_scanned() -> None:
    small = CandidateTable.from_candidates([cand(f"i{k}") for k in range(10)])
    large = CandidateTable.from_candidates([cand(f"i{k}") for k in range(500)])
    policy = ScoringPolicy(sample=8, holders=4, full_scan_limit=16)
    assert policy.choose(req(), small, rng()).considered == 10
    assert policy.choose(req(), large, rng()).considered == 8


def test_weights_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown scorer"):
        ScoringPolicy(weights={"vibes": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        ScoringPolicy(weights={"load": -1.0})


def test_the_fused_path_reads_the_columns_it_expects() -> None:
    # _decide_fused unpacks a row's fields by position: the layout must not drift.
    assert (cols.OK, cols.FLAGS, cols.IN_FLIGHT, cols.QUEUED, cols.MAX_BATCH, cols.MAX_QUEUE,
            cols.KV_USED, cols.PRICE, cols.WATTS, cols.INV_PREFILL, cols.INV_DECODE,
            cols.ERROR_RATE, cols.REGION, cols.WATT_PRICE) == tuple(range(cols.N_FIELDS))


rows_st = st.lists(st.fixed_dictionaries({
    "in_flight": st.integers(0, 10), "queued": st.integers(0, 12),
    "max_batch": st.sampled_from([1, 4, 64]), "kv_used": st.floats(0, 1),
    "price_per_mwh": st.floats(-50, 500), "watts": st.floats(1, 500),
    "prefill_tps": st.floats(100, 10000), "decode_tps": st.floats(5, 100),
    "error_rate": st.floats(0, 1), "rtt_ms": st.floats(0, 400),
    "ready": st.booleans(), "curtailed": st.booleans(), "region": st.sampled_from(["a", "b"]),
}), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(rows_st, st.lists(st.integers(0, 4), max_size=6), st.integers(1, 5000),
       st.integers(1, 2000), st.booleans())
def test_fused_and_plugin_paths_agree(rows: list[dict[str, object]], matched_blocks: list[int],
                                      prompt: int, output: int, exclude_first: bool) -> None:
    table = CandidateTable.from_candidates([cand(f"i{k:02d}", max_queue=8, **r)
                                            for k, r in enumerate(rows)])
    policy = ScoringPolicy(block_tokens=64)
    request = req(prompt_tokens=prompt, output_tokens=output,
                  exclude=frozenset({"i00"}) if exclude_first else frozenset())
    positions = list(range(table.n))
    matched = [min(64.0 * b, float(prompt)) for b in matched_blocks][:table.n]
    matched += [0.0] * (table.n - len(matched))
    fused = policy._decide_fused(request, table, positions, matched)
    plugin = policy._decide(request, table, np.array(positions), np.array(matched), True)
    assert (fused is None) == (plugin is None)
    if fused is None or plugin is None:
        return
    assert plugin.report is not None
    totals = {r.instance_id: r.total for r in plugin.report if r.dropped_by is None}
    # Same winner, or a tie within rounding (reports round to 0.01).
    assert totals[fused.chosen] == pytest.approx(totals[plugin.chosen], abs=0.02)  # type: ignore[index]
