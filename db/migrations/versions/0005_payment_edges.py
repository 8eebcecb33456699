"""payment edges: the received sum, an operator flag, the last provider check

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import db.types

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("payments") as batch:
        batch.add_column(
            sa.Column("received_amount", db.types.Money(precision=28, scale=12), nullable=True)
        )
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("attention", sa.String(length=32), nullable=True))
        batch.add_column(
            sa.Column("checked_at", db.types.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("checked_at")
        batch.drop_column("attention")
    with op.batch_alter_table("payments") as batch:
        batch.drop_column("received_amount")
