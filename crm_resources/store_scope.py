"""Store scope from `store_master`: ETL scope from `etl_flag`, report scope from `report_flag`."""

import dagster as dg
from sqlalchemy.ext.asyncio import AsyncEngine

from app import stores


class StoreScopeResource(dg.ConfigurableResource):
    """`only` narrows the ETL scope for one run (the CLI's `--stores`); it never widens it."""

    only: list[str] | None = None

    async def etl_stores(self, engine: AsyncEngine) -> list[str]:
        return await stores.etl_scope(engine, self.only)

    async def report_stores(self, engine: AsyncEngine) -> list[str]:
        return await stores.report_scope(engine)
