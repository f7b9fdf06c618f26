"""Operators and the double-entry ledger: posting, settlement and the reads statements use.

Every write is one database transaction: all of its ledger lines or none. A transaction
whose lines do not sum to exactly 0 is refused before anything is written
(``economics.ledger.check_balanced``). Idempotency keys make retries harmless: a usage
record is charged once per ``request_id``, a refund once per refund id, an audit
failure claws back once per audit id.

The open item of each charge (``ledger_charges``) is changed only by conditional UPDATEs,
which take the row lock on PostgreSQL (and the write lock on SQLite) before the lines are
computed: a charge settles once (matured or clawed back), and refunds never exceed it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, Insert, Table, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from wattpool.economics import payouts, statements
from wattpool.economics.ledger import (
    LedgerError,
    Settlement,
    Txn,
    charge_entries,
    check_balanced,
    operator_payable,
    operator_pending,
    refund_entries,
    settle_entries,
    tenant_receivable,
)
from wattpool.economics.payouts import PayoutPolicy, Split, operator_remaining
from wattpool.store.models import (
    LedgerCharge,
    LedgerEntry,
    LedgerTransaction,
    Node,
    Operator,
    Site,
    UsageEntry,
    utcnow,
)

_TXNS: Table = LedgerTransaction.__table__  # type: ignore[assignment]
_ENTRIES: Table = LedgerEntry.__table__  # type: ignore[assignment]
_CHARGES: Table = LedgerCharge.__table__  # type: ignore[assignment]
_SITES: Table = Site.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class OperatorRow:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class EntryRow:
    txn_id: str
    account: str
    amount_micros: int  # debit > 0, credit < 0
    kind: str
    reference: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ChargeRow:
    request_id: str
    tenant_id: str | None
    node_id: str | None
    operator_id: str | None
    created_at: datetime
    matures_at: datetime
    amount_micros: int
    operator_micros: int
    fee_micros: int
    reserve_micros: int
    withheld_micros: int
    refunded_micros: int
    settled_kind: str | None  # None (pending) | "matured" | "clawed_back"

    @property
    def split(self) -> Split:
        return _split(self)


def _split(row: Any) -> Split:
    """The split stored on a ``ledger_charges`` row (or a row read from it)."""
    return Split(row.operator_micros, row.fee_micros, row.reserve_micros, row.withheld_micros)


@dataclass(frozen=True, slots=True)
class Settled:
    """What one maturing or clawback run moved."""

    charges: int  # open items settled
    micros: int  # operator credit moved out of pending
    txn_id: str | None  # None when nothing was settled


class Chargeable(Protocol):
    """What posting a charge needs of a usage record (``repo.UsageRecord`` has it)."""

    @property
    def request_id(self) -> str: ...
    @property
    def tenant_id(self) -> str | None: ...
    @property
    def node_id(self) -> str | None: ...
    @property
    def ttft_ms(self) -> float | None: ...
    @property
    def priority_class(self) -> str: ...
    @property
    def cost_micros(self) -> int: ...
    @property
    def created_at(self) -> datetime: ...


# --- operators ---------------------------------------------------------------------


def _operator_row(o: Operator) -> OperatorRow:
    return OperatorRow(o.id, o.name, o.created_at)


def add_operator(engine: Engine, name: str) -> OperatorRow:
    if not name.strip():
        raise LedgerError("an operator needs a name")
    try:
        with Session(engine) as s, s.begin():
            op = Operator(id=f"op_{uuid.uuid4().hex[:12]}", name=name, created_at=utcnow())
            s.add(op)
            s.flush()
            return _operator_row(op)
    except IntegrityError:
        raise LedgerError(f"an operator named {name!r} exists already") from None


def _get_operator(s: Session, name: str) -> Operator:
    op = s.scalar(select(Operator).where(Operator.name == name))
    if op is None:
        raise LedgerError(f"no operator named {name!r}; add it with 'wattpool operators add'")
    return op


def get_operator(engine: Engine, name: str) -> OperatorRow:
    with Session(engine) as s:
        return _operator_row(_get_operator(s, name))


def list_operators(engine: Engine) -> list[OperatorRow]:
    with Session(engine) as s:
        return [_operator_row(o) for o in s.scalars(select(Operator).order_by(Operator.name))]


def assign_site(engine: Engine, site_name: str, operator_name: str | None) -> None:
    """Make the operator own the site (None: no operator). Charges already posted keep
    the operator they were credited to; new ones follow the new owner."""
    with Session(engine) as s, s.begin():
        op_id = None if operator_name is None else _get_operator(s, operator_name).id
        res = s.execute(update(_SITES).where(_SITES.c.name == site_name)
                        .values(operator_id=op_id))
        if not res.rowcount:  # type: ignore[attr-defined]
            raise LedgerError(f"no site named {site_name!r}; add it with 'wattpool sites add'")


def site_operators(engine: Engine) -> dict[str, str | None]:
    """Site name -> operator name (None: unowned)."""
    q = (select(_SITES.c.name, Operator.name)
         .outerjoin(Operator, Operator.id == _SITES.c.operator_id))
    with engine.connect() as conn:
        return {site: op for site, op in conn.execute(q)}


def node_operators(conn: Connection, node_ids: Iterable[str]) -> dict[str, str | None]:
    """Node id -> operator id of its site; nodes without a site or owner map to None."""
    ids = sorted(set(node_ids))
    if not ids:
        return {}
    q = (select(Node.id, _SITES.c.operator_id)
         .outerjoin(_SITES, _SITES.c.id == Node.site_id).where(Node.id.in_(ids)))
    return {node_id: op for node_id, op in conn.execute(q)}


# --- posting -----------------------------------------------------------------------


_DIALECT_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def _insert_ignoring(conn: Connection, table: Table, key: str) -> Insert:
    """INSERT that skips rows whose ``key`` is already stored (SQLite and PostgreSQL)."""
    make = _DIALECT_INSERTS.get(conn.dialect.name)
    if make is None:
        raise LedgerError(f"the ledger needs SQLite or PostgreSQL, not {conn.dialect.name}")
    return make(table).on_conflict_do_nothing(index_elements=[key])


def _new_txn_id() -> str:
    return f"txn_{uuid.uuid4().hex[:20]}"


def _entry_rows(txn_id: str, txn: Txn) -> list[dict[str, Any]]:
    return [{"txn_id": txn_id, "account": e.account, "amount_micros": e.amount_micros,
             "kind": txn.kind, "reference": txn.reference, "created_at": txn.at}
            for e in txn.entries]


def _claim_keys(conn: Connection, headers: Sequence[tuple[str, Txn]]) -> set[str]:
    """Insert transaction headers; the ids of those whose key was new."""
    rows = [{"id": tid, "kind": t.kind, "idempotency_key": t.key, "reference": t.reference,
             "created_at": t.at} for tid, t in headers]
    stmt = _insert_ignoring(conn, _TXNS, "idempotency_key").returning(_TXNS.c.id)
    return {r[0] for r in conn.execute(stmt, rows)} if rows else set()


def post_on(conn: Connection, txn: Txn) -> str | None:
    """Post one transaction on ``conn``'s database transaction; its id, or None when
    its key was posted before. Raises LedgerError, writing nothing, if it does not
    balance."""
    if not txn.entries:
        raise LedgerError("a transaction needs at least one line")
    check_balanced(txn.entries)
    txn_id = _new_txn_id()
    if not _claim_keys(conn, [(txn_id, txn)]):
        return None
    conn.execute(insert(_ENTRIES), _entry_rows(txn_id, txn))
    return txn_id


def post_transaction(engine: Engine, txn: Txn) -> str | None:
    """Post one balanced transaction atomically (all lines or none); see ``post_on``."""
    with engine.begin() as conn:
        return post_on(conn, txn)


def post_charges(conn: Connection, records: Iterable[Chargeable], policy: PayoutPolicy) -> int:
    """Charge the tenant of each priced record and credit operator, fee, reserve and
    withholding, on ``conn``'s transaction (so a caller may join it to the usage insert).

    Idempotent per ``request_id``; records that cost nothing post nothing. Returns the
    number of charges posted now.
    """
    priced = {r.request_id: r for r in records if r.cost_micros > 0}
    if not priced:
        return 0
    owners = node_operators(conn, [r.node_id for r in priced.values() if r.node_id])
    planned: dict[str, tuple[Txn, dict[str, Any]]] = {}
    for r in priced.values():
        split = payouts.split_charge(r.cost_micros, ttft_ms=r.ttft_ms,
                             priority_class=r.priority_class, policy=policy)
        operator_id = owners.get(r.node_id) if r.node_id else None
        txn = Txn("charge", f"charge:{r.request_id}", r.created_at,
                  charge_entries(split, r.tenant_id, operator_id), r.request_id)
        check_balanced(txn.entries)
        charge = {"request_id": r.request_id, "tenant_id": r.tenant_id, "node_id": r.node_id,
                  "operator_id": operator_id, "created_at": r.created_at,
                  "matures_at": payouts.matures_at(r.created_at, policy),
                  "amount_micros": split.total, "operator_micros": split.operator,
                  "fee_micros": split.fee, "reserve_micros": split.reserve,
                  "withheld_micros": split.withheld, "refunded_micros": 0}
        planned[_new_txn_id()] = (txn, charge)
    new = _claim_keys(conn, [(tid, txn) for tid, (txn, _) in planned.items()])
    if not new:
        return 0
    conn.execute(insert(_CHARGES), [{**planned[t][1], "txn_id": t} for t in sorted(new)])
    conn.execute(insert(_ENTRIES), [row for t in sorted(new)
                                    for row in _entry_rows(t, planned[t][0])])
    return len(new)


def post_usage(engine: Engine, records: Iterable[Chargeable], policy: PayoutPolicy) -> int:
    """``post_charges`` in a transaction of its own."""
    with engine.begin() as conn:
        return post_charges(conn, records, policy)


def post_unposted_usage(engine: Engine, policy: PayoutPolicy, limit: int = 1000) -> int:
    """Charge up to ``limit`` priced usage records that have no ledger charge yet, oldest
    first. Run it periodically: it heals any gap between usage and ledger."""
    u = UsageEntry
    q = (select(u.request_id, u.tenant_id, u.node_id, u.ttft_ms, u.priority_class,
                u.cost_micros, u.created_at)
         .outerjoin(LedgerCharge, LedgerCharge.request_id == u.request_id)
         .where(LedgerCharge.request_id.is_(None), u.cost_micros > 0)
         .order_by(u.id).limit(limit))
    with engine.begin() as conn:
        return post_charges(conn, conn.execute(q).all(), policy)


def refund(engine: Engine, request_id: str, amount_micros: int, *, refund_id: str,
           at: datetime | None = None) -> str | None:
    """Give a tenant back part or all of a charge: the refund's transaction id, or None
    when ``refund_id`` was refunded before. The parts are taken back in proportion
    (``payouts.refund_reversal``); the operator's from wherever it sits now."""
    if type(amount_micros) is not int or amount_micros <= 0:
        raise LedgerError(f"a refund must be an integer > 0 micro-dollars, not {amount_micros!r}")
    at = at or utcnow()
    c = _CHARGES.c
    with engine.begin() as conn:
        txn_id = _new_txn_id()
        header = Txn("refund", f"refund:{refund_id}", at, (), request_id)
        if not _claim_keys(conn, [(txn_id, header)]):
            return None
        row = conn.execute(
            update(_CHARGES)
            .where(c.request_id == request_id,
                   c.refunded_micros + amount_micros <= c.amount_micros)
            .values(refunded_micros=c.refunded_micros + amount_micros)
            .returning(c.tenant_id, c.operator_id, c.operator_micros, c.fee_micros,
                       c.reserve_micros, c.withheld_micros, c.refunded_micros, c.settled_kind)
        ).first()
        if row is None:  # raising rolls the header back too
            left = conn.scalar(select(c.amount_micros - c.refunded_micros)
                               .where(c.request_id == request_id))
            if left is None:
                raise LedgerError(f"no charge for request {request_id!r} in the ledger")
            raise LedgerError(f"refund of {amount_micros} micro-dollars exceeds the "
                              f"{left} left to refund of request {request_id!r}")
        reversal = payouts.refund_reversal(_split(row), row.refunded_micros - amount_micros,
                                   amount_micros)
        settled: Settlement | None = row.settled_kind
        txn = Txn("refund", header.key, at,
                  refund_entries(reversal, row.tenant_id, row.operator_id, settled), request_id)
        check_balanced(txn.entries)
        conn.execute(insert(_ENTRIES), _entry_rows(txn_id, txn))
        return txn_id


