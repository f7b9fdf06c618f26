"""wattpool.policy.ratelimit: bucket math, durations, periods and the admission decision.

Every test passes time explicitly; nothing here sleeps or reads a clock.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wattpool.policy.ratelimit import (
    CONCURRENCY_RETRY_S,
    Bucket,
    Limits,
    Observed,
    Scope,
    debit,
    decide,
    format_duration,
    level,
    need,
    parse_duration,
    period_end,
    period_key,
    reset_seconds,
    try_take,
    unique_scopes,
    wait_seconds,
)

T0 = 1_000_000.0


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# --- buckets ----------------------------------------------------------------------------


def test_a_new_bucket_starts_full() -> None:
    assert level(None, 10, T0) == 10
    allowed, state, remaining, reset = try_take(None, 10, 1, T0)
    assert allowed and remaining == 9 and state == Bucket(9, T0)
    assert reset == pytest.approx(6.0)  # one request refills in 60/10 s


def test_refill_is_limit_per_minute_and_capped() -> None:
    state: Bucket | None = None
    for _ in range(10):
        taken = try_take(state, 10, 1, T0)
        assert taken.allowed
        state = taken.state
    assert state == Bucket(0, T0)
    assert level(state, 10, T0 + 3) == pytest.approx(0.5)
    assert level(state, 10, T0 + 6) == pytest.approx(1.0)
    assert level(state, 10, T0 + 60) == pytest.approx(10.0)
    assert level(state, 10, T0 + 6000) == 10  # never above capacity


def test_reset_is_seconds_until_full() -> None:
    assert reset_seconds(10, 10) == 0
    assert reset_seconds(0, 10) == pytest.approx(60)
    assert reset_seconds(9, 10) == pytest.approx(6)
    assert reset_seconds(-10, 10) == pytest.approx(120)  # debt takes longer
    assert try_take(Bucket(0, T0), 10, 1, T0).reset_seconds == pytest.approx(60)


def test_refused_take_changes_nothing_and_says_how_long_to_wait() -> None:
    state = Bucket(0.25, T0)
    taken = try_take(state, 10, 1, T0)
    assert not taken.allowed and taken.state is state and taken.remaining == 0.25
    assert wait_seconds(0.25, 10, 1) == pytest.approx(4.5)
    assert not try_take(state, 10, 1, T0 + 4.49).allowed
    assert try_take(state, 10, 1, T0 + 4.5).allowed


def test_negative_debit_blocks_then_recovers() -> None:
    tpm = 600  # 10 tokens per second
    charged = debit(None, tpm, 1200, T0)  # streamed tokens are always charged
    assert charged.remaining == -600 and charged.reset_seconds == pytest.approx(120)
    assert not try_take(charged.state, tpm, 0, T0).allowed  # even an empty estimate
    assert wait_seconds(-600, tpm, 1) == pytest.approx(60.1)
    assert not try_take(charged.state, tpm, 1, T0 + 60).allowed  # level 0 still blocks
    assert try_take(charged.state, tpm, 1, T0 + 60.1 + 1e-6).allowed
    assert level(charged.state, tpm, T0 + 120) == pytest.approx(600)


def test_negative_amount_is_a_refund_capped_at_full() -> None:
    charged = debit(Bucket(40, T0), 100, -30, T0)
    assert charged.remaining == 70
    assert debit(Bucket(40, T0), 100, -300, T0).remaining == 100


def test_a_take_bigger_than_the_bucket_waits_for_full_then_leaves_debt() -> None:
    assert need(250, 100) == 100 and need(0, 100) == 1 and need(7, 100) == 7
    assert not try_take(Bucket(99, T0), 100, 250, T0).allowed
    taken = try_take(None, 100, 250, T0)
    assert taken.allowed and taken.remaining == -150


def test_a_clock_that_steps_back_does_not_drain() -> None:
    assert level(Bucket(5, T0), 10, T0 - 30) == 5


def test_limits_below_one_are_rejected() -> None:
    with pytest.raises(ValueError):
        level(None, 0, T0)
    with pytest.raises(ValueError):
        Limits(rpm=0)
    with pytest.raises(ValueError):
        Scope("user", "x", Limits())


# --- the invariant, for any sequence -------------------------------------------------
#
# Claim: with takes of 1..limit units and non-negative debits, for any ops i..j where op
# j is a successful take, everything consumed by ops i..j (successful takes and debits)
# is at most limit + limit/60 * (t_j - t_i).
# Proof: the level before op i is at most `limit`; refills in [t_i, t_j] add at most
# limit/60 * (t_j - t_i); a take needs level >= amount, so the level right after op j is
# >= 0. Hence consumed <= start + refill. In particular, successful takes in any window
# of w seconds never exceed limit + limit * w / 60 (with w = 60: twice the limit).

ops_strategy = st.lists(
    st.tuples(st.floats(0, 30, allow_nan=False), st.booleans(), st.integers(0, 200)),
    min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(limit=st.integers(1, 120), ops=ops_strategy)
def test_consumption_in_any_window_is_bounded(
        limit: int, ops: list[tuple[float, bool, int]]) -> None:
    state: Bucket | None = None
    now = T0
    log: list[tuple[float, bool, int]] = []  # (time, is successful take, consumed)
    for dt, is_take, raw in ops:
        now += dt
        if is_take:
            amount = 1 + raw % limit
            taken = try_take(state, limit, amount, now)
            if taken.allowed:
                log.append((now, True, amount))
            else:
                assert taken.state == state  # refusal consumes nothing
            state = taken.state
        else:
            state = debit(state, limit, raw, now).state
            log.append((now, False, raw))
        assert level(state, limit, now) <= limit
    for i in range(len(log)):
        consumed = 0
        for j in range(i, len(log)):
            consumed += log[j][2]
            if log[j][1]:
                bound = limit + limit / 60 * (log[j][0] - log[i][0])
                assert consumed <= bound + 1e-6 * (1 + bound)


# --- durations ----------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "text"), [
    (1, "1s"), (360, "6m0s"), (0.02, "20ms"), (8.64, "8.64s"), (0, "0s"), (-3, "0s"),
    (0.0004, "1ms"), (61.5, "1m1.5s"), (3723.5, "1h2m3.5s"), (7200, "2h0m0s"),
    (59.9999, "1m0s"), (6.0000000001, "6s"),
])
def test_format_duration_like_openai(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.floats(0, 100_000, allow_nan=False))
def test_format_rounds_up_to_the_millisecond(seconds: float) -> None:
    parsed = parse_duration(format_duration(seconds))
    assert seconds - 1e-6 <= parsed <= seconds + 0.001 + 1e-6


@pytest.mark.parametrize("text", ["", "6", "1x", "s1", "1s 2ms"])
def test_parse_duration_rejects_junk(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# --- budget periods ---------------------------------------------------------------


def test_period_keys_are_utc() -> None:
    now = ts("2026-11-28T23:59:59")
    assert period_key("day", now) == "day:2026-11-28"
    assert period_key("month", now) == "month:2026-11"
    assert period_key("day", now + 1) == "day:2026-11-29"
    assert period_end("day", now) == ts("2026-11-29T00:00:00")
    assert period_end("month", now) == ts("2026-12-01T00:00:00")
    assert period_end("month", ts("2026-12-31T12:00:00")) == ts("2027-01-01T00:00:00")
    with pytest.raises(ValueError):
        period_key("week", now)


# --- the decision -----------------------------------------------------------------


def key_and_tenant(key: Limits, tenant: Limits) -> list[Scope]:
    return [Scope("key", "k1", key), Scope("tenant", "t1", tenant)]


def test_headers_only_for_limits_that_are_set() -> None:
    scopes = key_and_tenant(Limits(rpm=10), Limits(max_concurrency=2))
    decision = decide(scopes, [Observed(requests=10), Observed(in_use=0)], 5, True, "L")
    assert decision.allowed and decision.lease == "L" and decision.retry_after_s == 0
    assert decision.headers == {"x-ratelimit-limit-requests": "10",
                                "x-ratelimit-remaining-requests": "9",
                                "x-ratelimit-reset-requests": "6s"}


def test_headers_come_from_the_most_constrained_scope() -> None:
    scopes = key_and_tenant(Limits(rpm=100, tpm=1000), Limits(rpm=1000, tpm=50_000))
    seen = [Observed(requests=100, tokens=900), Observed(requests=50.5, tokens=40_000)]
    headers = decide(scopes, seen, 100, True, "L").headers
    assert headers["x-ratelimit-limit-requests"] == "1000"  # tenant: 49 left
    assert headers["x-ratelimit-remaining-requests"] == "49"
    assert headers["x-ratelimit-limit-tokens"] == "1000"  # key: 800 left
    assert headers["x-ratelimit-remaining-tokens"] == "800"
    assert headers["x-ratelimit-reset-tokens"] == "12s"


def test_refusal_names_reason_scope_and_slowest_wait() -> None:
    scopes = key_and_tenant(Limits(rpm=10, tpm=600), Limits(max_concurrency=1))
    seen = [Observed(requests=0.5, tokens=100), Observed(in_use=1)]
    decision = decide(scopes, seen, 200, False, None)
    assert not decision.allowed and decision.lease is None
    assert (decision.reason, decision.scope) == ("requests", "key:k1")
    assert decision.retry_after_s == pytest.approx(10.0)  # tokens: 100 more at 10/s
    assert decision.headers["x-ratelimit-remaining-tokens"] == "100"  # nothing consumed
    only_concurrency = decide(scopes[1:], seen[1:], 1, False, None)
    assert only_concurrency.reason == "concurrency"
    assert only_concurrency.retry_after_s == CONCURRENCY_RETRY_S


def test_same_scope_twice_counts_once() -> None:
    one = Scope("key", "k", Limits(rpm=1))
    assert unique_scopes([one, one, Scope("tenant", "k", Limits())]) == [
        one, Scope("tenant", "k", Limits())]
    with pytest.raises(ValueError):
        unique_scopes([one, Scope("key", "k", Limits(rpm=2))])
