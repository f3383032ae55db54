"""Database URL helpers: one DSN in, the right driver out, and a form that is safe to log."""

from sqlalchemy.engine import URL, make_url

ASYNC_DRIVER = "postgresql+asyncpg"
SYNC_DRIVER = "postgresql+psycopg2"  # installed with the app (dagster-postgres needs it too)


def _with_driver(url: str | URL, driver: str) -> URL:
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {safe_url(parsed)}")
    return parsed.set(drivername=driver)


def to_async_url(url: str | URL) -> URL:
    """`postgresql://` / `postgresql+psycopg2://` → `postgresql+asyncpg://`."""
    return _with_driver(url, ASYNC_DRIVER)


def to_sync_url(url: str | URL) -> URL:
    """`postgresql+asyncpg://` → `postgresql+psycopg2://` (Alembic and Dagster storage are sync)."""
    return _with_driver(url, SYNC_DRIVER)


def with_database(url: str | URL, database: str) -> URL:
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.set(database=database)


def render(url: URL) -> str:
    """The full URL with its password, for handing to a driver; never log it."""
    return url.render_as_string(hide_password=False)


def safe_url(url: str | URL) -> str:
    """A URL fit for a log line: password hidden."""
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.render_as_string(hide_password=True)