def _settle(conn: Connection, settlement: Settlement, where: Sequence[Any], at: datetime,
            key: str | None, reference: str | None) -> Settled:
    c = _CHARGES.c
    txn_id = _new_txn_id()
    rows = conn.execute(
        update(_CHARGES)
        .where(c.settled_kind.is_(None), c.operator_id.is_not(None), *where)
        .values(settled_kind=settlement, settled_txn_id=txn_id, settled_at=at)
        .returning(c.operator_id, c.operator_micros, c.fee_micros, c.reserve_micros,
                   c.withheld_micros, c.refunded_micros)
    ).all()
    if not rows:
        return Settled(0, 0, None)
    amounts: dict[str, int] = {}
    for r in rows:
        amounts[r.operator_id] = amounts.get(r.operator_id, 0) + operator_remaining(
            _split(r), r.refunded_micros)
    kind = "mature" if settlement == "matured" else "clawback"
    # A run may settle only fully refunded credit: its transaction then has no lines.
    txn = Txn(kind, key or f"{kind}:{txn_id}", at, settle_entries(amounts, settlement),
              reference)
    check_balanced(txn.entries)
    if not _claim_keys(conn, [(txn_id, txn)]):  # the same audit, reported concurrently
        raise LedgerError(f"transaction {txn.key!r} was posted meanwhile; nothing changed")
    if txn.entries:
        conn.execute(insert(_ENTRIES), _entry_rows(txn_id, txn))
    return Settled(len(rows), sum(amounts.values()), txn_id)


