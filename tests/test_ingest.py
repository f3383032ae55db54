"""The ingester on a real PostgreSQL: upserts, counts, rejects, snapshots, atomicity, dry run."""

import asyncio
import datetime as dt
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import json_logger
from app.db.engine import create_engine
from app.ingest import IngestError, ingest_file
from app.merger import merge_bucket
from tests.portal_files import (
    MISSED_HEADER,
    UNDELIVERED_HEADER,
    missed_row,
    store_file,
    undelivered_row,
    write_csv,
)

D = dt.date(2026, 3, 7)


async def rows(engine: AsyncEngine, sql: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in (await conn.execute(text(sql))).all()]


def merged_file(data_dir: Path, rows_: list[dict[str, object]], name: str = "m.csv") -> Path:
    return write_csv(data_dir / name, MISSED_HEADER, rows_)


@pytest.fixture
def logs() -> Any:
    buf = io.StringIO()
    json_logger.configure(stream=buf)
    yield lambda: [json.loads(line) for line in buf.getvalue().splitlines()]
    json_logger.configure(stream=None)


async def test_load_coerces_and_counts(engine: AsyncEngine, data_dir: Path) -> None:
    path = write_csv(
        data_dir / "u.csv",
        [h.upper() for h in UNDELIVERED_HEADER],  # order_no alias, shouting header
        [
            undelivered_row("A1", "O1"),
            undelivered_row("A1", "O2", actual_deliver_on="21 Apr 2026 3:03:39 PM"),
        ],
    )
    result = await ingest_file(engine, "undelivered_all", D, path, run_id="r1", batch_size=1)
    assert (result.inserted, result.updated, result.rejected) == (2, 0, 0)
    assert result.ingested_rows == 2 and result.batches == 2
    assert result.column_mapping["ORDER_NO"] == "order_id"
    got = await rows(engine, "SELECT * FROM undelivered_orders ORDER BY order_id")
    assert got[0]["taxable_amount"] == Decimal("1200.00")
    assert got[0]["net_amount"] == Decimal("1345.00")
    assert got[0]["mobile_no"] == "9876543210"
    assert got[0]["order_date"] == dt.date(2025, 11, 26)
    assert got[0]["expected_deliver_on"] == dt.date(2026, 3, 7)
    assert got[0]["actual_deliver_on"] is None
    assert got[1]["actual_deliver_on"] == dt.date(2026, 4, 21)
    assert {r["run_date"] for r in got} == {D} and {r["run_id"] for r in got} == {"r1"}


async def test_default_batch_size_is_past_the_bind_limit(
    engine: AsyncEngine, data_dir: Path
) -> None:
    # 3000 rows x 15 columns = 45,000 values > asyncpg's 32,767 bind parameters.
    path = merged_file(data_dir, [missed_row("A1", f"P{i}") for i in range(3500)])
    result = await ingest_file(engine, "missed_leads", D, path, run_id="r1", batch_size=3000)
    assert result.inserted == 3500 and result.batches == 2
    assert (await rows(engine, "SELECT count(*) AS n FROM missed_leads"))[0]["n"] == 3500


async def test_rerun_is_idempotent(engine: AsyncEngine, data_dir: Path) -> None:
    path = merged_file(
        data_dir, [missed_row("A1", "P1"), missed_row("A1", "P2"), missed_row("A1", "")]
    )
    first = await ingest_file(engine, "missed_leads", D, path, run_id="r1", batch_size=2)
    snapshot = await rows(engine, "SELECT *, created_at AS c0 FROM missed_leads ORDER BY pickup_no")
    again = await ingest_file(engine, "missed_leads", D, path, run_id="r2", batch_size=2)
    assert (first.inserted, first.updated, first.rejected) == (2, 0, 1)
    assert (again.inserted, again.updated, again.rejected) == (0, 2, 1)
    after = await rows(engine, "SELECT * FROM missed_leads ORDER BY pickup_no")
    ignore = {"run_id", "updated_at", "c0"}
    assert [{k: v for k, v in r.items() if k not in ignore} for r in snapshot] == [
        {k: v for k, v in r.items() if k not in ignore} for r in after
    ]
    assert [r["created_at"] for r in after] == [r["c0"] for r in snapshot]  # untouched
    assert all(a["updated_at"] > s["updated_at"] for a, s in zip(after, snapshot, strict=True))
    await ingest_file(engine, "missed_leads", D, path, run_id="r2", batch_size=2)  # a retry
    rejects = await rows(engine, "SELECT run_id FROM ingest_rejects ORDER BY run_id")
    # each run keeps its own rejects; a retried step of a run replaces, never duplicates, them
    assert [r["run_id"] for r in rejects] == ["r1", "r2"]


