"""Change history on a real PostgreSQL: snapshots in order, reruns, backfills, month reset."""

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.history import change_counts, changes_since
from app.ingest import IngestError, ingest_file
from tests.portal_files import (
    MISSED_HEADER,
    REPEAT_HEADER,
    UNDELIVERED_HEADER,
    missed_row,
    repeat_row,
    undelivered_row,
    write_csv,
)

D = dt.date(2026, 3, 7)
D1 = D - dt.timedelta(days=1)
Row = tuple[Any, ...]


async def history(engine: AsyncEngine, table: str, run_date: dt.date | None = None) -> set[Row]:
    """(run_date, key, change, column, old, new) of a change table; ids and run ids left out."""
    key = {
        "missed_leads": "pickup_no",
        "undelivered_orders": "order_id",
        "repeat_customers": "mobile_no",
    }[table]
    where = "WHERE run_date = :d" if run_date else ""
    sql = (
        f"SELECT run_date, {key}, change, column_name, old_value, new_value "
        f"FROM {table}_changes {where}"
    )
    async with engine.connect() as conn:
        result = await conn.execute(text(sql), {"d": run_date} if run_date else {})
        return {tuple(r) for r in result.all()}


async def load(
    engine: AsyncEngine,
    data_dir: Path,
    bucket: str,
    run_date: dt.date,
    rows: list[dict[str, object]],
    run_id: str,
    batch_size: int = 2,
) -> None:
    header = {
        "missed_leads": MISSED_HEADER,
        "undelivered_all": UNDELIVERED_HEADER,
        "repeat_customers": REPEAT_HEADER,
    }[bucket]
    path = write_csv(data_dir / f"{bucket}_{run_date}_{run_id}.csv", header, rows)
    await ingest_file(engine, bucket, run_date, path, run_id=run_id, batch_size=batch_size)


def leads_d1() -> list[dict[str, object]]:
    return [
        missed_row("A1", "P1", is_order_placed="0"),
        missed_row("A1", "P2"),
        missed_row("A1", "P3"),
        missed_row("B2", "P9"),
    ]


def leads_d() -> list[dict[str, object]]:
    return [
        missed_row("A1", "P1", is_order_placed="1"),  # converted
        missed_row("A1", "P2"),  # unchanged
        missed_row("A1", "P4"),  # new; P3 is gone; store B2 has no rows today
    ]


async def test_leads_d1_then_d(engine: AsyncEngine, data_dir: Path) -> None:
    await load(engine, data_dir, "missed_leads", D1, leads_d1(), "r1")
    assert await history(engine, "missed_leads", D1) == {
        (D1, p, "new", None, None, None) for p in ("P1", "P2", "P3", "P9")
    }
    await load(engine, data_dir, "missed_leads", D, leads_d(), "r2")
    assert await history(engine, "missed_leads", D) == {
        (D, "P1", "changed", "is_order_placed", "false", "true"),
        (D, "P4", "new", None, None, None),
        (D, "P3", "gone", None, None, None),  # P9's store B2 is not in D's file: not gone
    }
    async with engine.connect() as conn:
        got = await changes_since(conn, "missed_leads", "A1", D)
        counts = await change_counts(conn, "missed_leads", "A1", D)
        all_counts = await change_counts(conn, "missed_leads", "A1", D1)
    assert [(c.key["pickup_no"], c.change) for c in got] == [
        ("P1", "changed"),
        ("P3", "gone"),
        ("P4", "new"),
    ]
    assert got[0].run_id == "r2" and got[0].key == {"store_code": "A1", "pickup_no": "P1"}
    assert counts == {("changed", "is_order_placed"): 1, ("new", None): 1, ("gone", None): 1}
    assert all_counts[("new", None)] == 4


async def test_order_delivered_and_repeat_status(engine: AsyncEngine, data_dir: Path) -> None:
    await load(engine, data_dir, "undelivered_all", D1, [undelivered_row("A1", "O1")], "r1")
    delivered = undelivered_row(
        "A1", "O1", actual_deliver_on="07 Mar 2026 3:03:39 PM", net_amount="1400.5"
    )
    await load(engine, data_dir, "undelivered_all", D, [delivered], "r2")
    assert await history(engine, "undelivered_orders", D) == {
        (D, "O1", "changed", "actual_deliver_on", None, "2026-03-07"),
        (D, "O1", "changed", "net_amount", "1345.00", "1400.50"),  # canonical decimals
    }
    await load(engine, data_dir, "repeat_customers", D1, [repeat_row("A1", "9000000001")], "r1")
    await load(
        engine, data_dir, "repeat_customers", D, [repeat_row("A1", "9000000001", "No")], "r2"
    )
    assert await history(engine, "repeat_customers", D) == {
        (D, "9000000001", "changed", "status", "Yes", "No")
    }


async def test_same_date_rerun_is_idempotent(engine: AsyncEngine, data_dir: Path) -> None:
    await load(engine, data_dir, "missed_leads", D1, leads_d1(), "r1")
    await load(engine, data_dir, "missed_leads", D, leads_d(), "r2")
    before = await history(engine, "missed_leads")
    await load(engine, data_dir, "missed_leads", D, leads_d(), "r3", batch_size=1)
    await load(engine, data_dir, "missed_leads", D, leads_d(), "r4", batch_size=100)
    assert await history(engine, "missed_leads") == before
    # a reload of D with other content is diffed against the state before D, not the first load
    other = [missed_row("A1", "P1", is_order_placed="0"), *leads_d()[1:], missed_row("A1", "P3")]
    await load(engine, data_dir, "missed_leads", D, other, "r5")
    assert await history(engine, "missed_leads", D) == {(D, "P4", "new", None, None, None)}


