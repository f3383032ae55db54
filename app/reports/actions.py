"""The two lists a store manager works through: leads to call and orders to deliver.

Both come from the same snapshot definitions as the KPIs (`app.reports.kpis`), oldest first, so
the person at the counter starts with whoever has waited longest. The lists are complete (a
store's month is a few hundred rows at most); `MAX_ROWS` only guards the PDF against a runaway.
"""

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.reports.kpis import LEADS_MTD, ORDERS_OPEN

MAX_ROWS = 2000


@dataclass(frozen=True)
class LeadToCall:
    pickup_no: str
    name: str | None
    mobile: str | None
    pickup_date: dt.date | None
    source: str | None


@dataclass(frozen=True)
class OrderToDeliver:
    order_id: str
    customer: str | None
    mobile: str | None
    expected: dt.date | None
    days_late: int | None  # None: not due yet, or no expected date
    amount: Decimal | None


async def _rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list(await conn.execute(text(sql), params))


async def leads_to_call(engine: AsyncEngine, store: str, run_date: dt.date) -> list[LeadToCall]:
    """Month-to-date leads not converted, oldest pickup date first (undated last)."""
    rows = await _rows(
        engine,
        "SELECT pickup_no, customer_name, mobile_number, pickup_date,"
        " COALESCE(final_source, source) FROM missed_leads"
        f" WHERE {LEADS_MTD} AND NOT is_order_placed"
        " ORDER BY pickup_date ASC NULLS LAST, pickup_created_date ASC NULLS LAST,"
        " pickup_created_time ASC NULLS LAST, pickup_no LIMIT :limit",
        store=store,
        d=run_date,
        limit=MAX_ROWS,
    )
    return [LeadToCall(*row) for row in rows]


async def orders_to_deliver(
    engine: AsyncEngine, store: str, run_date: dt.date
) -> list[OrderToDeliver]:
    """Orders open on D, the longest overdue first (by expected date, undated last).

    `customer` is the portal's customer id: the undelivered export carries no customer name.
    """
    rows = await _rows(
        engine,
        "SELECT order_id, customer_id, mobile_no, expected_deliver_on,"
        " CASE WHEN expected_deliver_on <= CAST(:d AS date)"
        " THEN CAST(:d AS date) - expected_deliver_on END, net_amount"
        f" FROM undelivered_orders WHERE {ORDERS_OPEN}"
        " ORDER BY expected_deliver_on ASC NULLS LAST, order_date ASC NULLS LAST, order_id"
        " LIMIT :limit",
        store=store,
        d=run_date,
        limit=MAX_ROWS,
    )
    return [OrderToDeliver(*row) for row in rows]
