"""Mine or infer: the formulas with hand-computed numbers, the choice, the log."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from wattpool.economics.mine_or_infer import (
    Decision,
    InferenceParams,
    IntervalInputs,
    MiningParams,
    decide,
    decide_series,
    summarize,
)

T = datetime(2020, 1, 16, tzinfo=UTC)
DOC = Path(__file__).parents[3] / "docs" / "economics.md"


def inputs(price: float = 20.0, *, hashprice: float = 0.15, j_per_th: float = 50.0,
           usd_per_mtok: float = 1.0, utilisation: float = 0.5,
           pool_fee: float = 0.0) -> IntervalInputs:
    # 1 MW for 15 min; GPUs: 1000 tok/s at 500 W, 100 W idle; operator keeps 80 %.
    return IntervalInputs(T, 15, 1000.0, price, MiningParams(hashprice, j_per_th, pool_fee),
                          InferenceParams(1000.0, 500.0, 100.0, usd_per_mtok, 0.8,
                                          utilisation))


def test_mining_by_hand() -> None:
    d = decide(inputs())
    # 1,000,000 W / 50 J/TH = 20,000 TH/s; x 0.15 USD/TH/day x 0.25 h / 24 h = 31.25 USD.
    assert d.mine.revenue_micros == 31_250_000
    assert d.mine.energy_mwh == 0.25 and d.mine.power_cost_micros == 5_000_000
    assert d.mine.margin_micros == 26_250_000
    assert d.mine.revenue_usd_per_mwh == pytest.approx(125.0)
    assert decide(inputs(pool_fee=0.02)).mine.revenue_micros == 30_625_000


def test_inference_by_hand() -> None:
    d = decide(inputs())
    # 2,000 GPUs x 1,000 tok/s x 0.5 x 900 s = 900 Mtok x 1 USD x 0.8 = 720 USD,
    # drawing 2,000 x (100 + 0.5 x 400) W = 600 kW for 0.25 h = 0.15 MWh.
    assert d.infer.revenue_micros == 720_000_000
    assert d.infer.energy_mwh == pytest.approx(0.15)
    assert d.infer.power_cost_micros == 3_000_000
    assert d.infer.margin_micros == 717_000_000
    assert d.infer.revenue_usd_per_mwh == pytest.approx(4_800.0)


@pytest.mark.parametrize(
    ("case", "want"),
    [
        (inputs(usd_per_mtok=1.0), "infer"),
        (inputs(usd_per_mtok=0.01), "mine"),
        (inputs(price=10_000.0, usd_per_mtok=0.01), "idle"),
        # Above mining's revenue per MWh, half-busy GPUs still earn: they buy less power.
        (inputs(price=130.0, usd_per_mtok=0.05), "infer"),
        (inputs(price=-50.0, usd_per_mtok=0.0), "mine"),  # paid to consume
        (inputs(price=0.0, hashprice=0.0, usd_per_mtok=0.0), "idle"),  # ties go to idle
    ],
    ids=["tokens-pay-more", "cheap-tokens-lose-to-asics", "spike-idles-everything",
         "expensive-power-favours-the-lighter-load", "negative-price-runs-what-draws-most",
         "all-zero-is-idle"],
)
def test_choice(case: IntervalInputs, want: str) -> None:
    d = decide(case)
    assert d.choice == want
    assert d.margin_micros == max(d.mine.margin_micros, d.infer.margin_micros, 0)


def test_breakeven_price_makes_inference_match_mining() -> None:
    d = decide(inputs(usd_per_mtok=0.01))
    assert d.breakeven_usd_per_mtok is not None
    at_breakeven = decide(inputs(usd_per_mtok=d.breakeven_usd_per_mtok))
    assert abs(at_breakeven.infer.margin_micros - at_breakeven.mine.margin_micros) <= 1
    assert decide(inputs(utilisation=0.0)).breakeven_usd_per_mtok is None


def test_out_of_range_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="utilisation"):
        decide(inputs(utilisation=1.5))
    with pytest.raises(ValueError, match="asic_j_per_th"):
        decide(inputs(j_per_th=0.0))


def test_log_record_carries_inputs_and_both_margins() -> None:
    record = json.loads(json.dumps(decide(inputs()).to_log()))
    assert record["inputs"]["start"] == "2020-01-16T00:00:00+00:00"
    assert record["inputs"]["mining"]["asic_j_per_th"] == 50.0
    assert record["inputs"]["inference"]["utilisation"] == 0.5
    assert record["mine"]["margin_micros"] == 26_250_000
    assert record["infer"]["margin_micros"] == 717_000_000
    assert record["choice"] == "infer"


def test_series_uses_values_in_force_and_summary_adds_up() -> None:
    prices = [(T + timedelta(minutes=15 * i), p) for i, p in enumerate([10.0, 10.0, 9e3, 10.0])]
    d = decide_series(
        prices, minutes=15, site_kw=1000.0, asic_j_per_th=50.0,
        hashprice_at=lambda t: 0.15 if t < T + timedelta(minutes=30) else 0.3,
        inference=InferenceParams(1000.0, 500.0, 100.0, 0.01, 0.8, 0.5),
        utilisation_at=lambda t: 0.0 if t.minute == 15 else 0.5)
    assert [x.inputs.mining.hashprice_usd_per_th_day for x in d] == [0.15, 0.15, 0.3, 0.3]
    assert [x.inputs.inference.utilisation for x in d] == [0.5, 0.0, 0.5, 0.5]
    assert [x.choice for x in d] == ["mine", "mine", "idle", "mine"]
    s = summarize(d)
    assert s.counts == {"mine": 3, "infer": 0, "idle": 1}
    assert s.chosen_micros == sum(x.margin_micros for x in d)
    assert s.always_mine_micros == sum(x.mine.margin_micros for x in d) < s.chosen_micros
    assert s.energy_mwh == pytest.approx(0.75)
    assert (s.price_min, s.price_max) == (10.0, 9e3)


def _worked_example() -> Decision:
    """The interval docs/economics.md works through: ERCOT 2020-01-15 18:00 CST."""
    hashprice = 15_748_081.37 / 99_607_271.22  # revenue / hash rate on 2020-01-14
    return decide(IntervalInputs(
        datetime(2020, 1, 16, 0, 0, tzinfo=UTC), 15, 1000.0, 22.76,
        MiningParams(hashprice, 50.0, 0.0),
        InferenceParams(111.74, 350.0, 30.0, 0.20, 0.75, 0.5)))


def test_docs_worked_example_is_what_the_code_computes() -> None:
    d = _worked_example()
    doc = DOC.read_text()
    assert d.choice == "mine"
    for number in (f"{d.mine.revenue_micros / 1e6:.6f}", f"{d.mine.margin_micros / 1e6:.6f}",
                   f"{d.infer.revenue_micros / 1e6:.6f}", f"{d.infer.margin_micros / 1e6:.6f}",
                   f"{d.infer.power_cost_micros / 1e6:.6f}",
                   f"{d.mine.revenue_usd_per_mwh:.2f}", f"{d.infer.revenue_usd_per_mwh:.2f}",
                   f"{d.breakeven_usd_per_mtok:.4f}"):
        assert number in doc, f"docs/economics.md should show {number}"
