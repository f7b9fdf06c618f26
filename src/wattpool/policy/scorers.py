"""Scorers: how well each candidate that passed the filters suits a request.

Each scorer returns a vector in 0..1 (shown as 0..100 in explanations); the policy
multiplies by the scorer's weight and adds. Ratio scorers (energy, latency) compare with
the best eligible candidate, ``best / own``, rather than min-max: a 0.1 % price difference
then makes a 0.1 % score difference, not a 100-point one.

``Features`` holds what several scorers share (load, prefix match, expected time), computed
once per decision over the same columns.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from wattpool.policy.candidates import (
    ERROR_RATE,
    IN_FLIGHT,
    INV_DECODE,
    INV_PREFILL,
    MAX_BATCH,
    QUEUED,
    WATT_PRICE,
    CandidateTable,
    RequestSpec,
)


class Features:
    """Per-decision vectors over the considered rows."""

    __slots__ = ("expected_s", "matched", "ok", "service_s", "util")

    def __init__(self, req: RequestSpec, cols: np.ndarray, ok: np.ndarray,
                 matched: np.ndarray) -> None:
        self.ok = ok  # passed every filter
        self.matched = matched  # prompt tokens the instance probably has cached
        busy = cols[IN_FLIGHT] + cols[QUEUED]
        slots = cols[MAX_BATCH]
        self.util = busy / slots  # load as a share of the instance's slots (may exceed 1)
        uncached = np.maximum(req.prompt_tokens - matched, 0.0)
        # Prefill of what is not cached, then decode: the time this request runs.
        self.service_s = uncached * cols[INV_PREFILL] + req.output_tokens * cols[INV_DECODE]
        # Plus the wait: for a slot when all are taken (each excess request ~ one
        # service), and for the queued prefills ahead (each ~ this prompt, uncached).
        excess = np.maximum(busy + 1.0 - slots, 0.0)
        self.expected_s = (self.service_s * (1.0 + excess / slots)
                           + cols[QUEUED] * (req.prompt_tokens * cols[INV_PREFILL]))


class Scorer(Protocol):
    name: str

    def score(self, req: RequestSpec, table: CandidateTable, cols: np.ndarray,
              rows: np.ndarray, f: Features) -> np.ndarray: ...


def _best(values: np.ndarray, ok: np.ndarray) -> float:
    return float(values[ok].min()) if ok.any() else float(values.min(initial=0.0))


class LoadScorer:
    """Fewer busy slots is better: ``1 / (1 + util)``, so it never saturates."""

    name = "load"

    def score(self, req: RequestSpec, table: CandidateTable, cols: np.ndarray,
              rows: np.ndarray, f: Features) -> np.ndarray:
        return 1.0 / (1.0 + f.util)


class PrefixScorer:
    """Share of the prompt the instance probably has cached; yields to load.

    A candidate busier than the least-loaded eligible one by more than ``imbalance``
    (in slot shares) scores 0, so one hot prefix cannot pile every request on one node.
    """

    name = "prefix"

    def __init__(self, imbalance: float = 0.5) -> None:
        self.imbalance = imbalance

    def score(self, req: RequestSpec, table: CandidateTable, cols: np.ndarray,
              rows: np.ndarray, f: Features) -> np.ndarray:
        share = f.matched / max(req.prompt_tokens, 1)
        least = _best(f.util, f.ok)
        return np.where(f.util <= least + self.imbalance, share, 0.0)


class RttScorer:
    """Nearer is better: linear from 1 at 0 ms to 0 at ``cap_ms`` and beyond."""

    name = "rtt"

    def __init__(self, cap_ms: float = 300.0) -> None:
        self.cap_ms = cap_ms

    def score(self, req: RequestSpec, table: CandidateTable, cols: np.ndarray,
              rows: np.ndarray, f: Features) -> np.ndarray:
        rtt = table.rtt[req.gateway, rows]
        return 1.0 - np.minimum(rtt, self.cap_ms) / self.cap_ms


# A floor on the cost so that free (or negative-price) power does not divide by zero:
# 100 W for 1 s at $1/MWh, in the same units as WATT_PRICE * seconds.
ENERGY_FLOOR = 100.0


def energy_cost(cols: np.ndarray, f: Features) -> np.ndarray:
    """Energy cost of the request on each row, in W * $/MWh * s (x 2.78e-10 = dollars).

    Watts attributable to the request x the time it runs x the site's price now
    (negative prices count as free).
    """
    return cols[WATT_PRICE] * f.service_s


class EnergyScorer:
    """Cheaper energy for this request is better: ``(best + floor) / (own + floor)``."""

    name = "energy"

    def score(self, req: RequestSpec, table: CandidateTable, cols: np.ndarray,
              rows: np.ndarray, f: Features) -> np.ndarray:
        cost = energy_cost(cols, f)
        return (_best(cost, f.ok) + ENERGY_FLOOR) / (cost + ENERGY_FLOOR)


class LatencyScorer:
    """Sooner finish is better: ``best / own`` expected seconds (wait, prefill, decode)."""

    name = "latency"

    def score(self, req: RequestSpec, table: CandidateTable, cols: np.ndarray,
              rows: np.ndarray, f: Features) -> np.ndarray:
        t = np.maximum(f.expected_s, 1e-6)
        return _best(t, f.ok) / t


class ReliabilityScorer:
    """Fewer recent errors is better: ``(1 - error rate) ** 2``."""

    name = "reliability"

    def score(self, req: RequestSpec, table: CandidateTable, cols: np.ndarray,
              rows: np.ndarray, f: Features) -> np.ndarray:
        good = 1.0 - np.clip(cols[ERROR_RATE], 0.0, 1.0)
        return good * good


SCORERS: dict[str, type] = {
    cls.name: cls
    for cls in (LoadScorer, PrefixScorer, RttScorer, EnergyScorer, LatencyScorer,
                ReliabilityScorer)
}
