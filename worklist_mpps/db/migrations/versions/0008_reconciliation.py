"""lifecycle and reconciliation: leases, studies seen in Orthanc, emulated MPPS

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 21:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    op.create_table(
        "orthanc_studies",
        sa.Column("orthanc_id", sa.String(length=64), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("accession_number", sa.String(length=16), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("patient_name", sa.String(length=324), nullable=True),
        sa.Column("study_date", sa.String(length=8), nullable=True),
        sa.Column("study_time", sa.String(length=16), nullable=True),
        sa.Column("study_description", sa.String(length=64), nullable=True),
        sa.Column("modalities", sa.String(length=64), nullable=True),
        sa.Column("series_count", sa.Integer(), nullable=False),
        sa.Column("instance_count", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("item_pk", sa.Integer(), nullable=True),
        sa.Column("change_seq", sa.Integer(), nullable=False),
        sa.Column("stable_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_pk"],
            ["worklist_items.id"],
            name=op.f("fk_orthanc_studies_item_pk_worklist_items"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("orthanc_id", name=op.f("pk_orthanc_studies")),
    )
    for column in ("study_instance_uid", "accession_number", "state", "item_pk", "stable_at"):
        op.create_index(
            op.f(f"ix_orthanc_studies_{column}"), "orthanc_studies", [column], unique=False
        )
    with op.batch_alter_table("mpps") as batch:
        batch.add_column(
            sa.Column("emulated", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("mpps") as batch:
        batch.drop_column("emulated")
    for column in ("study_instance_uid", "accession_number", "state", "item_pk", "stable_at"):
        op.drop_index(op.f(f"ix_orthanc_studies_{column}"), table_name="orthanc_studies")
    op.drop_table("orthanc_studies")
    op.drop_table("leases")
