"""Shared fixtures: a real PostgreSQL for every test, never one the suite did not create.

The server is `TEST_DATABASE_URL` when set (CI's postgres service), else an embedded
PostgreSQL 16 (pgserver) in a temporary folder. The schema is migrated once into a template
database; each test that asks for `database_url` gets its own fresh copy of it
(`CREATE DATABASE ... TEMPLATE`), dropped afterwards.
"""

import os
import tempfile

# The suite runs dates in 2026 (March, November); without a go-live date the first partition
# would be the first day of the current month. Set before any crm_assets import.
os.environ.setdefault("GO_LIVE_DATE", "2026-01-01")

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import migrate
from app.db.engine import create_engine
from app.db.urls import render, to_async_url, to_sync_url, with_database

pytest_plugins = ["tests.fixtures_portal", "tests.smtp_server"]
from tests.graph_helpers import graph_env  # noqa: E402, F401 - a fixture for graph tests

PREFIX = "crm_test_"


def _admin(url: URL) -> "psycopg2.extensions.connection":
    conn = psycopg2.connect(render(url.set(drivername="postgresql")))
    conn.autocommit = True
    return conn


def create_database(server: URL, name: str, template: str | None = None) -> URL:
    conn = _admin(server)
    try:
        with conn.cursor() as cur:
            tpl = f' TEMPLATE "{template}"' if template else ""
            cur.execute(f'CREATE DATABASE "{name}"{tpl}')
    finally:
        conn.close()
    return with_database(server, name)


def drop_database(server: URL, name: str) -> None:
    assert name.startswith(PREFIX), "the suite only drops databases it created"
    conn = _admin(server)
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[URL]:
    """A sync URL of the server's maintenance database."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield to_sync_url(external)
        return
    from app.db.embedded import start_embedded

    # Outside pytest's basetemp: pytest re-tightens that to 0700 at every session start, and the
    # embedded server runs as a separate system user when the suite runs as root.
    root = Path(tempfile.mkdtemp(prefix="crm-test-pg-"))
    root.chmod(0o755)
    embedded = start_embedded(root, database=None, cleanup_mode="delete")
    yield embedded.server_url


@pytest.fixture(scope="session")
def template_database(pg_server: URL) -> Iterator[str]:
    name = f"{PREFIX}tpl_{uuid.uuid4().hex[:10]}"
    url = create_database(pg_server, name)
    migrate.upgrade(url)
    yield name
    drop_database(pg_server, name)


@pytest.fixture
def database_url(pg_server: URL, template_database: str) -> Iterator[URL]:
    """A fresh, migrated database for this test only (asyncpg URL)."""
    name = f"{PREFIX}{uuid.uuid4().hex[:12]}"
    url = create_database(pg_server, name, template=template_database)
    yield to_async_url(url)
    drop_database(pg_server, name)


@pytest.fixture
def empty_database_url(pg_server: URL) -> Iterator[URL]:
    """A fresh database with no schema at all (for migration tests)."""
    name = f"{PREFIX}{uuid.uuid4().hex[:12]}"
    url = create_database(pg_server, name)
    yield to_async_url(url)
    drop_database(pg_server, name)


@pytest.fixture
async def engine(database_url: URL) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url)
    yield eng
    await eng.dispose()


@pytest.fixture(autouse=True)
def _no_kept_measure() -> Iterator[None]:
    """A merge step's staging kept for a load that never came (a test that stops after the
    merge) is stopped with its test, as the end of a run's process stops it."""
    yield
    from app.measure_worker import stop_kept

    stop_kept()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def app_env(
    monkeypatch: pytest.MonkeyPatch, database_url: URL, data_dir: Path
) -> Iterator[dict[str, str]]:
    """Environment for code that reads settings: this test's database and data folder."""
    env = {"DATABASE_URL": render(database_url), "DATA_DIR": str(data_dir)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from app.settings import get_settings

    get_settings.cache_clear()
    yield env
    get_settings.cache_clear()


def sync_url(url: URL) -> str:
    return render(to_sync_url(make_url(url) if isinstance(url, str) else url))
