"""funds ledger: a generation bumped on every change of the figure

The background key listing adopts its total only if the figure did not change while it
ran; ``measured_at`` alone could not say so (measured, raised, then lost again: NULL
before and after).

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("funds_ledger", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("generation", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("funds_ledger", schema=None) as batch_op:
        batch_op.drop_column("generation")
