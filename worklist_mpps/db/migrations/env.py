"""Alembic environment: the connection comes from worklist_mpps.db.migrate."""

from alembic import context

from worklist_mpps.db.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTER via table copy
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
