"""PostgreSQL storage: models, migrations, tenant-scoped sessions, the outbox."""
