"""The split of a charge, latency weighting, proportional refunds: exact integers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wattpool.economics.payouts import (
    PayoutPolicy,
    Split,
    apportion,
    matures_at,
    meets_latency_target,
    operator_remaining,
    percent_to_bps,
    refund_reversal,
    split_charge,
)

POLICY = PayoutPolicy()  # 20 % fee, 5 % reserve, late weight 50 %, target 2000 ms


@pytest.mark.parametrize(
    ("charge", "ttft", "cls", "want"),
    [
        (1_000_000, 100.0, "interactive", Split(750_000, 200_000, 50_000, 0)),
        (1_000_000, 2_000.0, "interactive", Split(750_000, 200_000, 50_000, 0)),
        (1_000_000, 2_000.1, "interactive", Split(375_000, 200_000, 50_000, 375_000)),
        (1_000_000, None, "interactive", Split(375_000, 200_000, 50_000, 375_000)),
        (1_000_000, 9_999.0, "batch", Split(750_000, 200_000, 50_000, 0)),
        (0, 1.0, "interactive", Split(0, 0, 0, 0)),
        (1, 1.0, "interactive", Split(1, 0, 0, 0)),  # 0.2 and 0.05 round to 0
        (3, 1.0, "interactive", Split(2, 1, 0, 0)),  # fee 0.6 -> 1 (half-up)
        (10, 1.0, "interactive", Split(7, 2, 1, 0)),  # reserve 0.5 -> 1 (half-up)
        (9, 5_000.0, "interactive", Split(3, 2, 0, 4)),  # share 7, late: 3 paid, 4 kept
        (1_000_003, 1.0, "interactive", Split(750_002, 200_001, 50_000, 0)),
    ],
    ids=["on-time", "exactly-on-target", "just-late", "no-first-token-counts-as-late",
         "batch-has-no-target", "free", "one-micro-goes-to-operator", "fee-rounds-half-up",
         "reserve-rounds-half-up", "late-share-rounds-down-for-operator", "odd-amount"],
)
def test_split_examples(charge: int, ttft: float | None, cls: str, want: Split) -> None:
    got = split_charge(charge, ttft_ms=ttft, priority_class=cls, policy=POLICY)
    assert got == want and got.total == charge


@given(charge=st.integers(0, 10**12), ttft=st.one_of(st.none(), st.floats(0, 1e5)),
       cls=st.sampled_from(["interactive", "batch"]), fee=st.integers(0, 10_000),
       reserve=st.integers(0, 10_000), late=st.integers(0, 10_000))
def test_split_always_adds_up_and_never_goes_negative(
    charge: int, ttft: float | None, cls: str, fee: int, reserve: int, late: int
) -> None:
    if fee + reserve > 10_000:
        reserve = 10_000 - fee
    policy = PayoutPolicy(fee, reserve, late)
    s = split_charge(charge, ttft_ms=ttft, priority_class=cls, policy=policy)
    assert s.total == charge and min(s.parts()) >= 0
    assert abs(s.fee - charge * fee / 10_000) <= 0.5 + 1e-9


def test_latency_target_and_policy_validation() -> None:
    assert meets_latency_target(10.0, "interactive", POLICY)
    assert not meets_latency_target(None, "interactive", POLICY)
    assert meets_latency_target(None, "batch", POLICY)
    with pytest.raises(ValueError, match="cannot exceed 100 %"):
        PayoutPolicy(pool_fee_bps=9_000, reserve_bps=1_001)
    with pytest.raises(ValueError, match="late_weight_bps must be an integer"):
        PayoutPolicy(late_weight_bps=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        PayoutPolicy(challenge_window=timedelta(hours=-1))
    with pytest.raises(ValueError, match="charge must be an integer"):
        split_charge(1.5, ttft_ms=1.0, priority_class="batch",  # type: ignore[arg-type]
                     policy=POLICY)
    p = PayoutPolicy.from_percent(pool_fee="12.5", reserve=Decimal("2.25"), late_weight=0)
    assert (p.pool_fee_bps, p.reserve_bps, p.late_weight_bps) == (1_250, 225, 0)
    assert p.operator_fraction == pytest.approx(0.8525)
    for bad in ("101", "0.001", "x", 12.5):
        with pytest.raises(ValueError):
            percent_to_bps(bad)  # type: ignore[arg-type]


def test_maturity_is_the_window_after_the_charge() -> None:
    at = datetime(2026, 11, 1, 23, 30, tzinfo=UTC)
    assert matures_at(at, POLICY) == datetime(2026, 11, 2, 23, 30, tzinfo=UTC)


def test_apportion_examples() -> None:
    assert apportion([750, 200, 50, 0], 100) == [75, 20, 5, 0]
    assert apportion([1, 1, 1, 1], 3) == [1, 1, 1, 0]  # ties go to the earlier part
    assert apportion([2, 1], 1) == [1, 0]
    assert apportion([0, 0], 0) == [0, 0]
    with pytest.raises(ValueError):
        apportion([1, 2], 4)


parts_st = st.lists(st.integers(0, 10**7), min_size=1, max_size=4)


@given(parts=parts_st, data=st.data())
def test_apportion_is_exact_bounded_and_monotone(parts: list[int], data: st.DataObject) -> None:
    total = sum(parts)
    a = data.draw(st.integers(0, total))
    b = data.draw(st.integers(a, total))
    lo, hi = apportion(parts, a), apportion(parts, b)
    assert sum(lo) == a and sum(hi) == b
    assert all(0 <= x <= y <= p for x, y, p in zip(lo, hi, parts, strict=True))
    assert apportion(parts, total) == parts


@given(charge=st.integers(1, 10**9), ttft=st.floats(0, 5_000), data=st.data())
def test_refunds_in_pieces_reverse_the_charge_exactly(
    charge: int, ttft: float, data: st.DataObject
) -> None:
    split = split_charge(charge, ttft_ms=ttft, priority_class="interactive", policy=POLICY)
    refunded, reversed_parts = 0, [0, 0, 0, 0]
    for last in [False] * data.draw(st.integers(0, 5)) + [True]:  # a few pieces, then all
        if refunded == charge:
            break
        piece = charge - refunded if last else data.draw(st.integers(1, charge - refunded))
        r = refund_reversal(split, refunded, piece)
        assert r.total == piece and min(r.parts()) >= 0
        refunded += piece
        reversed_parts = [x + y for x, y in zip(reversed_parts, r.parts(), strict=True)]
        assert operator_remaining(split, refunded) == split.operator - reversed_parts[0]
    assert reversed_parts == list(split.parts())


def test_refund_refusals() -> None:
    split = Split(75, 20, 5, 0)
    with pytest.raises(ValueError, match="exceeds what is left"):
        refund_reversal(split, 60, 41)
    with pytest.raises(ValueError, match="integer > 0"):
        refund_reversal(split, 0, 0)
