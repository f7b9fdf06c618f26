"""Nodes keep their audit reputation across control-plane restarts.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("reputation", sa.Float(), nullable=True))
        batch.add_column(sa.Column("audits_passed", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("audits_failed", sa.Integer(), nullable=False,
                                   server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        for column in ("audits_failed", "audits_passed", "reputation"):
            batch.drop_column(column)
