"""funds ledger: when the balance was last read, apart from the key listing (issue 14 §4)

The balance (one call) is re-read every few seconds; the key listing (O(buyers) calls)
rarely, so each needs its own time.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import db.types

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("funds_ledger", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("balance_at", db.types.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("funds_ledger", schema=None) as batch_op:
        batch_op.drop_column("balance_at")
