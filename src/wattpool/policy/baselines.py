"""Baseline routing policies, behind the same interface as wattpool's own.

All of them apply the same filters (health, exclusion, region, capacity): a baseline that
sent requests to a curtailed node would lose for the wrong reason. They differ only in the
choice among the candidates that pass:

- ``round-robin``: the next eligible row after the last one chosen.
- ``least-loaded``: fewest requests in flight; ties go to the lowest instance id.
- ``power-of-two``: two random eligible rows, the one with fewer requests.
- ``prefix-threshold``: SGLang's cache-aware router. If the loads are imbalanced
  (max - min > ``abs_threshold`` and max > min * ``rel_threshold``) the least loaded;
  else the holder of the longest cached prefix if it covers more than
  ``cache_threshold`` of the prompt; else the instance with the smallest cache tree.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from wattpool.policy.candidates import IN_FLIGHT, QUEUED, CandidateTable, RequestSpec
from wattpool.policy.decision import Decision, nothing_fits
from wattpool.policy.filters import Filter, default_filters, passing
from wattpool.policy.prefix import DEFAULT_BLOCK_TOKENS, PrefixIndex, PrefixView
from wattpool.policy.scoring import ScoringPolicy


class RoutingPolicy(Protocol):
    """What the simulator (and the live router) swap."""

    name: str

    def choose(self, req: RequestSpec, table: CandidateTable, rng: np.random.Generator, *,
               explain: bool = False) -> Decision: ...

    def observe(self, req: RequestSpec, table: CandidateTable, row: int) -> None: ...

    def forget(self, instance_id: str) -> None: ...


def _load(cols: np.ndarray) -> np.ndarray:
    return cols[IN_FLIGHT] + cols[QUEUED]


class _Baseline:
    name = "baseline"

    def __init__(self, filters: list[Filter] | None = None) -> None:
        self.filters = filters if filters is not None else default_filters()

    def _eligible(self, req: RequestSpec, table: CandidateTable) -> np.ndarray:
        rows = np.arange(table.n)
        return passing(self.filters, req, table, table.m, rows)

    def _chose(self, req: RequestSpec, table: CandidateTable, row: int,
               considered: int) -> Decision:
        return Decision(self.name, req.model_id, table.ids[row], row, table.n, considered)

    def _explained(self, req: RequestSpec, table: CandidateTable, row: int,
                   explain: bool) -> Decision:
        if not explain:
            return self._chose(req, table, row, table.n)
        full = nothing_fits(self.name, self.filters, req, table, True)  # every row
        return Decision(self.name, req.model_id, table.ids[row], row, table.n, table.n,
                        report=full.report)

    def observe(self, req: RequestSpec, table: CandidateTable, row: int) -> None:
        return None

    def forget(self, instance_id: str) -> None:
        return None


class RoundRobinPolicy(_Baseline):
    name = "round-robin"
    window = 16  # rows checked per vector step

    def __init__(self, filters: list[Filter] | None = None) -> None:
        super().__init__(filters)
        self.next = 0

    def choose(self, req: RequestSpec, table: CandidateTable, rng: np.random.Generator, *,
               explain: bool = False) -> Decision:
        n = table.n
        start = self.next % n if n else 0
        for offset in range(0, n, self.window):  # bounded: at most n rows
            rows = (start + offset + np.arange(min(self.window, n - offset))) % n
            ok = passing(self.filters, req, table, table.cols(rows), rows)
            if ok.any():
                row = int(rows[int(ok.argmax())])
                self.next = row + 1
                return self._explained(req, table, row, explain)
        return nothing_fits(self.name, self.filters, req, table, explain)


class LeastLoadedPolicy(_Baseline):
    name = "least-loaded"

    def choose(self, req: RequestSpec, table: CandidateTable, rng: np.random.Generator, *,
               explain: bool = False) -> Decision:
        ok = self._eligible(req, table)
        if not ok.any():
            return nothing_fits(self.name, self.filters, req, table, explain)
        load = np.where(ok, _load(table.m), np.inf)
        best = np.flatnonzero(load == load.min())
        row = int(best[0]) if len(best) == 1 else min(best.tolist(), key=table.ids.__getitem__)
        return self._explained(req, table, row, explain)


class PowerOfTwoPolicy(_Baseline):
    name = "power-of-two"
    tries = 8  # random pairs drawn before falling back to the eligible set

    def choose(self, req: RequestSpec, table: CandidateTable, rng: np.random.Generator, *,
               explain: bool = False) -> Decision:
        n = table.n
        if n == 0:
            return nothing_fits(self.name, self.filters, req, table, explain)
        for _ in range(self.tries):
            rows = rng.integers(0, n, size=2)
            cols = table.cols(rows)
            ok = passing(self.filters, req, table, cols, rows)
            if ok.any():
                load = np.where(ok, _load(cols), np.inf)
                return self._explained(req, table, int(rows[int(load.argmin())]), explain)
        ok = self._eligible(req, table)
        eligible = np.flatnonzero(ok)
        if len(eligible) == 0:
            return nothing_fits(self.name, self.filters, req, table, explain)
        pair = rng.choice(eligible, size=min(2, len(eligible)), replace=False)
        load = _load(table.cols(pair))
        return self._explained(req, table, int(pair[int(load.argmin())]), explain)


class PrefixThresholdPolicy(_Baseline):
    name = "prefix-threshold"

    def __init__(self, filters: list[Filter] | None = None, *, cache_threshold: float = 0.5,
                 abs_threshold: float = 32.0, rel_threshold: float = 1.0001,
                 block_tokens: int = DEFAULT_BLOCK_TOKENS, index_capacity: int = 4096,
                 holders: int = 16, index: PrefixView | None = None) -> None:
        super().__init__(filters)
        self.cache_threshold = cache_threshold
        self.abs_threshold = abs_threshold
        self.rel_threshold = rel_threshold
        self.block_tokens = block_tokens
        self.holders = holders
        # As in ScoringPolicy: a given index is read only, else the policy's own estimate.
        self.owns_index = index is None
        self.index: PrefixView = index if index is not None else PrefixIndex(index_capacity)
        self._tree = np.zeros(0)  # row -> blocks remembered (the "tree size")
        self._rows: dict[str, int] = {}

    def _tree_for(self, table: CandidateTable) -> np.ndarray:
        if len(self._tree) != table.n or self._rows is not table.row_of:
            self._tree = np.array([float(self.index.blocks(i)) for i in table.ids])
            self._rows = table.row_of
        return self._tree

    def choose(self, req: RequestSpec, table: CandidateTable, rng: np.random.Generator, *,
               explain: bool = False) -> Decision:
        ok = self._eligible(req, table)
        if not ok.any():
            return nothing_fits(self.name, self.filters, req, table, explain)
        load = _load(table.m)
        lo, hi = float(load[ok].min()), float(load[ok].max())
        if hi - lo > self.abs_threshold and hi > lo * self.rel_threshold:
            return self._explained(req, table, int(np.where(ok, load, np.inf).argmin()),
                                   explain)
        if req.block_hashes:
            best_row, best_depth = -1, 0
            for inst, depth in self.index.matches(req.block_hashes, self.holders):
                row = table.row_of.get(inst)  # type: ignore[call-overload]
                if row is None or not ok[row] or depth < best_depth:
                    continue
                if depth > best_depth or load[row] < load[best_row]:
                    best_row, best_depth = row, depth
            share = best_depth * self.block_tokens / max(req.prompt_tokens, 1)
            if best_row >= 0 and share > self.cache_threshold:
                return self._explained(req, table, best_row, explain)
        tree = self._tree_for(table)
        return self._explained(req, table, int(np.where(ok, tree, np.inf).argmin()), explain)

    def observe(self, req: RequestSpec, table: CandidateTable, row: int) -> None:
        if req.block_hashes:
            if self.owns_index:
                self.index.record(table.ids[row], req.block_hashes)
            self._tree_for(table)[row] = self.index.blocks(table.ids[row])

    def forget(self, instance_id: str) -> None:
        if self.owns_index:
            self.index.forget(instance_id)
        row = self._rows.get(instance_id)
        if row is not None and row < len(self._tree):
            self._tree[row] = 0.0


POLICY_NAMES = ("round-robin", "least-loaded", "power-of-two", "prefix-threshold", "wattpool")


def make_policy(name: str, /, **options: object) -> RoutingPolicy:
    """A fresh policy by name; ``options`` go to its constructor (``name=`` renames it)."""
    makers: dict[str, type] = {
        "round-robin": RoundRobinPolicy, "least-loaded": LeastLoadedPolicy,
        "power-of-two": PowerOfTwoPolicy, "prefix-threshold": PrefixThresholdPolicy,
        "wattpool": ScoringPolicy,
    }
    if name not in makers:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}")
    return makers[name](**options)  # type: ignore[no-any-return]
