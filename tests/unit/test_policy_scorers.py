"""wattpool.policy.scorers: each scorer alone, on small tables."""

from __future__ import annotations

import numpy as np
import pytest

from wattpool.policy.candidates import Candidate, CandidateTable, RequestSpec
from wattpool.policy.scorers import (
    EnergyScorer,
    Features,
    LatencyScorer,
    LoadScorer,
    PrefixScorer,
    ReliabilityScorer,
    RttScorer,
    Scorer,
    energy_cost,
)


def cand(name: str, **kw: object) -> Candidate:
    base: dict[str, object] = {"instance_id": name, "node_id": name, "model_id": "m",
                               "region": "eu", "max_batch": 4, "prefill_tps": 1000.0,
                               "decode_tps": 20.0, "watts": 100.0, "price_per_mwh": 50.0}
    base.update(kw)
    return Candidate(**base)  # type: ignore[arg-type]


def scores(scorer: Scorer, cands: list[Candidate], matched: list[float] | None = None,
           **req_kw: object) -> list[float]:
    table = CandidateTable.from_candidates(cands)
    spec: dict[str, object] = {"model_id": "m", "prompt_tokens": 1000, "output_tokens": 100}
    spec.update(req_kw)
    request = RequestSpec(**spec)  # type: ignore[arg-type]
    rows = np.arange(table.n)
    ok = np.ones(table.n, dtype=bool)
    f = Features(request, table.m, ok, np.array(matched or [0.0] * table.n))
    return [round(float(x), 6) for x in scorer.score(request, table, table.m, rows, f)]


def test_load_prefers_fewer_busy_slots_and_never_saturates() -> None:
    s = scores(LoadScorer(), [cand("idle"), cand("half", in_flight=2), cand("full", in_flight=4),
                              cand("over", in_flight=4, queued=4)])
    assert s == [1.0, pytest.approx(1 / 1.5), 0.5, pytest.approx(1 / 3)]


def test_load_is_relative_to_the_instance_slots() -> None:
    s = scores(LoadScorer(), [cand("big", max_batch=64, in_flight=8), cand("small", in_flight=2)])
    assert s[0] > s[1]  # 8 of 64 slots is lighter than 2 of 4


def test_prefix_scores_the_cached_share_of_the_prompt() -> None:
    s = scores(PrefixScorer(imbalance=0.5), [cand("none"), cand("half"), cand("all")],
               matched=[0.0, 500.0, 1000.0])
    assert s == [0.0, 0.5, 1.0]


def test_prefix_affinity_yields_to_load_past_the_imbalance() -> None:
    hot = cand("hot", in_flight=4)  # util 1.0
    warm = cand("warm", in_flight=2)  # util 0.5
    cold = cand("cold")  # util 0.0
    s = scores(PrefixScorer(imbalance=0.5), [hot, warm, cold], matched=[1000.0, 1000.0, 0.0])
    assert s == [0.0, 1.0, 0.0]  # hot is past 0 + 0.5; warm is exactly at the bar


def test_rtt_is_linear_up_to_the_cap() -> None:
    s = scores(RttScorer(cap_ms=200.0), [cand("near", rtt_ms=0.0), cand("mid", rtt_ms=100.0),
                                         cand("far", rtt_ms=200.0), cand("moon", rtt_ms=900.0)])
    assert s == [1.0, 0.5, 0.0, 0.0]


def test_energy_prefers_the_cheaper_request_and_scales_by_ratio() -> None:
    s = scores(EnergyScorer(), [cand("cheap", price_per_mwh=20.0),
                                cand("dear", price_per_mwh=200.0)])
    assert s[0] == 1.0
    assert 0.09 < s[1] < 0.11  # about a tenth: ratio, not min-max


def test_energy_counts_negative_prices_as_free() -> None:
    s = scores(EnergyScorer(), [cand("paid-to-run", price_per_mwh=-30.0),
                                cand("free", price_per_mwh=0.0)])
    assert s == [1.0, 1.0]


def test_energy_cost_is_watts_times_time_times_price() -> None:
    table = CandidateTable.from_candidates([cand("a", watts=200.0, price_per_mwh=50.0)])
    request = RequestSpec("m", prompt_tokens=1000, output_tokens=100)
    f = Features(request, table.m, np.ones(1, bool), np.zeros(1))
    # 1000 tokens / 1000 tok/s + 100 / 20 tok/s = 6 s; 200 W * 6 s * $50/MWh
    assert float(energy_cost(table.m, f)[0]) == pytest.approx(200 * 6 * 50)


def test_energy_counts_cached_prompt_as_free_time() -> None:
    s = scores(EnergyScorer(), [cand("cold"), cand("warm")], matched=[0.0, 1000.0])
    assert s[1] == 1.0 and s[0] < 1.0


def test_latency_prefers_sooner_finish_including_the_wait_for_a_slot() -> None:
    s = scores(LatencyScorer(), [cand("fast", prefill_tps=4000.0), cand("slow"),
                                 cand("fast-but-full", prefill_tps=4000.0, in_flight=4,
                                      queued=4)])
    assert s[0] == 1.0
    assert s[1] < 1.0
    assert s[2] < s[0]


def test_reliability_penalises_recent_errors() -> None:
    s = scores(ReliabilityScorer(), [cand("good"), cand("flaky", error_rate=0.5),
                                     cand("broken", error_rate=1.0),
                                     cand("odd", error_rate=-0.2)])
    assert s == [1.0, 0.25, 0.0, 1.0]


def test_ratio_scorers_compare_with_the_best_eligible_only() -> None:
    table = CandidateTable.from_candidates([cand("cheap-but-out", price_per_mwh=1.0),
                                            cand("a", price_per_mwh=50.0),
                                            cand("b", price_per_mwh=100.0)])
    request = RequestSpec("m", prompt_tokens=1000, output_tokens=100)
    ok = np.array([False, True, True])
    f = Features(request, table.m, ok, np.zeros(3))
    s = EnergyScorer().score(request, table, table.m, np.arange(3), f)
    assert float(s[1]) == 1.0  # the best eligible, not the filtered-out cheap one
