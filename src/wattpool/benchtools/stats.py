"""Percentiles and distribution summaries for latency samples.

Percentiles interpolate linearly between the two nearest ranks (rank = q/100 x (n-1)),
the same definition as numpy's default, so a figure here can be checked against
``numpy.percentile`` on the raw samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

QUANTILES = (50.0, 90.0, 99.0)


def percentile(values: Sequence[float], q: float, *, presorted: bool = False) -> float | None:
    """The q-th percentile (0 <= q <= 100) of ``values``; None when there are none."""
    if not 0.0 <= q <= 100.0 or math.isnan(q):
        raise ValueError(f"percentile {q} is outside [0, 100]")
    if not values:
        return None
    ordered = values if presorted else sorted(values)
    rank = q / 100.0 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    weight = rank - low
    return ordered[low] + (ordered[high] - ordered[low]) * weight


@dataclass(frozen=True, slots=True)
class Distribution:
    """Summary of one latency sample set; every time in milliseconds."""

    count: int
    mean: float
    min: float
    p50: float
    p90: float
    p99: float
    max: float

    def as_dict(self) -> dict[str, float | int]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def describe(seconds: Iterable[float]) -> Distribution | None:
    """Summary of samples given in seconds, reported in milliseconds; None when empty."""
    ms = sorted(s * 1000.0 for s in seconds)
    if not ms:
        return None
    p50, p90, p99 = (percentile(ms, q, presorted=True) for q in QUANTILES)
    assert p50 is not None and p90 is not None and p99 is not None
    return Distribution(count=len(ms), mean=math.fsum(ms) / len(ms), min=ms[0], p50=p50,
                        p90=p90, p99=p99, max=ms[-1])
