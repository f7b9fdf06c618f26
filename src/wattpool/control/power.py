"""Power prices of sites, and the watch that follows them (routing, curtailment).

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

import asyncio
import csv
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import Engine

from wattpool.control.router import Router
from wattpool.policy.power import PricePoint, price_at, should_curtail
from wattpool.protocol import CurtailSignal
from wattpool.store import fleet, repo
from wattpool.store.fleet import CurtailmentRow, SiteRow
from wattpool.store.repo import NodeRow

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


def check_price_source(source: Mapping[str, Any]) -> None:
    """Raise PriceSourceError if ``source`` cannot be used (a CSV is read to check it)."""
    if not isinstance(source, Mapping):
        raise PriceSourceError("a price source is a JSON object with a 'kind'")
    if source.get("kind") == "http":
        url = str(source.get("url") or "")
        if not url.startswith(("http://", "https://")):
            raise PriceSourceError("an http price source needs a 'url' (http:// or https://)")
        try:
            if float(source.get("every_s", 300)) <= 0:
                raise PriceSourceError("'every_s' must be positive")
        except (TypeError, ValueError):
            raise PriceSourceError("'every_s' must be a number of seconds") from None
    PriceFeed(source)


@dataclass(slots=True)
class SitePower:
    """One site as the watch follows it."""

    site: SiteRow
    feed: PriceFeed | None
    price: float | None = None
    price_says_curtail: bool = False


Publish = Callable[[CurtailSignal], Awaitable[None]]


class PowerWatch:
    """Every ``period_s``: reload the sites, read each price, act on it.

    On every replica it keeps the router's view of sites current (node -> site, region,
    price now), so routing prefers cheap power everywhere. On the leader it also curtails
    a site whose price crossed its threshold (with hysteresis, ``policy.power``) and ends
    that curtailment when the price falls back. A curtailment from a signal is the
    operator's: the price never ends it, and a site the operator resumed while its price
    is high stays on until the price has fallen and risen again.
    """

    def __init__(self, db: Engine, router: Router, publish: Publish,
                 is_leader: Callable[[], bool], *, period_s: float = 5.0,
                 price_curtail_within_s: float = 60.0) -> None:
        self.db = db
        self.router = router
        self.publish = publish
        self.is_leader = is_leader
        self.period_s = period_s
        self.price_curtail_within_s = price_curtail_within_s
        self.sites: dict[str, SitePower] = {}

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a bad feed or a database outage must not stop the watch
                log.exception("power watch: tick failed")
            await asyncio.sleep(self.period_s)

    async def tick(self) -> None:
        rows, nodes, open_ones = await asyncio.to_thread(self.read_store)
        self.router.node_site.clear()
        self.router.node_site.update({n.id: n.site_id for n in nodes if n.site_id})
        seen = set()
        for row in rows:
            seen.add(row.id)
            self.router.site_region[row.id] = row.region
            known = self.sites.get(row.id)
            if known is None or known.site.price_source != row.price_source:
                known = SitePower(row, self._feed(row))
                self.sites[row.id] = known
            known.site = row
            known.price = await known.feed.current() if known.feed is not None else None
            if known.price is None:
                self.router.site_prices.pop(row.id, None)
            else:
                self.router.site_prices[row.id] = known.price
            if self.is_leader():
                await self._follow_price(known, open_ones.get(row.id))
        for gone in set(self.sites) - seen:
            del self.sites[gone]
            self.router.site_prices.pop(gone, None)

    def read_store(self) -> tuple[list[SiteRow], list[NodeRow], dict[str, CurtailmentRow]]:
        """Blocking: the sites, the nodes, and the open curtailment of each site."""
        return (fleet.list_sites(self.db), repo.list_nodes(self.db),
                {c.site_id: c for c in fleet.active_curtailments(self.db)})

    @staticmethod
    def _feed(row: SiteRow) -> PriceFeed | None:
        if not row.price_source:
            return None
        try:
            return PriceFeed(row.price_source)
        except (PriceSourceError, OSError, KeyError, ValueError) as exc:
            log.warning("site %s: unusable price source: %s", row.name, exc)
            return None

    async def _follow_price(self, sp: SitePower, open_one: CurtailmentRow | None) -> None:
        site = sp.site
        # A new leader inherits the price curtailments that are open.
        was = sp.price_says_curtail or (open_one is not None and open_one.cause == "price")
        sp.price_says_curtail = should_curtail(sp.price, site.curtail_above, was)
        if sp.price_says_curtail and not was and open_one is None:
            within = min([c.within_s for c in site.dr_commitments]
                         or [self.price_curtail_within_s])
            reason = (f"price {sp.price:g}/MWh above the site's threshold "
                      f"{site.curtail_above:g}")
            await asyncio.to_thread(fleet.start_curtailment, self.db, site.id, "price",
                                    within, reason)
            await self.publish(CurtailSignal(site_id=site.id, site_name=site.name,
                                             active=True, within_s=within, reason=reason))
        elif not sp.price_says_curtail and was and open_one is not None \
                and open_one.cause == "price":
            await asyncio.to_thread(fleet.end_curtailment, self.db, site.id)
            await self.publish(CurtailSignal(
                site_id=site.id, site_name=site.name, active=False, within_s=0.0,
                reason=f"price {sp.price:g}/MWh back under the site's threshold"))
