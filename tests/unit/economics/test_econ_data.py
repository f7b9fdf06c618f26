"""Price series and bitcoin data: the shipped ERCOT slice and synthetic bitcoin files.

No slice of the bitcoin data set is shipped (it states no licence), so the bitcoin files
here are made up, in its format.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from wattpool.economics.bitcoin import (
    BitcoinDataError,
    asic_j_per_th,
    hashprice_lookup,
    load_efficiency,
    load_hashprice,
)
from wattpool.economics.prices import (
    PriceDataError,
    fixture_path,
    load_prices,
    region_files,
    to_intervals,
)


def test_shipped_ercot_slice_loads_in_utc() -> None:
    prices = load_prices(fixture_path())
    assert len(prices) == 744  # 31 days x 24 hours
    # The file is local time (CST, UTC-6): its first hour is 06:00 UTC.
    assert prices[0] == (datetime(2020, 1, 1, 6, tzinfo=UTC), 11.23)
    assert prices[-1] == (datetime(2020, 2, 1, 5, tzinfo=UTC), 16.23)
    assert min(p for _, p in prices) == 5.49 and max(p for _, p in prices) == 41.84


def test_non_usd_or_malformed_prices_are_refused(tmp_path: Path) -> None:
    eur = tmp_path / "de.csv"
    eur.write_text("Datetime,Price (EUR/MWh)\n2024-01-01 00:00:00,40\n")
    with pytest.raises(PriceDataError, match="not USD/MWh"):
        load_prices(eur)
    with pytest.raises(PriceDataError, match="no column 'x'"):
        load_prices(fixture_path(), column="x")
    with pytest.raises(PriceDataError, match="cannot read"):
        load_prices(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("Datetime,Price (USD/MWh)\nyesterday,40\n")
    with pytest.raises(PriceDataError, match=r"bad\.csv"):
        load_prices(bad)


def test_intervals_hold_each_price_until_the_next() -> None:
    t0 = datetime(2020, 1, 1, tzinfo=UTC)
    hourly = [(t0, 10.0), (t0 + timedelta(hours=1), 20.0), (t0 + timedelta(hours=2), 30.0)]
    got = to_intervals(hourly, 15)
    assert len(got) == 12  # the last hour lasts one spacing too
    assert [p for _, p in got] == [10.0] * 4 + [20.0] * 4 + [30.0] * 4
    assert got[5][0] == t0 + timedelta(minutes=75)
    clipped = to_intervals(hourly, 30, start=t0 + timedelta(minutes=90),
                           end=t0 + timedelta(hours=2, minutes=30))
    assert clipped == [(t0 + timedelta(minutes=90), 20.0), (t0 + timedelta(hours=2), 30.0)]
    with pytest.raises(PriceDataError, match="no price falls inside"):
        to_intervals(hourly, 15, start=t0 + timedelta(days=3))
    assert len(to_intervals(load_prices(fixture_path()), 15)) == 744 * 4


def test_region_files_follow_the_greendcc_layout(tmp_path: Path) -> None:
    (tmp_path / "US-X").mkdir()
    for y in (2020, 2021):
        (tmp_path / "US-X" / f"US-X_electricity_prices_{y}.csv").write_text("")
    assert [p.name for p in region_files(tmp_path, "US-X", [2020, 2021])] == [
        "US-X_electricity_prices_2020.csv", "US-X_electricity_prices_2021.csv"]
    with pytest.raises(PriceDataError, match="no price file for US-X"):
        region_files(tmp_path, "US-X", [2022])


@pytest.fixture
def bitcoin_dir(tmp_path: Path) -> Path:
    """Synthetic series on a 3-day grid; the hash rate grid is one day off in 2019."""
    (tmp_path / "minersrevenue.csv").write_text(
        "27/12/2019 00:00,12000000\n30/12/2019 00:00,15000000\n02/01/2020 00:00,9000000\n"
        "05/01/2020 00:00,0\n")
    (tmp_path / "hashrate.csv").write_text(
        "26/12/2019 00:00,100000000\n30/12/2019 00:00,100000000\n02/01/2020 00:00,90000000\n")
    (tmp_path / "efficiency.csv").write_text(
        "Date,MakerA,MakerB,MakerC\n"
        "01/11/2018,0.2,,\n"  # outside a 12-month window before 2020-01
        "01/01/2019,0.06,,\n01/06/2019,,0.05,0.4\n01/12/2019,0.04,,\n01/01/2020,0.01,,\n")
    return tmp_path


def test_hashprice_is_revenue_over_hash_rate(bitcoin_dir: Path) -> None:
    points = load_hashprice(bitcoin_dir)
    # 27 Dec pairs with the hash rate of 26 Dec; 5 Jan has no hash rate.
    assert [p.day for p in points] == [date(2019, 12, 27), date(2019, 12, 30),
                                       date(2020, 1, 2)]
    assert [round(p.usd_per_th_day, 6) for p in points] == [0.12, 0.15, 0.1]
    at = hashprice_lookup(points)
    assert at(datetime(2019, 12, 31, 23, tzinfo=UTC)) == pytest.approx(0.15)
    # 18:00 CST on 1 Jan is already 2 Jan in UTC.
    assert at(datetime(2020, 1, 1, 18, tzinfo=UTC) + timedelta(hours=6)) == pytest.approx(0.1)
    with pytest.raises(BitcoinDataError, match="no hashprice for 2019-12-26"):
        at(datetime(2019, 12, 26, tzinfo=UTC))
    with pytest.raises(BitcoinDataError, match="pass a hashprice explicitly"):
        at(datetime(2020, 1, 10, tzinfo=UTC))


def test_asic_efficiency_is_the_median_of_the_window_in_j_per_th(bitcoin_dir: Path) -> None:
    points = load_efficiency(bitcoin_dir)
    assert len(points) == 6
    # 2019: 60, 50, 400, 40 J/TH -> median 55 (the 400 outlier barely moves it).
    assert asic_j_per_th(points, date(2020, 1, 1)) == pytest.approx(55.0)
    assert asic_j_per_th(points, date(2020, 1, 1), months=1) == pytest.approx(40.0)
    with pytest.raises(BitcoinDataError, match="no ASIC efficiency"):
        asic_j_per_th(points, date(2010, 1, 1))


def test_missing_bitcoin_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(BitcoinDataError, match=r"minersrevenue\.csv"):
        load_hashprice(tmp_path)
