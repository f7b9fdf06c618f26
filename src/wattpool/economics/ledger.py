"""The double-entry ledger's accounts and transactions, as plain values (no I/O).

Sign convention: one signed column, **debits positive, credits negative**. A transaction
is accepted only if its entries sum to exactly 0, so the whole ledger always sums to 0.

Accounts (``<owner>:<id>:<what>`` or ``pool:<what>``):

- ``tenant:<tenant id>:receivable`` - what the tenant owes (debited by charges,
  credited by refunds); ``tenant:anonymous:receivable`` for requests without a tenant.
- ``operator:<operator id>:pending`` - operator credit inside its challenge window.
- ``operator:<operator id>:payable`` - operator credit past the window (owed to them).
- ``pool:fees`` - the pool's fee; ``pool:reserve`` - the reserve.
- ``pool:latency_withheld`` - operator share withheld for missing the latency target.
- ``pool:clawbacks`` - pending credit taken back after a failed audit.
- ``pool:unassigned`` - the operator share of nodes that belong to no operator (the
  pool's own, e.g. the local node of ``wattpool up``).

The store writes these transactions (``wattpool.store.ledger``); this module builds them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from wattpool.economics.payouts import Split

POOL_FEES = "pool:fees"
POOL_RESERVE = "pool:reserve"
POOL_LATENCY_WITHHELD = "pool:latency_withheld"
POOL_CLAWBACKS = "pool:clawbacks"
POOL_UNASSIGNED = "pool:unassigned"
POOL_ACCOUNTS = (POOL_FEES, POOL_RESERVE, POOL_LATENCY_WITHHELD, POOL_CLAWBACKS,
                 POOL_UNASSIGNED)
ANONYMOUS_TENANT = "anonymous"
MAX_ACCOUNT_LEN = 128

TxnKind = Literal["charge", "refund", "mature", "clawback", "adjustment"]
Settlement = Literal["matured", "clawed_back"]


class LedgerError(Exception):
    """A ledger or operator request that cannot be honoured; the message says why."""


def tenant_receivable(tenant_id: str | None) -> str:
    return f"tenant:{tenant_id or ANONYMOUS_TENANT}:receivable"


def operator_pending(operator_id: str) -> str:
    return f"operator:{operator_id}:pending"


def operator_payable(operator_id: str) -> str:
    return f"operator:{operator_id}:payable"


def operator_share_account(operator_id: str | None, settled: Settlement | None) -> str:
    """Where the operator part of a charge sits now, so a refund takes it from there."""
    if operator_id is None:
        return POOL_UNASSIGNED
    if settled is None:
        return operator_pending(operator_id)
    return operator_payable(operator_id) if settled == "matured" else POOL_CLAWBACKS


@dataclass(frozen=True, slots=True)
class Entry:
    account: str
    amount_micros: int  # debit > 0, credit < 0


@dataclass(frozen=True, slots=True)
class Txn:
    """A transaction to post; ``key`` makes posting it twice a no-op."""

    kind: TxnKind
    key: str  # idempotency key, e.g. "charge:<request_id>"
    at: datetime
    entries: tuple[Entry, ...]
    reference: str | None = None  # e.g. the request id


def compact(entries: Iterable[Entry]) -> tuple[Entry, ...]:
    """Merge entries on the same account and drop zeros (order of first appearance)."""
    sums: dict[str, int] = {}
    for e in entries:
        sums[e.account] = sums.get(e.account, 0) + e.amount_micros
    return tuple(Entry(a, v) for a, v in sums.items() if v != 0)


def check_balanced(entries: Iterable[Entry]) -> None:
    """Refuse a transaction that does not sum to exactly 0 or has a malformed entry."""
    total = 0
    for e in entries:
        if type(e.amount_micros) is not int:  # floats and bools are mistakes here
            raise LedgerError(f"amount on {e.account!r} must be integer micro-dollars, "
                              f"not {e.amount_micros!r}")
        if not e.account or len(e.account) > MAX_ACCOUNT_LEN:
            raise LedgerError(f"account name must be 1-{MAX_ACCOUNT_LEN} characters: "
                              f"{e.account!r}")
        total += e.amount_micros
    if total != 0:
        raise LedgerError(f"transaction does not balance: entries sum to {total} micro-dollars")


def charge_entries(split: Split, tenant_id: str | None,
                   operator_id: str | None) -> tuple[Entry, ...]:
    """Tenant owes the whole charge; the operator, fee, reserve and withholding get parts."""
    return compact([
        Entry(tenant_receivable(tenant_id), split.total),
        Entry(operator_share_account(operator_id, None), -split.operator),
        Entry(POOL_FEES, -split.fee),
        Entry(POOL_RESERVE, -split.reserve),
        Entry(POOL_LATENCY_WITHHELD, -split.withheld),
    ])


def refund_entries(reversal: Split, tenant_id: str | None, operator_id: str | None,
                   settled: Settlement | None) -> tuple[Entry, ...]:
    """The mirror of a charge for the refunded amount; the operator part is taken from
    wherever it sits now (pending, payable, clawbacks or unassigned)."""
    return compact([
        Entry(tenant_receivable(tenant_id), -reversal.total),
        Entry(operator_share_account(operator_id, settled), reversal.operator),
        Entry(POOL_FEES, reversal.fee),
        Entry(POOL_RESERVE, reversal.reserve),
        Entry(POOL_LATENCY_WITHHELD, reversal.withheld),
    ])


def settle_entries(amounts: Mapping[str, int], settlement: Settlement) -> tuple[Entry, ...]:
    """Move operator credit (operator id -> micros) out of pending: to payable when it
    matures, to the pool when it is clawed back."""
    entries: list[Entry] = []
    for operator_id, micros in sorted(amounts.items()):
        if micros < 0:
            raise LedgerError(f"cannot settle a negative amount for operator {operator_id}")
        to = operator_payable(operator_id) if settlement == "matured" else POOL_CLAWBACKS
        entries += [Entry(operator_pending(operator_id), micros), Entry(to, -micros)]
    return compact(entries)
