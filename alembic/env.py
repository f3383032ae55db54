"""Alembic environment: migrations run over a sync driver, whatever URL the app is given.

The app speaks `postgresql+asyncpg://`; Alembic runs synchronously, so the URL is converted to
`postgresql+psycopg2://` (installed with the app). The URL comes from, in order: the
`sqlalchemy.url` set on the Config by `app.db.migrate` or a test, else `DATABASE_URL`, else the
embedded server.
"""

from alembic import context
from sqlalchemy import create_engine, pool

from app.db.models import Base
from app.db.urls import render, to_sync_url

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    configured = config.get_main_option("sqlalchemy.url")
    if configured:
        return render(to_sync_url(configured))
    from app.db.engine import resolve_database_url
    from app.settings import load_settings

    return render(to_sync_url(resolve_database_url(load_settings())))


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        compare_type=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            compare_type=True,
            compare_server_default=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
