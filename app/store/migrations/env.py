"""Alembic environment: tomes passes its engine in config.attributes (no alembic.ini)."""

from alembic import context

from app.store.models import Base

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    # render_as_batch: SQLite cannot ALTER most things; batch mode copies the table.
    context.configure(
        connection=connection, target_metadata=Base.metadata, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
