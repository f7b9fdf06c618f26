"""Tenants, API keys, the price book, per-request cost and daily usage roll-ups.

A full API key is shown once, when it is created; only its sha256 is stored, next to a
short visible prefix that names it in listings and logs. Money is integer micro-dollars
everywhere (1 USD = 1_000_000) and is computed with integers/Decimal only, so sums of
many requests stay exact. Usage roll-ups (``usage_daily``) are written by
``repo.insert_usage`` in the same transaction as the ledger rows; this module reads them.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from wattpool.store.models import ApiKey, Price, Tenant, UsageDaily, utcnow

KEY_PREFIX = "wpk_"
PRIORITY_CLASSES = ("interactive", "batch")
BUDGET_PERIODS = ("day", "month")
MICROS_PER_USD = 1_000_000
_TOKENS_PER_MTOK = 1_000_000


class TenantError(Exception):
    """A request about tenants, keys or prices that cannot be honoured; the message says why."""


class _Unset(Enum):
    UNSET = "unset"


# "Leave as is" for update_tenant_limits, where None already means "unlimited".
UNSET = _Unset.UNSET


@dataclass(frozen=True, slots=True)
class TenantRow:
    id: str
    name: str
    created_at: datetime
    rpm: int | None
    tpm: int | None
    max_concurrency: int | None
    budget_micros: int | None
    budget_period: str


@dataclass(frozen=True, slots=True)
class KeyRow:
    id: str
    tenant_id: str
    name: str
    prefix: str
    models: tuple[str, ...] | None  # None: every model
    default_class: str
    rpm: int | None
    tpm: int | None
    max_concurrency: int | None
    is_admin: bool
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True, slots=True)
class AuthRecord:
    """Everything needed to authorise and limit one request made with a key."""

    key_id: str
    prefix: str
    tenant_id: str
    tenant_name: str
    models: tuple[str, ...] | None  # None: every model
    default_class: str
    key_rpm: int | None
    key_tpm: int | None
    key_max_concurrency: int | None
    tenant_rpm: int | None
    tenant_tpm: int | None
    tenant_max_concurrency: int | None
    budget_micros: int | None
    budget_period: str
    is_admin: bool
    expires_at: datetime | None
    revoked_at: datetime | None

    def refusal(self, now: datetime) -> str | None:
        """Why the key cannot be used at ``now`` ("revoked", "expired"), or None."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return None


@dataclass(frozen=True, slots=True)
class PriceRow:
    model_id: str
    prompt_micros_per_mtok: int
    completion_micros_per_mtok: int
    batch_discount_pct: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class DailyUsageRow:
    day: date
    tenant_id: str
    model_id: str
    priority_class: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int


# --- validation ------------------------------------------------------------------


