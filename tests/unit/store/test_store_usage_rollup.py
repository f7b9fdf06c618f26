"""usage_daily stays equal to the sums over usage_records, whatever is inserted or retried.

It is maintained by insert_usage in the same transaction as the ledger rows; the
property test checks that on random batches with re-inserted request ids.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, exc, select, text
from sqlalchemy.orm import Session
from test_store_repo import _postgres_engine

from wattpool.store import UsageRecord, downgrade, insert_usage, list_usage, make_engine, migrate
from wattpool.store.models import Base, UsageDaily, UsageEntry
from wattpool.store.tenants import PriceRow, cost_micros

Totals = dict[tuple[date, str, str, str], tuple[int, int, int, int]]

PRICES = {
    "m-small": PriceRow("m-small", 150_000, 600_000, 50, datetime(2025, 1, 1, tzinfo=UTC)),
    "m-large": PriceRow("m-large", 3_000_000, 15_000_000, 25, datetime(2025, 1, 1, tzinfo=UTC)),
}
TENANTS = [None, "ten_a", "ten_b", "ten_c"]
START = datetime(2025, 3, 31, tzinfo=UTC)  # three days across a month boundary


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_engine")
    else:
        yield from _postgres_engine()


def _rec(rid: str, *, tenant: str | None = "ten_a", model: str = "m-small",
         cls: str = "interactive", prompt: int = 100, completion: int = 50,
         at: datetime = START) -> UsageRecord:
    return UsageRecord(
        request_id=rid, kind="chat", model_id=model, prompt_tokens=prompt,
        completion_tokens=completion, duration_ms=5.0, status="ok", http_status=200,
        created_at=at, tenant_id=tenant, key_id=None if tenant is None else f"key_{tenant}",
        priority_class=cls, cost_micros=cost_micros(PRICES.get(model), prompt, completion, cls),
    )


def _ledger_totals(records: Iterable[UsageRecord]) -> Totals:
    acc: dict[tuple[date, str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in records:
        key = (r.created_at.astimezone(UTC).date(), r.tenant_id or "", r.model_id,
               r.priority_class)
        t = acc[key]
        t[0] += 1
        t[1] += r.prompt_tokens
        t[2] += r.completion_tokens
        t[3] += r.cost_micros
    return {k: (v[0], v[1], v[2], v[3]) for k, v in acc.items()}


def _daily_totals(engine: Engine) -> Totals:
    with Session(engine) as s:
        return {(u.day, u.tenant_id, u.model_id, u.priority_class):
                (u.requests, u.prompt_tokens, u.completion_tokens, u.cost_micros)
                for u in s.scalars(select(UsageDaily))}


def _stored(engine: Engine) -> list[UsageRecord]:
    return list_usage(engine, limit=1_000_000)


def test_insert_usage_rolls_up_and_round_trips(engine: Engine) -> None:
    recs = [
        _rec("r1", at=START + timedelta(hours=23, minutes=59)),
        _rec("r2", cls="batch", at=START + timedelta(hours=1)),
        _rec("r3", tenant=None, model="m-large", at=START + timedelta(days=1)),
        # 00:30 at +02:00 is still March 31 in UTC.
        _rec("r4", at=datetime(2025, 4, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))),
        _rec("r5", tenant="ten_b", model="unpriced"),
    ]
    assert recs[0].cost_micros == 45 and recs[1].cost_micros == 23  # 22.5 -> 23
    assert insert_usage(engine, recs) == 5

    stored = {r.request_id: r for r in _stored(engine)}
    for r in recs:
        # Aware datetimes compare as instants: the UTC value read back equals r's.
        assert dataclasses.replace(stored[r.request_id], id=None) == r
    assert {r.request_id for r in list_usage(engine, tenant_id="ten_a")} == {"r1", "r2", "r4"}
    assert _daily_totals(engine) == _ledger_totals(recs)
    mar31 = date(2025, 3, 31)
    assert _daily_totals(engine)[(mar31, "ten_a", "m-small", "interactive")] == (
        2, 200, 100, 90)
    assert _daily_totals(engine)[(date(2025, 4, 1), "", "m-large", "interactive")][3] == 1050


def test_duplicates_are_not_counted_twice(engine: Engine) -> None:
    first = [_rec("a"), _rec("b", prompt=7)]
    assert insert_usage(engine, first) == 2
    # A retried batch, a changed record under a known id, and a duplicate inside one batch.
    again = [_rec("a"), _rec("b", prompt=99_999), _rec("c"), _rec("c", prompt=5), _rec("d")]
    assert insert_usage(engine, again) == 2
    stored = _stored(engine)
    assert sorted(r.request_id for r in stored) == ["a", "b", "c", "d"]
    assert {r.request_id: r.prompt_tokens for r in stored}["b"] == 7
    assert _daily_totals(engine) == _ledger_totals(stored)
    assert sum(v[0] for v in _daily_totals(engine).values()) == 4


def test_failed_batch_leaves_no_roll_up(engine: Engine) -> None:
    insert_usage(engine, [_rec("ok")])
    before = _daily_totals(engine)
    bad = dataclasses.replace(_rec("bad"), model_id=None)  # type: ignore[arg-type]
    with pytest.raises(exc.IntegrityError):
        insert_usage(engine, [_rec("good"), bad])
    assert [r.request_id for r in _stored(engine)] == ["ok"]
    assert _daily_totals(engine) == before


def test_migrations_match_models(engine: Engine) -> None:
    # On both dialects: BigInteger, Date and the composite key must come out the same.
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []


def test_upgrade_rolls_up_existing_usage_and_downgrade_keeps_it(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        migrate(engine, "0002")
        with engine.begin() as conn:
            for rid, model, at, p in [("a", "m", "2025-03-31 23:59:59.000000", 3),
                                      ("b", "m", "2025-03-31 08:00:00.000000", 4),
                                      ("c", "m", "2025-04-01 00:00:00.000000", 5)]:
                conn.execute(text(
                    "INSERT INTO usage_records (request_id, kind, model_id, prompt_tokens,"
                    " completion_tokens, duration_ms, status, http_status, created_at)"
                    " VALUES (:r, 'chat', :m, :p, 1, 1.0, 'ok', 200, :at)"),
                    {"r": rid, "m": model, "p": p, "at": at})
        migrate(engine)
        stored = _stored(engine)
        assert {(r.priority_class, r.cost_micros, r.tenant_id) for r in stored} == {
            ("interactive", 0, None)}
        assert _daily_totals(engine) == {
            (date(2025, 3, 31), "", "m", "interactive"): (2, 7, 2, 0),
            (date(2025, 4, 1), "", "m", "interactive"): (1, 5, 1, 0),
        }
        # New inserts add to the back-filled rows.
        insert_usage(engine, [_rec("d", tenant=None, model="m", at=START)])
        assert _daily_totals(engine)[(date(2025, 3, 31), "", "m", "interactive")][0] == 3

        downgrade(engine, "0002")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM usage_records")).scalar() == 4
        migrate(engine)
        assert _daily_totals(engine) == _ledger_totals(_stored(engine))
    finally:
        engine.dispose()


# --- property: roll-up == ledger ------------------------------------------------


@pytest.fixture(scope="module")
def prop_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('rollup') / 'p.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


@st.composite
def _record(draw: st.DrawFn, rid: str) -> UsageRecord:
    offset = timedelta(microseconds=draw(st.integers(0, 3 * 86_400 * 1_000_000 - 1)))
    tz = draw(st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                               timezone(timedelta(hours=-8))]))
    tokens = st.integers(0, 100_000)
    return _rec(rid, tenant=draw(st.sampled_from(TENANTS)),
                model=draw(st.sampled_from(sorted(PRICES))),
                cls=draw(st.sampled_from(["interactive", "batch"])),
                prompt=draw(tokens), completion=draw(tokens),
                at=(START + offset).astimezone(tz))


@st.composite
def _batches(draw: st.DrawFn) -> list[list[UsageRecord]]:
    n = draw(st.integers(0, 40))
    recs = [draw(_record(f"req-{i}")) for i in range(n)]
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=5)))
    batches = [recs[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
    for i in range(1, len(batches)):
        earlier = [r for b in batches[:i] for r in b]
        if not earlier:
            continue
        # Re-inserted ids: some unchanged (a retried batch), some with other content.
        dups = draw(st.lists(st.sampled_from(earlier), max_size=6))
        dups = [draw(st.one_of(st.just(d), _record(d.request_id))) for d in dups]
        batches[i] = draw(st.permutations(batches[i] + dups))
    return batches


@settings(max_examples=50, deadline=None)
@given(batches=_batches())
def test_daily_roll_up_equals_ledger(prop_engine: Engine,
                                     batches: list[list[UsageRecord]]) -> None:
    with prop_engine.begin() as conn:
        conn.execute(delete(UsageDaily))
        conn.execute(delete(UsageEntry))

    first: dict[str, UsageRecord] = {}
    for batch in batches:
        new = {r.request_id for r in batch} - set(first)
        assert insert_usage(prop_engine, batch) == len(new)
        for r in batch:
            first.setdefault(r.request_id, r)

    stored = _stored(prop_engine)
    # The first version of each id is the one kept; later ones were skipped.
    assert {r.request_id: dataclasses.replace(r, id=None) for r in stored} == first
    assert _daily_totals(prop_engine) == _ledger_totals(stored) == _ledger_totals(
        first.values())
