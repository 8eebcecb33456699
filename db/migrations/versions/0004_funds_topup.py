"""funds top-up: what a waiting order needs, and the top-up last told to the admins

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import db.types

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("funds_needed_usd", db.types.Money(precision=12, scale=6), nullable=True)
        )
        batch_op.add_column(
            sa.Column("funds_topup_usd", db.types.Money(precision=12, scale=2), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("funds_topup_usd")
        batch_op.drop_column("funds_needed_usd")
