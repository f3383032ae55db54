"""`python -m app db upgrade|current|check`: Alembic driven from the app's own settings."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

from app.db.urls import render, to_sync_url

ROOT = Path(__file__).resolve().parents[2]
ALEMBIC_INI = ROOT / "alembic.ini"


def alembic_config(url: URL | str) -> Config:
    cfg = Config(str(ALEMBIC_INI))
    cfg.set_main_option("script_location", str(ROOT / "alembic"))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    cfg.set_main_option("sqlalchemy.url", render(to_sync_url(url)).replace("%", "%%"))
    return cfg


def upgrade(url: URL | str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: URL | str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def check(url: URL | str) -> None:
    """Raise if the models and the migrations have drifted apart (autogenerate finds a diff)."""
    import contextlib
    import sys

    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only JSON events
        command.check(alembic_config(url))


def current_revision(url: URL | str) -> str | None:
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine, pool
    from sqlalchemy.exc import ProgrammingError

    engine = create_engine(render(to_sync_url(url)), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            try:
                return MigrationContext.configure(conn).get_current_revision()
            except ProgrammingError:
                return None
    finally:
        engine.dispose()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("postgresql://x@/x")).get_current_head()
