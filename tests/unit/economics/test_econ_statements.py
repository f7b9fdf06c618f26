"""Ledger transactions as values, periods, operator statements and invoices (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import pytest

from wattpool.economics.ledger import (
    POOL_CLAWBACKS,
    POOL_FEES,
    POOL_LATENCY_WITHHELD,
    POOL_RESERVE,
    POOL_UNASSIGNED,
    Entry,
    LedgerError,
    charge_entries,
    check_balanced,
    operator_payable,
    operator_pending,
    refund_entries,
    settle_entries,
    tenant_receivable,
)
from wattpool.economics.payouts import Split
from wattpool.economics.statements import (
    Period,
    build_invoice,
    build_operator_statement,
    parse_period,
    usd,
)


def test_charge_and_refund_entries_mirror_each_other() -> None:
    split = Split(375, 200, 50, 375)
    charge = charge_entries(split, "ten_a", "op_1")
    assert charge == (Entry(tenant_receivable("ten_a"), 1000),
                      Entry(operator_pending("op_1"), -375), Entry(POOL_FEES, -200),
                      Entry(POOL_RESERVE, -50), Entry(POOL_LATENCY_WITHHELD, -375))
    check_balanced(charge)
    assert charge_entries(Split(1, 0, 0, 0), None, None) == (
        Entry("tenant:anonymous:receivable", 1), Entry(POOL_UNASSIGNED, -1))
    for settled, account in ((None, operator_pending("op_1")),
                             ("matured", operator_payable("op_1")),
                             ("clawed_back", POOL_CLAWBACKS)):
        back = refund_entries(Split(3, 1, 0, 0), "ten_a", "op_1", settled)  # type: ignore[arg-type]
        assert back == (Entry(tenant_receivable("ten_a"), -4), Entry(account, 3),
                        Entry(POOL_FEES, 1))


def test_settlement_entries_and_refusals() -> None:
    moved = settle_entries({"op_b": 5, "op_a": 0}, "matured")
    assert moved == (Entry(operator_pending("op_b"), 5), Entry(operator_payable("op_b"), -5))
    assert settle_entries({"op_a": 7}, "clawed_back") == (
        Entry(operator_pending("op_a"), 7), Entry(POOL_CLAWBACKS, -7))
    with pytest.raises(LedgerError, match="negative"):
        settle_entries({"op_a": -1}, "matured")
    with pytest.raises(LedgerError, match="sum to 1"):
        check_balanced([Entry("a", 1)])
    with pytest.raises(LedgerError, match="integer micro-dollars"):
        check_balanced([Entry("a", 0.5), Entry("b", -0.5)])  # type: ignore[arg-type]
    with pytest.raises(LedgerError, match="integer micro-dollars"):
        check_balanced([Entry("a", True), Entry("b", -1)])  # type: ignore[arg-type]
    with pytest.raises(LedgerError, match="1-128 characters"):
        check_balanced([Entry("x" * 129, 0)])


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [("2026-11", datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)),
     ("2026-12", datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
     (" 2026-02-28", datetime(2026, 2, 28, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))],
    ids=["month", "december-rolls-over", "day"],
)
def test_periods(text: str, start: datetime, end: datetime) -> None:
    p = parse_period(text)
    assert (p.start, p.end) == (start, end)
    assert p.days() == (start.date(), date.fromordinal(end.date().toordinal() - 1))


@pytest.mark.parametrize("bad", ["2026", "2026-13", "2026-02-30", "Nov 2026", ""])
def test_bad_periods_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="use a month like 2026-11"):
        parse_period(bad)


def test_usd_is_exact() -> None:
    assert usd(1) == "0.000001" and usd(-2_500_000) == "-2.500000" and usd(0) == "0.000000"


@dataclass(frozen=True)
class Line:
    account: str
    amount_micros: int
    kind: str
    created_at: datetime


@dataclass(frozen=True)
class Charge:
    node_id: str | None
    amount_micros: int
    operator_micros: int
    fee_micros: int
    reserve_micros: int
    withheld_micros: int
    settled_kind: str | None = None


def test_operator_statement_adds_up() -> None:
    nov = parse_period("2026-11")
    oct_, dec = datetime(2026, 10, 20, tzinfo=UTC), datetime(2026, 12, 2, tzinfo=UTC)
    mid = datetime(2026, 11, 10, tzinfo=UTC)
    pend, pay = operator_pending("op"), operator_payable("op")
    lines = [
        Line(pend, -750, "charge", oct_),  # October credit: opening pending
        Line(pend, 750, "mature", mid), Line(pay, -750, "mature", mid),
        Line(pend, -375, "charge", mid), Line(pend, -750, "charge", mid),
        Line(pend, 75, "refund", mid), Line(pay, 30, "refund", mid),
        Line(pend, 300, "clawback", mid),
        Line(pend, -999, "charge", dec),  # after the period: ignored
        Line("operator:other:pending", -5, "charge", mid),  # another operator: ignored
    ]
    charges = [Charge("n1", 1000, 375, 200, 50, 375),
               Charge("n2", 1000, 750, 200, 50, 0, "clawed_back")]
    st = build_operator_statement("acme", "op", nov, charges, lines)
    assert (st.requests, st.gross_micros, st.fee_micros, st.reserve_micros,
            st.withheld_micros) == (2, 2000, 400, 100, 375)
    assert (st.earned_micros, st.refunded_micros, st.clawed_back_micros,
            st.matured_micros) == (1125, 105, 300, 750)
    assert (st.opening_pending_micros, st.closing_pending_micros) == (750, 750)
    assert (st.opening_payable_micros, st.closing_payable_micros) == (0, 720)
    assert st.closing_pending_micros + st.closing_payable_micros == (
        st.opening_pending_micros + st.opening_payable_micros + st.earned_micros
        - st.refunded_micros - st.clawed_back_micros)
    assert [(n.node_id, n.requests, n.late_requests, n.clawed_back_requests)
            for n in st.nodes] == [("n1", 1, 1, 0), ("n2", 1, 0, 1)]
    assert dict(st.lines())["pending at end"] == 750


@dataclass(frozen=True)
class Daily:
    model_id: str
    priority_class: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int


def test_invoice_groups_usage_and_subtracts_refunds() -> None:
    nov = Period("2026-11", datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
    usage = [Daily("m", "interactive", 2, 10, 20, 300), Daily("m", "interactive", 1, 5, 5, 7),
             Daily("m", "batch", 1, 1, 1, 1), Daily("a", "interactive", 1, 1, 1, 2)]
    recv, at = tenant_receivable("ten_a"), datetime(2026, 11, 5, tzinfo=UTC)
    lines = [Line(recv, 300, "charge", at), Line(recv, 7, "charge", at),
             Line(recv, -100, "refund", at)]
    inv = build_invoice("acme", "ten_a", nov, usage, lines)
    assert [(ln.model_id, ln.priority_class, ln.requests, ln.amount_micros)
            for ln in inv.lines] == [("a", "interactive", 1, 2), ("m", "batch", 1, 1),
                                     ("m", "interactive", 3, 307)]
    assert (inv.usage_micros, inv.refunds_micros, inv.total_micros) == (310, 100, 210)
    assert inv.unposted_micros == 3  # 310 used, 307 in the ledger so far
