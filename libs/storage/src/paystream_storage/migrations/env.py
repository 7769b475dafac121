"""Alembic environment: online migrations only, URL handed over by `paystream_storage.migrate`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from paystream_storage.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url, "paystream_storage.migrate sets sqlalchemy.url"

engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_server_default=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
