"""Operators, site ownership and the double-entry ledger.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "operators",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_operators"),
        sa.UniqueConstraint("name", name="uq_operators_name"),
    )
    with op.batch_alter_table("sites") as batch:
        batch.add_column(sa.Column("operator_id", sa.String(64), nullable=True))
        batch.create_foreign_key("fk_sites_operator_id_operators", "operators",
                                 ["operator_id"], ["id"])
    op.create_table(
        "ledger_transactions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("reference", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_transactions"),
        sa.UniqueConstraint("idempotency_key", name="uq_ledger_transactions_idempotency_key"),
    )
    op.create_index("ix_ledger_transactions_created_at", "ledger_transactions", ["created_at"])
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("txn_id", sa.String(64), nullable=False),
        sa.Column("account", sa.String(128), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("reference", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_entries"),
        sa.ForeignKeyConstraint(["txn_id"], ["ledger_transactions.id"],
                                name="fk_ledger_entries_txn_id_ledger_transactions"),
    )
    op.create_index("ix_ledger_entries_txn_id", "ledger_entries", ["txn_id"])
    op.create_index("ix_ledger_entries_account", "ledger_entries", ["account"])
    op.create_index("ix_ledger_entries_created_at", "ledger_entries", ["created_at"])
    op.create_table(
        "ledger_charges",
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("txn_id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=True),
        sa.Column("node_id", sa.String(64), nullable=True),
        sa.Column("operator_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("matures_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("operator_micros", sa.BigInteger(), nullable=False),
        sa.Column("fee_micros", sa.BigInteger(), nullable=False),
        sa.Column("reserve_micros", sa.BigInteger(), nullable=False),
        sa.Column("withheld_micros", sa.BigInteger(), nullable=False),
        sa.Column("refunded_micros", sa.BigInteger(), nullable=False),
        sa.Column("settled_kind", sa.String(16), nullable=True),
        sa.Column("settled_txn_id", sa.String(64), nullable=True),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("request_id", name="pk_ledger_charges"),
        sa.ForeignKeyConstraint(["txn_id"], ["ledger_transactions.id"],
                                name="fk_ledger_charges_txn_id_ledger_transactions"),
    )
    op.create_index("ix_ledger_charges_node_id", "ledger_charges", ["node_id"])
    op.create_index("ix_ledger_charges_operator_id", "ledger_charges", ["operator_id"])
    op.create_index("ix_ledger_charges_matures_at", "ledger_charges", ["matures_at"])


def downgrade() -> None:
    op.drop_index("ix_ledger_charges_matures_at", table_name="ledger_charges")
    op.drop_index("ix_ledger_charges_operator_id", table_name="ledger_charges")
    op.drop_index("ix_ledger_charges_node_id", table_name="ledger_charges")
    op.drop_table("ledger_charges")
    op.drop_index("ix_ledger_entries_created_at", table_name="ledger_entries")
    op.drop_index("ix_ledger_entries_account", table_name="ledger_entries")
    op.drop_index("ix_ledger_entries_txn_id", table_name="ledger_entries")
    op.drop_table("ledger_entries")
    op.drop_index("ix_ledger_transactions_created_at", table_name="ledger_transactions")
    op.drop_table("ledger_transactions")
    with op.batch_alter_table("sites") as batch:
        batch.drop_constraint("fk_sites_operator_id_operators", type_="foreignkey")
        batch.drop_column("operator_id")
    op.drop_table("operators")
