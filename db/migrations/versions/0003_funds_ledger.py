"""funds ledger: one shared headroom snapshot and lease for raising key limits

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import db.types

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    table = op.create_table(
        "funds_ledger",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("measured_at", db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("available", db.types.Money(precision=18, scale=6), nullable=True),
        sa.Column("committed", db.types.Money(precision=18, scale=6), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_funds_ledger")),
    )
    # The single row every replica leases; nothing is measured yet.
    op.bulk_insert(table, [{"id": 1}])


def downgrade() -> None:
    op.drop_table("funds_ledger")
