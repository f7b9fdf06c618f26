"""Tenants, API keys, prices and cost, budget periods: on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import Engine, String, Text, column, inspect, select, table, update
from sqlalchemy.orm import Session
from test_store_repo import _postgres_engine

from wattpool.store import UsageRecord, insert_usage
from wattpool.store.models import ApiKey
from wattpool.store.tenants import (
    PriceRow,
    TenantError,
    add_tenant,
    cost_micros,
    create_key,
    generate_key,
    get_tenant,
    hash_key,
    list_keys,
    list_prices,
    list_tenants,
    lookup_key,
    revoke_key,
    set_price,
    spent_in_period,
    touch_keys,
    update_tenant_limits,
    usage_for_tenant,
)

KEY_RE = re.compile(r"^(wpk_[0-9a-f]{8})_[A-Za-z0-9_-]{43}$")


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_engine")
    else:
        yield from _postgres_engine()


def _price(p: int, c: int, pct: int = 0) -> PriceRow:
    return PriceRow("m", p, c, pct, datetime(2025, 1, 1, tzinfo=UTC))


# --- tenants ---------------------------------------------------------------------


def test_tenants_round_trip(engine: Engine) -> None:
    acme = add_tenant(engine, "acme", rpm=60, tpm=100_000, max_concurrency=4,
                      budget_micros=5_000_000, budget_period="day")
    add_tenant(engine, "beta")
    assert acme.id.startswith("ten_") and acme.created_at.tzinfo is not None
    assert get_tenant(engine, "acme") == acme
    beta = get_tenant(engine, "beta")
    assert (beta.rpm, beta.tpm, beta.max_concurrency, beta.budget_micros, beta.budget_period) \
        == (None, None, None, None, "month")
    assert [t.name for t in list_tenants(engine)] == ["acme", "beta"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        acme.rpm = 1  # type: ignore[misc]


def test_duplicate_or_unknown_tenant_is_refused_clearly(engine: Engine) -> None:
    add_tenant(engine, "acme")
    with pytest.raises(TenantError, match="a tenant named 'acme' exists already"):
        add_tenant(engine, "acme", rpm=5)
    with pytest.raises(TenantError, match="no tenant named 'nope'"):
        get_tenant(engine, "nope")
    assert len(list_tenants(engine)) == 1


@pytest.mark.parametrize("kwargs", [
    {"rpm": 0}, {"tpm": -1}, {"max_concurrency": True}, {"budget_micros": -5},
    {"budget_period": "week"},
])
def test_tenant_limits_are_validated(sqlite_engine: Engine, kwargs: dict[str, object]) -> None:
    with pytest.raises(TenantError):
        add_tenant(sqlite_engine, "acme", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TenantError, match="needs a name"):
        add_tenant(sqlite_engine, "  ")


def test_update_tenant_limits_changes_only_what_is_given(engine: Engine) -> None:
    add_tenant(engine, "acme", rpm=60, tpm=1000, budget_micros=10)
    row = update_tenant_limits(engine, "acme", rpm=None, max_concurrency=2,
                               budget_period="day")
    assert (row.rpm, row.tpm, row.max_concurrency, row.budget_micros, row.budget_period) \
        == (None, 1000, 2, 10, "day")
    assert get_tenant(engine, "acme") == row
    with pytest.raises(TenantError):
        update_tenant_limits(engine, "acme", tpm=0)
    with pytest.raises(TenantError, match="no tenant"):
        update_tenant_limits(engine, "nope", rpm=1)


# --- keys ------------------------------------------------------------------------


def test_generate_key_shape() -> None:
    full, prefix = generate_key()
    m = KEY_RE.match(full)
    assert m is not None and m.group(1) == prefix
    assert hash_key(full) == hashlib.sha256(full.encode()).hexdigest()
    assert generate_key()[0] != full


def _all_text(engine: Engine) -> list[str]:
    """Every string value of every table (JSON included, as its text)."""
    insp = inspect(engine)
    values: list[str] = []
    with engine.connect() as conn:
        for name in insp.get_table_names():
            cols = insp.get_columns(name)
            t = table(name, *(column(c["name"]) for c in cols))
            for row in conn.execute(select(t)):
                values.extend(str(v) for v in row if v is not None)
        # Make sure the text columns were really looked at.
        assert any(isinstance(c["type"], String | Text)
                   for c in insp.get_columns("api_keys"))
    return values


def test_key_is_stored_only_as_its_hash(engine: Engine) -> None:
    add_tenant(engine, "acme")
    full, row = create_key(engine, "acme", name="ci", models=["m1"])
    m = KEY_RE.match(full)
    assert m is not None and row.prefix == m.group(1)
    secret = full[len(row.prefix) + 1:]
    dump = _all_text(engine)
    assert row.prefix in dump and hash_key(full) in dump
    assert not [v for v in dump if full in v or secret in v]
    with Session(engine) as s:
        assert s.scalar(select(ApiKey.key_hash).where(ApiKey.id == row.id)) == hash_key(full)


def test_lookup_key_returns_everything_needed(engine: Engine) -> None:
    add_tenant(engine, "acme", rpm=600, tpm=1_000_000, max_concurrency=8,
               budget_micros=20_000_000, budget_period="day")
    expires = datetime(2099, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    full, row = create_key(engine, "acme", name="batch jobs", models=["m1", "m2", "m1"],
                           expires_at=expires, default_class="batch", rpm=60, tpm=5000,
                           max_concurrency=2, is_admin=True)
    assert row.models == ("m1", "m2") and row.expires_at == expires
    auth = lookup_key(engine, full)
    assert auth is not None
    tenant = get_tenant(engine, "acme")
    assert dataclasses.asdict(auth) == {
        "key_id": row.id, "prefix": row.prefix, "tenant_id": tenant.id,
        "tenant_name": "acme", "models": ("m1", "m2"), "default_class": "batch",
        "key_rpm": 60, "key_tpm": 5000, "key_max_concurrency": 2,
        "tenant_rpm": 600, "tenant_tpm": 1_000_000, "tenant_max_concurrency": 8,
        "budget_micros": 20_000_000, "budget_period": "day", "is_admin": True,
        "expires_at": expires, "revoked_at": None,
    }
    assert auth.expires_at is not None and auth.expires_at.utcoffset() == timedelta(0)
    assert auth.refusal(datetime.now(UTC)) is None

    plain_full, _ = create_key(engine, "acme")
    plain = lookup_key(engine, plain_full)
    assert plain is not None
    assert (plain.models, plain.default_class, plain.is_admin, plain.key_rpm) \
        == (None, "interactive", False, None)


def test_unknown_key_is_none(engine: Engine) -> None:
    add_tenant(engine, "acme")
    full, _ = create_key(engine, "acme")
    assert lookup_key(engine, full[:-1] + ("A" if full[-1] != "A" else "B")) is None
    assert lookup_key(engine, generate_key()[0]) is None
    assert lookup_key(engine, "sk-not-ours") is None
    assert lookup_key(engine, "") is None


def test_lookup_returns_revoked_and_expired_keys(engine: Engine) -> None:
    add_tenant(engine, "acme")
    revoked_full, revoked = create_key(engine, "acme")
    expired_full, expired = create_key(engine, "acme",
                                       expires_at=datetime.now(UTC) + timedelta(hours=1))
    revoke_key(engine, revoked.id)
    past = datetime(2024, 6, 1, tzinfo=UTC)
    with Session(engine) as s, s.begin():  # let time pass
        s.execute(update(ApiKey).where(ApiKey.id == expired.id).values(expires_at=past))

    now = datetime.now(UTC)
    a = lookup_key(engine, revoked_full)
    assert a is not None and a.revoked_at is not None and a.refusal(now) == "revoked"
    b = lookup_key(engine, expired_full)
    assert b is not None and b.expires_at == past and b.refusal(now) == "expired"


def test_revoke_is_idempotent_and_by_id_or_prefix(engine: Engine) -> None:
    add_tenant(engine, "acme")
    _, row = create_key(engine, "acme")
    first = revoke_key(engine, row.prefix)
    assert first.revoked_at is not None
    again = revoke_key(engine, row.id)
    assert again.revoked_at == first.revoked_at
    assert list_keys(engine)[0].revoked_at == first.revoked_at
    with pytest.raises(TenantError, match="no API key"):
        revoke_key(engine, "wpk_00000000")


def test_create_key_validation(engine: Engine) -> None:
    add_tenant(engine, "acme")
    with pytest.raises(TenantError, match="default_class must be one of interactive, batch"):
        create_key(engine, "acme", default_class="bulk")
    with pytest.raises(TenantError, match="future"):
        create_key(engine, "acme", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(TenantError, match="no model"):
        create_key(engine, "acme", models=[])
    with pytest.raises(TenantError, match="not a string"):
        create_key(engine, "acme", models="m1")
    with pytest.raises(TenantError, match="rpm"):
        create_key(engine, "acme", rpm=0)
    with pytest.raises(TenantError, match="no tenant named 'nope'"):
        create_key(engine, "nope")
    assert list_keys(engine) == []


def test_list_keys_and_touch(engine: Engine) -> None:
    add_tenant(engine, "acme")
    add_tenant(engine, "beta")
    _, k1 = create_key(engine, "acme", name="one")
    _, k2 = create_key(engine, "acme", name="two")
    _, k3 = create_key(engine, "beta")
    assert {k.id for k in list_keys(engine)} == {k1.id, k2.id, k3.id}
    assert [k.id for k in list_keys(engine, "beta")] == [k3.id]
    assert {k.name for k in list_keys(engine, "acme")} == {"one", "two"}
    with pytest.raises(TenantError):
        list_keys(engine, "nope")

    at = datetime(2025, 5, 1, 8, tzinfo=UTC)
    assert touch_keys(engine, [k1.id, k3.id, k1.id, "key_unknown"], at=at) == 2
    assert touch_keys(engine, []) == 0
    used = {k.id: k.last_used_at for k in list_keys(engine)}
    assert used == {k1.id: at, k2.id: None, k3.id: at}


# --- prices and cost -------------------------------------------------------------


def test_prices_are_exact_micros(engine: Engine) -> None:
    row = set_price(engine, "m-small", "0.15", Decimal("0.60"), batch_discount_pct=50)
    assert (row.prompt_micros_per_mtok, row.completion_micros_per_mtok) == (150_000, 600_000)
    set_price(engine, "m-large", "2.5", "10")
    set_price(engine, "m-tiny", "0.000001", 0)
    set_price(engine, "m-small", "0.1", "0.3", 25)  # updates in place
    prices = {p.model_id: p for p in list_prices(engine)}
    assert [p for p in prices] == ["m-large", "m-small", "m-tiny"]
    assert (prices["m-large"].prompt_micros_per_mtok,
            prices["m-large"].completion_micros_per_mtok) == (2_500_000, 10_000_000)
    assert prices["m-tiny"].prompt_micros_per_mtok == 1
    small = prices["m-small"]
    assert (small.prompt_micros_per_mtok, small.completion_micros_per_mtok,
            small.batch_discount_pct) == (100_000, 300_000, 25)


@pytest.mark.parametrize(("prompt", "completion", "pct", "match"), [
    ("-1", "1", 0, ">= 0"),
    (0.1, "1", 0, "string or Decimal"),
    ("abc", "1", 0, "not a number"),
    ("1", "NaN", 0, "finite"),
    ("0.0000001", "1", 0, "precision"),
    ("1", "1", 101, "0 to 100"),
    ("1", "1", -1, "0 to 100"),
])
def test_bad_prices_are_refused(
    sqlite_engine: Engine, prompt: object, completion: object, pct: int, match: str
) -> None:
    with pytest.raises(TenantError, match=match):
        set_price(sqlite_engine, "m", prompt, completion, pct)  # type: ignore[arg-type]
    assert list_prices(sqlite_engine) == []


def test_cost_micros_by_hand() -> None:
    small = _price(150_000, 600_000, 50)  # $0.15 / $0.60 per Mtok, batch -50%
    # 1000 * 0.15 + 500 * 0.60 = 450 micro-dollars
    assert cost_micros(small, 1000, 500, "interactive") == 450
    assert cost_micros(small, 1000, 500, "batch") == 225
    assert cost_micros(small, 0, 0, "interactive") == 0
    assert cost_micros(None, 1000, 500, "interactive") == 0
    # 100k prompt + 100k completion tokens at $60 / $120: $6 + $12
    assert cost_micros(_price(60_000_000, 120_000_000), 100_000, 100_000, "batch") == 18_000_000

    half = _price(500_000, 0, 50)  # $0.50 per Mtok: one token costs half a micro-dollar
    assert cost_micros(half, 1, 0, "interactive") == 1  # 0.5 -> 1 (half-up, not to even)
    assert cost_micros(half, 3, 0, "interactive") == 2  # 1.5 -> 2
    assert cost_micros(half, 5, 0, "interactive") == 3  # 2.5 -> 3
    assert cost_micros(_price(400_000, 0), 1, 0, "interactive") == 0  # 0.4 -> 0
    assert cost_micros(_price(0, 1_600_000), 0, 1, "interactive") == 2  # 1.6 -> 2
    # The discount applies once, to the rounded cost: 2.5 -> 3, then 1.5 -> 2
    # (discounting before rounding would give 1.25 -> 1).
    assert cost_micros(half, 5, 0, "batch") == 2
    assert cost_micros(half, 1, 0, "batch") == 1  # 1 -> 0.5 -> 1
    assert cost_micros(_price(1_000_000, 0, 100), 7, 0, "batch") == 0
    assert cost_micros(_price(1_000_000, 0, 100), 7, 0, "interactive") == 7
    with pytest.raises(ValueError):
        cost_micros(small, -1, 0, "interactive")


# --- budget periods --------------------------------------------------------------


def _rec(rid: str, tenant: str | None, at: datetime, cost: int, **kw: object) -> UsageRecord:
    fields: dict[str, object] = {
        "request_id": rid, "kind": "chat", "model_id": "m", "prompt_tokens": 1,
        "completion_tokens": 1, "duration_ms": 1.0, "status": "ok", "http_status": 200,
        "tenant_id": tenant, "created_at": at, "cost_micros": cost,
    }
    fields.update(kw)
    return UsageRecord(**fields)  # type: ignore[arg-type]


def test_spent_in_period_day_and_month_boundaries(engine: Engine) -> None:
    utc = UTC
    plus2 = timezone(timedelta(hours=2))
    insert_usage(engine, [
        _rec("a", "t", datetime(2025, 3, 31, 23, 59, 59, 999_999, tzinfo=utc), 1),
        # 01:30 at +02:00 is still March 31 in UTC.
        _rec("b", "t", datetime(2025, 4, 1, 1, 30, tzinfo=plus2), 2),
        _rec("c", "t", datetime(2025, 4, 1, 0, 0, tzinfo=utc), 10),
        _rec("d", "t", datetime(2025, 4, 15, 12, tzinfo=utc), 100, priority_class="batch"),
        _rec("e", "t", datetime(2025, 4, 30, 23, 59, 59, tzinfo=utc), 1000),
        _rec("f", "t", datetime(2025, 5, 1, 0, 0, tzinfo=utc), 10_000),
        _rec("g", "other", datetime(2025, 4, 1, 12, tzinfo=utc), 99_999),
        _rec("h", None, datetime(2025, 4, 1, 12, tzinfo=utc), 77),
    ])
    cases: list[tuple[datetime, int, int]] = [  # now, spent today, spent this month
        (datetime(2025, 4, 1, 0, 30, tzinfo=utc), 10, 1110),
        (datetime(2025, 4, 1, 1, 0, tzinfo=plus2), 3, 3),  # March 31, 23:00 UTC
        (datetime(2025, 3, 31, 0, 0, tzinfo=utc), 3, 3),
        (datetime(2025, 4, 30, 23, 59, 59, tzinfo=utc), 1000, 1110),
        (datetime(2025, 5, 1, 0, 0, tzinfo=utc), 10_000, 10_000),
        (datetime(2025, 5, 1, 0, 0), 10_000, 10_000),  # naive: taken as UTC
        (datetime(2025, 6, 1, tzinfo=utc), 0, 0),
    ]
    for now, day, month in cases:
        assert spent_in_period(engine, "t", "day", now) == day, now
        assert spent_in_period(engine, "t", "month", now) == month, now
    assert spent_in_period(engine, "nobody", "month", cases[0][0]) == 0
    with pytest.raises(TenantError, match="budget_period"):
        spent_in_period(engine, "t", "week", cases[0][0])


def test_usage_for_tenant_ranges(engine: Engine) -> None:
    at: Callable[[int], datetime] = lambda d: datetime(2025, 4, d, 12, tzinfo=UTC)  # noqa: E731
    insert_usage(engine, [
        _rec("a", "t", at(1), 5, prompt_tokens=10, completion_tokens=20),
        _rec("b", "t", at(1), 7, prompt_tokens=1, completion_tokens=2),
        _rec("c", "t", at(1), 9, model_id="m2", priority_class="batch"),
        _rec("d", "t", at(3), 11),
        _rec("e", None, at(1), 13),
    ])
    rows = usage_for_tenant(engine, "t", date(2025, 4, 1))
    assert [(r.day.day, r.model_id, r.priority_class, r.requests, r.prompt_tokens,
             r.completion_tokens, r.cost_micros) for r in rows] == [
        (1, "m", "interactive", 2, 11, 22, 12),
        (1, "m2", "batch", 1, 1, 1, 9),
        (3, "m", "interactive", 1, 1, 1, 11),
    ]
    assert [r.day for r in usage_for_tenant(engine, "t", date(2025, 4, 2))] == [date(2025, 4, 3)]
    assert len(usage_for_tenant(engine, "t", date(2025, 4, 1), date(2025, 4, 2))) == 2
    assert usage_for_tenant(engine, "t", date(2025, 4, 4)) == []
    none = usage_for_tenant(engine, None, date(2025, 1, 1))
    assert [(r.tenant_id, r.cost_micros) for r in none] == [("", 13)]