async def test_backfill_keeps_newer_history(engine: AsyncEngine, data_dir: Path) -> None:
    await load(engine, data_dir, "missed_leads", D, leads_d(), "r2")
    newer = await history(engine, "missed_leads", D)
    assert newer == {(D, p, "new", None, None, None) for p in ("P1", "P2", "P4")}
    await load(engine, data_dir, "missed_leads", D1, leads_d1(), "r1")
    assert await history(engine, "missed_leads", D) == newer
    # P1 and P2 are held by D: nothing for them on D1, and D1 reports nothing gone (not newest)
    assert await history(engine, "missed_leads", D1) == {
        (D1, "P3", "new", None, None, None),
        (D1, "P9", "new", None, None, None),
    }


async def test_gone_is_reported_once(engine: AsyncEngine, data_dir: Path) -> None:
    d2 = D1 - dt.timedelta(days=1)
    await load(engine, data_dir, "missed_leads", d2, [missed_row("A1", "P0"), *leads_d1()], "r0")
    await load(engine, data_dir, "missed_leads", D1, leads_d1(), "r1")
    assert (D1, "P0", "gone", None, None, None) in await history(engine, "missed_leads", D1)
    await load(engine, data_dir, "missed_leads", D, leads_d(), "r2")
    gone = {r[1] for r in await history(engine, "missed_leads", D) if r[2] == "gone"}
    assert gone == {"P3"}


async def test_first_day_of_month_reports_nothing_gone(engine: AsyncEngine, data_dir: Path) -> None:
    mar31, apr1, apr2 = dt.date(2026, 3, 31), dt.date(2026, 4, 1), dt.date(2026, 4, 2)
    await load(engine, data_dir, "missed_leads", mar31, leads_d1(), "r1")
    await load(engine, data_dir, "missed_leads", apr1, [missed_row("A1", "P5")], "r2")
    assert await history(engine, "missed_leads", apr1) == {(apr1, "P5", "new", None, None, None)}
    await load(engine, data_dir, "missed_leads", apr2, [missed_row("A1", "P6")], "r3")
    assert await history(engine, "missed_leads", apr2) == {
        (apr2, "P6", "new", None, None, None),
        (apr2, "P5", "gone", None, None, None),  # March's keys are not April's snapshot
    }


async def test_failed_load_leaves_no_history(engine: AsyncEngine, data_dir: Path) -> None:
    await load(engine, data_dir, "missed_leads", D1, leads_d1(), "r1")
    before = await history(engine, "missed_leads")
    async with engine.begin() as conn:
        await conn.execute(
            text("ALTER TABLE missed_leads ADD CONSTRAINT no_boom CHECK (pickup_no <> 'BOOM')")
        )
    rows = [*leads_d(), missed_row("A1", "P7"), missed_row("A1", "BOOM"), missed_row("A1", "P8")]
    with pytest.raises(IngestError, match="no_boom"):
        await load(engine, data_dir, "missed_leads", D, rows, "r2")
    assert await history(engine, "missed_leads") == before


def _scans(plan: dict[str, Any]) -> list[tuple[str, str | None, str | None]]:
    """(node type, relation, index) of every node of an EXPLAIN (FORMAT JSON) plan tree."""
    found = [(plan["Node Type"], plan.get("Relation Name"), plan.get("Index Name"))]
    for child in plan.get("Plans", []):
        found.extend(_scans(child))
    return found


async def test_a_batch_reaches_dates_history_by_key_only(
    engine: AsyncEngine, data_dir: Path
) -> None:
    """Inside one load, D's history grows with every batch and has no statistics: a batch that
    found it by `run_date` scanned all of it per batch (a load quadratic in its size). The plan
    of a late batch of a changed rerun must touch the change table by key or by ctid only."""
    from app.history import ChangeRecorder
    from app.ingest import _batches, _plan, _staging_table, upsert_from_staging

    bucket, n = "missed_leads", 4000
    first = [missed_row("A1", f"P{i}", is_order_placed="0") for i in range(n)]
    again = [missed_row("A1", f"P{i}", is_order_placed="1") for i in range(n)]
    stage = _staging_table(bucket)
    async with engine.connect() as conn, conn.begin():
        await conn.run_sync(lambda sync_conn: stage.create(sync_conn))
        upsert = ChangeRecorder(bucket, stage.name, D, "r1").attach(
            upsert_from_staging(bucket, stage, D, "r1")
        )
        driver: Any = (await conn.get_raw_connection()).driver_connection
        for name, rows in (("first", first), ("again", again)):
            path = write_csv(data_dir / f"{name}.csv", MISSED_HEADER, rows)
            plan = _plan(bucket, path, MISSED_HEADER)
            records = [r for b in _batches(bucket, path, plan, n, 0) for r in b.records]
            await conn.execute(text(f"TRUNCATE {stage.name}"))
            await driver.copy_records_to_table(
                stage.name, records=records, columns=[c.name for c in stage.columns]
            )
            if name == "first":
                await conn.execute(upsert)
        sql = str(upsert.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        explained = (await conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql)).scalar_one()
    nodes = _scans(explained[0]["Plan"])
    table = "missed_leads_changes"
    assert not [n for n in nodes if n[0] == "Seq Scan" and n[1] == table], nodes
    indexes = {i for _t, _r, i in nodes if i and i.startswith(("ix_" + table, "pk_" + table))}
    assert indexes, nodes  # the rerun does look D's history up
    assert indexes == {f"ix_{table}_store_code_pickup_no_run_date"}, indexes
    assert ("Tid Scan", table, None) in nodes  # the rerun's old rows deleted by their ctid
