"""Properties every routing policy keeps, whatever the fleet looks like (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from wattpool.policy.baselines import POLICY_NAMES, make_policy
from wattpool.policy.candidates import IN_FLIGHT, Candidate, CandidateTable, RequestSpec
from wattpool.policy.scoring import DEFAULT_WEIGHTS, ScoringPolicy

instance = st.fixed_dictionaries({
    "in_flight": st.integers(0, 16), "queued": st.integers(0, 4),
    "max_batch": st.sampled_from([1, 8, 64]), "price_per_mwh": st.floats(-40, 900),
    "watts": st.floats(5, 800), "prefill_tps": st.floats(50, 20000),
    "decode_tps": st.floats(2, 200), "error_rate": st.floats(0, 1),
    "rtt_ms": st.floats(0, 400), "kv_used": st.floats(0, 1),
    "ready": st.booleans(), "draining": st.booleans(), "curtailed": st.booleans(),
    "quarantined": st.booleans(),
})
fleets = st.lists(instance, min_size=1, max_size=60)


def table_of(rows: list[dict[str, object]]) -> CandidateTable:
    return CandidateTable.from_candidates([
        Candidate(instance_id=f"i{k:03d}", node_id=f"n{k}", model_id="m", region="r",
                  max_queue=8, **r)  # type: ignore[arg-type]
        for k, r in enumerate(rows)])


def request(hashes: list[int] | None = None) -> RequestSpec:
    return RequestSpec("m", prompt_tokens=900, output_tokens=120,
                       block_hashes=hashes or [])


@settings(max_examples=150, deadline=None)
@given(fleets, st.sampled_from(POLICY_NAMES), st.integers(0, 2**32 - 1))
def test_a_draining_curtailed_or_quarantined_node_is_never_picked(
        rows: list[dict[str, object]], name: str, seed: int) -> None:
    table = table_of(rows)
    policy = make_policy(name)
    rng = np.random.default_rng(seed)
    for _ in range(5):
        d = policy.choose(request(), table, rng)
        if d.chosen is None:
            # Then truly nothing was eligible, and the reason says how many were looked at.
            assert d.reason.startswith(f"0/{table.n} instances available")
            continue
        picked = rows[d.row]
        assert picked["ready"] and not picked["draining"]
        assert not picked["curtailed"] and not picked["quarantined"]
        table.m[IN_FLIGHT, d.row] += 1  # the next decision sees it busier


weights = st.fixed_dictionaries({k: st.floats(0, 5) for k in DEFAULT_WEIGHTS})


@settings(max_examples=200, deadline=None)
@given(instance, st.floats(-40, 900), st.floats(0, 900), weights)
def test_of_two_equal_candidates_the_cheaper_never_scores_lower(
        row: dict[str, object], cheap: float, extra: float, w: dict[str, float]) -> None:
    row = {**row, "ready": True, "draining": False, "curtailed": False, "quarantined": False,
           "queued": 0, "kv_used": 0.0}
    table = table_of([{**row, "price_per_mwh": cheap + extra},
                      {**row, "price_per_mwh": cheap}])
    d = ScoringPolicy(w).choose(request(), table, np.random.default_rng(0), explain=True)
    assert d.report is not None
    total = {r.instance_id: r.total for r in d.report}
    assert total["i001"] >= total["i000"]
    if extra > 0 and any(v > 0 for v in w.values()):
        assert d.chosen in ("i001", "i000")  # ties (free power) may go either way
        if total["i001"] > total["i000"]:
            assert d.chosen == "i001"


@settings(max_examples=60, deadline=None)
@given(fleets, st.sampled_from(POLICY_NAMES), st.integers(0, 2**32 - 1))
def test_decisions_are_deterministic_under_a_fixed_seed(
        rows: list[dict[str, object]], name: str, seed: int) -> None:
    def run() -> list[str | None]:
        table = table_of(rows)
        policy = make_policy(name)
        rng = np.random.default_rng(seed)
        out: list[str | None] = []
        for k in range(8):
            req = request([k % 3, 100 + k % 2])
            d = policy.choose(req, table, rng)
            out.append(d.chosen)
            if d.row >= 0:
                policy.observe(req, table, d.row)
                table.m[IN_FLIGHT, d.row] += 1
        return out

    assert run() == run()
