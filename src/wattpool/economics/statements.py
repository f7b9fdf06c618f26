"""Operator statements and tenant invoices for a period, built from ledger rows (pure).

The store reads the rows (``wattpool.store.ledger``); these functions only add them up,
so a statement can be checked line by line against the ledger: closing balance =
opening balance + the period's movements, to the micro-dollar.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Protocol

MICROS_PER_USD = 1_000_000


def usd(micros: int) -> str:
    """Micro-dollars as a USD string with all six decimals (exact, no float)."""
    return f"{Decimal(micros) / MICROS_PER_USD:.6f}"


@dataclass(frozen=True, slots=True)
class Period:
    label: str  # "2026-11" (a month) or "2026-11-28" (a day)
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive

    def days(self) -> tuple[date, date]:
        """First and last UTC day of the period (both inclusive)."""
        return self.start.date(), (self.end - timedelta(days=1)).date()


def parse_period(text: str) -> Period:
    """A UTC calendar month ``YYYY-MM`` or day ``YYYY-MM-DD``."""
    m = re.fullmatch(r"(\d{4})-(\d{2})(?:-(\d{2}))?", text.strip())
    try:
        if m is None:
            raise ValueError
        year, month = int(m.group(1)), int(m.group(2))
        if m.group(3):
            start = datetime(year, month, int(m.group(3)), tzinfo=UTC)
            return Period(text.strip(), start, start + timedelta(days=1))
        start = datetime(year, month, 1, tzinfo=UTC)
    except ValueError:
        raise ValueError(f"{text!r} is not a period; use a month like 2026-11 "
                         "or a day like 2026-11-28") from None
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return Period(text.strip(), start, end)


class LineLike(Protocol):
    @property
    def account(self) -> str: ...
    @property
    def amount_micros(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...


class ChargeLike(Protocol):
    @property
    def node_id(self) -> str | None: ...
    @property
    def amount_micros(self) -> int: ...
    @property
    def operator_micros(self) -> int: ...
    @property
    def fee_micros(self) -> int: ...
    @property
    def reserve_micros(self) -> int: ...
    @property
    def withheld_micros(self) -> int: ...
    @property
    def settled_kind(self) -> str | None: ...


class DailyUsageLike(Protocol):
    @property
    def model_id(self) -> str: ...
    @property
    def priority_class(self) -> str: ...
    @property
    def requests(self) -> int: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def cost_micros(self) -> int: ...


@dataclass(frozen=True, slots=True)
class NodeLine:
    node_id: str
    requests: int
    gross_micros: int  # tenant charges of the requests it served
    earned_micros: int  # operator credit of those requests
    late_requests: int  # requests that missed the latency target
    clawed_back_requests: int


@dataclass(frozen=True, slots=True)
class OperatorStatement:
    """Liabilities to the operator are shown positive (money the pool owes them)."""

    operator: str
    operator_id: str
    period: Period
    requests: int
    gross_micros: int  # tenant charges on the operator's nodes
    fee_micros: int
    reserve_micros: int
    withheld_micros: int  # share withheld for missing the latency target
    earned_micros: int  # credited to pending by this period's charges
    refunded_micros: int  # operator credit given back by refunds in the period
    clawed_back_micros: int  # pending credit lost to failed audits in the period
    matured_micros: int  # pending -> payable in the period
    opening_pending_micros: int
    closing_pending_micros: int
    opening_payable_micros: int
    closing_payable_micros: int
    nodes: tuple[NodeLine, ...]

    def lines(self) -> list[tuple[str, int]]:
        return [
            ("tenant charges on your nodes", self.gross_micros),
            ("pool fee", -self.fee_micros),
            ("reserve", -self.reserve_micros),
            ("withheld: latency target missed", -self.withheld_micros),
            ("earned", self.earned_micros),
            ("refunds (your share)", -self.refunded_micros),
            ("clawed back (failed audits)", -self.clawed_back_micros),
            ("matured (pending -> payable)", self.matured_micros),
            ("pending at start", self.opening_pending_micros),
            ("pending at end", self.closing_pending_micros),
            ("payable at start", self.opening_payable_micros),
            ("payable at end", self.closing_payable_micros),
        ]


def build_operator_statement(operator: str, operator_id: str, period: Period,
                             charges: Iterable[ChargeLike],
                             lines: Iterable[LineLike]) -> OperatorStatement:
    """``charges``: the operator's charges served in the period; ``lines``: every line on
    its pending and payable accounts up to the period's end."""
    pending, payable = f"operator:{operator_id}:pending", f"operator:{operator_id}:payable"
    moves = {"earned": 0, "refunded": 0, "clawed": 0, "matured": 0}
    opening = {pending: 0, payable: 0}
    closing = {pending: 0, payable: 0}
    for ln in lines:
        if ln.account not in closing or ln.created_at >= period.end:
            continue
        closing[ln.account] -= ln.amount_micros  # credit (negative) = owed to operator
        if ln.created_at < period.start:
            opening[ln.account] -= ln.amount_micros
        elif ln.kind == "charge":
            moves["earned"] -= ln.amount_micros
        elif ln.kind == "refund":
            moves["refunded"] += ln.amount_micros
        elif ln.kind == "clawback":
            moves["clawed"] += ln.amount_micros
        elif ln.kind == "mature" and ln.account == payable:
            moves["matured"] -= ln.amount_micros
    nodes: dict[str, list[int]] = {}
    totals = [0, 0, 0, 0, 0]  # requests, gross, fee, reserve, withheld
    for c in charges:
        n = nodes.setdefault(c.node_id or "-", [0, 0, 0, 0, 0])
        late = c.withheld_micros > 0
        for i, v in enumerate((1, c.amount_micros, c.operator_micros, int(late),
                               int(c.settled_kind == "clawed_back"))):
            n[i] += v
        for i, v in enumerate((1, c.amount_micros, c.fee_micros, c.reserve_micros,
                               c.withheld_micros)):
            totals[i] += v
    return OperatorStatement(
        operator, operator_id, period, totals[0], totals[1], totals[2], totals[3], totals[4],
        moves["earned"], moves["refunded"], moves["clawed"], moves["matured"],
        opening[pending], closing[pending], opening[payable], closing[payable],
        tuple(NodeLine(k, *v) for k, v in sorted(nodes.items())))


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    model_id: str
    priority_class: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    amount_micros: int


