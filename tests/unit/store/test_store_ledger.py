"""Operators and the ledger's writes: on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import SQLAlchemyError
from test_store_repo import _postgres_engine

from wattpool.economics.ledger import (
    POOL_CLAWBACKS,
    POOL_FEES,
    POOL_LATENCY_WITHHELD,
    POOL_RESERVE,
    POOL_UNASSIGNED,
    Entry,
    Txn,
    operator_payable,
    operator_pending,
    tenant_receivable,
)
from wattpool.economics.payouts import PayoutPolicy, operator_remaining
from wattpool.store import UsageRecord, insert_usage, upsert_node
from wattpool.store import ledger as L
from wattpool.store.fleet import add_site
from wattpool.store.models import Base, LedgerEntry, LedgerTransaction

T0 = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)
POLICY = PayoutPolicy()  # 20 % fee, 5 % reserve, late = 50 %, 2 s target, 24 h window


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_engine")
    else:
        yield from _postgres_engine()


@pytest.fixture
def fleet(engine: Engine) -> dict[str, str]:
    """Operator 'acme' owns site tx-1 with node n1; node n2 is at an unowned site."""
    op = L.add_operator(engine, "acme")
    owned, unowned = add_site(engine, "tx-1", "us-tx"), add_site(engine, "ca-1", "us-ca")
    L.assign_site(engine, "tx-1", "acme")
    upsert_node(engine, "n1", "n1", {}, "ready", None, site_id=owned.id)
    upsert_node(engine, "n2", "n2", {}, "ready", None, site_id=unowned.id)
    return {"op": op.id}


@pytest.fixture
def charge(make_record: Callable[..., UsageRecord]) -> Callable[..., UsageRecord]:
    def make(cost: int, node: str = "n1", ttft: float | None = 100.0, at: datetime = T0,
             **kw: object) -> UsageRecord:
        return make_record(cost_micros=cost, node_id=node, ttft_ms=ttft, created_at=at,
                           tenant_id="ten_a", **kw)
    return make


def _count(engine: Engine, model: type[Base]) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(model)) or 0)


def test_operators_round_trip_and_site_ownership(engine: Engine) -> None:
    acme = L.add_operator(engine, "acme")
    L.add_operator(engine, "beta")
    assert acme.id.startswith("op_") and L.get_operator(engine, "acme") == acme
    assert [o.name for o in L.list_operators(engine)] == ["acme", "beta"]
    with pytest.raises(L.LedgerError, match="an operator named 'acme' exists already"):
        L.add_operator(engine, "acme")
    with pytest.raises(L.LedgerError, match="no operator named 'nope'"):
        L.get_operator(engine, "nope")
    add_site(engine, "tx-1", "us-tx")
    assert L.site_operators(engine) == {"tx-1": None}
    L.assign_site(engine, "tx-1", "beta")
    assert L.site_operators(engine) == {"tx-1": "beta"}
    L.assign_site(engine, "tx-1", None)
    assert L.site_operators(engine) == {"tx-1": None}
    with pytest.raises(L.LedgerError, match="no site named 'mars'"):
        L.assign_site(engine, "mars", "acme")


def test_charges_split_by_owner_and_are_idempotent(
    engine: Engine, fleet: dict[str, str], charge: Callable[..., UsageRecord]
) -> None:
    op = fleet["op"]
    on_time = charge(1_000_003, ttft=1999.0)
    late = charge(1_000_003, ttft=2001.0)
    unowned = charge(1_000_003, node="n2")
    free = charge(0)
    recs = [on_time, late, unowned, free]
    insert_usage(engine, recs)
    assert L.post_usage(engine, recs, POLICY) == 3  # the free request posts nothing
    assert L.post_usage(engine, recs, POLICY) == 0
    assert L.post_unposted_usage(engine, POLICY) == 0
    b = L.balances(engine)
    assert sum(b.values()) == 0
    # fee 200,001 and reserve 50,000 (half-up); share 750,002; late: half of it.
    assert b[tenant_receivable("ten_a")] == 3 * 1_000_003
    assert b[POOL_FEES] == -3 * 200_001 and b[POOL_RESERVE] == -3 * 50_000
    assert b[operator_pending(op)] == -(750_002 + 375_001)
    assert b[POOL_LATENCY_WITHHELD] == -375_001
    assert b[POOL_UNASSIGNED] == -750_002
    assert _count(engine, LedgerTransaction) == 3


def test_unposted_usage_is_caught_up_in_order(
    engine: Engine, fleet: dict[str, str], charge: Callable[..., UsageRecord]
) -> None:
    recs = [charge(10 + i) for i in range(5)] + [charge(0)]
    insert_usage(engine, recs)
    L.post_usage(engine, recs[1:2], POLICY)
    assert L.post_unposted_usage(engine, POLICY, limit=2) == 2
    assert L.post_unposted_usage(engine, POLICY) == 2
    assert L.post_unposted_usage(engine, POLICY) == 0
    assert {c.request_id for c in L.charges_for(engine)} == {r.request_id for r in recs[:5]}


def test_refunds_are_bounded_idempotent_and_atomic(
    engine: Engine, fleet: dict[str, str], charge: Callable[..., UsageRecord]
) -> None:
    rec = charge(1_000)
    L.post_usage(engine, [rec], POLICY)
    assert L.refund(engine, rec.request_id, 600, refund_id="rf-1", at=T0) is not None
    assert L.refund(engine, rec.request_id, 600, refund_id="rf-1", at=T0) is None  # retried
    before = (_count(engine, LedgerTransaction), _count(engine, LedgerEntry))
    with pytest.raises(L.LedgerError, match="exceeds the 400 left to refund"):
        L.refund(engine, rec.request_id, 401, refund_id="rf-2", at=T0)
    with pytest.raises(L.LedgerError, match="no charge for request 'nope'"):
        L.refund(engine, "nope", 1, refund_id="rf-3", at=T0)
    with pytest.raises(L.LedgerError, match="integer > 0"):
        L.refund(engine, rec.request_id, 0, refund_id="rf-4", at=T0)
    # Refused refunds leave no header behind, so the same id can be used once it fits.
    assert (_count(engine, LedgerTransaction), _count(engine, LedgerEntry)) == before
    assert L.refund(engine, rec.request_id, 400, refund_id="rf-2", at=T0) is not None
    b = L.balances(engine)
    assert b[tenant_receivable("ten_a")] == 0 and sum(b.values()) == 0
    assert all(v == 0 for v in b.values())  # fully refunded: every part reversed exactly


def test_post_transaction_refuses_unbalanced_and_writes_all_or_nothing(
    engine: Engine,
) -> None:
    good = Txn("adjustment", "adj-1", T0, (Entry(POOL_FEES, 5), Entry(POOL_RESERVE, -5)))
    assert L.post_transaction(engine, good) is not None
    assert L.post_transaction(engine, good) is None
    with pytest.raises(L.LedgerError, match="does not balance: entries sum to 1"):
        L.post_transaction(engine, Txn("adjustment", "adj-2", T0,
                                       (Entry(POOL_FEES, 5), Entry(POOL_RESERVE, -4))))
    with pytest.raises(L.LedgerError, match="at least one line"):
        L.post_transaction(engine, Txn("adjustment", "adj-3", T0, ()))
    # Balanced, but the database refuses the second line (out of BIGINT range): the
    # header and the first line must not survive.
    huge = Txn("adjustment", "adj-4", T0,
               (Entry(POOL_FEES, 1), Entry(POOL_RESERVE, 2**63), Entry(POOL_CLAWBACKS,
                                                                       -(2**63) - 1)))
    with pytest.raises((SQLAlchemyError, OverflowError)):
        L.post_transaction(engine, huge)
    assert _count(engine, LedgerTransaction) == 1 and _count(engine, LedgerEntry) == 2


def test_credit_matures_after_the_window_once(
    engine: Engine, fleet: dict[str, str], charge: Callable[..., UsageRecord]
) -> None:
    op = fleet["op"]
    early, later = charge(1_000, at=T0), charge(2_000, at=T0 + timedelta(hours=2))
    L.post_usage(engine, [early, later], POLICY)
    L.refund(engine, early.request_id, 100, refund_id="r1", at=T0)
    assert L.mature_due(engine, T0 + timedelta(hours=23)).charges == 0
    done = L.mature_due(engine, T0 + timedelta(hours=24))
    assert (done.charges, done.micros) == (1, 750 - 75)  # the refund took 75 of 750
    assert L.mature_due(engine, T0 + timedelta(hours=24)).charges == 0
    L.refund(engine, early.request_id, 900, refund_id="r2", at=T0 + timedelta(hours=25))
    b = L.balances(engine)
    assert b[operator_payable(op)] == 0  # refunded after maturing: taken from payable
    assert b[operator_pending(op)] == -1_500 and sum(b.values()) == 0


def test_failed_audit_claws_back_only_credit_inside_the_window(
    engine: Engine, fleet: dict[str, str], charge: Callable[..., UsageRecord]
) -> None:
    op = fleet["op"]
    old = charge(1_000, at=T0)
    fresh = charge(2_000, at=T0 + timedelta(hours=20))
    elsewhere = charge(4_000, node="n2", at=T0 + timedelta(hours=20))
    L.post_usage(engine, [old, fresh, elsewhere], POLICY)
    fail_at = T0 + timedelta(hours=30)  # old's window ended at +24 h: it is payable
    L.mature_due(engine, T0 + timedelta(hours=25))
    got = L.claw_back(engine, "n1", at=fail_at, audit_id="aud-1")
    assert (got.charges, got.micros) == (1, 1_500)
    assert L.claw_back(engine, "n1", at=fail_at, audit_id="aud-1").charges == 0
    assert L.mature_due(engine, T0 + timedelta(days=9)).micros == 0  # nothing left pending
    b = L.balances(engine)
    assert b[operator_payable(op)] == -750 and b.get(operator_pending(op), 0) == 0
    assert b[POOL_CLAWBACKS] == -1_500 and b[POOL_UNASSIGNED] == -3_000
    # A refund of clawed-back credit comes out of the pool's clawbacks.
    L.refund(engine, fresh.request_id, 2_000, refund_id="r", at=fail_at)
    assert L.balances(engine)[POOL_CLAWBACKS] == 0


def test_every_transaction_balances_in_sql(
    engine: Engine, fleet: dict[str, str], charge: Callable[..., UsageRecord]
) -> None:
    recs = [charge(7 * i + 1, ttft=500.0 * i, node=("n1", "n2")[i % 2]) for i in range(8)]
    L.post_usage(engine, recs, POLICY)
    L.refund(engine, recs[3].request_id, 5, refund_id="x", at=T0)
    L.claw_back(engine, "n1", at=T0, audit_id="a")
    with engine.connect() as conn:
        unbalanced = conn.execute(text(
            "SELECT txn_id FROM ledger_entries GROUP BY txn_id HAVING SUM(amount_micros) <> 0"
        )).all()
    assert unbalanced == []


def test_schema_matches_models_on_this_database(engine: Engine) -> None:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []


def test_concurrent_maturing_and_refunds_settle_each_charge_once(
    engine: Engine, fleet: dict[str, str], charge: Callable[..., UsageRecord]
) -> None:
    if engine.url.database in (None, "", ":memory:"):
        pytest.skip("needs a database that several connections share")
    op = fleet["op"]
    recs = [charge(1_000 + i, at=T0) for i in range(40)]
    L.post_usage(engine, recs, POLICY)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait()
            if i < 2:
                L.mature_due(engine, T0 + timedelta(days=1))
            else:
                for r in recs[i::4]:
                    L.refund(engine, r.request_id, 100, refund_id=f"{r.request_id}-{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    b = L.balances(engine)
    assert sum(b.values()) == 0 and b.get(operator_pending(op), 0) == 0
    charges = L.charges_for(engine)
    assert sum(c.refunded_micros for c in charges) == 100 * 20
    # Every charge matured exactly once, net of its refund whichever came first.
    assert -b[operator_payable(op)] == sum(operator_remaining(c.split, c.refunded_micros)
                                           for c in charges)
    assert {c.settled_kind for c in charges} == {"matured"}
