"""Power price series for the mine-or-infer decision: files in, 15-minute intervals out.

Reading a CSV is ``control.power.load_csv_series`` (the one price-file reader; naive
timestamps are UTC). This module adds what the economics needs on top: the currency must
be USD, a greendcc ``processed/`` folder can be named by region and years, and hourly
points become fixed-length intervals, each at the price in force at its start (a price
holds until the next point, as in a day-ahead market).
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

from wattpool.control.power import PriceSourceError, load_csv_series

# A slice shipped with the package (see fixtures/README.md): ERCOT hub average, Jan 2020.
FIXTURE_ERCOT_2020_01 = "US-TEX-ERCO_electricity_prices_2020-01.csv"

PriceSeries = list[tuple[datetime, float]]  # (start, USD/MWh), sorted


class PriceDataError(ValueError):
    """A price file that cannot be used; the message says why."""


def fixture_path(name: str = FIXTURE_ERCOT_2020_01) -> Path:
    return Path(str(resources.files("wattpool.economics").joinpath("fixtures", name)))


def _price_column(path: Path, column: str | None) -> str:
    """The price column's header; refuses a currency other than USD."""
    try:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
    except OSError as exc:
        raise PriceDataError(f"cannot read price file {path}: {exc}") from None
    if len(header) < 2:
        raise PriceDataError(f"{path}: expected a timestamp column and a price column")
    name = column if column is not None else header[1]
    if name not in header:
        raise PriceDataError(f"{path}: no column {name!r}; columns: {', '.join(header)}")
    if "usd" not in name.lower():
        raise PriceDataError(f"{path}: prices in {name!r} are not USD/MWh; convert them "
                             "first (the decision compares USD revenues)")
    return name


def load_prices(path: Path, column: str | None = None) -> PriceSeries:
    """(time, USD/MWh) from a CSV whose first column is a timestamp."""
    name = _price_column(path, column)
    try:
        points = load_csv_series(path, name)
    except (PriceSourceError, ValueError) as exc:
        raise PriceDataError(f"{path}: {exc}") from None
    return [(datetime.fromtimestamp(p.at, UTC), p.price) for p in points]


def region_files(folder: Path, region: str, years: Sequence[int]) -> list[Path]:
    """The greendcc files of a region for these years: ``<folder>/<region>/<region>_
    electricity_prices_<year>.csv`` (the layout of ``processed/``)."""
    files = [folder / region / f"{region}_electricity_prices_{y}.csv" for y in years]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise PriceDataError(f"no price file for {region}: {', '.join(missing)}")
    return files


def to_intervals(points: PriceSeries, minutes: int = 15, start: datetime | None = None,
                 end: datetime | None = None) -> PriceSeries:
    """Fixed intervals from ``start`` (default: the first point) to ``end`` (default: one
    median spacing after the last point), each at the price in force at its start."""
    if not points:
        raise PriceDataError("the price series is empty")
    if minutes <= 0:
        raise ValueError("minutes must be > 0")
    pts = sorted(points)
    gaps = sorted(b[0] - a[0] for a, b in itertools.pairwise(pts))
    spacing = gaps[len(gaps) // 2] if gaps else timedelta(hours=1)
    t = max(start or pts[0][0], pts[0][0])  # no price is known before the first point
    stop = min(end, pts[-1][0] + spacing) if end is not None else pts[-1][0] + spacing
    step = timedelta(minutes=minutes)
    out: PriceSeries = []
    i = 0
    while t < stop:
        while i + 1 < len(pts) and pts[i + 1][0] <= t:
            i += 1
        out.append((t, pts[i][1]))
        t += step
    if not out:
        raise PriceDataError("no price falls inside the requested period")
    return out
