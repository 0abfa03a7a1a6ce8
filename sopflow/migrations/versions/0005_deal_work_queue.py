"""Deals: the stage's running deadline and the next booked meeting, so the work queue lists them across deals.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deadline_label", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("deadline_due", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("meeting_label", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("meeting_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deals", schema=None) as batch_op:
        for column in ("meeting_at", "meeting_label", "deadline_due", "deadline_label"):
            batch_op.drop_column(column)
