"""Power prices of sites, and the leader's loop that curtails on price.

A site's price source is one of:
  * ``{"kind": "csv", "path": "...", "column": "Price (EUR/MWh)"}``: a time series file
    (first column a timestamp, UTC; the named or second column the price per MWh), as in
    the green-dcc price sets;
  * ``{"kind": "schedule", "prices": {"0": 40, "7": 95, "20": 60}}``: a price per UTC hour
    of the day, holding until the next listed hour;
  * ``{"kind": "http", "url": "...", "every_s": 300, "field": "price"}``: a JSON endpoint
    polled on a schedule.
CSV series are replayed by time of year when the file is from another year, so a year of
history serves as a stand-in live feed for tests and demos.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from wattpool.policy.power import PricePoint, price_at

log = logging.getLogger(__name__)


class PriceSourceError(ValueError):
    pass


def load_csv_series(path: Path, column: str | None = None) -> list[PricePoint]:
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except OSError as exc:
        raise PriceSourceError(f"cannot read price file {path}: {exc}") from None
    if len(rows) < 2:
        raise PriceSourceError(f"{path} has no price rows")
    header = rows[0]
    col = header.index(column) if column and column in header else 1
    points = []
    for row in rows[1:]:
        if len(row) <= col or not row[col].strip():
            continue
        stamp = datetime.fromisoformat(row[0].strip())
        stamp = stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp
        points.append(PricePoint(stamp.timestamp(), float(row[col])))
    points.sort(key=lambda p: p.at)
    if not points:
        raise PriceSourceError(f"{path} has no usable price rows")
    return points


def _year_shifted(series: list[PricePoint], now: float) -> float:
    """``now`` moved into the series' year (same day of year and hour)."""
    first = datetime.fromtimestamp(series[0].at, UTC)
    moment = datetime.fromtimestamp(now, UTC)
    try:
        return moment.replace(year=first.year).timestamp()
    except ValueError:  # 29 February in a year without it
        return moment.replace(year=first.year, day=28).timestamp()


class PriceFeed:
    """The current price of one site from its configured source."""

    def __init__(self, source: Mapping[str, Any], now: Callable[[], float] = time.time) -> None:
        self.source = dict(source)
        self.now = now
        self.kind = self.source.get("kind")
        self._series: list[PricePoint] = []
        self._last_http: tuple[float, float | None] = (-1e18, None)
        if self.kind == "csv":
            self._series = load_csv_series(Path(str(self.source["path"])).expanduser(),
                                           self.source.get("column"))
        elif self.kind == "schedule":
            prices = self.source.get("prices") or {}
            try:
                self._schedule = sorted((int(h), float(p)) for h, p in prices.items())
            except (TypeError, ValueError):
                raise PriceSourceError("schedule prices look like {\"0\": 40, \"7\": 95}") \
                    from None
            if not self._schedule or not all(0 <= h < 24 for h, _ in self._schedule):
                raise PriceSourceError("a schedule needs hours 0-23 with prices")
        elif self.kind != "http":
            raise PriceSourceError(f"unknown price source kind {self.kind!r} "
                                   "(csv, schedule or http)")

    async def current(self) -> float | None:
        now = self.now()
        if self.kind == "csv":
            return price_at(self._series, _year_shifted(self._series, now))
        if self.kind == "schedule":
            hour = datetime.fromtimestamp(now, UTC).hour
            in_force = [p for h, p in self._schedule if h <= hour]
            return in_force[-1] if in_force else self._schedule[-1][1]
        every = float(self.source.get("every_s", 300))
        fetched_at, value = self._last_http
        if now - fetched_at >= every:
            try:
                async with httpx.AsyncClient(timeout=10) as http:
                    resp = await http.get(str(self.source["url"]))
                    resp.raise_for_status()
                    value = float(resp.json()[self.source.get("field", "price")])
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                log.warning("price feed %s failed: %s", self.source.get("url"), exc)
            self._last_http = (now, value)
        return value
