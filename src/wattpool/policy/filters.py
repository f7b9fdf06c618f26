"""Filters: which candidates may take a request at all.

Each filter works on a block of columns (``cols[FIELD, i]`` for the rows under
consideration) and returns a boolean mask; ``why`` explains one row, and is called only on
the cold path (nothing passed, or an explanation was asked for). The framework, not the
filter, attaches the filter's name. ``unresolvable`` says the row will never fit this
request (so retrying later is pointless), as Kubernetes' taint filter does.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from wattpool.policy.candidates import (
    CURTAILED,
    DRAINING,
    FLAGS,
    KV_USED,
    MAX_QUEUE,
    OK,
    QUARANTINED,
    QUEUED,
    READY,
    REGION,
    CandidateTable,
    RequestSpec,
)


class Filter(Protocol):
    name: str
    unresolvable: bool

    def mask(self, req: RequestSpec, table: CandidateTable, cols: np.ndarray,
             rows: np.ndarray) -> np.ndarray: ...

    def why(self, req: RequestSpec, table: CandidateTable, row: int) -> str: ...


class HealthFilter:
    """Ready, and not draining, curtailed or quarantined."""

    name = "health"
    unresolvable = False  # each state ends: engines come up, curtailment lifts

    def mask(self, req: RequestSpec, table: CandidateTable, cols: np.ndarray,
             rows: np.ndarray) -> np.ndarray:
        return cols[OK] > 0.0

    def why(self, req: RequestSpec, table: CandidateTable, row: int) -> str:
        flags = int(table.m[FLAGS, row])
        if not flags & READY:
            return "not ready"
        for bit, word in ((QUARANTINED, "quarantined"), (CURTAILED, "curtailed"),
                          (DRAINING, "draining")):
            if flags & bit:
                return word
        return "healthy"


class ExcludeFilter:
    """Instances already tried for this request (failover) are not tried again."""

    name = "exclude"
    unresolvable = True

    def mask(self, req: RequestSpec, table: CandidateTable, cols: np.ndarray,
             rows: np.ndarray) -> np.ndarray:
        ok = np.ones(cols.shape[1], dtype=bool)
        for inst in req.exclude:
            row = table.row_of.get(inst)
            if row is not None:
                ok &= rows != row
        return ok

    def why(self, req: RequestSpec, table: CandidateTable, row: int) -> str:
        return "already tried for this request"


class CapacityFilter:
    """The instance's queue is below its limit and its KV cache is not full."""

    name = "capacity"
    unresolvable = False

    def __init__(self, kv_limit: float = 0.98) -> None:
        self.kv_limit = kv_limit  # share of KV in use beyond which nothing more fits

    def mask(self, req: RequestSpec, table: CandidateTable, cols: np.ndarray,
             rows: np.ndarray) -> np.ndarray:
        return (cols[QUEUED] < cols[MAX_QUEUE]) & (cols[KV_USED] < self.kv_limit)

    def why(self, req: RequestSpec, table: CandidateTable, row: int) -> str:
        col = table.m[:, row]
        if col[QUEUED] >= col[MAX_QUEUE]:
            return f"queue full ({int(col[QUEUED])}/{int(col[MAX_QUEUE])})"
        return f"KV cache full ({col[KV_USED]:.0%})"


class RegionFilter:
    """Only regions the request allows (data residency); any when it names none."""

    name = "region"
    unresolvable = True

    def mask(self, req: RequestSpec, table: CandidateTable, cols: np.ndarray,
             rows: np.ndarray) -> np.ndarray:
        if req.allowed_regions is None:
            return np.ones(cols.shape[1], dtype=bool)
        return np.isin(cols[REGION], np.fromiter(req.allowed_regions, dtype=float))

    def why(self, req: RequestSpec, table: CandidateTable, row: int) -> str:
        return f"region {table.regions[int(table.m[REGION, row])]} not allowed"


def default_filters() -> list[Filter]:
    return [ExcludeFilter(), HealthFilter(), RegionFilter(), CapacityFilter()]


def passing(filters: list[Filter], req: RequestSpec, table: CandidateTable, cols: np.ndarray,
            rows: np.ndarray) -> np.ndarray:
    """Rows (positions in ``cols``) that pass every filter."""
    ok = filters[0].mask(req, table, cols, rows) if filters else np.ones(cols.shape[1], bool)
    for f in filters[1:]:
        ok &= f.mask(req, table, cols, rows)
    return ok


def first_failure(filters: list[Filter], req: RequestSpec, table: CandidateTable,
                  row: int) -> tuple[str, str, bool] | None:
    """(filter name, reason, unresolvable) of the first filter the row fails, or None."""
    cols = table.m[:, row:row + 1]
    rows = np.array([row])
    for f in filters:
        if not f.mask(req, table, cols, rows)[0]:
            return f.name, f.why(req, table, row), f.unresolvable
    return None
