"""A routing decision as a value, and how to explain it.

Every policy returns a ``Decision``. The hot path fills only the choice; the report (why
each candidate was dropped, or its score parts) is built when asked for (``explain=True``)
and always when nothing could be chosen, with Kubernetes-style counts:
``0/12 instances available: 5 curtailed, 7 queue full``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import numpy as np

from wattpool.policy.candidates import CandidateTable, RequestSpec
from wattpool.policy.filters import Filter, first_failure


class CandidateReport(msgspec.Struct, frozen=True):
    instance_id: str
    dropped_by: str | None  # filter name, None when the candidate passed every filter
    reason: str  # why it was dropped; "" when it passed
    unresolvable: bool  # it will never fit this request (no point retrying later)
    scores: dict[str, float] = msgspec.field(default_factory=dict)  # scorer -> 0..100
    total: float = 0.0  # weighted sum of the scores (0 when dropped)


class Decision(msgspec.Struct, frozen=True):
    """A msgspec Struct rather than a dataclass: built on every request, and a frozen
    dataclass with eleven fields costs 3.4 us to make where this costs 0.2."""

    policy: str  # which policy decided
    model_id: str
    chosen: str | None  # instance id, None when nothing fits
    row: int  # the chosen row of the table, -1 when none
    candidates: int  # instances of the model
    considered: int  # rows looked at (all, or a sample plus prefix holders)
    matched_tokens: int = 0  # prompt tokens the chosen instance probably has cached
    reason: str = ""  # why nothing was chosen; "" when something was
    unresolvable: bool = False  # nothing will ever fit: answer 4xx, not 503/retry
    weights: Mapping[str, float] = msgspec.field(default_factory=dict)  # scorer -> weight
    report: tuple[CandidateReport, ...] | None = None  # per considered candidate


def summarize(reports: Sequence[CandidateReport], total: int) -> str:
    """``0/N instances available: 3 curtailed, 2 queue full``."""
    counts: Counter[str] = Counter(r.reason.split(" (")[0] for r in reports if r.dropped_by)
    parts = ", ".join(f"{n} {why}" for why, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    passed = sum(1 for r in reports if r.dropped_by is None)
    return f"{passed}/{total} instances available" + (f": {parts}" if parts else "")


def dropped_reports(filters: list[Filter], req: RequestSpec, table: CandidateTable,
                    rows: Sequence[int]) -> list[CandidateReport]:
    out: list[CandidateReport] = []
    for row in rows:
        failed = first_failure(filters, req, table, row)
        if failed is None:
            out.append(CandidateReport(table.ids[row], None, "", False))
        else:
            name, why, never = failed
            out.append(CandidateReport(table.ids[row], name, why, never))
    return out


def nothing_fits(policy: str, filters: list[Filter], req: RequestSpec,
                 table: CandidateTable, explain: bool = True) -> Decision:
    """The cold path: every row's first failing filter (vectorised), its reason,
    counted; the per-row report only when ``explain``."""
    rows = np.arange(table.n)
    alive = np.ones(table.n, dtype=bool)
    dropped: list[tuple[int, Filter]] = []
    for f in filters:
        mask = f.mask(req, table, table.m, rows)
        dropped.extend((row, f) for row in np.flatnonzero(alive & ~mask).tolist())
        alive &= mask
    reports = [CandidateReport(table.ids[row], f.name, f.why(req, table, row), f.unresolvable)
               for row, f in sorted(dropped, key=lambda rf: rf[0])]
    reports += [CandidateReport(table.ids[row], None, "", False)
                for row in np.flatnonzero(alive).tolist()]
    if table.n == 0:
        reason = f"no instance of model {req.model_id!r}"
    else:
        reason = summarize(reports, table.n)
    never = all(r.unresolvable for r in reports)  # also True when there are none at all
    return Decision(policy, req.model_id, None, -1, table.n, table.n, reason=reason,
                    unresolvable=never, report=tuple(reports) if explain else None)


def scored_reports(filters: list[Filter], req: RequestSpec, table: CandidateTable,
                   rows: np.ndarray, ok: np.ndarray, parts: dict[str, np.ndarray],
                   weights: Mapping[str, float]) -> tuple[CandidateReport, ...]:
    """Reports for the considered rows: drops with reasons, the rest with score parts."""
    out: list[CandidateReport] = []
    seen: set[int] = set()
    for pos, row in enumerate(rows.tolist()):
        if row in seen:  # a sample may hold a row twice
            continue
        seen.add(row)
        if not ok[pos]:
            out.append(dropped_reports(filters, req, table, [row])[0])
            continue
        scores = {name: round(100.0 * float(vec[pos]), 2) for name, vec in parts.items()}
        total = sum(weights[name] * scores[name] for name in scores)
        out.append(CandidateReport(table.ids[row], None, "", False, scores, round(total, 2)))
    out.sort(key=lambda r: (r.dropped_by is not None, -r.total, r.instance_id))
    return tuple(out)


def explain(decision: Decision) -> dict[str, Any]:
    """The decision as plain JSON-able data (for ``wattpool route --explain``)."""
    body: dict[str, Any] = {
        "policy": decision.policy,
        "model": decision.model_id,
        "chosen": decision.chosen,
        "candidates": decision.candidates,
        "considered": decision.considered,
        "matched_tokens": decision.matched_tokens,
    }
    if decision.chosen is None:
        body["reason"] = decision.reason
        body["unresolvable"] = decision.unresolvable
    if decision.weights:
        body["weights"] = dict(decision.weights)
    if decision.report is not None:
        body["dropped"] = {r.instance_id: f"{r.dropped_by}: {r.reason}"
                           for r in decision.report if r.dropped_by}
        body["scores"] = {r.instance_id: {**r.scores, "total": r.total}
                          for r in decision.report if r.dropped_by is None}
    return body


def explain_text(decision: Decision, top: int = 10) -> str:
    """A few readable lines: the choice, the best few scores, the drops counted."""
    lines: list[str] = []
    head = f"{decision.policy}: model {decision.model_id!r}, "
    if decision.chosen is None:
        lines.append(head + f"nothing chosen: {decision.reason}")
    else:
        lines.append(head + f"chose {decision.chosen} (considered {decision.considered} "
                     f"of {decision.candidates}, ~{decision.matched_tokens} prompt tokens "
                     "cached)")
    if decision.weights:
        lines.append("  weights: " + ", ".join(f"{k}={v:g}" for k, v in
                                              decision.weights.items()))
    if decision.report is not None:
        passed = [r for r in decision.report if r.dropped_by is None]
        for r in passed[:top]:
            parts = " ".join(f"{k}={v:.0f}" for k, v in r.scores.items())
            mark = "*" if r.instance_id == decision.chosen else " "
            lines.append(f" {mark} {r.instance_id}: total {r.total:.1f}  {parts}".rstrip())
        if len(passed) > top:
            lines.append(f"   ... {len(passed) - top} more passed")
        dropped = [r for r in decision.report if r.dropped_by]
        if dropped:
            lines.append("  dropped: " + summarize(dropped, len(dropped)).split(": ", 1)[-1])
            for r in dropped[:top]:
                lines.append(f"    {r.instance_id}: {r.dropped_by}: {r.reason}")
    return "\n".join(lines)
