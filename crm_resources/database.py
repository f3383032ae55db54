"""The app database as a Dagster resource: one async engine per run, on the run's event loop."""

import contextlib
from collections.abc import AsyncIterator

import dagster as dg
from pydantic import PrivateAttr
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_engine, resolve_database_url
from app.db.urls import to_async_url
from app.settings import load_settings


class DatabaseResource(dg.ConfigurableResource):
    """`database_url` unset → `DATABASE_URL` from the environment → the embedded Postgres.

    The async engine is created in `yield_for_execution`, which Dagster runs on the same event
    loop as the run's async assets; an engine created at import or in another loop would hand out
    connections bound to a dead loop.
    """

    database_url: str | None = None

    _engine: AsyncEngine | None = PrivateAttr(default=None)

    def url(self) -> URL:
        if self.database_url:
            return to_async_url(self.database_url)
        return resolve_database_url(load_settings())

    @contextlib.asynccontextmanager
    async def yield_for_execution(  # type: ignore[override]
        self, context: dg.InitResourceContext
    ) -> AsyncIterator["DatabaseResource"]:
        engine = create_engine(self.url())
        self._engine = engine
        try:
            yield self
        finally:
            self._engine = None
            await engine.dispose()

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise dg.DagsterInvariantViolationError(
                "DatabaseResource.engine used outside a run (no event loop owns it)"
            )
        return self._engine
