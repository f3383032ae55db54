"""Async engines, and the one function that decides which database a process talks to."""

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.db.urls import render, to_async_url
from app.settings import Settings


def resolve_database_url(settings: Settings) -> URL:
    """`DATABASE_URL` if set (any postgres driver spelling), else the embedded server's app DB."""
    if settings.database_url is not None:
        return to_async_url(settings.database_url.get_secret_value())
    from app.db.embedded import start_embedded

    return start_embedded(settings.data_dir).database_url()


def create_engine(url: URL | str, *, pool_size: int = 5) -> AsyncEngine:
    """An asyncpg engine. Create it inside the event loop that will use it, never at import."""
    return create_async_engine(
        render(to_async_url(url)) if isinstance(url, URL) else url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
    )
