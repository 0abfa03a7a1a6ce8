"""Where in the workflow's history a local record was decided (run, history length), for its journal entries and its
engine state: a workflow task that wrote its local record and then failed is superseded by its next attempt.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("journal", schema=None) as batch_op:
        batch_op.add_column(sa.Column("run", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("history_length", sa.Integer(), nullable=True))
    # A state stored before is older than any a record decides from now on: (0, 0) orders first.
    with op.batch_alter_table("lifecycle_states", schema=None) as batch_op:
        batch_op.add_column(sa.Column("run", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("history_length", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    for table in ("lifecycle_states", "journal"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("history_length")
            batch_op.drop_column("run")
