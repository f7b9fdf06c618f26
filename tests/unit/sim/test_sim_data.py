"""wattpool.sim.data: the shipped fixtures, and the shared layout, read the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wattpool.sim import data
from wattpool.sim.perf import load_profiles
from wattpool.sim.regions import REGIONS, rtt_ms

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"


def test_fixtures_load_without_the_shared_folder() -> None:
    ds = data.load()
    assert ds.root == data.FIXTURES
    assert len(ds.chat.t) > 1000 and ds.chat.every == 8
    assert np.all(np.diff(ds.chat.t) >= 0) and ds.chat.t[0] == 0.0
    assert 3000 < ds.chat.duration_s <= 3600  # the whole hour, thinned
    assert 4 < ds.chat.rate < 7  # the real conversation service: ~5.4 requests/s
    prompt, output = ds.lengths
    assert len(prompt) == len(output) == 3000 and prompt.min() > 0


def test_fixture_prices_cover_every_region_for_the_week() -> None:
    prices = data.load().prices([r.name for r in REGIONS])
    assert set(prices) == {r.name for r in REGIONS}
    for series in prices.values():
        assert len(series) == data.PRICE_WEEK_HOURS
        assert np.isfinite(series).all()
    assert prices["US-TEX-ERCO"].max() > 1000  # the August 2023 Texas price spikes


def test_fixtures_stay_small() -> None:
    total = sum(p.stat().st_size for p in data.FIXTURES.iterdir())
    assert total < 1_000_000
    assert (data.FIXTURES / "README.md").exists()  # the attributions


def test_an_azure_trace_file_parses(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                    "2023-11-16 18:15:47.5000000,10,2\n"
                    "2023-11-16 18:15:46.0000000,374,44\n")
    trace = data.read_trace(path)
    assert trace.t.tolist() == [0.0, 1.5]  # sorted, from the first arrival
    assert trace.prompt.tolist() == [374, 10] and trace.output.tolist() == [44, 2]


def test_price_files_convert_currency_and_local_time(tmp_path: Path) -> None:
    path = tmp_path / "DE.csv"
    path.write_text("Datetime,Price (EUR/MWh)\n2023-08-07 02:00:00,100.0\n"
                    "2023-08-07 02:00:00,999.0\n")
    points = data.read_price_file(path, "DE-LU")
    ((when, usd),) = points.items()
    assert when.isoformat() == "2023-08-07T00:00:00+00:00"  # local summer time is UTC+2
    assert usd == pytest.approx(108.0)  # the first of a repeated hour, at 1.08 USD/EUR


def test_a_missing_folder_is_an_error_not_a_crash() -> None:
    with pytest.raises(FileNotFoundError):
        data.load(Path("/nonexistent/data"))


def test_profiles_are_plausible() -> None:
    profiles = load_profiles()
    assert set(profiles) == {"H100-80GB", "A100-80GB", "A100-40GB", "RTX-4090", "RTX-3090"}
    h100, rtx3090 = profiles["H100-80GB"], profiles["RTX-3090"]
    assert h100.prefill_tps > 10 * rtx3090.prefill_tps
    assert h100.tpot(64) > h100.tpot(1) > 0
    assert h100.capacity_rps(2000, 300) > rtx3090.capacity_rps(2000, 300)
    assert all(p.kv_tokens > 8192 for p in profiles.values())


def test_round_trips_grow_with_distance() -> None:
    assert rtt_ms("US-TEX-ERCO", "US-TEX-ERCO") == pytest.approx(2.0)
    assert rtt_ms("US-TEX-ERCO", "US-CAL-CISO") < rtt_ms("US-TEX-ERCO", "DE-LU")
    assert rtt_ms("DE-LU", "SG") == pytest.approx(rtt_ms("SG", "DE-LU"))


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not here (as in CI)")
def test_the_shared_layout_reads_too_and_derives_the_shipped_profiles() -> None:
    from wattpool.sim.derive import derive_profiles

    ds = data.load(SHARED)
    assert len(ds.chat.t) == 19366 and ds.chat.every == 1
    derived = derive_profiles(SHARED)
    assert derived == load_profiles()  # the fixture is what the derivation gives
