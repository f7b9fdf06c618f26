"""wattpool.sim.metrics: the definitions, on hand-made outcomes, and the invariant check."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from wattpool.sim.faults import DONE, REJECTED
from wattpool.sim.metrics import Slo, check_invariants, summarize
from wattpool.sim.types import SimResult


def outcome() -> SimResult:
    """Three requests on one site over 10 s: fast, slow TTFT, rejected."""
    nan = float("nan")
    return SimResult(
        policy="p", duration_s=10.0,
        status=np.array([DONE, DONE, REJECTED]),
        arrival=np.array([0.0, 1.0, 2.0]),
        first_token=np.array([0.5, 8.0, nan]),
        finish=np.array([1.5, 9.0, nan]),
        rtt=np.array([100.0, 100.0, 0.0]),
        prompt=np.array([1000, 3000, 500]), output=np.array([11, 11, 20]),
        delivered=np.array([11, 11, 4]),
        cached=np.array([500, 0, 0]), prefilled=np.array([1000, 3000, 500]),
        energy_j=np.array([3.6e6, 3.6e6, 0.0]), energy_usd=np.array([0.1, 0.3, 0.0]),
        attempts=np.array([1, 1, 4]), reasons={2: "failed on 4 instances"},
        site_busy_s=np.array([5.0]), site_slots=np.array([2.0]),
        site_tokens=np.array([1011.0 + 3011.0]), site_ids=["s"], end_s=10.0,
    )


def test_latencies_goodput_and_hit_rate() -> None:
    s = summarize(outcome(), Slo(ttft_s=5.0, tpot_s=0.2), usd_per_mtok=1.0)
    assert s["finished"] == 2 and s["rejected"] == 1
    assert s["rejected_reasons"] == {"failed on 4 instances": 1}
    # TTFT = first token - arrival + RTT: 0.6 s and 7.1 s. Only the first meets 5 s.
    assert s["ttft_s"]["p50"] == pytest.approx((0.6 + 7.1) / 2)
    assert s["goodput_rps"] == pytest.approx(0.1)  # one good request in 10 s
    assert s["tpot_s"]["p50"] == pytest.approx(0.1)  # (1.5 - 0.5) / 10
    assert s["prefix_hit_rate"] == pytest.approx(500 / 4500, abs=1e-4)  # rounded
    assert s["energy_kwh"] == pytest.approx(2.0)
    assert s["energy_usd_per_mtok"] == pytest.approx(0.4 / (4022 / 1e6), rel=1e-4)
    assert s["utilisation"]["mean"] == pytest.approx(0.25)  # 5 slot-s of 2 slots x 10 s
    assert s["revenue_usd"] == pytest.approx(0.0, abs=0.01)  # 4,022 tokens at $1/Mtok


def test_a_tpot_bound_cuts_goodput_too() -> None:
    s = summarize(outcome(), Slo(ttft_s=60.0, tpot_s=0.05))
    assert s["goodput_rps"] == 0.0


def test_a_consistent_outcome_has_no_violations() -> None:
    assert check_invariants(outcome()) == []


@pytest.mark.parametrize(("change", "problem"), [
    ({"status": np.array([DONE, DONE, 0])}, "neither finished nor rejected"),
    ({"reasons": {}}, "without a reason"),
    ({"delivered": np.array([11, 10, 4])}, "different number of tokens"),
    ({"delivered": np.array([11, 11, 20])}, "rejected request delivered all"),
    ({"finish": np.array([0.2, 9.0, float("nan")])}, "time runs backwards"),
    ({"site_tokens": np.array([10.0])}, "do not add up"),
], ids=["a pending request", "a rejection without reason", "lost tokens",
        "a rejected request that got everything", "a finish before its first token",
        "site tokens that do not add up"])
def test_the_invariant_check_catches(change: dict[str, object], problem: str) -> None:
    bad = replace(outcome(), **change)  # type: ignore[arg-type]
    assert any(problem in p for p in check_invariants(bad))
