"""Tenants, API keys, prices, per-request cost and daily usage roll-ups.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The UTC day of usage_records.created_at, per dialect: SQLite keeps UTC text
# ("YYYY-MM-DD HH:MM:SS..."), PostgreSQL a timestamptz.
_DAY_SQL = {
    "sqlite": "date(created_at)",
    "postgresql": "CAST(created_at AT TIME ZONE 'UTC' AS DATE)",
}


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.Integer(), nullable=True),
        sa.Column("max_concurrency", sa.Integer(), nullable=True),
        sa.Column("budget_micros", sa.BigInteger(), nullable=True),
        sa.Column("budget_period", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
        sa.UniqueConstraint("name", name="uq_tenants_name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("models", sa.JSON(), nullable=True),
        sa.Column("default_class", sa.String(32), nullable=False),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.Integer(), nullable=True),
        sa.Column("max_concurrency", sa.Integer(), nullable=True),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"],
                                name="fk_api_keys_tenant_id_tenants"),
        sa.UniqueConstraint("prefix", name="uq_api_keys_prefix"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    op.create_table(
        "prices",
        sa.Column("model_id", sa.String(255), nullable=False),
        sa.Column("prompt_micros_per_mtok", sa.BigInteger(), nullable=False),
        sa.Column("completion_micros_per_mtok", sa.BigInteger(), nullable=False),
        sa.Column("batch_discount_pct", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model_id", name="pk_prices"),
    )
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("model_id", sa.String(255), nullable=False),
        sa.Column("priority_class", sa.String(32), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "tenant_id", "model_id", "priority_class",
                                name="pk_usage_daily"),
    )
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("tenant_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("key_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("priority_class", sa.String(32), nullable=False,
                                   server_default="interactive"))
        batch.add_column(sa.Column("cost_micros", sa.BigInteger(), nullable=False,
                                   server_default="0"))
        batch.create_index("ix_usage_records_tenant_id", ["tenant_id"])

    # Roll up the requests stored before this revision, so usage_daily always equals
    # the ledger's sums (their cost is 0: nothing was priced then).
    day = _DAY_SQL.get(op.get_bind().dialect.name, "CAST(created_at AS DATE)")
    op.execute(
        "INSERT INTO usage_daily (day, tenant_id, model_id, priority_class, requests,"
        " prompt_tokens, completion_tokens, cost_micros)"
        f" SELECT {day}, COALESCE(tenant_id, ''), model_id, priority_class, COUNT(*),"
        " SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_micros)"
        f" FROM usage_records GROUP BY {day}, COALESCE(tenant_id, ''), model_id,"
        " priority_class"
    )


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_index("ix_usage_records_tenant_id")
        batch.drop_column("cost_micros")
        batch.drop_column("priority_class")
        batch.drop_column("key_id")
        batch.drop_column("tenant_id")
    op.drop_table("usage_daily")
    op.drop_table("prices")
    op.drop_table("api_keys")
    op.drop_table("tenants")
