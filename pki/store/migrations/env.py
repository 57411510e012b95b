"""Alembic environment: the engine comes from pki.store.db.Store.migrate (or -x url=...)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from pki.store.models import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:
    url = context.get_x_argument(as_dictionary=True).get("url", "sqlite:///migrations-dev.db")
    engine = create_engine(url)

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
