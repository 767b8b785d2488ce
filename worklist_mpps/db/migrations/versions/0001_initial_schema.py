"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 00:19:53.315574
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "app_state",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_app_state")),
    )
    op.create_table(
        "mpps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("accession_number", sa.String(length=16), nullable=True),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("patient_name", sa.String(length=324), nullable=True),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("station_ae_title", sa.String(length=16), nullable=True),
        sa.Column("pps_id", sa.String(length=16), nullable=True),
        sa.Column("start_datetime", sa.String(length=14), nullable=True),
        sa.Column("end_datetime", sa.String(length=14), nullable=True),
        sa.Column("series_count", sa.Integer(), nullable=False),
        sa.Column("instance_count", sa.Integer(), nullable=False),
        sa.Column("discontinuation_reason", sa.String(length=64), nullable=True),
        sa.Column("dataset", sa.LargeBinary(), nullable=False),
        sa.Column("calling_ae_title", sa.String(length=16), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mpps")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_mpps_sop_instance_uid")),
    )
    with op.batch_alter_table("mpps", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_mpps_accession_number"), ["accession_number"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_mpps_end_datetime"), ["end_datetime"], unique=False)
        batch_op.create_index(batch_op.f("ix_mpps_modality"), ["modality"], unique=False)
        batch_op.create_index(batch_op.f("ix_mpps_patient_id"), ["patient_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_mpps_start_datetime"), ["start_datetime"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_mpps_station_ae_title"), ["station_ae_title"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_mpps_status"), ["status"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_mpps_study_instance_uid"), ["study_instance_uid"], unique=False
        )

    op.create_table(
        "patients",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=True),
        sa.Column("patient_name", sa.String(length=324), nullable=True),
        sa.Column("patient_name_folded", sa.String(length=324), nullable=True),
        sa.Column("birth_date", sa.String(length=8), nullable=True),
        sa.Column("sex", sa.String(length=16), nullable=True),
        sa.Column("weight", sa.String(length=16), nullable=True),
        sa.Column("medical_alerts", sa.String(length=64), nullable=True),
        sa.Column("allergies", sa.String(length=64), nullable=True),
        sa.Column("pregnancy_status", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patients")),
        sa.UniqueConstraint(
            "patient_id",
            "issuer_of_patient_id",
            name=op.f("uq_patients_patient_id_issuer_of_patient_id"),
        ),
    )
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_patients_allergies"), ["allergies"], unique=False)
        batch_op.create_index(batch_op.f("ix_patients_birth_date"), ["birth_date"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_patients_issuer_of_patient_id"), ["issuer_of_patient_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_patients_medical_alerts"), ["medical_alerts"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_patients_patient_id"), ["patient_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_patients_patient_name_folded"), ["patient_name_folded"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_patients_sex"), ["sex"], unique=False)

    op.create_table(
        "worklist_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_pk", sa.Integer(), nullable=False),
        sa.Column("accession_number", sa.String(length=16), nullable=True),
        sa.Column("referring_physician_name", sa.String(length=324), nullable=True),
        sa.Column("referring_physician_name_folded", sa.String(length=324), nullable=True),
        sa.Column("requesting_physician", sa.String(length=324), nullable=True),
        sa.Column("requesting_physician_folded", sa.String(length=324), nullable=True),
        sa.Column("requested_procedure_id", sa.String(length=16), nullable=True),
        sa.Column("requested_procedure_description", sa.String(length=64), nullable=True),
        sa.Column("requested_procedure_priority", sa.String(length=16), nullable=True),
        sa.Column("requested_procedure_codes", sa.JSON(), nullable=True),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("admission_id", sa.String(length=64), nullable=True),
        sa.Column("current_patient_location", sa.String(length=64), nullable=True),
        sa.Column("sps_id", sa.String(length=16), nullable=True),
        sa.Column("sps_description", sa.String(length=64), nullable=True),
        sa.Column("sps_status", sa.String(length=16), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("scheduled_station_ae_title", sa.String(length=16), nullable=True),
        sa.Column("scheduled_station_name", sa.String(length=16), nullable=True),
        sa.Column("sps_location", sa.String(length=16), nullable=True),
        sa.Column("sps_start_date", sa.String(length=8), nullable=True),
        sa.Column("sps_start_time", sa.String(length=6), nullable=True),
        sa.Column("sps_start", sa.String(length=14), nullable=True),
        sa.Column("scheduled_performing_physician_name", sa.String(length=324), nullable=True),
        sa.Column(
            "scheduled_performing_physician_name_folded", sa.String(length=324), nullable=True
        ),
        sa.Column("scheduled_protocol_codes", sa.JSON(), nullable=True),
        sa.Column("pre_medication", sa.String(length=64), nullable=True),
        sa.Column("requested_contrast_agent", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_pk"], ["patients.id"], name=op.f("fk_worklist_items_patient_pk_patients")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worklist_items")),
        sa.UniqueConstraint(
            "accession_number", "sps_id", name=op.f("uq_worklist_items_accession_number_sps_id")
        ),
    )
    with op.batch_alter_table("worklist_items", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_worklist_items_accession_number"), ["accession_number"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_worklist_items_admission_id"), ["admission_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_worklist_items_current_patient_location"),
            ["current_patient_location"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_worklist_items_modality"), ["modality"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_worklist_items_patient_pk"), ["patient_pk"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_worklist_items_pre_medication"), ["pre_medication"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_worklist_items_referring_physician_name_folded"),
            ["referring_physician_name_folded"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_worklist_items_requested_contrast_agent"),
            ["requested_contrast_agent"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_worklist_items_requested_procedure_description"),
            ["requested_procedure_description"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_worklist_items_requested_procedure_id"),
            ["requested_procedure_id"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_worklist_items_requested_procedure_priority"),
            ["requested_procedure_priority"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_worklist_items_requesting_physician_folded"),
            ["requesting_physician_folded"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_worklist_items_scheduled_performing_physician_name_folded"),
            ["scheduled_performing_physician_name_folded"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_worklist_items_scheduled_station_ae_title"),
            ["scheduled_station_ae_title"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_worklist_items_scheduled_station_name"),
            ["scheduled_station_name"],
            unique=False,
        )
        batch_op.create_index(
            "ix_worklist_items_selective",
            ["sps_status", "modality", "scheduled_station_ae_title", "sps_start"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_worklist_items_sps_description"), ["sps_description"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_worklist_items_sps_id"), ["sps_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_worklist_items_sps_location"), ["sps_location"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_worklist_items_sps_start"), ["sps_start"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_worklist_items_sps_start_date"), ["sps_start_date"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_worklist_items_sps_start_time"), ["sps_start_time"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_worklist_items_sps_status"), ["sps_status"], unique=False
        )
        batch_op.create_index(
            "ix_worklist_items_status_start", ["sps_status", "sps_start"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_worklist_items_study_instance_uid"), ["study_instance_uid"], unique=False
        )

    op.create_table(
        "mpps_worklist_links",
        sa.Column("mpps_pk", sa.Integer(), nullable=False),
        sa.Column("item_pk", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_pk"],
            ["worklist_items.id"],
            name=op.f("fk_mpps_worklist_links_item_pk_worklist_items"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["mpps_pk"],
            ["mpps.id"],
            name=op.f("fk_mpps_worklist_links_mpps_pk_mpps"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("mpps_pk", "item_pk", name=op.f("pk_mpps_worklist_links")),
    )
    with op.batch_alter_table("mpps_worklist_links", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_mpps_worklist_links_item_pk"), ["item_pk"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("mpps_worklist_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mpps_worklist_links_item_pk"))

    op.drop_table("mpps_worklist_links")
    with op.batch_alter_table("worklist_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_worklist_items_study_instance_uid"))
        batch_op.drop_index("ix_worklist_items_status_start")
        batch_op.drop_index(batch_op.f("ix_worklist_items_sps_status"))
        batch_op.drop_index(batch_op.f("ix_worklist_items_sps_start_time"))
        batch_op.drop_index(batch_op.f("ix_worklist_items_sps_start_date"))
        batch_op.drop_index(batch_op.f("ix_worklist_items_sps_start"))
        batch_op.drop_index(batch_op.f("ix_worklist_items_sps_location"))
        batch_op.drop_index(batch_op.f("ix_worklist_items_sps_id"))
        batch_op.drop_index(batch_op.f("ix_worklist_items_sps_description"))
        batch_op.drop_index("ix_worklist_items_selective")
        batch_op.drop_index(batch_op.f("ix_worklist_items_scheduled_station_name"))
        batch_op.drop_index(batch_op.f("ix_worklist_items_scheduled_station_ae_title"))
        batch_op.drop_index(
            batch_op.f("ix_worklist_items_scheduled_performing_physician_name_folded")
        )
        batch_op.drop_index(batch_op.f("ix_worklist_items_requesting_physician_folded"))
        batch_op.drop_index(batch_op.f("ix_worklist_items_requested_procedure_priority"))
        batch_op.drop_index(batch_op.f("ix_worklist_items_requested_procedure_id"))
        batch_op.drop_index(batch_op.f("ix_worklist_items_requested_procedure_description"))
        batch_op.drop_index(batch_op.f("ix_worklist_items_requested_contrast_agent"))
        batch_op.drop_index(batch_op.f("ix_worklist_items_referring_physician_name_folded"))
        batch_op.drop_index(batch_op.f("ix_worklist_items_pre_medication"))
        batch_op.drop_index(batch_op.f("ix_worklist_items_patient_pk"))
        batch_op.drop_index(batch_op.f("ix_worklist_items_modality"))
        batch_op.drop_index(batch_op.f("ix_worklist_items_current_patient_location"))
        batch_op.drop_index(batch_op.f("ix_worklist_items_admission_id"))
        batch_op.drop_index(batch_op.f("ix_worklist_items_accession_number"))

    op.drop_table("worklist_items")
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_patients_sex"))
        batch_op.drop_index(batch_op.f("ix_patients_patient_name_folded"))
        batch_op.drop_index(batch_op.f("ix_patients_patient_id"))
        batch_op.drop_index(batch_op.f("ix_patients_medical_alerts"))
        batch_op.drop_index(batch_op.f("ix_patients_issuer_of_patient_id"))
        batch_op.drop_index(batch_op.f("ix_patients_birth_date"))
        batch_op.drop_index(batch_op.f("ix_patients_allergies"))

    op.drop_table("patients")
    with op.batch_alter_table("mpps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mpps_study_instance_uid"))
        batch_op.drop_index(batch_op.f("ix_mpps_status"))
        batch_op.drop_index(batch_op.f("ix_mpps_station_ae_title"))
        batch_op.drop_index(batch_op.f("ix_mpps_start_datetime"))
        batch_op.drop_index(batch_op.f("ix_mpps_patient_id"))
        batch_op.drop_index(batch_op.f("ix_mpps_modality"))
        batch_op.drop_index(batch_op.f("ix_mpps_end_datetime"))
        batch_op.drop_index(batch_op.f("ix_mpps_accession_number"))

    op.drop_table("mpps")
    op.drop_table("app_state")
