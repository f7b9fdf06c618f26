"""SQLAlchemy models of wattpool's state.

Only portable column types are used (JSON, not JSONB; timezone-aware DateTime) so the
same schema runs on SQLite and PostgreSQL. The migrations in ``migrations/versions/``
must together create exactly these tables; a test compares the two.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names: Alembic batch mode on SQLite and later migrations on
# PostgreSQL can only drop or alter constraints that have a known name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime that always comes back in UTC.

    SQLite keeps no offset, so values are normalised to UTC on the way in and naive
    values read back are UTC by construction. Naive values passed in are taken as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


class Node(Base):
    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    hardware: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(32))  # "ready" | "unreachable"
    last_seen: Mapped[datetime | None]
    # Set for nodes that joined a site with a token (remote nodes); None for the local node.
    site_id: Mapped[str | None] = mapped_column(ForeignKey("sites.id"), default=None)
    # The node's NATS nkey public key; its secret seed never leaves the node.
    public_key: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Audit reputation (policy/audit.py), kept so a restart does not forgive a cheater.
    reputation: Mapped[float | None] = mapped_column(Float, default=None)
    audits_passed: Mapped[int] = mapped_column(Integer, default=0)
    audits_failed: Mapped[int] = mapped_column(Integer, default=0)


class ServedModel(Base):
    """A model clients can ask for (table ``models``)."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # public model id
    source: Mapped[str] = mapped_column(String(1024))
    engine: Mapped[str] = mapped_column(String(64))
    context_length: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Deployment(Base):
    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(255), ForeignKey("models.id"))
    replicas: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    deployment_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("deployments.id", ondelete="SET NULL")
    )
    # Not a foreign key: nodes report instances of models the store may not know yet.
    model_id: Mapped[str] = mapped_column(String(255))
    node_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("nodes.id", ondelete="SET NULL")
    )
    state: Mapped[str] = mapped_column(String(32))  # scheduled/loading/ready/failed/stopped
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class UsageEntry(Base):
    """One served request (table ``usage_records``).

    No foreign keys on purpose: usage is an append-only ledger that must outlive the
    nodes and instances it mentions, and its writes must never fail on them.
    """

    __tablename__ = "usage_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(32))  # "chat" | "completion"
    model_id: Mapped[str] = mapped_column(String(255))
    node_id: Mapped[str | None] = mapped_column(String(64))
    instance_id: Mapped[str | None] = mapped_column(String(64))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    duration_ms: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(32))  # "ok" | "error" | "cancelled"
    http_status: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # Who asked and what it cost (0003). Plain ids, not foreign keys: the ledger outlives
    # tenants and keys. Server defaults give rows written before 0003 defined values.
    tenant_id: Mapped[str | None] = mapped_column(String(64), index=True, default=None)
    key_id: Mapped[str | None] = mapped_column(String(64), default=None)
    priority_class: Mapped[str] = mapped_column(  # "interactive" | "batch"
        String(32), default="interactive", server_default="interactive"
    )
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class Site(Base):
    """A place with power and GPUs, run by an operator; nodes join a site."""

    __tablename__ = "sites"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    region: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Power (docs/power-and-trust.md). Prices are per MWh in the feed's own currency.
    power_cap_kw: Mapped[float | None] = mapped_column(Float, default=None)
    price_source: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    curtail_above: Mapped[float | None] = mapped_column(Float, default=None)
    # Demand-response programmes: [{"name": "ercot-ers-10", "within_s": 600}, ...]
    dr_commitments: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)


class Curtailment(Base):
    """One curtailment of a site, from a signal or from its price; open while active.

    Kept so that a control plane that restarts, or a new leader, curtails the same sites.
    """

    __tablename__ = "curtailments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), index=True)
    cause: Mapped[str] = mapped_column(String(16))  # "signal" or "price"
    within_s: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)


class JoinToken(Base):
    """A one-time enrollment token; only its sha256 is stored."""

    __tablename__ = "join_tokens"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None] = mapped_column(default=None)
    used_by_node: Mapped[str | None] = mapped_column(String(64), default=None)


# Money is integer micro-dollars everywhere (1 USD = 1_000_000): sums stay exact, and
# BigInteger holds far more than any bill.


