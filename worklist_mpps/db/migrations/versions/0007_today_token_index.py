"""operator page: index mpps.completeness_checked_at (the Today view's change token)

The Today view polls a change token (services/today.py change_token): the newest audit id
and the newest completeness check. With this index the latter is one index lookup instead
of a scan of every MPPS ever received.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 20:30:00
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        op.f("ix_mpps_completeness_checked_at"), "mpps", ["completeness_checked_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_mpps_completeness_checked_at"), table_name="mpps")
