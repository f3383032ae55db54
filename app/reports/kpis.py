"""The numbers of one store's report for one date, each one SQL query over the bucket tables.

What "the snapshot of date D" is: the exports are month-to-date snapshots, upserted, and every
row remembers the run date it was last loaded from (`run_date`). Rows with `run_date < D` are
keys that D's export no longer held (a delivered order that left the export), so they are not
part of D. Rows with `run_date >= D` are what D's load wrote, or newer versions of them when the
report of an older date is rebuilt after a later load; records dated after D (a lead created,
an order placed, a delivery made later) are then left out by their own dates, so a rebuilt
report does not count tomorrow's leads in today's numbers.

A bucket whose audit did not pass for D (or where this store failed to download) is not used:
its KPIs are None and the report says which bucket and why (`BucketStatus`).
"""

import datetime as dt
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

LEADS, ORDERS, REPEAT = "missed_leads", "undelivered_all", "repeat_customers"
AGEING_BANDS = ("0-3", "4-7", "8-10", ">10")
HISTORY_NOTE = "change history not available"

# Shared WHERE fragments (bound parameters :store and :d only): one definition of "the snapshot".
_D = "CAST(:d AS date)"
LEADS_MTD = (
    f"store_code = :store AND run_date >= {_D}"
    f" AND COALESCE(pickup_created_date, {_D})"
    f" BETWEEN date_trunc('month', {_D})::date AND {_D}"
)
ORDERS_OPEN = (
    f"store_code = :store AND run_date >= {_D} AND COALESCE(order_date, {_D}) <= {_D}"
    f" AND (actual_deliver_on IS NULL OR actual_deliver_on > {_D})"
)
REPEAT_SNAPSHOT = "store_code = :store AND run_date >= CAST(:d AS date)"


@dataclass(frozen=True)
class BucketStatus:
    """Whether a bucket may be used for this store and date, and if not, why not."""

    bucket: str
    reconciled: bool
    reason: str | None = None
    audit_id: int | None = None


@dataclass(frozen=True)
class LeadKpis:
    total: int
    converted: int
    conversion_pct: float | None
    by_customer_type: list[tuple[str, int, int]]  # (type, leads, converted)
    by_source: list[tuple[str, int, int]]  # (source, leads, converted)


@dataclass(frozen=True)
class OrderKpis:
    count: int
    net_amount: Decimal
    ageing: dict[str, int]  # AGEING_BANDS + "not due" + "no expected date"


@dataclass(frozen=True)
class RepeatKpis:
    yes: int
    no: int
    other: int


@dataclass(frozen=True)
class SinceYesterday:
    """Changes since the previous day's snapshot; every figure None while history is missing."""

    leads_converted: int | None = None
    new_leads: int | None = None
    orders_delivered: int | None = None
    new_undelivered: int | None = None
    repeat_status_changes: int | None = None
    note: str | None = HISTORY_NOTE


@dataclass(frozen=True)
class TrendPoint:
    day: dt.date
    leads: int
    converted: int
    undelivered: int


@dataclass
class Kpis:
    leads: LeadKpis | None = None
    orders: OrderKpis | None = None
    repeat: RepeatKpis | None = None
    since: SinceYesterday = field(default_factory=SinceYesterday)
    trend: list[TrendPoint] = field(default_factory=list)


def pct(part: int, whole: int) -> float | None:
    """Conversion in percent, one decimal; None when there is nothing to convert."""
    return round(100.0 * part / whole, 1) if whole else None


async def _rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list(await conn.execute(text(sql), params))


