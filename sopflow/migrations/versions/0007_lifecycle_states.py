"""Each lifecycle's engine state and the playbooks clients run, so the forecast starts every client from SQL.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pinned_playbooks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("playbook", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("content_hash"),
    )
    op.create_table(
        "lifecycle_states",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workflow_id", sa.String(length=200), nullable=False),
        sa.Column("deal_id", sa.String(length=100), nullable=False),
        sa.Column("playbook", sa.String(length=64), nullable=False),
        sa.Column("playbook_version", sa.Integer(), nullable=False),
        sa.Column("playbook_hash", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workflow_id"),
    )
    with op.batch_alter_table("lifecycle_states", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_lifecycle_states_deal_id"), ["deal_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_lifecycle_states_playbook"), ["playbook"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("lifecycle_states", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_lifecycle_states_playbook"))
        batch_op.drop_index(batch_op.f("ix_lifecycle_states_deal_id"))
    op.drop_table("lifecycle_states")
    op.drop_table("pinned_playbooks")
