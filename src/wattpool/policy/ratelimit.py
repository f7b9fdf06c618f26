"""Token-bucket arithmetic for per-minute limits, and budget periods.

Pure functions of ``(state, now)``: no I/O, no clock of their own, so the in-process
limiter, the tests and the simulator share one definition. The Redis limiter mirrors the
same formulas in Lua (``wattpool.control.limits``); the integration tests run one set of
behavioural tests against both.

A bucket for a limit of ``L`` per minute holds at most ``L`` units, starts full, and
refills continuously at ``L / 60`` units per second. ``None`` as a state means "never
touched", which is the same as full: that is why stores may drop idle buckets.

Also here, because they are pure too: UTC budget periods, and the admission decision
(reason, Retry-After, OpenAI ``x-ratelimit-*`` headers) computed from what a store saw.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class Bucket:
    """Level at time ``updated`` (seconds, any epoch). ``tokens`` may be negative (debt)."""

    tokens: float
    updated: float


class TakeResult(NamedTuple):
    allowed: bool
    state: Bucket | None  # unchanged when refused
    remaining: float  # level after the take (or now, when refused)
    reset_seconds: float  # until the bucket is full again


class DebitResult(NamedTuple):
    state: Bucket
    remaining: float
    reset_seconds: float


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"a per-minute limit must be >= 1, got {limit}")


def rate_per_second(limit: int) -> float:
    return limit / 60.0


def level(state: Bucket | None, limit: int, now: float) -> float:
    """The level at ``now``: refilled since ``state.updated``, capped at ``limit``."""
    _check_limit(limit)
    if state is None:
        return float(limit)
    # A clock that steps back must not drain the bucket; treat it as no time passed.
    elapsed = max(0.0, now - state.updated)
    return min(float(limit), state.tokens + elapsed * limit / 60.0)


def reset_seconds(tokens: float, limit: int) -> float:
    """Seconds until a bucket at ``tokens`` is full again (0 when full)."""
    return max(0.0, (limit - tokens) * 60.0 / limit)


def need(amount: int, limit: int) -> int:
    """Level a take of ``amount`` requires: at least 1 (a bucket in debt blocks even an
    empty estimate), at most ``limit`` (a take bigger than the bucket waits for a full
    bucket instead of never passing; it then leaves the bucket in debt)."""
    return min(max(amount, 1), limit)


def wait_seconds(tokens: float, limit: int, amount: int) -> float:
    """Seconds until a take of ``amount`` would pass, if nothing else consumes."""
    return max(0.0, (need(amount, limit) - tokens) * 60.0 / limit)


def try_take(state: Bucket | None, limit: int, amount: int, now: float) -> TakeResult:
    """Take ``amount`` if the bucket holds ``need(amount, limit)``; else change nothing."""
    current = level(state, limit, now)
    if current >= need(amount, limit):
        after = current - amount
        return TakeResult(True, Bucket(after, now), after, reset_seconds(after, limit))
    return TakeResult(False, state, current, reset_seconds(current, limit))


def debit(state: Bucket | None, limit: int, amount: int, now: float) -> DebitResult:
    """Charge ``amount`` unconditionally (tokens already produced are always paid for).

    The level may go negative; new requests are then refused until refills repay the
    debt. A negative ``amount`` is a refund (e.g. the estimate was too high), capped at
    a full bucket.
    """
    after = min(float(limit), level(state, limit, now) - amount)
    return DebitResult(Bucket(after, now), after, reset_seconds(after, limit))


# --- OpenAI-style durations ("1s", "6m0s", "20ms", "1h2m3.5s") -------------------------


def format_duration(seconds: float) -> str:
    """Go-style duration as OpenAI sends in ``x-ratelimit-reset-*``.

    Rounded UP to the millisecond, so a client that waits that long is never early.
    """
    ms = math.ceil(seconds * 1000.0 - 1e-6) if seconds > 0 else 0
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = str(rest // 1000) if rest % 1000 == 0 else f"{rest / 1000:.3f}".rstrip("0")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")


def parse_duration(text: str) -> float:
    """Inverse of :func:`format_duration` (for clients and tests)."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(number) * scale[unit] for number, unit in parts)


# --- budget periods (UTC) -------------------------------------------------------------

PERIODS = ("day", "month")


def _period_start(period: str, now: float) -> datetime:
    moment = datetime.fromtimestamp(now, tz=UTC)
    if period == "day":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    raise ValueError(f"period must be one of {PERIODS}, got {period!r}")


def period_key(period: str, now: float) -> str:
    """``day:2026-11-28`` or ``month:2026-11`` for the UTC period containing ``now``."""
    start = _period_start(period, now)
    return f"day:{start:%Y-%m-%d}" if period == "day" else f"month:{start:%Y-%m}"


def period_end(period: str, now: float) -> float:
    """Epoch seconds at which the UTC period containing ``now`` ends."""
    start = _period_start(period, now)
    if period == "day":
        end = start + timedelta(days=1)
    else:
        end = (start + timedelta(days=32)).replace(day=1)
    return end.timestamp()


# --- scopes and what an admission answers ---------------------------------------------
# Plain data, defined here so that the decision below stays pure; wattpool.control.limits
# re-exports them.

