"""wattpool.sim.runner: the comparison against the issue's targets, and policy names."""

from __future__ import annotations

from typing import Any

import pytest

from wattpool.sim.runner import compare, policy_names


def result(name: str, goodput: float, energy: float | None) -> dict[str, Any]:
    return {"policy": name, "goodput_rps": goodput, "energy_usd_per_mtok": energy}


def test_compare_uses_the_best_oblivious_policy_by_goodput() -> None:
    results = {
        "round-robin": result("round-robin", 10.0, 0.050),
        "least-loaded": result("least-loaded", 14.0, 0.040),  # the best oblivious one
        "prefix-threshold": result("prefix-threshold", 12.0, 0.020),
        "wattpool": result("wattpool", 15.0, 0.030),
    }
    got = compare(results)
    assert got["goodput_vs_round_robin"] == 1.5
    assert got["best_oblivious"] == "least-loaded"
    assert got["energy_saving_vs_best_oblivious"] == pytest.approx(0.25)
    assert got["goodput_change_vs_best_oblivious"] == pytest.approx(15 / 14 - 1, abs=1e-4)
    assert all(got["targets"].values())


def test_compare_reports_missed_targets() -> None:
    results = {"round-robin": result("round-robin", 10.0, 0.05),
               "wattpool": result("wattpool", 9.0, 0.045)}
    targets = compare(results)["targets"]
    assert targets == {"goodput_vs_round_robin >= 1.5": False,
                       "energy_saving_vs_best_oblivious >= 0.20": False,
                       "goodput_change_vs_best_oblivious >= -0.05": False}


def test_policy_names_accept_ablations_and_refuse_unknowns() -> None:
    assert policy_names("wattpool, round-robin,,wattpool-no-energy") == (
        "wattpool", "round-robin", "wattpool-no-energy")
    with pytest.raises(ValueError, match="unknown policy 'best'"):
        policy_names(["best"])
