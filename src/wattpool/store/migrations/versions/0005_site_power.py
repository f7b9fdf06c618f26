"""Sites' power settings, and curtailments kept across restarts.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sites") as batch:
        batch.add_column(sa.Column("power_cap_kw", sa.Float(), nullable=True))
        batch.add_column(sa.Column("price_source", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("curtail_above", sa.Float(), nullable=True))
        batch.add_column(sa.Column("dr_commitments", sa.JSON(), nullable=True))
    op.create_table(
        "curtailments",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("site_id", sa.String(64), nullable=False),
        sa.Column("cause", sa.String(16), nullable=False),
        sa.Column("within_s", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"],
                                name="fk_curtailments_site_id_sites"),
        sa.PrimaryKeyConstraint("id", name="pk_curtailments"),
    )
    op.create_index("ix_curtailments_site_id", "curtailments", ["site_id"])


def downgrade() -> None:
    op.drop_index("ix_curtailments_site_id", table_name="curtailments")
    op.drop_table("curtailments")
    with op.batch_alter_table("sites") as batch:
        for column in ("dr_commitments", "curtail_above", "price_source", "power_cap_kw"):
            batch.drop_column(column)
