"""Rate limits (RPM, TPM, concurrency) and money budgets for API keys and tenants.

A request names several scopes (its key and its tenant) and must pass the limits of all
of them; :meth:`Limiter.admit` checks and consumes them as one atomic step. Two stores:

* :class:`LocalLimiter`: plain dicts in one process (one event loop). Exact for that
  process only; N gateway replicas together allow up to N times the limits.
* :class:`RedisLimiter`: one Lua script per operation, so admission is atomic across
  scopes and across replicas, timed by Redis's own clock.

Both share the bucket arithmetic of :mod:`wattpool.policy.ratelimit` and build their
:class:`Decision` with the same code, so they answer alike. See docs/limits.md.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from wattpool.policy import ratelimit as rl
from wattpool.policy.ratelimit import (
    CONCURRENCY_RETRY_S,
    Decision,
    Limits,
    Observed,
    Scope,
    decide,
    passes,
    unique_scopes,
)

__all__ = [
    "CONCURRENCY_RETRY_S", "Decision", "Limiter", "LimiterUnavailable", "Limits",
    "LocalLimiter", "RedisLimiter", "Scope",
]

# Spend counters outlive their period this long, for late reads and reconciliation.
BUDGET_GRACE_S = 7 * 86400.0
DEFAULT_MAX_REQUEST_S = 600.0
MAX_REDIS_CONNECTIONS = 64


class LimiterUnavailable(RuntimeError):
    """The shared limiter store cannot answer; the caller chooses fail-open or -closed."""


class Limiter(Protocol):
    async def admit(self, scopes: Sequence[Scope], token_estimate: int) -> Decision: ...

    async def charge_tokens(self, scopes: Sequence[Scope], tokens: int) -> None: ...

    async def release(self, scopes: Sequence[Scope], lease: str | None) -> None: ...

    async def budget_spent(self, tenant_id: str, period: str,
                           now: float | None = None) -> int: ...

    async def add_spend(self, tenant_id: str, period: str, micros: int,
                        now: float | None = None) -> int: ...

    async def seed_spend(self, tenant_id: str, period: str, micros: int,
                         now: float | None = None) -> bool: ...

    async def aclose(self) -> None: ...


def _new_lease() -> str:
    return uuid.uuid4().hex


def _check_estimate(token_estimate: int) -> None:
    # A negative estimate would be a refund disguised as an admission.
    if token_estimate < 0:
        raise ValueError(f"token_estimate must be >= 0, got {token_estimate}")


def _budget_ttl_s(period: str, now: float) -> float:
    return max(1.0, rl.period_end(period, now) - now) + BUDGET_GRACE_S


# --- in-process ------------------------------------------------------------------------


@dataclass
class _Slot:
    bucket: rl.Bucket
    full_at: float  # after this the bucket equals "absent" and may be dropped


class LocalLimiter:
    """Limits for one process. Methods never await, so each is atomic on its event loop."""

    def __init__(self, *, now: Callable[[], float] = time.time,
                 max_request_s: float = DEFAULT_MAX_REQUEST_S,
                 sweep_every_s: float = 60.0) -> None:
        self.now = now
        self.max_request_s = max_request_s
        self.sweep_every_s = sweep_every_s
        self._buckets: dict[tuple[str, str, str], _Slot] = {}
        self._leases: dict[tuple[str, str], dict[str, float]] = {}  # lease -> expiry
        self._spend: dict[tuple[str, str], tuple[int, float]] = {}  # (micros, expiry)
        self._last_sweep = -math.inf

    def _bucket(self, scope: Scope, which: str) -> rl.Bucket | None:
        slot = self._buckets.get((scope.kind, scope.id, which))
        return slot.bucket if slot else None

    def _put(self, scope: Scope, which: str, limit: int, bucket: rl.Bucket) -> None:
        full_at = bucket.updated + rl.reset_seconds(bucket.tokens, limit)
        self._buckets[(scope.kind, scope.id, which)] = _Slot(bucket, full_at)

    def _live(self, scope: Scope, now: float) -> dict[str, float]:
        leases = self._leases.setdefault((scope.kind, scope.id), {})
        for lease in [lease for lease, expiry in leases.items() if expiry <= now]:
            del leases[lease]  # a request that never released (crash, bug) frees its slot
        return leases

    def _sweep(self, now: float) -> None:
        """Drop full buckets, empty lease sets and old spend so memory stays bounded."""
        if now - self._last_sweep < self.sweep_every_s:
            return
        self._last_sweep = now
        self._buckets = {k: s for k, s in self._buckets.items() if s.full_at > now}
        self._leases = {k: {lease: e for lease, e in v.items() if e > now}
                        for k, v in self._leases.items()}
        self._leases = {k: v for k, v in self._leases.items() if v}
        self._spend = {k: v for k, v in self._spend.items() if v[1] > now}

    async def admit(self, scopes: Sequence[Scope], token_estimate: int) -> Decision:
        _check_estimate(token_estimate)
        scopes = unique_scopes(scopes)
        now = self.now()
        self._sweep(now)
        seen = []
        for scope in scopes:
            lim = scope.limits
            seen.append(Observed(
                requests=None if lim.rpm is None
                else rl.level(self._bucket(scope, "req"), lim.rpm, now),
                tokens=None if lim.tpm is None
                else rl.level(self._bucket(scope, "tok"), lim.tpm, now),
                in_use=None if lim.max_concurrency is None else len(self._live(scope, now)),
            ))
        allowed = all(passes(s, o, token_estimate) for s, o in zip(scopes, seen, strict=True))
        lease = _new_lease() if allowed else None
        if lease is not None:
            for scope in scopes:
                lim = scope.limits
                if lim.rpm is not None:
                    taken = rl.try_take(self._bucket(scope, "req"), lim.rpm, 1, now)
                    assert taken.allowed and taken.state is not None
                    self._put(scope, "req", lim.rpm, taken.state)
                if lim.tpm is not None:
                    taken = rl.try_take(self._bucket(scope, "tok"), lim.tpm, token_estimate, now)
                    assert taken.allowed and taken.state is not None
                    self._put(scope, "tok", lim.tpm, taken.state)
                if lim.max_concurrency is not None:
                    self._live(scope, now)[lease] = now + self.max_request_s
        return decide(scopes, seen, token_estimate, allowed, lease)

    async def charge_tokens(self, scopes: Sequence[Scope], tokens: int) -> None:
        now = self.now()
        for scope in unique_scopes(scopes):
            if scope.limits.tpm is not None:
                charged = rl.debit(self._bucket(scope, "tok"), scope.limits.tpm, tokens, now)
                self._put(scope, "tok", scope.limits.tpm, charged.state)

    async def release(self, scopes: Sequence[Scope], lease: str | None) -> None:
        if lease is None:
            return
        for scope in unique_scopes(scopes):
            # pop(): releasing twice, or an expired lease, never goes below zero.
            self._leases.get((scope.kind, scope.id), {}).pop(lease, None)

    async def budget_spent(self, tenant_id: str, period: str,
                           now: float | None = None) -> int:
        at = self.now() if now is None else now
        return self._spend.get((tenant_id, rl.period_key(period, at)), (0, 0.0))[0]

    async def add_spend(self, tenant_id: str, period: str, micros: int,
                        now: float | None = None) -> int:
        at = self.now() if now is None else now
        key = (tenant_id, rl.period_key(period, at))
        total = self._spend.get(key, (0, 0.0))[0] + micros
        self._spend[key] = (total, at + _budget_ttl_s(period, at))
        return total

    async def seed_spend(self, tenant_id: str, period: str, micros: int,
                         now: float | None = None) -> bool:
        at = self.now() if now is None else now
        key = (tenant_id, rl.period_key(period, at))
        if key in self._spend:
            return False
        self._spend[key] = (micros, at + _budget_ttl_s(period, at))
        return True

    async def aclose(self) -> None:
        return None


# --- Redis ------------------------------------------------------------------------------

# Shared by every script. Time comes from Redis (TIME) so replicas' clocks do not matter;
# microsecond integers are exact in Lua's doubles. Numbers that go back into commands
# are formatted explicitly: Lua's tostring keeps only 14 digits.
_LUA_PRELUDE = """
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_s = string.format('%.0f', now_us)

