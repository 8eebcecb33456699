"""preferences, quota cache, broadcasts

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import db.types

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "broadcasts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_by", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("progress_chat_id", sa.BigInteger(), nullable=True),
        sa.Column("progress_message_id", sa.Integer(), nullable=True),
        sa.Column("created_at", db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("queued_at", db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", db.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_broadcasts")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("last_limit", db.types.Money(precision=12, scale=6), nullable=True)
        )
        batch_op.add_column(
            sa.Column("last_usage", db.types.Money(precision=12, scale=6), nullable=True)
        )
        batch_op.add_column(
            sa.Column("last_usage_daily", db.types.Money(precision=12, scale=6), nullable=True)
        )
        batch_op.add_column(
            sa.Column("last_usage_weekly", db.types.Money(precision=12, scale=6), nullable=True)
        )
        batch_op.add_column(
            sa.Column("last_usage_monthly", db.types.Money(precision=12, scale=6), nullable=True)
        )
        batch_op.add_column(
            sa.Column("last_checked_at", db.types.UTCDateTime(timezone=True), nullable=True)
        )

    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("refund_note", sa.Text(), nullable=True))

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("broadcast_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("category", sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f("ix_outbox_broadcast_id"), ["broadcast_id"], unique=False)

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("notify_quota", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
        batch_op.add_column(
            sa.Column("notify_reminders", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
        batch_op.add_column(
            sa.Column("daily_summary", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(
            sa.Column("quota_alert_level", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("quota_alert_level")
        batch_op.drop_column("daily_summary")
        batch_op.drop_column("notify_reminders")
        batch_op.drop_column("notify_quota")

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_broadcast_id"))
        batch_op.drop_column("category")
        batch_op.drop_column("broadcast_id")

    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("refund_note")

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("last_checked_at")
        batch_op.drop_column("last_usage_monthly")
        batch_op.drop_column("last_usage_weekly")
        batch_op.drop_column("last_usage_daily")
        batch_op.drop_column("last_usage")
        batch_op.drop_column("last_limit")

    op.drop_table("broadcasts")
