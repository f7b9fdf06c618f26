"""Sites, one-time join tokens, and node site/public key.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sites",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sites"),
        sa.UniqueConstraint("name", name="uq_sites_name"),
    )
    op.create_table(
        "join_tokens",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("site_id", sa.String(64), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("used_by_node", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_join_tokens"),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"],
                                name="fk_join_tokens_site_id_sites"),
        sa.UniqueConstraint("token_hash", name="uq_join_tokens_token_hash"),
    )
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("site_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("public_key", sa.String(64), nullable=True))
        batch.create_foreign_key("fk_nodes_site_id_sites", "sites", ["site_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_constraint("fk_nodes_site_id_sites", type_="foreignkey")
        batch.drop_column("public_key")
        batch.drop_column("site_id")
    op.drop_table("join_tokens")
    op.drop_table("sites")
