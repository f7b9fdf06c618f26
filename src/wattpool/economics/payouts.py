"""How one tenant charge is split between the operator and the pool (pure, integers only).

A node earns the tenant charge of each request it served (``usage_records.cost_micros``,
which already weighs tokens by the model's price), minus the pool fee and the reserve.
An interactive request whose first token came later than the latency target earns only
``late_weight`` of that share; the rest is withheld by the pool. The operator's credit
is pending for the challenge window and payable after it, unless the node fails an
audit inside the window (then it is clawed back).

Every function here is exact: a split adds up to the charge to the micro-dollar, and
the parts of any sequence of partial refunds add up to exactly the parts of the charge
once it is fully refunded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

BPS = 10_000  # basis points in a whole: percentages stay integers


def _half_up(n: int, d: int) -> int:
    # Exact rounding for n >= 0, d > 0; round() would round half to even.
    return (2 * n + d) // (2 * d)


def percent_to_bps(value: str | Decimal | int, what: str = "percentage") -> int:
    """"20" or "12.5" (percent) as basis points (2000, 1250); refuses finer precision."""
    if isinstance(value, float | bool):
        raise ValueError(f"{what} must be a string, Decimal or int, not {value!r}")
    try:
        bps = Decimal(value) * 100
    except (InvalidOperation, TypeError, ValueError):
        raise ValueError(f"{what} is not a number: {value!r}") from None
    if not bps.is_finite() or bps != bps.to_integral_value() or not 0 <= bps <= BPS:
        raise ValueError(f"{what} must be 0-100 in steps of 0.01, not {value!r}")
    return int(bps)


@dataclass(frozen=True, slots=True)
class PayoutPolicy:
    """The knobs of the split and of settlement."""

    pool_fee_bps: int = 2_000  # share of each charge the pool keeps (20 %)
    reserve_bps: int = 500  # share set aside against refunds and disputes (5 %)
    late_weight_bps: int = 5_000  # share of the operator part paid when TTFT misses target
    ttft_target_ms: float = 2_000.0  # time to first token, interactive requests only
    challenge_window: timedelta = timedelta(hours=24)  # pending -> payable after this

    def __post_init__(self) -> None:
        for name in ("pool_fee_bps", "reserve_bps", "late_weight_bps"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= BPS:
                raise ValueError(f"{name} must be an integer from 0 to {BPS}, not {value!r}")
        if self.pool_fee_bps + self.reserve_bps > BPS:
            raise ValueError("pool fee and reserve together cannot exceed 100 %")
        if not self.ttft_target_ms > 0:
            raise ValueError(f"ttft_target_ms must be > 0, not {self.ttft_target_ms!r}")
        if self.challenge_window < timedelta(0):
            raise ValueError("the challenge window cannot be negative")

    @classmethod
    def from_percent(
        cls, *, pool_fee: str | Decimal | int = 20, reserve: str | Decimal | int = 5,
        late_weight: str | Decimal | int = 50, ttft_target_ms: float = 2_000.0,
        challenge_window: timedelta = timedelta(hours=24),
    ) -> PayoutPolicy:
        return cls(percent_to_bps(pool_fee, "pool fee"), percent_to_bps(reserve, "reserve"),
                   percent_to_bps(late_weight, "late weight"), ttft_target_ms,
                   challenge_window)

    @property
    def operator_fraction(self) -> float:
        """Share of a charge an operator receives when on time (for estimates only)."""
        return (BPS - self.pool_fee_bps - self.reserve_bps) / BPS


@dataclass(frozen=True, slots=True)
class Split:
    """Where one charge (or one refund of it) goes, in micro-dollars; parts sum to total."""

    operator: int  # the serving node's operator (pending until the window ends)
    fee: int  # pool fee
    reserve: int  # pool reserve
    withheld: int  # operator share the pool keeps because the latency target was missed

    @property
    def total(self) -> int:
        return self.operator + self.fee + self.reserve + self.withheld

    def parts(self) -> tuple[int, int, int, int]:
        return (self.operator, self.fee, self.reserve, self.withheld)


def meets_latency_target(ttft_ms: float | None, priority_class: str,
                         policy: PayoutPolicy) -> bool:
    """Batch work may wait by design, so only interactive requests are held to the target.

    No TTFT means no token reached the client; that never counts as on time.
    """
    if priority_class == "batch":
        return True
    return ttft_ms is not None and ttft_ms <= policy.ttft_target_ms


def split_charge(charge_micros: int, *, ttft_ms: float | None, priority_class: str,
                 policy: PayoutPolicy) -> Split:
    """Split one tenant charge. Fee and reserve round half-up; the operator's latency
    weight rounds down (the pool never pays a fraction of a micro-dollar it lacks)."""
    if type(charge_micros) is not int or charge_micros < 0:
        raise ValueError(f"a charge must be an integer >= 0 micro-dollars, not {charge_micros!r}")
    fee = _half_up(charge_micros * policy.pool_fee_bps, BPS)
    # Two half-up roundings can overshoot by one micro when fee + reserve is 100 %.
    reserve = min(_half_up(charge_micros * policy.reserve_bps, BPS), charge_micros - fee)
    share = charge_micros - fee - reserve
    weight = BPS if meets_latency_target(ttft_ms, priority_class, policy) \
        else policy.late_weight_bps
    operator = share * weight // BPS
    return Split(operator, fee, reserve, share - operator)


def apportion(parts: Sequence[int], amount: int) -> list[int]:
    """Divide ``amount`` (0..sum(parts)) in proportion to ``parts``, exactly.

    D'Hondt (Jefferson) apportionment: each part gets floor(part * amount / total), and
    the few micros left go one by one to the part with the lowest next threshold
    (ties to the earlier part). Divisor methods are house-monotone, so for a growing
    ``amount`` no part ever shrinks, no part exceeds its size, and at ``amount == total``
    every part is whole. Cumulative refunds therefore never reverse a negative amount
    and a full refund reverses the charge exactly.
    """
    total = sum(parts)
    if any(p < 0 for p in parts) or not 0 <= amount <= total:
        raise ValueError(f"cannot apportion {amount} over parts {list(parts)}")
    if total == 0:
        return [0] * len(parts)
    alloc = [p * amount // total for p in parts]
    for _ in range(amount - sum(alloc)):  # fewer than len(parts) rounds
        best = -1
        for i, p in enumerate(parts):
            if p == 0 or alloc[i] >= p:
                continue
            # Next threshold of part i is (alloc+1)/p; compare without division.
            if best < 0 or (alloc[i] + 1) * parts[best] < (alloc[best] + 1) * p:
                best = i
        alloc[best] += 1
    return alloc


def refund_reversal(charge: Split, refunded_before: int, refund_micros: int) -> Split:
    """The parts a refund takes back, given what was refunded of this charge before."""
    if type(refund_micros) is not int or refund_micros <= 0:
        raise ValueError(f"a refund must be an integer > 0 micro-dollars, not {refund_micros!r}")
    if refunded_before < 0 or refunded_before + refund_micros > charge.total:
        raise ValueError(f"refund of {refund_micros} exceeds what is left of the charge "
                         f"({charge.total - refunded_before} of {charge.total})")
    after = apportion(charge.parts(), refunded_before + refund_micros)
    before = apportion(charge.parts(), refunded_before)
    return Split(*(a - b for a, b in zip(after, before, strict=True)))


def operator_remaining(charge: Split, refunded: int) -> int:
    """Operator credit of a charge that refunds have not taken back."""
    return charge.operator - apportion(charge.parts(), refunded)[0]


def matures_at(created_at: datetime, policy: PayoutPolicy) -> datetime:
    """When a charge's operator credit becomes payable if no audit fails before."""
    return created_at + policy.challenge_window
