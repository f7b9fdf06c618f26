"""LocalLimiter and RedisLimiter pass the same behavioural tests; Redis is exact across
processes.

Needs Redis at 127.0.0.1:6379 (or WATTPOOL_TEST_REDIS_URL). Without it the Redis cases
are skipped, unless the environment sets CI (then they fail: CI must run them). Each test
uses its own random key prefix and deletes its keys afterwards.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest
import redis
import redis.asyncio as aioredis

from wattpool.control.limits import (
    CONCURRENCY_RETRY_S,
    Limiter,
    LimiterUnavailable,
    Limits,
    LocalLimiter,
    RedisLimiter,
    Scope,
)
from wattpool.policy.ratelimit import parse_duration

REDIS_URL = os.environ.get("WATTPOOL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
pytestmark = pytest.mark.timeout(120)

MakeLimiter = Callable[..., Awaitable[Limiter]]


def require_redis() -> None:
    try:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1) as r:
            r.ping()
    except redis.RedisError as exc:
        reason = f"Redis at {REDIS_URL} does not answer: {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    name = f"wattpool-test-{uuid.uuid4().hex}:"
    yield name
    try:
        client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        async with client:
            keys = [k async for k in client.scan_iter(match=f"{name}*", count=500)]
            if keys:
                await client.delete(*keys)
    except redis.RedisError:
        pass  # nothing was written if Redis is not there


@pytest.fixture(params=["local", "redis"])
async def make_limiter(request: pytest.FixtureRequest,
                       prefix: str) -> AsyncIterator[MakeLimiter]:
    made: list[Limiter] = []

    async def make(max_request_s: float = 600.0) -> Limiter:
        limiter: Limiter
        if request.param == "local":
            limiter = LocalLimiter(max_request_s=max_request_s)
        else:
            require_redis()
            limiter = RedisLimiter(REDIS_URL, prefix=prefix, max_request_s=max_request_s)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.aclose()


def key(limits: Limits, name: str = "k1") -> Scope:
    return Scope("key", name, limits)


def tenant(limits: Limits, name: str = "t1") -> Scope:
    return Scope("tenant", name, limits)


# --- behaviour both stores share ---------------------------------------------------


async def test_rpm_is_exact_and_the_refusal_says_when(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter()
    scopes = [key(Limits(rpm=10))]
    admitted = [await limiter.admit(scopes, 0) for _ in range(10)]
    assert all(d.allowed and d.lease for d in admitted)
    assert [d.headers["x-ratelimit-remaining-requests"] for d in admitted] == [
        str(n) for n in range(9, -1, -1)]
    refused = await limiter.admit(scopes, 0)
    assert not refused.allowed and refused.lease is None
    assert (refused.reason, refused.scope) == ("requests", "key:k1")
    assert 5.0 < refused.retry_after_s <= 6.0 + 1e-6
    assert refused.headers["x-ratelimit-limit-requests"] == "10"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert 55.0 < parse_duration(refused.headers["x-ratelimit-reset-requests"]) <= 60.001
    assert "x-ratelimit-limit-tokens" not in refused.headers  # no TPM set


async def test_tpm_estimates_charges_debt_and_refunds(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter()
    scopes = [key(Limits(tpm=60))]  # one token per second refills: negligible here
    first = await limiter.admit(scopes, 25)
    assert first.allowed and first.headers["x-ratelimit-remaining-tokens"] == "35"
    assert (await limiter.admit(scopes, 25)).allowed  # ~10 left
    refused = await limiter.admit(scopes, 25)
    assert (refused.allowed, refused.reason) == (False, "tokens")
    assert 13.0 < refused.retry_after_s <= 15.0  # 15 more tokens at 1/s
    await limiter.charge_tokens(scopes, 40)  # completion tokens streamed: into debt
    in_debt = await limiter.admit(scopes, 0)
    assert (in_debt.allowed, in_debt.reason) == (False, "tokens")  # even an empty estimate
    assert in_debt.headers["x-ratelimit-remaining-tokens"] == "0"
    assert 87.0 < parse_duration(in_debt.headers["x-ratelimit-reset-tokens"]) <= 90.001
    await limiter.charge_tokens(scopes, -55)  # estimate was too high: refund
    assert (await limiter.admit(scopes, 25)).allowed
    await limiter.charge_tokens(scopes, -10_000)  # refunds stop at a full bucket
    full = await limiter.admit(scopes, 0)
    assert full.headers["x-ratelimit-remaining-tokens"] == "60"
    await limiter.charge_tokens([key(Limits(rpm=5), "other")], 10_000)  # no TPM: no-op
    assert (await limiter.admit([key(Limits(rpm=5), "other")], 10_000)).allowed


async def test_concurrency_with_release(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter()
    scopes = [key(Limits(max_concurrency=2)), tenant(Limits())]
    a = await limiter.admit(scopes, 1)
    b = await limiter.admit(scopes, 1)
    assert a.allowed and b.allowed and a.lease != b.lease
    c = await limiter.admit(scopes, 1)
    assert (c.allowed, c.reason, c.retry_after_s) == (False, "concurrency", CONCURRENCY_RETRY_S)
    await limiter.release(scopes, a.lease)
    d = await limiter.admit(scopes, 1)
    assert d.allowed
    await limiter.release(scopes, a.lease)  # twice: no effect, never below zero
    await limiter.release(scopes, None)
    await limiter.release(scopes, "no-such-lease")
    assert not (await limiter.admit(scopes, 1)).allowed
    for lease in (b.lease, d.lease):
        await limiter.release(scopes, lease)
    assert all([(await limiter.admit(scopes, 1)).allowed for _ in range(2)])


async def test_an_unreleased_lease_expires(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter(max_request_s=0.3)
    scopes = [tenant(Limits(max_concurrency=1))]
    assert (await limiter.admit(scopes, 1)).allowed  # never released: a crashed gateway
    assert not (await limiter.admit(scopes, 1)).allowed
    await asyncio.sleep(0.45)
    assert (await limiter.admit(scopes, 1)).allowed


async def test_admission_is_atomic_across_scopes(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter()
    k = key(Limits(rpm=5, tpm=60, max_concurrency=3))
    both = [k, tenant(Limits(rpm=2))]
    assert all([(await limiter.admit(both, 10)).allowed for _ in range(2)])
    refused = await limiter.admit(both, 10)
    assert (refused.allowed, refused.reason, refused.scope) == (False, "requests", "tenant:t1")
    assert refused.headers["x-ratelimit-limit-requests"] == "2"  # the constrained scope
    # The key passed its own checks but gave nothing: 2 requests, 20 tokens, 2 slots used.
    alone = await limiter.admit([k], 10)
    assert alone.allowed
    assert alone.headers["x-ratelimit-remaining-requests"] == "2"
    assert alone.headers["x-ratelimit-remaining-tokens"] == "30"
    full = await limiter.admit([k], 10)  # the 4th slot does not exist
    assert (full.allowed, full.reason) == (False, "concurrency")


async def test_key_refusal_leaves_the_tenant_untouched(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter()
    t = tenant(Limits(rpm=100, tpm=600, max_concurrency=10))
    assert (await limiter.admit([key(Limits(tpm=60)), t], 50)).allowed
    refused = await limiter.admit([key(Limits(tpm=60)), t], 50)
    assert (refused.reason, refused.scope) == ("tokens", "key:k1")
    after = await limiter.admit([t], 0)
    assert after.headers["x-ratelimit-remaining-requests"] == "98"
    assert after.headers["x-ratelimit-remaining-tokens"] == "550"


async def test_budget_spend_and_seed(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter()
    day = datetime(2026, 11, 28, 15, tzinfo=UTC).timestamp()
    assert await limiter.budget_spent("acme", "day", day) == 0
    assert await limiter.add_spend("acme", "day", 1500, day) == 1500
    assert await limiter.add_spend("acme", "day", 500, day + 3600) == 2000
    assert await limiter.seed_spend("acme", "day", 99, day) is False  # already counting
    assert await limiter.budget_spent("acme", "day", day) == 2000
    assert await limiter.budget_spent("acme", "day", day + 86400) == 0  # a new UTC day
    assert await limiter.budget_spent("acme", "month", day) == 0  # periods are separate
    assert await limiter.seed_spend("acme", "month", 7_000_000, day) is True
    assert await limiter.seed_spend("acme", "month", 1, day) is False
    assert await limiter.add_spend("acme", "month", 1, day + 86400) == 7_000_001
    next_month = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    assert await limiter.budget_spent("acme", "month", next_month) == 0
    assert await limiter.budget_spent("other", "month", day) == 0


async def test_local_limiter_runs_on_an_injected_clock() -> None:
    clock = [1_000.0]
    limiter = LocalLimiter(now=lambda: clock[0], max_request_s=30, sweep_every_s=1)
    rpm = [key(Limits(rpm=10))]
    assert all([(await limiter.admit(rpm, 0)).allowed for _ in range(10)])
    refused = await limiter.admit(rpm, 0)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(6.0)
    clock[0] += 6.0
    assert (await limiter.admit(rpm, 0)).allowed
    assert not (await limiter.admit(rpm, 0)).allowed
    slots = [tenant(Limits(max_concurrency=1))]
    assert (await limiter.admit(slots, 0)).allowed
    clock[0] += 29.0
    assert not (await limiter.admit(slots, 0)).allowed
    clock[0] += 1.0  # the unreleased lease reaches max_request_s
    assert (await limiter.admit(slots, 0)).allowed
    clock[0] += 600
    await limiter.admit([key(Limits(rpm=10), "k2")], 0)  # triggers a sweep
    assert ("key", "k1", "req") not in limiter._buckets  # full again: forgotten
    assert ("tenant", "t1") not in limiter._leases


# --- Redis only ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_redis_raises_limiter_unavailable_quickly() -> None:
    limiter = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    scopes = [key(Limits(rpm=1, max_concurrency=1))]
    started = time.monotonic()
    with pytest.raises(LimiterUnavailable, match="unavailable"):
        await limiter.admit(scopes, 1)
    for call in (limiter.charge_tokens([key(Limits(tpm=5))], 1),
                 limiter.release(scopes, "lease"), limiter.budget_spent("t", "day"),
                 limiter.add_spend("t", "day", 1), limiter.seed_spend("t", "day", 1)):
        with pytest.raises(LimiterUnavailable):
            await call
    assert time.monotonic() - started < 10
    await limiter.aclose()


async def test_redis_keys_expire_when_idle(prefix: str) -> None:
    require_redis()
    limiter = RedisLimiter(REDIS_URL, prefix=prefix, max_request_s=30)
    scopes = [key(Limits(rpm=600, tpm=60_000, max_concurrency=5))]
    assert (await limiter.admit(scopes, 600)).allowed
    await limiter.add_spend("acme", "day", 1)
    client = aioredis.Redis.from_url(REDIS_URL)
    async with client:
        ttl = {which: await client.pttl(f"{prefix}rl:key:k1:{which}")
               for which in ("req", "tok", "conc")}
        spend_ttl = await client.ttl(f"{prefix}spend:acme:" + datetime.now(UTC).strftime(
            "day:%Y-%m-%d"))
    assert 0 < ttl["req"] <= 1100  # 1 of 600/min: full again in 0.1 s, plus 1 s slack
    assert 0 < ttl["tok"] <= 1700  # 600 of 60000/min: 0.6 s
    assert 30_000 < ttl["conc"] <= 31_000  # max_request_s
    assert 7 * 86400 < spend_ttl <= 8 * 86400  # rest of the day + a week of grace
    await limiter.aclose()


# Each process: 200 concurrent admits against the same scopes, all starting together and
# arriving over spread_s, so that both processes compete for the same tokens.
CHILD = """
import asyncio, json, random, sys, time
from wattpool.control.limits import Limits, RedisLimiter, Scope