@dataclass(frozen=True, slots=True)
class Invoice:
    tenant: str
    tenant_id: str
    period: Period
    lines: tuple[InvoiceLine, ...]
    usage_micros: int  # sum of the lines (from the usage roll-ups)
    refunds_micros: int  # refunds posted in the period (from the ledger)
    ledger_charged_micros: int  # charges posted in the period (from the ledger)

    @property
    def total_micros(self) -> int:
        return self.usage_micros - self.refunds_micros

    @property
    def unposted_micros(self) -> int:
        """Usage not yet charged in the ledger (0 once the poster has caught up)."""
        return self.usage_micros - self.ledger_charged_micros


def build_invoice(tenant: str, tenant_id: str, period: Period,
                  usage: Sequence[DailyUsageLike], lines: Iterable[LineLike]) -> Invoice:
    """``usage``: the tenant's daily roll-ups in the period; ``lines``: the period's lines
    on its receivable account."""
    by_key: dict[tuple[str, str], list[int]] = {}
    for u in usage:
        t = by_key.setdefault((u.model_id, u.priority_class), [0, 0, 0, 0])
        for i, v in enumerate((u.requests, u.prompt_tokens, u.completion_tokens,
                               u.cost_micros)):
            t[i] += v
    refunds = charged = 0
    for ln in lines:
        if ln.kind == "refund":
            refunds -= ln.amount_micros  # a refund credits the receivable
        elif ln.kind == "charge":
            charged += ln.amount_micros
    inv_lines = tuple(InvoiceLine(m, c, *v) for (m, c), v in sorted(by_key.items()))
    return Invoice(tenant, tenant_id, period, inv_lines,
                   sum(ln.amount_micros for ln in inv_lines), refunds, charged)