class Tenant(Base):
    """A customer: owns API keys; limits and budget apply to all its keys together."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # "ten_..."
    name: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # None means unlimited.
    rpm: Mapped[int | None] = mapped_column(Integer, default=None)
    tpm: Mapped[int | None] = mapped_column(Integer, default=None)
    max_concurrency: Mapped[int | None] = mapped_column(Integer, default=None)
    budget_micros: Mapped[int | None] = mapped_column(BigInteger, default=None)
    budget_period: Mapped[str] = mapped_column(String(16), default="month")  # "day" | "month"


class ApiKey(Base):
    """A tenant's API key; only the sha256 of the full key is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # "key_..."
    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(255), default="")
    prefix: Mapped[str] = mapped_column(String(32), unique=True)  # visible part, "wpk_<hex>"
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Allowed model ids; NULL (not JSON null) means every model.
    models: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True), default=None)
    default_class: Mapped[str] = mapped_column(String(32), default="interactive")
    rpm: Mapped[int | None] = mapped_column(Integer, default=None)
    tpm: Mapped[int | None] = mapped_column(Integer, default=None)
    max_concurrency: Mapped[int | None] = mapped_column(Integer, default=None)
    is_admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)


class Price(Base):
    """What a model costs, in micro-dollars per million tokens."""

    __tablename__ = "prices"

    model_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    prompt_micros_per_mtok: Mapped[int] = mapped_column(BigInteger)
    completion_micros_per_mtok: Mapped[int] = mapped_column(BigInteger)
    batch_discount_pct: Mapped[int] = mapped_column(Integer, default=0)  # 0..100
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class UsageDaily(Base):
    """Per-day roll-up of usage_records, kept in step by insert_usage (same transaction).

    Budgets and usage reports read this instead of scanning the ledger.
    """

    __tablename__ = "usage_daily"

    day: Mapped[date] = mapped_column(Date, primary_key=True)  # UTC day of created_at
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # "" for none
    model_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    priority_class: Mapped[str] = mapped_column(String(32), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)


# --- operators and the ledger (0004) -------------------------------------------------


class Operator(Base):
    """Who runs sites and is paid for the tokens their nodes serve."""

    __tablename__ = "operators"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # "op_..."
    name: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# Added here rather than inside ``Site`` (that class belongs to the fleet code): a column
# assigned to a mapped class after its creation joins its table and mapper alike.
Site.operator_id = mapped_column(  # type: ignore[attr-defined]
    String(64), ForeignKey("operators.id"), nullable=True, default=None
)


class LedgerTransaction(Base):
    """The header of one balanced ledger transaction (its lines are ``LedgerEntry``)."""

    __tablename__ = "ledger_transactions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # "txn_..."
    kind: Mapped[str] = mapped_column(String(32))  # charge | refund | mature | clawback | ...
    # One transaction per key ("charge:<request_id>", "refund:<refund id>", ...): a retried
    # post is skipped by the database instead of doubling money.
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    reference: Mapped[str | None] = mapped_column(String(128), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class LedgerEntry(Base):
    """One line of a transaction: a signed amount on one account.

    Debits are positive, credits negative, so every transaction and the whole ledger sum
    to exactly 0. Append-only: corrections are new transactions, never updates.
    """

    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    txn_id: Mapped[str] = mapped_column(ForeignKey("ledger_transactions.id"), index=True)
    account: Mapped[str] = mapped_column(String(128), index=True)
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    # Copied from the header so statements filter lines without a join.
    kind: Mapped[str] = mapped_column(String(32))
    reference: Mapped[str | None] = mapped_column(String(128), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class LedgerCharge(Base):
    """The open item of one charged request: its split, refunds so far and settlement.

    The ledger lines say where money is; this row says what may still happen to the
    operator's part (mature after the window, or be clawed back), and its conditional
    updates are what makes a charge settle once and never refund more than it cost.
    Plain ids, no foreign keys: like usage, the ledger outlives nodes and tenants.
    """

    __tablename__ = "ledger_charges"

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    txn_id: Mapped[str] = mapped_column(ForeignKey("ledger_transactions.id"))
    tenant_id: Mapped[str | None] = mapped_column(String(64), default=None)
    node_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    operator_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    matures_at: Mapped[datetime] = mapped_column(index=True)
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    operator_micros: Mapped[int] = mapped_column(BigInteger)
    fee_micros: Mapped[int] = mapped_column(BigInteger)
    reserve_micros: Mapped[int] = mapped_column(BigInteger)
    withheld_micros: Mapped[int] = mapped_column(BigInteger)  # missed latency target
    refunded_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    # None while pending; "matured" or "clawed_back" once, by a conditional UPDATE.
    settled_kind: Mapped[str | None] = mapped_column(String(16), default=None)
    settled_txn_id: Mapped[str | None] = mapped_column(String(64), default=None)
    settled_at: Mapped[datetime | None] = mapped_column(default=None)
