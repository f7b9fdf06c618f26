"""Who is calling, what they may do, and what it costs.

* API keys (``Authorization: Bearer wpk_…``) are looked up by their sha256 in the
  store through a cache whose entries live 0.5 s, so a revoked or expired key stops
  working within a second on every replica. When the database does not answer, the
  last known answer is used (stale-if-error): a database outage does not lock out
  customers.
* Limits per key and per tenant go through a ``Limiter`` (in-process, or Redis for
  exact limits across replicas). If Redis is down the gateway fails open and
  counts it in a metric: availability first (docs/limits.md).
* Prices come from the store's price book, refreshed every 30 s, also stale-if-error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

from wattpool.control.limits import Limiter, LimiterUnavailable, Limits, Scope
from wattpool.gateway.errors import APIError
from wattpool.store import tenants as store_tenants
from wattpool.store.tenants import AuthRecord, PriceRow

log = logging.getLogger(__name__)
KEY_CACHE_TTL_S = 0.5
PRICE_REFRESH_S = 10.0  # other replicas see a new price within this
TOKEN_CHARGE_EVERY = 16  # completion tokens charged to TPM in batches of this many
KEY_TOUCH_PERIOD_S = 10.0  # how often api_keys.last_used_at is brought up to date


@dataclass
class Caller:
    """The authenticated caller of one request (auth None in open mode)."""

    auth: AuthRecord | None
    scopes: list[Scope] = field(default_factory=list)

    @property
    def tenant_id(self) -> str | None:
        return self.auth.tenant_id if self.auth else None

    @property
    def key_id(self) -> str | None:
        return self.auth.key_id if self.auth else None

    @property
    def default_class(self) -> str:
        return self.auth.default_class if self.auth else "interactive"


@dataclass
class Admission:
    caller: Caller
    lease: str | None
    headers: dict[str, str]
    token_estimate: int
    pending_tokens: int = 0


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """A cheap upper-ish estimate (4 characters a token) for TPM admission."""
    if "prompt" in body:
        chars = len(str(body["prompt"]))
    else:
        chars = sum(len(str(m.get("content") or "")) for m in body.get("messages", []))
    return max(1, math.ceil(chars / 4))


def period_of(auth: AuthRecord) -> str:
    return auth.budget_period


class KeyCache:
    def __init__(self, db: Engine, ttl_s: float = KEY_CACHE_TTL_S) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[AuthRecord | None, float]] = {}
        self.stale_served = 0

    async def lookup(self, full_key: str) -> AuthRecord | None:
        digest = store_tenants.hash_key(full_key)
        cached = self._entries.get(digest)
        now = time.monotonic()
        if cached is not None and now - cached[1] < self.ttl_s:
            return cached[0]
        try:
            record = await asyncio.to_thread(store_tenants.lookup_key, self.db, full_key)
        except Exception as exc:
            if cached is not None:
                self.stale_served += 1
                log.warning("key store unavailable (%s); using the last known answer", exc)
                return cached[0]
            raise APIError(503, "The service cannot check API keys right now; retry shortly.",
                           type="server_error", code="auth_unavailable",
                           headers={"Retry-After": "2"}) from None
        if len(self._entries) > 100_000:  # bounded: forget everything, reload on demand
            self._entries.clear()
        self._entries[digest] = (record, now)
        return record


class PriceBook:
    def __init__(self, db: Engine) -> None:
        self.db = db
        self.prices: dict[str, PriceRow] = {}
        self._loaded_at = -math.inf

    async def refresh(self) -> None:
        try:
            rows = await asyncio.to_thread(store_tenants.list_prices, self.db)
        except Exception as exc:
            log.warning("price book not refreshed (%s); keeping %d known prices", exc,
                        len(self.prices))
            return
        self.prices = {r.model_id: r for r in rows}
        self._loaded_at = time.monotonic()

    async def get(self, model: str) -> PriceRow | None:
        if time.monotonic() - self._loaded_at > PRICE_REFRESH_S:
            await self.refresh()
        return self.prices.get(model)


def _bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _masked(key: str) -> str:
    return f"{key[:12]}****{key[-4:]}" if len(key) > 16 else "****"


class Tenancy:
    def __init__(self, db: Engine, limiter: Limiter, *, open_access: bool) -> None:
        self.db = db
        self.limiter = limiter
        self.open_access = open_access
        self.keys = KeyCache(db)
        self.prices = PriceBook(db)
        self.limiter_failures = 0
        self._seeded: set[tuple[str, str]] = set()
        self._used_keys: set[str] = set()
        self._touch_tasks: set[asyncio.Task[None]] = set()
        self._touched_at = time.monotonic()

    async def authenticate(self, headers: Mapping[str, str]) -> Caller:
        token = _bearer(headers)
        if token is None:
            if self.open_access:
                return Caller(auth=None)
            raise APIError(
                401, "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="missing_api_key")
        record = await self.keys.lookup(token)
        if record is None:
            if self.open_access:
                return Caller(auth=None)
            raise APIError(401, f"Incorrect API key provided: {_masked(token)}.",
                           code="invalid_api_key")
        now = datetime.now(UTC)
        if record.revoked_at is not None:
            raise APIError(401, f"The API key {record.prefix}… has been revoked.",
                           code="invalid_api_key")
        if record.expires_at is not None and record.expires_at <= now:
            raise APIError(401, f"The API key {record.prefix}… expired at "
                           f"{record.expires_at:%Y-%m-%d %H:%M} UTC.", code="invalid_api_key")
        self._note_use(record.key_id)
        scopes = [
            Scope("key", record.key_id,
                  Limits(record.key_rpm, record.key_tpm, record.key_max_concurrency)),
            Scope("tenant", record.tenant_id,
                  Limits(record.tenant_rpm, record.tenant_tpm, record.tenant_max_concurrency)),
        ]
        return Caller(auth=record, scopes=scopes)

    def _note_use(self, key_id: str) -> None:
        """Remember keys in use; their last_used_at is written in batches, off the path."""
        self._used_keys.add(key_id)
        if time.monotonic() - self._touched_at < KEY_TOUCH_PERIOD_S:
            return
        used, self._used_keys = self._used_keys, set()
        self._touched_at = time.monotonic()

        async def touch() -> None:
            try:
                await asyncio.to_thread(store_tenants.touch_keys, self.db, used)
            except Exception as exc:  # the database may be down; usage is not at stake
                log.debug("last_used_at not written: %s", exc)

        task = asyncio.get_running_loop().create_task(touch())
        self._touch_tasks.add(task)
        task.add_done_callback(self._touch_tasks.discard)

    def require_admin(self, caller: Caller) -> None:
        if caller.auth is None and self.open_access:
            return  # an open pool trusts whoever can reach it (local use)
        if caller.auth is None or not caller.auth.is_admin:
            raise APIError(403, "This endpoint needs an admin API key.", type="permission_error",
                           code="admin_required")

    @staticmethod
    def may_use(caller: Caller, model: str) -> bool:
        return caller.auth is None or caller.auth.models is None or model in caller.auth.models

    async def _spent(self, auth: AuthRecord) -> int:
        period = period_of(auth)
        key = (auth.tenant_id, period)
        if key not in self._seeded:
            # The database knows what was spent before this process (or Redis) started.
            with contextlib.suppress(Exception):
                spent = await asyncio.to_thread(store_tenants.spent_in_period, self.db,
                                                auth.tenant_id, period, datetime.now(UTC))
                await self.limiter.seed_spend(auth.tenant_id, period, spent)
                self._seeded.add(key)
        return await self.limiter.budget_spent(auth.tenant_id, period)

    async def admit(self, caller: Caller, body: Mapping[str, Any]) -> Admission:
        estimate = estimate_prompt_tokens(body)
        if caller.auth is None:
            return Admission(caller, None, {}, estimate)
        auth = caller.auth
        try:
            if auth.budget_micros is not None and await self._spent(auth) >= auth.budget_micros:
                raise APIError(
                    429, "You exceeded your current quota: the budget of tenant "
                    f"{auth.tenant_name} for this {auth.budget_period} is spent.",
                    type="insufficient_quota", code="insufficient_quota",
                    headers={"x-should-retry": "false"})
            decision = await self.limiter.admit(caller.scopes, estimate)
        except LimiterUnavailable as exc:
            self.limiter_failures += 1
            log.warning("limiter unavailable (%s); admitting without limits", exc)
            return Admission(caller, None, {}, estimate)
        if not decision.allowed:
            wait = max(1, math.ceil(decision.retry_after_s))
            what = {"requests": "requests per minute (RPM)", "tokens": "tokens per minute "
                    "(TPM)", "concurrency": "concurrent requests"}.get(decision.reason or "",
                                                                       "requests")
            raise APIError(
                429, f"Rate limit reached for {what} on {decision.scope or 'your key'}. "
                f"Please try again in {wait}s.", type=decision.reason or "requests",
                code="rate_limit_exceeded",
                headers={**decision.headers, "retry-after": str(wait),
                         "retry-after-ms": str(int(decision.retry_after_s * 1000))})
        return Admission(caller, decision.lease, dict(decision.headers), estimate)

    async def on_tokens(self, admission: Admission, count: int) -> None:
        """Completion tokens were delivered: TPM counts them (in small batches)."""
        if admission.caller.auth is None:
            return
        admission.pending_tokens += count
        if admission.pending_tokens >= TOKEN_CHARGE_EVERY:
            await self._charge(admission, admission.pending_tokens)
            admission.pending_tokens = 0

    async def _charge(self, admission: Admission, tokens: int) -> None:
        if tokens:
            try:
                await self.limiter.charge_tokens(admission.caller.scopes, tokens)
            except LimiterUnavailable:
                self.limiter_failures += 1

    async def finish(self, admission: Admission, prompt_tokens: int, cost_micros: int) -> None:
        """Release concurrency, correct the prompt estimate, add the spend."""
        auth = admission.caller.auth
        if auth is None:
            return
        try:
            await self._charge(admission, admission.pending_tokens
                               + prompt_tokens - admission.token_estimate)
            await self.limiter.release(admission.caller.scopes, admission.lease)
            if cost_micros:
                await self.limiter.add_spend(auth.tenant_id, period_of(auth), cost_micros)
        except LimiterUnavailable:
            self.limiter_failures += 1

    async def cost(self, model: str, prompt_tokens: int, completion_tokens: int,
                   klass: str) -> int:
        price = await self.prices.get(model)
        return store_tenants.cost_micros(price, prompt_tokens, completion_tokens, klass)