KINDS = ("key", "tenant")
# Nothing tells when a concurrency slot frees up; this is the Retry-After we suggest.
CONCURRENCY_RETRY_S = 1.0


@dataclass(frozen=True)
class Limits:
    """Per-minute request and token limits and max in-flight requests; None = unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "max_concurrency"):
            value = getattr(self, name)
            # 0 would mean "blocked"; that is a revoked key, not a rate limit.
            if value is not None and value < 1:
                raise ValueError(f"{name} must be None or >= 1, got {value}")


@dataclass(frozen=True)
class Scope:
    kind: str  # "key" | "tenant"
    id: str
    limits: Limits

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"scope kind must be one of {KINDS}, got {self.kind!r}")
        if not self.id:
            raise ValueError("scope id must not be empty")

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.id}"


@dataclass
class Decision:
    allowed: bool
    reason: str | None  # "requests" | "tokens" | "concurrency" | None when allowed
    retry_after_s: float
    headers: dict[str, str]
    # Pass to release(); None when refused (nothing to release).
    lease: str | None = None
    # Which scope refused first, e.g. "tenant:acme", for the error message.
    scope: str | None = None


# --- admission: the one decision both limiter stores share ---------------------------


@dataclass(frozen=True)
class Observed:
    """What a store saw for one scope at decision time (None where no limit is set)."""

    requests: float | None = None  # bucket level
    tokens: float | None = None  # bucket level
    in_use: int | None = None  # live leases


@dataclass(frozen=True)
class _Check:
    ok: bool
    remaining: float
    reset_s: float
    wait_s: float


def unique_scopes(scopes: Sequence[Scope]) -> list[Scope]:
    """Each (kind, id) once: the same scope twice would be charged twice."""
    seen: dict[tuple[str, str], Scope] = {}
    for scope in scopes:
        prior = seen.setdefault((scope.kind, scope.id), scope)
        if prior.limits != scope.limits:
            raise ValueError(f"{scope.name} given twice with different limits")
    return list(seen.values())


def passes(scope: Scope, seen: Observed, estimate: int) -> bool:
    lim = scope.limits
    return ((lim.rpm is None or seen.requests is None or seen.requests >= need(1, lim.rpm))
            and (lim.tpm is None or seen.tokens is None
                 or seen.tokens >= need(estimate, lim.tpm))
            and (lim.max_concurrency is None or seen.in_use is None
                 or seen.in_use < lim.max_concurrency))


def _bucket_check(level: float, limit: int, amount: int, allowed: bool) -> _Check:
    ok = level >= need(amount, limit)
    after = level - amount if allowed else level  # headers show the state we leave
    return _Check(ok, after, reset_seconds(after, limit),
                  0.0 if ok else wait_seconds(level, limit, amount))


def decide(scopes: Sequence[Scope], seen: Sequence[Observed], estimate: int,
           allowed: bool, lease: str | None) -> Decision:
    """Reason, Retry-After and OpenAI headers from what the store observed.

    ``allowed`` is the store's verdict (authoritative: it is what was consumed).
    """
    checks: dict[str, list[tuple[Scope, _Check]]] = {"requests": [], "tokens": [],
                                                     "concurrency": []}
    for scope, obs in zip(scopes, seen, strict=True):
        lim = scope.limits
        if lim.rpm is not None and obs.requests is not None:
            checks["requests"].append((scope, _bucket_check(obs.requests, lim.rpm, 1, allowed)))
        if lim.tpm is not None and obs.tokens is not None:
            checks["tokens"].append(
                (scope, _bucket_check(obs.tokens, lim.tpm, estimate, allowed)))
        if lim.max_concurrency is not None and obs.in_use is not None:
            ok = obs.in_use < lim.max_concurrency
            in_use = obs.in_use + (1 if allowed else 0)
            checks["concurrency"].append((scope, _Check(
                ok, lim.max_concurrency - in_use, 0.0, 0.0 if ok else CONCURRENCY_RETRY_S)))

    headers: dict[str, str] = {}
    for what, attr in (("requests", "rpm"), ("tokens", "tpm")):
        if checks[what]:
            # Most constrained: a refusing scope first, then the fewest remaining.
            scope, check = min(checks[what],
                               key=lambda sc: (sc[1].ok, sc[1].remaining, -sc[1].reset_s))
            headers[f"x-ratelimit-limit-{what}"] = str(getattr(scope.limits, attr))
            headers[f"x-ratelimit-remaining-{what}"] = str(max(0, math.floor(check.remaining)))
            headers[f"x-ratelimit-reset-{what}"] = format_duration(check.reset_s)

    if allowed:
        return Decision(True, None, 0.0, headers, lease=lease)
    failed = [(what, scope, check) for what, pairs in checks.items()
              for scope, check in pairs if not check.ok]
    if not failed:  # cannot happen while store and policy agree; still refuse sanely
        return Decision(False, "requests", CONCURRENCY_RETRY_S, headers)
    what, scope, _ = failed[0]
    # Every failing check must pass; wait for the slowest (assuming no other traffic).
    retry = max(check.wait_s for _, _, check in failed)
    return Decision(False, what, retry, headers, scope=scope.name)
