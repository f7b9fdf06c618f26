from datetime import UTC, datetime
from pathlib import Path

import pytest

from wattpool.control.power import PriceFeed, PriceSourceError


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


async def test_csv_series_replayed_by_time_of_year(tmp_path: Path) -> None:
    path = tmp_path / "prices.csv"
    path.write_text("Datetime,Price (EUR/MWh)\n2024-03-01 00:00:00,40.5\n"
                    "2024-03-01 01:00:00,130\n2024-03-01 02:00:00,\n")
    feed = PriceFeed({"kind": "csv", "path": str(path), "column": "Price (EUR/MWh)"},
                     now=lambda: at("2026-03-01 00:30:00"))
    assert await feed.current() == 40.5
    feed.now = lambda: at("2026-03-01 01:10:00")
    assert await feed.current() == 130.0
    feed.now = lambda: at("2026-03-01 02:10:00")  # empty row skipped: 130 holds
    assert await feed.current() == 130.0


async def test_schedule_by_hour() -> None:
    feed = PriceFeed({"kind": "schedule", "prices": {"0": 40, "7": 95, "20": 60}},
                     now=lambda: at("2026-11-28 08:00:00"))
    assert await feed.current() == 95.0
    feed.now = lambda: at("2026-11-28 23:00:00")
    assert await feed.current() == 60.0


def test_bad_sources_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(PriceSourceError, match="unknown price source"):
        PriceFeed({"kind": "magic"})
    with pytest.raises(PriceSourceError, match="cannot read"):
        PriceFeed({"kind": "csv", "path": str(tmp_path / "missing.csv")})
    with pytest.raises(PriceSourceError, match="hours 0-23"):
        PriceFeed({"kind": "schedule", "prices": {"25": 1}})