local function level(key, limit)
  local v = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens, ts = tonumber(v[1]), tonumber(v[2])
  if tokens == nil or ts == nil then return limit end
  local elapsed = (now_us - ts) / 1000000
  if elapsed < 0 then elapsed = 0 end
  return math.min(limit, tokens + elapsed * limit / 60)
end

local function store(key, limit, tokens)
  redis.call('HSET', key, 'tokens', string.format('%.17g', tokens), 'ts', now_s)
  -- Expire once full again: an absent bucket reads as full, so nothing is lost.
  local full_ms = math.max(0, (limit - tokens) * 60000 / limit)
  redis.call('PEXPIRE', key, math.ceil(full_ms) + 1000)
end

local function need(amount, limit)
  return math.min(math.max(amount, 1), limit)
end
"""

# KEYS: per scope (req, tok, conc). ARGV: estimate, lease, lease_us, then per scope
# rpm, tpm, max_concurrency (0 = unlimited). Checks everything, then writes everything
# or nothing. Returns {allowed, then per scope: req level, tok level, leases in use}.
_ADMIT_LUA = _LUA_PRELUDE + """
local estimate = tonumber(ARGV[1])
local lease, lease_us = ARGV[2], tonumber(ARGV[3])
local n = #KEYS / 3
local allowed = 1
local seen = {}
for i = 1, n do
  local rpm, tpm, conc = tonumber(ARGV[3*i+1]), tonumber(ARGV[3*i+2]), tonumber(ARGV[3*i+3])
  local req, tok, used = false, false, false
  if rpm > 0 then
    req = level(KEYS[3*i-2], rpm)
    if req < need(1, rpm) then allowed = 0 end
  end
  if tpm > 0 then
    tok = level(KEYS[3*i-1], tpm)
    if tok < need(estimate, tpm) then allowed = 0 end
  end
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[3*i], '-inf', now_s)
    used = redis.call('ZCARD', KEYS[3*i])
    if used >= conc then allowed = 0 end
  end
  seen[i] = {rpm, tpm, conc, req, tok, used}