cfg = json.loads(sys.argv[1])

async def main():
    limiter = RedisLimiter(cfg["url"], prefix=cfg["prefix"], timeout_s=10.0)
    scopes = [Scope(kind, ident, Limits(**lim)) for kind, ident, lim in cfg["scopes"]]
    # Open the pool's connections before the start line, so both bursts really overlap.
    await asyncio.gather(*(limiter.budget_spent("warm-up", "day") for _ in range(cfg["calls"])))
    await asyncio.sleep(max(0.0, cfg["start_at"] - time.time() - 0.05))
    while time.time() < cfg["start_at"]:  # spin the last 50 ms: sleep wakes up late
        pass
    started = time.time()

    async def one(delay: float):
        await asyncio.sleep(delay)  # spread arrivals so the two processes interleave
        return await limiter.admit(scopes, cfg["estimate"])

    delays = [random.uniform(0, cfg["spread_s"]) for _ in range(cfg["calls"])]
    decisions = await asyncio.wait_for(asyncio.gather(*map(one, delays)), 60)
    ended = time.time()
    await limiter.aclose()
    print(json.dumps({"admitted": sum(d.allowed for d in decisions),
                      "started": started, "ended": ended}))

asyncio.run(main())
"""


@pytest.mark.slow
@pytest.mark.parametrize(("scopes", "estimate", "per_minute"), [
    ([("key", "k1", {"rpm": 100, "tpm": 1_000_000})], 10, 100),
    ([("key", "k1", {"tpm": 1000})], 10, 100),
    ([("key", "k1", {"rpm": 100}), ("tenant", "t1", {"tpm": 1000, "max_concurrency": 500})],
     10, 100),
], ids=["rpm", "tpm", "rpm-key-tpm-tenant"])
def test_two_processes_share_one_limit_exactly(
        prefix: str, scopes: list[tuple[str, str, dict[str, int]]], estimate: int,
        per_minute: int) -> None:
    require_redis()
    cfg = {"url": REDIS_URL, "prefix": prefix, "scopes": scopes, "estimate": estimate,
           "calls": 200, "spread_s": 0.2, "start_at": time.time() + 4.0}
    children = [subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
    results = []
    try:
        for child in children:
            out, err = child.communicate(timeout=90)
            assert child.returncode == 0, err
            results.append(json.loads(out))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)
    admitted = sum(r["admitted"] for r in results)
    span = max(r["ended"] for r in results) - min(r["started"] for r in results)
    assert span < 30, results
    # The bucket's guarantee: limit + refill during the burst. The burst (~0.3 s) is under
    # the 0.6 s one request takes to refill, so this is exactly the limit: never 1 % over.
    assert admitted <= per_minute + math.floor(per_minute / 60 * span), (span, results)
    assert admitted >= per_minute - 1, results
    first, second = results
    assert first["started"] < second["ended"] and second["started"] < first["ended"], results
    assert first["admitted"] > 0 and second["admitted"] > 0, results  # both really competed
    print(f"admitted {admitted} of 400 (limit {per_minute}/min) in {span:.3f} s: {results}")
