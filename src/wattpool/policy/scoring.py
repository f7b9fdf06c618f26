"""wattpool's default routing policy: filters, then weighted scorers.

Large candidate sets are *sampled*, not scanned: a request is scored against ``sample``
random instances plus the few instances that hold the longest cached prefix of its
prompt (from the prefix index, O(depth + holders)). Below ``full_scan_limit`` every
candidate is scored. If a sample holds nobody eligible the policy falls back to a full
scan, so sampling never turns a servable request away. bench/decision_time.py measures
both modes; docs/benchmarks.md has the numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from wattpool.policy.candidates import CandidateTable, RequestSpec
from wattpool.policy.decision import Decision, nothing_fits, scored_reports
from wattpool.policy.filters import CapacityFilter, Filter, default_filters, passing
from wattpool.policy.prefix import DEFAULT_BLOCK_TOKENS, PrefixIndex, PrefixView
from wattpool.policy.scorers import (
    ENERGY_FLOOR,
    EnergyScorer,
    Features,
    LatencyScorer,
    LoadScorer,
    PrefixScorer,
    ReliabilityScorer,
    RttScorer,
    Scorer,
)

FUSED_MAX_ROWS = 48  # beyond this the numpy plugin path is faster
FUSED_ORDER = ("load", "prefix", "rtt", "energy", "latency", "reliability")
RANDOM_BUFFER = 4096

DEFAULT_WEIGHTS: dict[str, float] = {
    "load": 1.0, "prefix": 1.0, "latency": 2.0, "rtt": 0.5, "energy": 1.5, "reliability": 1.0,
}


class ScoringPolicy:
    """Filter, score, pick the highest total; explainable on request."""

    def __init__(self, weights: Mapping[str, float] | None = None, *,
                 name: str = "wattpool", filters: list[Filter] | None = None,
                 sample: int = 8, holders: int = 4, full_scan_limit: int = 16,
                 block_tokens: int = DEFAULT_BLOCK_TOKENS, index_capacity: int = 4096,
                 imbalance: float = 0.5, rtt_cap_ms: float = 300.0,
                 index: PrefixView | None = None) -> None:
        chosen = dict(DEFAULT_WEIGHTS if weights is None else weights)
        makers: dict[str, Scorer] = {
            "load": LoadScorer(), "prefix": PrefixScorer(imbalance), "rtt": RttScorer(rtt_cap_ms),
            "energy": EnergyScorer(), "latency": LatencyScorer(),
            "reliability": ReliabilityScorer(),
        }
        unknown = set(chosen) - set(makers)
        if unknown:
            raise ValueError(f"unknown scorer(s) {sorted(unknown)}; known: {sorted(makers)}")
        if any(w < 0 for w in chosen.values()):
            raise ValueError("scorer weights must be >= 0")
        self.name = name
        self.weights = {k: float(w) for k, w in chosen.items() if w > 0}
        self._weights_view = MappingProxyType(self.weights)  # shared by every Decision
        self.scorers = [(makers[k], w) for k, w in self.weights.items()]
        self.filters = filters if filters is not None else default_filters()
        self.sample = max(1, sample)
        self.holders = max(0, holders)
        self.full_scan_limit = full_scan_limit
        self.block_tokens = block_tokens
        # Only remember prefixes when some scorer uses them (bounded: capacity per instance).
        # A given ``index`` is someone else's view (e.g. caches the nodes report): read it,
        # never write it; otherwise the policy remembers what it routed, as SGLang does.
        self.owns_index = index is None
        self.index: PrefixView | None = index if index is not None else (
            PrefixIndex(index_capacity) if "prefix" in self.weights else None)
        self._draws = np.zeros(0)  # uniform draws taken from rng in bulk
        self._rows: list[int] = []  # the draws scaled to rows of a table of _rows_n
        self._rows_n = -1
        self._pos = 0
        # The fused path knows the default plugins only; other filters use the plugin path.
        self._fused = filters is None
        self._kv_limit = next(f.kv_limit for f in self.filters if isinstance(f, CapacityFilter)
                              ) if self._fused else 1.0
        self._w = tuple(self.weights.get(k, 0.0) for k in FUSED_ORDER)
        self._imbalance = imbalance
        self._rtt_cap = rtt_cap_ms

    # --- the decision -------------------------------------------------------------------

    def choose(self, req: RequestSpec, table: CandidateTable, rng: np.random.Generator, *,
               explain: bool = False) -> Decision:
        n = table.n
        if n == 0:
            return nothing_fits(self.name, self.filters, req, table, explain)
        match_rows, match_tokens = self._matches(req, table)
        if n <= self.full_scan_limit:
            picks = list(range(n))
        else:
            picks = self._sample(n, rng, explain)
        # Sampled rows first, then the prefix holders (a row may appear twice; the first
        # best total wins, and a holder's copy knows its cached tokens).
        rows = picks + match_rows
        matched = [0.0] * len(picks) + match_tokens
        if self._fused and not explain and len(rows) <= FUSED_MAX_ROWS:
            decision = self._decide_fused(req, table, rows, matched)
        elif n <= self.full_scan_limit:
            decision = self._decide_all(req, table, match_rows, match_tokens, explain)
        else:
            decision = self._decide(req, table, np.array(rows, dtype=np.intp),
                                    np.array(matched), explain)
        if decision is None and n > self.full_scan_limit:
            # Nobody eligible in the sample: look at everyone (bounded by n).
            decision = self._decide_all(req, table, match_rows, match_tokens, explain)
        return decision or nothing_fits(self.name, self.filters, req, table, explain)

    def _decide_all(self, req: RequestSpec, table: CandidateTable, match_rows: list[int],
                    match_tokens: list[float], explain: bool) -> Decision | None:
        everyone = np.zeros(table.n)
        if match_rows:
            everyone[match_rows] = match_tokens
        return self._decide(req, table, np.arange(table.n), everyone, explain)

    def _sample(self, n: int, rng: np.random.Generator, explain: bool) -> list[int]:
        """``sample`` random rows. Drawn from a buffer refilled in bulk from ``rng`` (one
        numpy call costs as much as the rest of a decision); an explained decision draws
        from ``rng`` itself, so a caller can explain with a copy of its generator without
        moving this policy's buffer."""
        k = self.sample
        if explain:
            return [int(x * n) for x in rng.random(k).tolist()]
        pos = self._pos
        if pos + k > len(self._draws):
            self._draws = rng.random(RANDOM_BUFFER)
            self._rows_n = -1
            pos = 0
        if self._rows_n != n:
            # The draws as rows of a table of n, scaled in one numpy call: the same
            # int(x * n) as one draw at a time (a float64 product, truncated).
            self._rows = (self._draws * n).astype(np.int64).tolist()
            self._rows_n = n
        self._pos = pos + k
        return self._rows[pos:pos + k]

    def _matches(self, req: RequestSpec, table: CandidateTable) -> tuple[list[int], list[float]]:
        """Rows holding the deepest cached prefixes, and the tokens each holds."""
        if self.index is None or not req.block_hashes:
            return [], []
        rows: list[int] = []
        tokens: list[float] = []
        for inst, depth in self.index.matches(req.block_hashes, self.holders):
            row = table.row_of.get(inst)  # type: ignore[call-overload]
            if row is not None:
                rows.append(row)
                tokens.append(float(depth * self.block_tokens))
        return rows, tokens

    def _decide(self, req: RequestSpec, table: CandidateTable, rows: np.ndarray,
                matched: np.ndarray, explain: bool) -> Decision | None:
        """The plugin path: filters' masks, scorers' vectors (and their parts, explained)."""
        cols = table.cols(rows)
        ok = passing(self.filters, req, table, cols, rows)
        if not ok.any():
            return None
        f = Features(req, cols, ok, matched)
        total = np.zeros(len(rows))
        parts: dict[str, np.ndarray] = {}
        for scorer, weight in self.scorers:
            s = scorer.score(req, table, cols, rows, f)
            total += weight * s
            if explain:
                parts[scorer.name] = s
        pos = int(np.where(ok, total, -np.inf).argmax())
        row = int(rows[pos])
        report = (scored_reports(self.filters, req, table, rows, ok, parts, self.weights)
                  if explain else None)
        return Decision(self.name, req.model_id, table.ids[row], row, table.n, len(rows),
                        matched_tokens=int(matched[pos]), weights=self._weights_view,
                        report=report)

    def _decide_fused(self, req: RequestSpec, table: CandidateTable, rows: list[int],
                      matched: list[float]) -> Decision | None:
        """The same filters and scorers as ``_decide`` with the default plugins, fused
        into one Python loop over a few rows: for ~12 rows this is 3x faster than ~60
        small numpy calls. tests/unit/test_policy_scoring.py checks both paths agree."""
        data = table.fields(rows)  # one list of fields per row
        rtt = table.rtt[req.gateway]  # read per passing row below (.item: no numpy scalar)
        banned = {table.row_of.get(i, -1) for i in req.exclude} if req.exclude else ()
        allowed = req.allowed_regions
        prompt, out = req.prompt_tokens, req.output_tokens
        kv_limit = self._kv_limit
        # (position, util, cost, expected, error rate) of the rows that pass
        keep: list[tuple[int, float, float, float, float]] = []
        least = best_cost = best_t = math.inf
        j = -1
        for (ok, _flags, infl, queued, slots, qmax, kv, _price, _watts, inv_p, inv_d, err,
             region, wprice) in data:
            j += 1
            # Filters: health, capacity, exclusion, region (as filters.default_filters()).
            if (ok <= 0.0 or queued >= qmax or kv >= kv_limit
                    or (banned and rows[j] in banned)
                    or (allowed is not None and region not in allowed)):
                continue
            # Features (scorers.Features); the branches skip terms that are exactly 0.
            busy = infl + queued
            util = busy / slots
            uncached = prompt - matched[j]
            service = (uncached * inv_p if uncached > 0.0 else 0.0) + out * inv_d
            excess = busy + 1.0 - slots
            expected = service * (1.0 + excess / slots) if excess > 0.0 else service
            if queued:
                expected += queued * (prompt * inv_p)
            if expected < 1e-6:
                expected = 1e-6
            cost = wprice * service
            if util < least:
                least = util
            if cost < best_cost:
                best_cost = cost
            if expected < best_t:
                best_t = expected
            keep.append((j, util, cost, expected, err))
        if not keep:
            return None
        w_load, w_prefix, w_rtt, w_energy, w_latency, w_rel = self._w
        cap = self._rtt_cap
        per_token = w_prefix / max(prompt, 1)
        bar = least + self._imbalance
        cheapest = best_cost + ENERGY_FLOOR
        best_j, best_total = -1, -math.inf
        for j, util, cost, expected, e in keep:
            good = 1.0 - (0.0 if e < 0.0 else 1.0 if e > 1.0 else e)
            r = rtt.item(rows[j])
            total = (w_load / (1.0 + util)
                     + (matched[j] * per_token if util <= bar else 0.0)
                     + w_rtt * (1.0 - (r if r < cap else cap) / cap)
                     + w_energy * cheapest / (cost + ENERGY_FLOOR)
                     + w_latency * best_t / expected
                     + w_rel * good * good)
            if total > best_total:
                best_j, best_total = j, total
        row = rows[best_j]
        return Decision(self.name, req.model_id, table.ids[row], row, table.n, len(rows),
                        matched_tokens=int(matched[best_j]), weights=self._weights_view)

    # --- what the caller tells the policy afterwards ----------------------------------

    def observe(self, req: RequestSpec, table: CandidateTable, row: int) -> None:
        """The request was sent to ``row``: its prompt's blocks are now cached there."""
        if self.owns_index and self.index is not None and req.block_hashes:
            self.index.record(table.ids[row], req.block_hashes)

    def forget(self, instance_id: str) -> None:
        """The instance lost its cache (restart, failure, curtailment)."""
        if self.owns_index and self.index is not None:
            self.index.forget(instance_id)