async def bucket_status(
    engine: AsyncEngine, bucket: str, store: str, run_date: dt.date
) -> BucketStatus:
    """Reconciled when some run's audit of (bucket, date) passed (the platform's rule, as the
    cleanup and the cut-off alert use it) and this store is not among its failed stores."""
    found = await _rows(
        engine,
        "SELECT id, status, reason, failed_stores FROM pipeline_audit"
        " WHERE bucket = :b AND run_date = CAST(:d AS date)"
        " ORDER BY (status = 'passed') DESC, created_at DESC, id DESC LIMIT 1",
        b=bucket,
        d=run_date,
    )
    if not found:
        return BucketStatus(bucket, False, f"no audit of {bucket} for {run_date.isoformat()}")
    audit_id, status, reason, failed = found[0]
    if status != "passed":
        why = f"audit {status}: {reason or 'no reason given'}"
        return BucketStatus(bucket, False, why, audit_id)
    failed = {k.lower(): v for k, v in (failed or {}).items()}
    if store.lower() in failed:
        why = f"store {store} was not downloaded: {failed[store.lower()]}"
        return BucketStatus(bucket, False, why, audit_id)
    return BucketStatus(bucket, True, None, audit_id)


def _groups(rows: list[Any]) -> list[tuple[str, int, int]]:
    return [(str(name), int(n), int(conv)) for name, n, conv in rows]


async def lead_kpis(engine: AsyncEngine, store: str, run_date: dt.date) -> LeadKpis:
    p = {"store": store, "d": run_date}
    total, converted = (
        await _rows(
            engine,
            f"SELECT COUNT(*), COUNT(*) FILTER (WHERE is_order_placed)"
            f" FROM missed_leads WHERE {LEADS_MTD}",
            **p,
        )
    )[0]
    group = (
        "SELECT {col} AS g, COUNT(*), COUNT(*) FILTER (WHERE is_order_placed)"
        f" FROM missed_leads WHERE {LEADS_MTD} GROUP BY g ORDER BY COUNT(*) DESC, g"
    )
    types = await _rows(engine, group.format(col="COALESCE(customer_type, '(blank)')"), **p)
    source = "COALESCE(final_source, source, '(blank)')"
    sources = await _rows(engine, group.format(col=source), **p)
    return LeadKpis(
        int(total), int(converted), pct(converted, total), _groups(types), _groups(sources)
    )


async def order_kpis(engine: AsyncEngine, store: str, run_date: dt.date) -> OrderKpis:
    """Open orders on D; ageing = days past `expected_deliver_on` (0-3, 4-7, 8-10, >10)."""
    rows = await _rows(
        engine,
        "SELECT CASE WHEN expected_deliver_on IS NULL THEN 'no expected date'"
        " WHEN expected_deliver_on > CAST(:d AS date) THEN 'not due'"
        " WHEN CAST(:d AS date) - expected_deliver_on <= 3 THEN '0-3'"
        " WHEN CAST(:d AS date) - expected_deliver_on <= 7 THEN '4-7'"
        " WHEN CAST(:d AS date) - expected_deliver_on <= 10 THEN '8-10' ELSE '>10' END AS band,"
        " COUNT(*), COALESCE(SUM(net_amount), 0)"
        f" FROM undelivered_orders WHERE {ORDERS_OPEN} GROUP BY band",
        store=store,
        d=run_date,
    )
    ageing = dict.fromkeys((*AGEING_BANDS, "not due", "no expected date"), 0)
    for band, n, _ in rows:
        ageing[str(band)] = int(n)
    amount = sum((Decimal(a) for _, _, a in rows), Decimal(0))
    return OrderKpis(sum(ageing.values()), amount, ageing)


async def repeat_kpis(engine: AsyncEngine, store: str, run_date: dt.date) -> RepeatKpis:
    rows = await _rows(
        engine,
        "SELECT COUNT(*) FILTER (WHERE lower(trim(status)) = 'yes'),"
        " COUNT(*) FILTER (WHERE lower(trim(status)) = 'no'),"
        " COUNT(*) FILTER (WHERE lower(trim(COALESCE(status, ''))) NOT IN ('yes', 'no'))"
        f" FROM repeat_customers WHERE {REPEAT_SNAPSHOT}",
        store=store,
        d=run_date,
    )
    yes, no, other = rows[0]
    return RepeatKpis(int(yes), int(no), int(other))


