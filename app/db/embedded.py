"""The embedded PostgreSQL 16 used when `DATABASE_URL` is unset (laptops, the demo, the tests).

It lives under `DATA_DIR/.pg`, is kept between runs, started once and reused by every process
that asks (pgserver's own inter-process lock and pid list), and stopped when the last of them
exits. It listens on a Unix socket only, so nothing on the network can reach it.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url

from app.db.urls import SYNC_DRIVER, render, to_async_url, with_database
from app.json_logger import log_event

APP_DATABASE = "crm"


@dataclass(frozen=True)
class EmbeddedPostgres:
    pgdata: Path
    server_url: URL  # the `postgres` maintenance database, psycopg2 driver
    server: Any  # pgserver.PostgresServer; keeps the server alive while referenced

    def database_url(self, database: str = APP_DATABASE) -> URL:
        return to_async_url(with_database(self.server_url, database))

    def ensure_database(self, database: str) -> None:
        """CREATE DATABASE if it is missing (Postgres has no IF NOT EXISTS for it)."""
        import psycopg2

        conn = psycopg2.connect(render(self.server_url.set(drivername="postgresql")))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{database}"')
        finally:
            conn.close()


_SERVERS: dict[Path, EmbeddedPostgres] = {}


def start_embedded(
    data_dir: Path, *, database: str | None = APP_DATABASE, cleanup_mode: str = "stop"
) -> EmbeddedPostgres:
    """Start (or reuse) the embedded server under `data_dir/.pg` and make sure `database` exists."""
    pgdata = (data_dir / ".pg").resolve()
    if pgdata not in _SERVERS:
        import warnings

        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import pgserver  # imported lazily: only the embedded mode needs it

        pgdata.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(pgdata, cleanup_mode=cleanup_mode)
        url = make_url(server.get_uri()).set(drivername=SYNC_DRIVER)
        _SERVERS[pgdata] = EmbeddedPostgres(pgdata=pgdata, server_url=url, server=server)
        log_event(
            "setup",
            "using the embedded PostgreSQL (DATABASE_URL is unset)",
            extras={"pgdata": str(pgdata), "socket_dir": url.query.get("host")},
        )
    embedded = _SERVERS[pgdata]
    if database:
        embedded.ensure_database(database)
    return embedded
