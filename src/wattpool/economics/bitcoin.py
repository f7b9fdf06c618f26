"""Hashprice and ASIC efficiency from the bitcoin network data set (blockchain.com series).

Files, as in ``bitcoin-network-2009-2020`` (no header rows, ``DD/MM/YYYY HH:MM`` dates):

- ``minersrevenue.csv``: miners' revenue, USD per day (block subsidy + fees);
- ``hashrate.csv``: network hash rate, TH/s, on the same 3-day grid;
- ``efficiency.csv``: monthly efficiency of new ASIC chips by maker, J/GH (the data set
  states no unit; values of 0.03-0.11 match J/GH of 2017-2019 miners).

Hashprice (USD per TH/s per day) = revenue / hash rate of the same day: what one TH/s
earned on average that day. Blockchain.com estimates the hash rate from block times, so
single samples are noisy (±10 % between neighbours is common).
"""

from __future__ import annotations

import bisect
import csv
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

_DAY = timedelta(days=1)


class BitcoinDataError(ValueError):
    """Bitcoin data that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class HashpricePoint:
    day: date
    revenue_usd_per_day: float
    hashrate_th_s: float

    @property
    def usd_per_th_day(self) -> float:
        return self.revenue_usd_per_day / self.hashrate_th_s


@dataclass(frozen=True, slots=True)
class EfficiencyPoint:
    month: date
    maker: str
    j_per_th: float


def _day(text: str) -> date:
    return datetime.strptime(text.strip().split(" ")[0], "%d/%m/%Y").date()


def _series(path: Path) -> dict[date, float]:
    try:
        with path.open(newline="") as f:
            return {_day(r[0]): float(r[1]) for r in csv.reader(f) if len(r) >= 2 and r[1]}
    except OSError as exc:
        raise BitcoinDataError(f"cannot read {path}: {exc}") from None
    except ValueError as exc:
        raise BitcoinDataError(f"{path}: {exc}") from None


def load_hashprice(folder: Path) -> list[HashpricePoint]:
    """Each revenue day with the hash rate of that day, or of the day before or after
    (the two files' 3-day grids are offset by a day in some years), oldest first."""
    revenue = _series(folder / "minersrevenue.csv")
    hashrate = _series(folder / "hashrate.csv")
    points = []
    for d in sorted(revenue):
        rate = next((hashrate[x] for x in (d, d - _DAY, d + _DAY) if hashrate.get(x, 0) > 0),
                    None)
        if rate is not None:
            points.append(HashpricePoint(d, revenue[d], rate))
    if not points:
        raise BitcoinDataError(f"{folder}: no day has both miners' revenue and hash rate")
    return points


def hashprice_lookup(points: Sequence[HashpricePoint]) -> Callable[[datetime], float]:
    """The hashprice in force at a moment: the last sample on or before its UTC day.
    Refuses moments before the first sample or more than 7 days after the last."""
    ordered = sorted(points, key=lambda p: p.day)
    days = [p.day for p in ordered]

    def at(moment: datetime) -> float:
        day = moment.astimezone(UTC).date()
        i = bisect.bisect_right(days, day) - 1
        if i < 0 or (day - days[i]).days > 7:
            raise BitcoinDataError(
                f"no hashprice for {day}: the data covers {days[0]} to {days[-1]}; "
                "pass a hashprice explicitly")
        return ordered[i].usd_per_th_day

    return at


def load_efficiency(folder: Path) -> list[EfficiencyPoint]:
    """Every (month, maker, J/TH) in ``efficiency.csv`` (J/GH x 1000)."""
    path = folder / "efficiency.csv"
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except OSError as exc:
        raise BitcoinDataError(f"cannot read {path}: {exc}") from None
    if not rows:
        raise BitcoinDataError(f"{path} is empty")
    makers = rows[0][1:]
    points = []
    for row in rows[1:]:
        month = _day(row[0])
        for maker, cell in zip(makers, row[1:], strict=False):
            if cell.strip():
                points.append(EfficiencyPoint(month, maker, float(cell) * 1000))
    return points


def asic_j_per_th(points: Sequence[EfficiencyPoint], before: date, months: int = 12) -> float:
    """Median efficiency of the ASICs listed in the ``months`` before ``before``.

    The median rather than the best: a site runs a mix of recent machines, and a few
    entries of the table are far off the rest (0.4 J/GH beside 0.05).
    """
    index = before.year * 12 + before.month - 1 - months  # months since year 0
    first = date(index // 12, index % 12 + 1, 1)
    window = [p.j_per_th for p in points if first <= p.month < before]
    if not window:
        raise BitcoinDataError(f"no ASIC efficiency listed from {first} to {before}")
    return statistics.median(window)