def _count(name: str, value: int | None, low: int, none_means: str) -> int | None:
    # type() rather than isinstance: bool is an int, but True as a limit is a mistake.
    if value is not None and (type(value) is not int or value < low):
        raise TenantError(f"{name} must be an integer >= {low} or None ({none_means}), "
                          f"not {value!r}")
    return value


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise TenantError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _tenant_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The tenant limits given, validated; TenantError names the first bad one."""
    for name, value in fields.items():
        if name == "budget_period":
            _choice(name, value, BUDGET_PERIODS)
        elif name == "budget_micros":
            _count(name, value, 0, "no budget")
        else:
            _count(name, value, 1, "unlimited")
    return fields


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# --- keys ------------------------------------------------------------------------


def generate_key() -> tuple[str, str]:
    """A new key: (full key ``wpk_<8 hex>_<43 url-safe chars>``, visible prefix ``wpk_<8 hex>``)."""
    prefix = KEY_PREFIX + secrets.token_hex(4)
    return f"{prefix}_{secrets.token_urlsafe(32)}", prefix


def hash_key(full_key: str) -> str:
    # A plain sha256 is enough: the secret has 256 random bits, nothing to brute-force.
    return hashlib.sha256(full_key.encode()).hexdigest()


# --- tenants ---------------------------------------------------------------------


def _tenant_row(t: Tenant) -> TenantRow:
    return TenantRow(t.id, t.name, t.created_at, t.rpm, t.tpm, t.max_concurrency,
                     t.budget_micros, t.budget_period)


def add_tenant(
    engine: Engine, name: str, *, rpm: int | None = None, tpm: int | None = None,
    max_concurrency: int | None = None, budget_micros: int | None = None,
    budget_period: str = "month",
) -> TenantRow:
    if not name.strip():
        raise TenantError("a tenant needs a name")
    limits = _tenant_fields({"rpm": rpm, "tpm": tpm, "max_concurrency": max_concurrency,
                             "budget_micros": budget_micros, "budget_period": budget_period})
    tenant = Tenant(id=f"ten_{uuid.uuid4().hex[:12]}", name=name, created_at=utcnow(), **limits)
    try:
        with Session(engine) as s, s.begin():
            s.add(tenant)
            s.flush()
            return _tenant_row(tenant)
    except IntegrityError:
        raise TenantError(f"a tenant named {name!r} exists already") from None


def _get_tenant(s: Session, name: str) -> Tenant:
    tenant = s.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        raise TenantError(f"no tenant named {name!r}; add it with 'wattpool tenants add'")
    return tenant


def get_tenant(engine: Engine, name: str) -> TenantRow:
    with Session(engine) as s:
        return _tenant_row(_get_tenant(s, name))


def list_tenants(engine: Engine) -> list[TenantRow]:
    with Session(engine) as s:
        return [_tenant_row(t) for t in s.scalars(select(Tenant).order_by(Tenant.name))]


def update_tenant_limits(
    engine: Engine, name: str, *, rpm: int | _Unset | None = UNSET,
    tpm: int | _Unset | None = UNSET, max_concurrency: int | _Unset | None = UNSET,
    budget_micros: int | _Unset | None = UNSET, budget_period: str | _Unset = UNSET,
) -> TenantRow:
    """Change the given limits (None: unlimited / no budget); the others stay as they are."""
    given = {"rpm": rpm, "tpm": tpm, "max_concurrency": max_concurrency,
             "budget_micros": budget_micros, "budget_period": budget_period}
    changes = _tenant_fields({k: v for k, v in given.items() if v is not UNSET})
    with Session(engine) as s, s.begin():
        tenant = _get_tenant(s, name)
        for attr, value in changes.items():
            setattr(tenant, attr, value)
        s.flush()
        return _tenant_row(tenant)


# --- API keys --------------------------------------------------------------------


def _key_row(k: ApiKey) -> KeyRow:
    return KeyRow(
        k.id, k.tenant_id, k.name, k.prefix, None if k.models is None else tuple(k.models),
        k.default_class, k.rpm, k.tpm, k.max_concurrency, bool(k.is_admin), k.created_at,
        k.expires_at, k.revoked_at, k.last_used_at,
    )


def _models(models: Sequence[str] | None) -> list[str] | None:
    if models is None:
        return None
    if isinstance(models, str):  # a bare string would become a list of characters
        raise TenantError("models must be a list of model ids, not a string")
    ids = list(dict.fromkeys(models))  # de-duplicated, order kept
    if not ids:
        raise TenantError("an empty model list would allow no model; pass None for all")
    if any(not isinstance(m, str) or not m.strip() for m in ids):
        raise TenantError("model ids must be non-empty strings")
    return ids


def create_key(
    engine: Engine, tenant_name: str, *, name: str = "", models: Sequence[str] | None = None,
    expires_at: datetime | None = None, default_class: str = "interactive",
    rpm: int | None = None, tpm: int | None = None, max_concurrency: int | None = None,
    is_admin: bool = False,
) -> tuple[str, KeyRow]:
    """A new key for the tenant: (the full key, shown only now; its stored row)."""
    now = utcnow()
    if expires_at is not None:
        expires_at = _as_utc(expires_at)
        if expires_at <= now:
            raise TenantError("a key's expiry must be in the future")
    fields: dict[str, Any] = {
        "name": name, "models": _models(models),
        "default_class": _choice("default_class", default_class, PRIORITY_CLASSES),
        "rpm": _count("rpm", rpm, 1, "unlimited"), "tpm": _count("tpm", tpm, 1, "unlimited"),
        "max_concurrency": _count("max_concurrency", max_concurrency, 1, "unlimited"),
        "is_admin": bool(is_admin), "created_at": now, "expires_at": expires_at,
    }
    tenant_id = get_tenant(engine, tenant_name).id
    # The 8-hex prefix is short enough to read, so it can collide: draw again then.
    for _ in range(5):
        full, prefix = generate_key()
        key = ApiKey(id=f"key_{uuid.uuid4().hex[:12]}", tenant_id=tenant_id, prefix=prefix,
                     key_hash=hash_key(full), **fields)
        try:
            with Session(engine) as s, s.begin():
                s.add(key)
                s.flush()
                return full, _key_row(key)
        except IntegrityError:
            # Either a prefix collision (retry) or the tenant vanished meanwhile.
            get_tenant(engine, tenant_name)
    raise TenantError("could not draw an unused key prefix; try again")


def revoke_key(engine: Engine, key_id_or_prefix: str) -> KeyRow:
    """Revoke a key now; revoking it again keeps the first revocation time."""
    with Session(engine) as s, s.begin():
        key = s.scalar(select(ApiKey).where(
            or_(ApiKey.id == key_id_or_prefix, ApiKey.prefix == key_id_or_prefix)))
        if key is None:
            raise TenantError(f"no API key with id or prefix {key_id_or_prefix!r}")
        if key.revoked_at is None:
            key.revoked_at = utcnow()
            s.flush()
        return _key_row(key)


def list_keys(engine: Engine, tenant_name: str | None = None) -> list[KeyRow]:
    q = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    with Session(engine) as s:
        if tenant_name is not None:
            q = q.where(ApiKey.tenant_id == _get_tenant(s, tenant_name).id)
        return [_key_row(k) for k in s.scalars(q)]


def lookup_key(engine: Engine, full_key: str) -> AuthRecord | None:
    """The key and its tenant in one query, or None if unknown.

    Revoked and expired keys are returned too (see ``AuthRecord.refusal``), so the
    caller can tell the client why it is refused.
    """
    if not full_key.startswith(KEY_PREFIX):
        return None  # not one of ours: no query needed
    q = (select(ApiKey, Tenant).join(Tenant, ApiKey.tenant_id == Tenant.id)
         .where(ApiKey.key_hash == hash_key(full_key)))
    with Session(engine) as s:
        found = s.execute(q).first()
        if found is None:
            return None
        k, t = found
        return AuthRecord(
            key_id=k.id, prefix=k.prefix, tenant_id=t.id, tenant_name=t.name,
            models=None if k.models is None else tuple(k.models),
            default_class=k.default_class, key_rpm=k.rpm, key_tpm=k.tpm,
            key_max_concurrency=k.max_concurrency, tenant_rpm=t.rpm, tenant_tpm=t.tpm,
            tenant_max_concurrency=t.max_concurrency, budget_micros=t.budget_micros,
            budget_period=t.budget_period, is_admin=bool(k.is_admin),
            expires_at=k.expires_at, revoked_at=k.revoked_at,
        )


def touch_keys(engine: Engine, key_ids: Iterable[str], at: datetime | None = None) -> int:
    """Set last_used_at of these keys (one UPDATE); returns how many keys were found."""
    ids = sorted(set(key_ids))
    if not ids:
        return 0
    with Session(engine) as s, s.begin():
        res = s.execute(update(ApiKey).where(ApiKey.id.in_(ids))
                        .values(last_used_at=at or utcnow()))
        return int(res.rowcount)  # type: ignore[attr-defined]


# --- prices and cost -------------------------------------------------------------


def _usd_to_micros(what: str, usd: Decimal | str | int) -> int:
    if isinstance(usd, float | bool):  # floats are inexact; say so instead of rounding
        raise TenantError(f"{what} must be given as a string or Decimal, not {usd!r}")
    try:
        micros = Decimal(usd) * MICROS_PER_USD
    except (InvalidOperation, TypeError, ValueError):
        raise TenantError(f"{what} is not a number: {usd!r}") from None
    if not micros.is_finite() or micros < 0:
        raise TenantError(f"{what} must be a finite amount >= 0, not {usd!r}")
    if micros != micros.to_integral_value():
        raise TenantError(f"{what} {usd!r} has more precision than a micro-dollar")
    return int(micros)


def _price_row(p: Price) -> PriceRow:
    return PriceRow(p.model_id, p.prompt_micros_per_mtok, p.completion_micros_per_mtok,
                    p.batch_discount_pct, p.updated_at)


def set_price(
    engine: Engine, model_id: str, prompt_usd_per_mtok: Decimal | str,
    completion_usd_per_mtok: Decimal | str, batch_discount_pct: int = 0,
) -> PriceRow:
    """Set a model's price in USD per million tokens (stored exactly, as micro-dollars)."""
    if not model_id.strip():
        raise TenantError("a price needs a model id")
    prompt = _usd_to_micros("prompt price", prompt_usd_per_mtok)
    completion = _usd_to_micros("completion price", completion_usd_per_mtok)
    if type(batch_discount_pct) is not int or not 0 <= batch_discount_pct <= 100:
        raise TenantError(f"batch_discount_pct must be an integer from 0 to 100, "
                          f"not {batch_discount_pct!r}")
    with Session(engine) as s, s.begin():
        # merge: insert, or update the model's existing price in place.
        price = s.merge(Price(model_id=model_id, prompt_micros_per_mtok=prompt,
                              completion_micros_per_mtok=completion,
                              batch_discount_pct=batch_discount_pct, updated_at=utcnow()))
        s.flush()
        return _price_row(price)


