"""audit targets and user agent, message tombstones, job runs

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 18:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Time = (
    sa.DateTime()
    .with_variant(mysql.DATETIME(fsp=6), "mariadb")
    .with_variant(mysql.DATETIME(fsp=6), "mysql")
)


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("target_type", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("target_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("user_agent", sa.String(length=255), nullable=True))
    op.create_table(
        "message_tombstones",
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("purged_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("key_hash", name=op.f("pk_message_tombstones")),
    )
    op.create_index(
        op.f("ix_message_tombstones_purged_at"), "message_tombstones", ["purged_at"], unique=False
    )
    op.create_table(
        "job_runs",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("lock_owner", sa.String(length=64), nullable=True),
        sa.Column("locked_until", Time, nullable=True),
        sa.Column("last_success_at", Time, nullable=True),
        sa.Column("last_result", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_job_runs")),
    )


def downgrade() -> None:
    op.drop_table("job_runs")
    op.drop_index(op.f("ix_message_tombstones_purged_at"), table_name="message_tombstones")
    op.drop_table("message_tombstones")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("user_agent")
        batch.drop_column("target_id")
        batch.drop_column("target_type")