def mature_due(engine: Engine, now: datetime) -> Settled:
    """Move every pending credit whose challenge window ended by ``now`` to payable."""
    with engine.begin() as conn:
        return _settle(conn, "matured", [_CHARGES.c.matures_at <= now], now, None, None)


def claw_back(engine: Engine, node_id: str, *, at: datetime, audit_id: str) -> Settled:
    """A node failed an audit at ``at``: its credit still inside the challenge window
    (``matures_at > at``) goes to ``pool:clawbacks``. Once per (audit, node)."""
    key = f"clawback:{audit_id}:{node_id}"
    with engine.begin() as conn:
        if conn.scalar(select(_TXNS.c.id).where(_TXNS.c.idempotency_key == key)):
            return Settled(0, 0, None)
        where = [_CHARGES.c.node_id == node_id, _CHARGES.c.matures_at > at]
        return _settle(conn, "clawed_back", where, at, key, node_id)


# --- reads ---------------------------------------------------------------------------


def balances(engine: Engine, *, until: datetime | None = None,
             prefix: str | None = None) -> dict[str, int]:
    """Account -> balance (debit > 0) of the lines before ``until`` (default: all)."""
    e = _ENTRIES.c
    q = select(e.account, func.sum(e.amount_micros)).group_by(e.account)
    if until is not None:
        q = q.where(e.created_at < until)
    if prefix is not None:
        q = q.where(e.account.startswith(prefix, autoescape=True))
    with engine.connect() as conn:
        return {a: int(v) for a, v in conn.execute(q)}