async def test_backfill_never_rolls_back_newer_rows(engine: AsyncEngine, data_dir: Path) -> None:
    newer = merged_file(data_dir, [missed_row("A1", "P1", is_order_placed="1")], "new.csv")
    older = merged_file(
        data_dir,
        [missed_row("A1", "P1", is_order_placed="0"), missed_row("A1", "P0")],
        "old.csv",
    )
    await ingest_file(engine, "missed_leads", D, newer, run_id="r-new")
    back = await ingest_file(
        engine, "missed_leads", D - dt.timedelta(days=3), older, run_id="r-old"
    )
    assert (back.inserted, back.updated, back.kept_newer) == (1, 0, 1)
    assert back.ingested_rows == 2 == back.rows_read  # kept rows count: the audit still holds
    got = {r["pickup_no"]: r for r in await rows(engine, "SELECT * FROM missed_leads")}
    assert got["P1"]["is_order_placed"] is True and got["P1"]["run_date"] == D
    assert got["P0"]["run_date"] == D - dt.timedelta(days=3)
    # and a newer snapshot does update
    newest = merged_file(data_dir, [missed_row("A1", "P0", customer_type="Repeat")], "n2.csv")
    res = await ingest_file(engine, "missed_leads", D, newest, run_id="r3")
    assert (res.inserted, res.updated) == (0, 1)


async def test_rejects_are_recorded_with_line_and_reason(
    engine: AsyncEngine, data_dir: Path
) -> None:
    path = merged_file(
        data_dir,
        [
            missed_row("A1", "P1", special_instruction="two\nlines"),  # line 2-3
            missed_row("A1", "P2", pickup_date="31/31/2026"),  # line 4
            missed_row("A1", "N/A"),  # line 5: missing key
            missed_row("A1", "P3", id="12x"),  # line 6
        ],
    )
    result = await ingest_file(engine, "missed_leads", D, path, run_id="r1")
    assert (result.inserted, result.rejected, result.ingested_rows) == (1, 3, 1)
    rejects = await rows(engine, "SELECT * FROM ingest_rejects ORDER BY line_number")
    assert [r["line_number"] for r in rejects] == [4, 5, 6]
    assert "pickup_date" in rejects[0]["error"] and "31/31/2026" in rejects[0]["error"]
    assert "missing dedupe key pickup_no" in rejects[1]["error"]
    assert "pickup_row_id" in rejects[2]["error"]
    assert rejects[0]["raw_row"]["pickup_date"] == "31/31/2026"
    assert rejects[0]["file"] == str(path)
    assert {r["bucket"] for r in rejects} == {"missed_leads"}
    assert {r["run_id"] for r in rejects} == {"r1"}


async def test_unknown_and_missing_columns(engine: AsyncEngine, data_dir: Path, logs: Any) -> None:
    header = [h for h in MISSED_HEADER if h != "customer_type"] + ["Loyalty Tier"]
    path = write_csv(
        data_dir / "m.csv", header, [{**missed_row("A1", "P1"), "loyalty tier": "gold"}]
    )
    result = await ingest_file(engine, "missed_leads", D, path, run_id="r1")
    assert result.unknown_columns == ["Loyalty Tier"] and result.missing_columns == [
        "customer_type"
    ]
    assert (await rows(engine, "SELECT customer_type FROM missed_leads"))[0][
        "customer_type"
    ] is None
    warnings = [e for e in logs() if e["status"] == "warn" and e["phase"] == "ingest"]
    assert sum("Loyalty Tier" in e["message"] for e in warnings) == 1


async def test_missing_key_column_fails_naming_it(engine: AsyncEngine, data_dir: Path) -> None:
    header = [h for h in MISSED_HEADER if h != "store_code"]
    path = write_csv(data_dir / "m.csv", header, [missed_row("A1", "P1")])
    with pytest.raises(IngestError, match="store_code"):
        await ingest_file(engine, "missed_leads", D, path, run_id="r1")
    assert await rows(engine, "SELECT * FROM missed_leads") == []