end
local out = {allowed}
for i = 1, n do
  local rpm, tpm, conc, req, tok, used = unpack(seen[i])
  if allowed == 1 then
    if rpm > 0 then store(KEYS[3*i-2], rpm, req - 1) end
    if tpm > 0 then store(KEYS[3*i-1], tpm, tok - estimate) end
    if conc > 0 then
      redis.call('ZADD', KEYS[3*i], string.format('%.0f', now_us + lease_us), lease)
      redis.call('PEXPIRE', KEYS[3*i], math.ceil(lease_us / 1000) + 1000)
    end
  end
  out[#out+1] = req and string.format('%.17g', req) or ''
  out[#out+1] = tok and string.format('%.17g', tok) or ''
  out[#out+1] = used and tostring(used) or ''
end
return out
"""

# KEYS: token buckets. ARGV: amount (negative = refund), then each bucket's tpm.
_CHARGE_LUA = _LUA_PRELUDE + """
local amount = tonumber(ARGV[1])
for i = 1, #KEYS do
  local limit = tonumber(ARGV[i+1])
  store(KEYS[i], limit, math.min(limit, level(KEYS[i], limit) - amount))
end
return #KEYS
"""

# KEYS: lease sets. ARGV: lease. ZREM of an absent lease is a no-op, so never below 0.
_RELEASE_LUA = _LUA_PRELUDE + """
local removed = 0
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now_s)
  removed = removed + redis.call('ZREM', KEYS[i], ARGV[1])
end
return removed
"""

# KEYS: spend counter. ARGV: micros, ttl_ms.
_ADD_SPEND_LUA = """
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return total
"""

# KEYS: spend counter. ARGV: micros, ttl_ms. Only the first seed after a restart counts.
_SEED_SPEND_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""


class RedisLimiter:
    """Limits shared by every gateway replica through one Redis.

    Each operation is one Lua script, so a check-and-consume across all scopes is atomic
    and exact however many replicas call it. Commands are not retried: a retried admit
    whose first reply was lost would consume twice. Any Redis failure raises
    :class:`LimiterUnavailable`.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "wattpool:", *,
                 max_request_s: float = DEFAULT_MAX_REQUEST_S, timeout_s: float = 1.0,
                 now: Callable[[], float] = time.time) -> None:
        self.prefix = prefix
        self.max_request_s = max_request_s
        self.now = now  # only picks the budget period; buckets use Redis TIME
        self._timeout_s = timeout_s
        self._where = url.rpartition("@")[2]  # never log a password
        # A bounded pool that makes callers wait for a free connection (up to timeout_s)
        # instead of failing: a burst of requests must queue, not error.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_REDIS_CONNECTIONS, timeout=timeout_s,
            socket_connect_timeout=timeout_s, socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0), decode_responses=True)
        self._pool = pool
        self._redis: Any = aioredis.Redis(connection_pool=pool)
        self._admit = self._redis.register_script(_ADMIT_LUA)
        self._charge = self._redis.register_script(_CHARGE_LUA)
        self._release = self._redis.register_script(_RELEASE_LUA)
        self._add_spend = self._redis.register_script(_ADD_SPEND_LUA)
        self._seed_spend = self._redis.register_script(_SEED_SPEND_LUA)

    def _key(self, scope: Scope, which: str) -> str:
        return f"{self.prefix}rl:{scope.kind}:{scope.id}:{which}"

    def _spend_key(self, tenant_id: str, period: str, now: float) -> str:
        return f"{self.prefix}spend:{tenant_id}:{rl.period_key(period, now)}"

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            # Bounded even if a socket timeout does not fire (e.g. a stuck connect).
            async with asyncio.timeout(self._timeout_s * 2 + 0.5):
                return await script(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise LimiterUnavailable(
                f"rate-limit store at {self._where} unavailable: "
                f"{type(exc).__name__}: {exc}") from exc

    async def admit(self, scopes: Sequence[Scope], token_estimate: int) -> Decision:
        _check_estimate(token_estimate)
        scopes = unique_scopes(scopes)
        lease = _new_lease()
        keys: list[str] = []
        args: list[Any] = [int(token_estimate), lease, int(self.max_request_s * 1_000_000)]
        for scope in scopes:
            keys += [self._key(scope, "req"), self._key(scope, "tok"), self._key(scope, "conc")]
            lim = scope.limits
            args += [lim.rpm or 0, lim.tpm or 0, lim.max_concurrency or 0]
        reply = await self._run(self._admit, keys, args)
        allowed = int(reply[0]) == 1
        seen = [Observed(requests=float(r) if r != "" else None,
                         tokens=float(t) if t != "" else None,
                         in_use=int(c) if c != "" else None)
                for r, t, c in zip(reply[1::3], reply[2::3], reply[3::3], strict=True)]
        return decide(scopes, seen, token_estimate, allowed, lease if allowed else None)

    async def charge_tokens(self, scopes: Sequence[Scope], tokens: int) -> None:
        metered = [s for s in unique_scopes(scopes) if s.limits.tpm is not None]
        if metered and tokens:
            await self._run(self._charge, [self._key(s, "tok") for s in metered],
                            [int(tokens), *[s.limits.tpm for s in metered]])

    async def release(self, scopes: Sequence[Scope], lease: str | None) -> None:
        capped = [s for s in unique_scopes(scopes) if s.limits.max_concurrency is not None]
        if lease is not None and capped:
            await self._run(self._release, [self._key(s, "conc") for s in capped], [lease])

    async def budget_spent(self, tenant_id: str, period: str,
                           now: float | None = None) -> int:
        key = self._spend_key(tenant_id, period, self.now() if now is None else now)
        try:
            async with asyncio.timeout(self._timeout_s * 2 + 0.5):
                value = await self._redis.get(key)
        except (RedisError, OSError, TimeoutError) as exc:
            raise LimiterUnavailable(f"rate-limit store at {self._where} unavailable: "
                                     f"{type(exc).__name__}: {exc}") from exc
        return int(value) if value is not None else 0

    async def add_spend(self, tenant_id: str, period: str, micros: int,
                        now: float | None = None) -> int:
        at = self.now() if now is None else now
        ttl_ms = int(_budget_ttl_s(period, at) * 1000)
        total = await self._run(self._add_spend, [self._spend_key(tenant_id, period, at)],
                                [int(micros), ttl_ms])
        return int(total)

    async def seed_spend(self, tenant_id: str, period: str, micros: int,
                         now: float | None = None) -> bool:
        at = self.now() if now is None else now
        ttl_ms = int(_budget_ttl_s(period, at) * 1000)
        done = await self._run(self._seed_spend, [self._spend_key(tenant_id, period, at)],
                               [int(micros), ttl_ms])
        return int(done) == 1

    async def aclose(self) -> None:
        await self._redis.aclose()
        await self._pool.disconnect()  # a pool passed in is not closed by the client