async def trend(
    engine: AsyncEngine, store: str, run_date: dt.date, *, leads: bool, orders: bool
) -> list[TrendPoint]:
    """Per day of the month up to D: leads created and converted, orders open at that day's end.

    A bucket that is not reconciled contributes zeros (the report says it is not reconciled)."""
    rows = await _rows(
        engine,
        "SELECT day::date,"
        " (SELECT COUNT(*) FROM missed_leads WHERE :leads AND " + LEADS_MTD + ""
        "   AND pickup_created_date = day::date),"
        " (SELECT COUNT(*) FROM missed_leads WHERE :leads AND " + LEADS_MTD + ""
        "   AND pickup_created_date = day::date AND is_order_placed),"
        " (SELECT COUNT(*) FROM undelivered_orders WHERE :orders"
        "   AND store_code = :store AND run_date >= CAST(:d AS date) AND order_date <= day::date"
        "   AND (actual_deliver_on IS NULL OR actual_deliver_on > day::date))"
        " FROM generate_series(date_trunc('month', CAST(:d AS date)), CAST(:d AS date),"
        " interval '1 day') AS day ORDER BY day",
        store=store,
        d=run_date,
        leads=leads,
        orders=orders,
    )
    return [TrendPoint(day, int(a), int(b), int(c)) for day, a, b, c in rows]


async def _history_available(engine: AsyncEngine) -> bool:
    """The adapter's switch: `app.history` importable and its three `<table>_changes` tables."""
    if importlib.util.find_spec("app.history") is None:
        return False
    found = await _rows(
        engine,
        "SELECT COUNT(*) FROM information_schema.tables"
        " WHERE table_schema = current_schema() AND table_name = ANY(:names)",
        names=["missed_leads_changes", "undelivered_orders_changes", "repeat_customers_changes"],
    )
    return int(found[0][0]) == 3


def _n(changes: list[Any] | None, test: Callable[[Any], bool]) -> int | None:
    """How many changes pass `test`; None when the bucket was not used (not reconciled)."""
    return None if changes is None else sum(1 for c in changes if test(c))


def _changed(column: str) -> Callable[[Any], bool]:
    return lambda c: c.change == "changed" and c.column_name == column


async def since_yesterday(
    engine: AsyncEngine, store: str, run_date: dt.date, reconciled: set[str]
) -> SinceYesterday:
    """What D's load changed relative to the state before D (`app.history`), per bucket used.

    Without the change history every figure is None with HISTORY_NOTE. A bucket that is not
    reconciled leaves its figures None too."""
    if not await _history_available(engine):
        return SinceYesterday()
    from app.history import changes_since

    async with engine.connect() as conn:
        got = {
            b: await changes_since(conn, b, store, run_date, run_date) if b in reconciled else None
            for b in (LEADS, ORDERS, REPEAT)
        }
    leads, orders, repeat = got[LEADS], got[ORDERS], got[REPEAT]
    new_orders = [c.key["order_id"] for c in orders or [] if c.change == "new"]
    return SinceYesterday(
        leads_converted=_n(
            leads, lambda c: _changed("is_order_placed")(c) and c.new_value == "true"
        ),
        new_leads=_n(leads, lambda c: c.change == "new"),
        orders_delivered=_n(
            orders,
            lambda c: _changed("actual_deliver_on")(c) and c.old_value is None and c.new_value,
        ),
        new_undelivered=None
        if orders is None
        else await _open_among(engine, store, run_date, new_orders),
        repeat_status_changes=_n(repeat, _changed("status")),
        note=None,
    )


async def _open_among(engine: AsyncEngine, store: str, run_date: dt.date, ids: list[str]) -> int:
    """How many of these (new) orders are still undelivered on D."""
    if not ids:
        return 0
    rows = await _rows(
        engine,
        f"SELECT COUNT(*) FROM undelivered_orders WHERE {ORDERS_OPEN} AND order_id = ANY(:ids)",
        store=store,
        d=run_date,
        ids=ids,
    )
    return int(rows[0][0])