async def test_duplicate_keys_inside_a_file(engine: AsyncEngine, data_dir: Path) -> None:
    path = merged_file(
        data_dir,
        [
            missed_row("A1", "P1", id=1),
            missed_row("A1", "P1", id=2),  # same batch: the later line wins
            missed_row("A1", "P2", id=3),
            missed_row("A1", "P1", id=4),  # next batch: updates the row
        ],
    )
    result = await ingest_file(engine, "missed_leads", D, path, run_id="r1", batch_size=3)
    assert (result.inserted, result.updated, result.duplicates_in_file) == (2, 1, 1)
    assert result.rows_read == 4
    got = {
        r["pickup_no"]: r["pickup_row_id"] for r in await rows(engine, "SELECT * FROM missed_leads")
    }
    assert got == {"P1": 4, "P2": 3}


async def test_database_error_mid_bucket_leaves_nothing(
    engine: AsyncEngine, data_dir: Path
) -> None:
    before = merged_file(data_dir, [missed_row("A1", "P1", customer_type="Old")], "before.csv")
    await ingest_file(engine, "missed_leads", D - dt.timedelta(days=1), before, run_id="r0")
    async with engine.begin() as conn:  # a server-side failure on the 3rd batch
        await conn.execute(
            text(
                "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.pickup_no = 'BOOM' THEN RAISE EXCEPTION 'disk on fire'; END IF; "
                "RETURN NEW; END $$"
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER boom BEFORE INSERT OR UPDATE ON missed_leads "
                "FOR EACH ROW EXECUTE FUNCTION boom()"
            )
        )
    path = merged_file(
        data_dir,
        [
            missed_row("A1", "P1", customer_type="New"),
            missed_row("A1", ""),  # a reject in the first batch
            missed_row("A1", "P2"),
            missed_row("A1", "P3"),
            missed_row("A1", "BOOM"),
            missed_row("A1", "P4"),
        ],
    )
    with pytest.raises(IngestError, match="disk on fire"):
        await ingest_file(engine, "missed_leads", D, path, run_id="r1", batch_size=2)
    got = await rows(engine, "SELECT pickup_no, customer_type, run_id FROM missed_leads")
    assert got == [{"pickup_no": "P1", "customer_type": "Old", "run_id": "r0"}]
    assert await rows(engine, "SELECT * FROM ingest_rejects") == []
    assert path.exists()


async def test_dry_run_writes_nothing_and_logs_the_plan(
    engine: AsyncEngine, data_dir: Path, logs: Any
) -> None:
    path = merged_file(
        data_dir, [missed_row("A1", f"P{i}") for i in range(7)] + [missed_row("A1", "")]
    )
    result = await ingest_file(
        engine, "missed_leads", D, path, run_id="r1", batch_size=3, dry_run=True
    )
    assert result.dry_run and result.batches == 3 and result.rows_read == 8
    assert result.rejected == 1 and result.inserted == result.updated == 0
    assert len(result.sample_rows) == 5
    assert result.sample_rows[0]["pickup_date"] == "2026-03-07"
    assert await rows(engine, "SELECT * FROM missed_leads") == []
    assert await rows(engine, "SELECT * FROM ingest_rejects") == []
    (event,) = [e for e in logs() if e["phase"] == "ingest" and "plan" in e["extras"]]
    plan = event["extras"]["plan"]
    assert plan["batches"] == 3 and plan["column_mapping"]["id"] == "pickup_row_id"
    assert plan["unknown_columns"] == [] and plan["missing_columns"] == []
    assert len(event["extras"]["samples"]) == 5


async def test_same_bucket_and_date_never_interleave(
    database_url: Any, engine: AsyncEngine, data_dir: Path
) -> None:
    path = merged_file(data_dir, [missed_row("A1", f"P{i}") for i in range(400)])
    other = create_engine(database_url)
    try:
        a, b = await asyncio.gather(
            ingest_file(engine, "missed_leads", D, path, run_id="ra", batch_size=50),
            ingest_file(other, "missed_leads", D, path, run_id="rb", batch_size=50),
        )
    finally:
        await other.dispose()
    # Serialised by the advisory lock: one run inserted everything, the other updated everything.
    assert sorted([(a.inserted, a.updated), (b.inserted, b.updated)]) == [(0, 400), (400, 0)]


async def test_merge_then_ingest_reconciles(engine: AsyncEngine, data_dir: Path) -> None:
    files = {
        s: write_csv(
            store_file(data_dir, D, "missed_leads", s),
            MISSED_HEADER,
            [missed_row(s, f"P{i % 5}") for i in range(12)],
        )
        for s in ("A1", "B1")
    }
    merge = merge_bucket("missed_leads", D, files, data_dir)
    result = await ingest_file(engine, "missed_leads", D, merge.path, run_id="r1", batch_size=4)
    assert merge.merged_rows == result.ingested_rows == merge.expected_unique == 10
