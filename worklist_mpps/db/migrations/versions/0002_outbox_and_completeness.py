"""outbox and completeness

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 00:40:22.052452
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=80), nullable=False),
        sa.Column("mpps_uid", sa.String(length=64), nullable=False),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("pps_status", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_state_next", ["state", "next_attempt_at"], unique=False)
        batch_op.create_index(
            "ix_outbox_target_mpps_id", ["target", "mpps_uid", "id"], unique=False
        )

    with op.batch_alter_table("mpps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("completeness", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("received_count", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("missing_instances", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("completeness_checked_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("mpps", schema=None) as batch_op:
        batch_op.drop_column("completeness_checked_at")
        batch_op.drop_column("missing_instances")
        batch_op.drop_column("received_count")
        batch_op.drop_column("completeness")

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_target_mpps_id")
        batch_op.drop_index("ix_outbox_state_next")

    op.drop_table("outbox")