def list_prices(engine: Engine) -> list[PriceRow]:
    with Session(engine) as s:
        return [_price_row(p) for p in s.scalars(select(Price).order_by(Price.model_id))]


def _div_half_up(n: int, d: int) -> int:
    # Exact integer rounding (n >= 0, d > 0); round() would round half to even.
    return (2 * n + d) // (2 * d)


def cost_micros(
    price: PriceRow | None, prompt_tokens: int, completion_tokens: int, priority_class: str
) -> int:
    """What one request costs, in micro-dollars; 0 for an unpriced model.

    (prompt * P + completion * C) / 1e6 rounded half-up, then, for class "batch", the
    batch discount applied once and rounded half-up. Integers only: no float error.
    """
    if prompt_tokens < 0 or completion_tokens < 0:
        raise ValueError("token counts cannot be negative")
    if price is None:
        return 0
    raw = (prompt_tokens * price.prompt_micros_per_mtok
           + completion_tokens * price.completion_micros_per_mtok)
    cost = _div_half_up(raw, _TOKENS_PER_MTOK)
    if priority_class == "batch" and price.batch_discount_pct:
        cost = _div_half_up(cost * (100 - price.batch_discount_pct), 100)
    return cost


# --- roll-ups --------------------------------------------------------------------


def usage_for_tenant(
    engine: Engine, tenant_id: str | None, since: date, until: date | None = None
) -> list[DailyUsageRow]:
    """Daily totals of a tenant (None or "": requests without one) from ``since`` to
    ``until`` (both UTC days, inclusive; no ``until``: up to now)."""
    q = (select(UsageDaily)
         .where(UsageDaily.tenant_id == (tenant_id or ""), UsageDaily.day >= since)
         .order_by(UsageDaily.day, UsageDaily.model_id, UsageDaily.priority_class))
    if until is not None:
        q = q.where(UsageDaily.day <= until)
    with Session(engine) as s:
        return [DailyUsageRow(u.day, u.tenant_id, u.model_id, u.priority_class, u.requests,
                              u.prompt_tokens, u.completion_tokens, u.cost_micros)
                for u in s.scalars(q)]


def period_bounds(period: str, now: datetime) -> tuple[date, date]:
    """The UTC days [first, last] of the budget period ("day" or "month") holding ``now``."""
    today = _as_utc(now).date()
    if _choice("budget_period", period, BUDGET_PERIODS) == "day":
        return today, today
    first = today.replace(day=1)
    next_month = (first + timedelta(days=32)).replace(day=1)
    return first, next_month - timedelta(days=1)


def spent_in_period(engine: Engine, tenant_id: str, period: str, now: datetime) -> int:
    """Micro-dollars the tenant spent in the current UTC day or calendar month."""
    first, last = period_bounds(period, now)
    q = select(func.coalesce(func.sum(UsageDaily.cost_micros), 0)).where(
        UsageDaily.tenant_id == tenant_id, UsageDaily.day >= first, UsageDaily.day <= last)
    with Session(engine) as s:
        return int(s.scalar(q) or 0)
