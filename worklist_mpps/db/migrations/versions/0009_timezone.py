"""time zones: worklist_items.sps_start_utc, mpps.timezone_offset

A worklist query carrying Timezone Offset From UTC (0008,0201) is matched on the UTC copy
of each step's start (PS3.4 C.2.2.2.5.4). Existing steps get it from their stored start,
read in the server's offset at migration time (``timezone_offset``, or the machine's
zone: worklist_mpps/timezone.py); README "Time zones" tells the trade-off. MPPS stored
before this revision keep their times as sent and no offset.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 21:10:00
"""

import sqlalchemy as sa
from alembic import op

from worklist_mpps import timezone

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BATCH = 1000


def upgrade() -> None:
    with op.batch_alter_table("worklist_items") as batch:
        batch.add_column(sa.Column("sps_start_utc", sa.String(length=14), nullable=True))
        batch.create_index(batch.f("ix_worklist_items_sps_start_utc"), ["sps_start_utc"])
        batch.create_index(
            "ix_worklist_items_status_start_utc", ["sps_status", "sps_start_utc"], unique=False
        )
    with op.batch_alter_table("mpps") as batch:
        batch.add_column(sa.Column("timezone_offset", sa.String(length=5), nullable=True))

    items = sa.table(
        "worklist_items",
        sa.column("id", sa.Integer),
        sa.column("sps_start", sa.String),
        sa.column("sps_start_utc", sa.String),
    )
    conn = op.get_bind()
    last = 0
    while True:  # in id order, a batch at a time: no table held in memory
        rows = conn.execute(
            sa.select(items.c.id, items.c.sps_start)
            .where(items.c.id > last, items.c.sps_start.is_not(None))
            .order_by(items.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        conn.execute(
            items.update()
            .where(items.c.id == sa.bindparam("pk"))
            .values(sps_start_utc=sa.bindparam("utc")),
            [{"pk": r.id, "utc": timezone.to_utc(r.sps_start)} for r in rows],
        )
        last = rows[-1].id


def downgrade() -> None:
    with op.batch_alter_table("mpps") as batch:
        batch.drop_column("timezone_offset")
    with op.batch_alter_table("worklist_items") as batch:
        batch.drop_index("ix_worklist_items_status_start_utc")
        batch.drop_index(batch.f("ix_worklist_items_sps_start_utc"))
        batch.drop_column("sps_start_utc")
