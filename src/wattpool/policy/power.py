"""When a site should curtail because of its power price. Pure functions.

A price series is a sorted list of (unix seconds, price per MWh). The price at a moment
is the last point at or before it (prices hold until the next point). A site curtails
when the price rises above its threshold and comes back only when it falls below the
threshold minus a hysteresis band, so a price hovering at the threshold does not make
the site flap.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

HYSTERESIS = 0.05  # come back below 95 % of the threshold


@dataclass(frozen=True, slots=True)
class PricePoint:
    at: float  # unix seconds
    price: float  # currency per MWh


def price_at(series: Sequence[PricePoint], at: float) -> float | None:
    """The price in force at ``at``; None before the series starts."""
    times = [p.at for p in series]
    i = bisect.bisect_right(times, at) - 1
    return series[i].price if i >= 0 else None


def should_curtail(price: float | None, threshold: float | None, curtailed_now: bool,
                   hysteresis: float = HYSTERESIS) -> bool:
    """Whether the site should be curtailed, given whether it already is."""
    if price is None or threshold is None:
        return curtailed_now and price is None  # no price: keep the current state
    if curtailed_now:
        return price > threshold * (1 - hysteresis)
    return price > threshold