def entries_for(engine: Engine, accounts: Sequence[str], *, since: datetime | None = None,
                until: datetime | None = None) -> list[EntryRow]:
    """Lines on these accounts in [since, until), oldest first."""
    e = _ENTRIES.c
    q = select(e.txn_id, e.account, e.amount_micros, e.kind, e.reference, e.created_at) \
        .where(e.account.in_(list(accounts))).order_by(e.created_at, e.id)
    if since is not None:
        q = q.where(e.created_at >= since)
    if until is not None:
        q = q.where(e.created_at < until)
    with Session(engine) as s:  # a Session, so created_at comes back as aware UTC
        return [EntryRow(*r) for r in s.execute(q)]


def charges_for(engine: Engine, *, operator_id: str | None = None,
                tenant_id: str | None = None, since: datetime | None = None,
                until: datetime | None = None) -> list[ChargeRow]:
    """Charges (open items) served in [since, until), oldest first."""
    q = select(LedgerCharge).order_by(LedgerCharge.created_at, LedgerCharge.request_id)
    if operator_id is not None:
        q = q.where(LedgerCharge.operator_id == operator_id)
    if tenant_id is not None:
        q = q.where(LedgerCharge.tenant_id == tenant_id)
    if since is not None:
        q = q.where(LedgerCharge.created_at >= since)
    if until is not None:
        q = q.where(LedgerCharge.created_at < until)
    fields = ChargeRow.__dataclass_fields__
    with Session(engine) as s:
        return [ChargeRow(**{f: getattr(c, f) for f in fields}) for c in s.scalars(q)]


def operator_statement(engine: Engine, operator_name: str,
                       period: statements.Period) -> statements.OperatorStatement:
    op = get_operator(engine, operator_name)
    charges = charges_for(engine, operator_id=op.id, since=period.start, until=period.end)
    lines = entries_for(engine, [operator_pending(op.id), operator_payable(op.id)],
                        until=period.end)
    return statements.build_operator_statement(op.name, op.id, period, charges, lines)


def tenant_invoice(engine: Engine, tenant_name: str,
                   period: statements.Period) -> statements.Invoice:
    """The tenant's usage in the period from the daily roll-ups, and its refunds and
    ledger charges from the ledger (the two totals must agree once usage is posted)."""
    from wattpool.store.tenants import get_tenant, usage_for_tenant

    tenant = get_tenant(engine, tenant_name)
    first, last = period.days()
    usage = usage_for_tenant(engine, tenant.id, first, last)
    lines = entries_for(engine, [tenant_receivable(tenant.id)], since=period.start,
                        until=period.end)
    return statements.build_invoice(tenant.name, tenant.id, period, usage, lines)
