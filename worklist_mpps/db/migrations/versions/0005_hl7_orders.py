"""HL7 order feed: order numbers and status reason on items, the received-message log

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 17:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("worklist_items") as batch:
        batch.add_column(sa.Column("placer_order_number", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("filler_order_number", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("status_reason", sa.String(length=250), nullable=True))
        batch.create_index(
            "ix_worklist_items_placer_order_number", ["placer_order_number"], unique=False
        )
        batch.create_index(
            "ix_worklist_items_filler_order_number", ["filler_order_number"], unique=False
        )
    op.create_table(
        "hl7_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("address", sa.String(length=128), nullable=True),
        sa.Column("sending_application", sa.String(length=180), nullable=False),
        sa.Column("sending_facility", sa.String(length=180), nullable=False),
        sa.Column("control_id", sa.String(length=199), nullable=True),
        sa.Column("message_type", sa.String(length=40), nullable=True),
        sa.Column("version", sa.String(length=20), nullable=True),
        sa.Column("order_control", sa.String(length=40), nullable=True),
        sa.Column("placer_order_number", sa.String(length=64), nullable=True),
        sa.Column("filler_order_number", sa.String(length=64), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("ack_code", sa.String(length=2), nullable=False),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("item_ids", sa.JSON(), nullable=True),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("ack", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hl7_messages")),
        sa.UniqueConstraint(
            "sending_application",
            "sending_facility",
            "control_id",
            name=op.f("uq_hl7_messages_sending_application_sending_facility_control_id"),
        ),
    )
    for column in ("message_type", "placer_order_number", "filler_order_number", "patient_id"):
        op.create_index(f"ix_hl7_messages_{column}", "hl7_messages", [column])
    op.create_index("ix_hl7_messages_ack_code", "hl7_messages", ["ack_code"])
    op.create_index("ix_hl7_messages_received_at", "hl7_messages", ["received_at"])


def downgrade() -> None:
    op.drop_table("hl7_messages")
    with op.batch_alter_table("worklist_items") as batch:
        batch.drop_index("ix_worklist_items_filler_order_number")
        batch.drop_index("ix_worklist_items_placer_order_number")
        batch.drop_column("status_reason")
        batch.drop_column("filler_order_number")
        batch.drop_column("placer_order_number")
