"""The audit's measures taken while the load runs (`app.reconcile.load_and_measure`).

Real PostgreSQL throughout. What must hold: the measures taken alongside equal the measures
taken after the load, the table is read back only after the load committed, a failed load or
a failed measurement never hangs or hides the load's outcome, and a stale exclusion is never
used.
"""

import asyncio
import datetime as dt
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

import app.reconcile
from app.ingest import IngestError, IngestResult, ingest_file
from app.merger import MergeResult, merge_bucket
from app.reconcile import Measured, load_and_measure, measure_counts
from app.reject_store import replace_rejects
from app.run_context import RunContext
from app.step_results import discard_result, maybe_result, save_result
from tests.chain import run_dir
from tests.portal_files import MISSED_HEADER, missed_row, write_csv

D = dt.date(2026, 3, 7)


async def _merged(engine: AsyncEngine, data_dir: Path, ctx: RunContext) -> MergeResult:
    """Two stores, an in-file duplicate and a row without its key (quarantined: a reject the
    raw measure must leave out of the distinct keys)."""
    folder = run_dir(data_dir, D, ctx.run_id)
    rows = [missed_row("A1", f"P{i}") for i in range(40)] + [missed_row("A1", "P3")]
    rows.insert(5, missed_row("A1", ""))
    a1 = write_csv(folder / "A1-missed-leads.csv", MISSED_HEADER, rows)
    b_rows = [missed_row("B1", f"Q{i}") for i in range(25)]
    b1 = write_csv(folder / "B1-missed-leads.csv", MISSED_HEADER, b_rows)
    merge = merge_bucket("missed_leads", D, {"A1": a1, "B1": b1}, data_dir, out_dir=folder)
    await replace_rejects(engine, ctx.run_id, "missed_leads", D, merge.rejects)
    assert merge.rejects, "the fixture must exercise the raw measure's exclusions"
    return merge


def _loader(engine: AsyncEngine, merge: MergeResult, ctx: RunContext) -> Any:
    def load() -> Awaitable[IngestResult]:
        return ingest_file(engine, "missed_leads", D, merge.path, run_id=ctx.run_id, batch_size=7)

    return load


async def _sessions(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        return int((await conn.execute(text(sql))).scalar_one())


async def test_measures_taken_alongside_equal_the_measures_taken_after(
    engine: AsyncEngine, data_dir: Path
) -> None:
    ctx = RunContext("r1", D, D, data_dir)
    merge = await _merged(engine, data_dir, ctx)
    loaded, measured = await load_and_measure(engine, ctx, merge, _loader(engine, merge, ctx))
    assert measured is not None
    alongside = await measure_counts(engine, ctx, merge, loaded, measured)
    after = await measure_counts(engine, ctx, merge, loaded)
    assert alongside == after
    # the read-back ran after the commit: it found every row this run wrote
    assert alongside.written == alongside.merged_rows == alongside.expected_unique == 65
    assert alongside.missing_keys == 0 and alongside.quarantined == 1
    assert alongside.download_total == 67 and measured.exclude == {"A1": [6]}
    assert measured.load.duration_ms > 0 and measured.raw.duration_ms > 0


async def test_a_failed_load_is_raised_and_lets_go_of_the_measuring_sessions(
    engine: AsyncEngine, data_dir: Path
) -> None:
    ctx = RunContext("r1", D, D, data_dir)
    merge = await _merged(engine, data_dir, ctx)
    before = await _sessions(engine)

    async def failing() -> IngestResult:
        await asyncio.sleep(0.2)  # the measuring side is busy staging
        raise IngestError("the load failed")

    with pytest.raises(IngestError, match="the load failed"):
        await asyncio.wait_for(load_and_measure(engine, ctx, merge, failing), timeout=60)
    assert await _sessions(engine) <= before


async def test_a_measuring_side_that_fails_leaves_the_audit_to_measure(
    engine: AsyncEngine, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = RunContext("r1", D, D, data_dir)
    merge = await _merged(engine, data_dir, ctx)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionResetError("the measuring session was lost")

    monkeypatch.setattr(app.reconcile, "measure_raw", broken)
    loaded, measured = await load_and_measure(engine, ctx, merge, _loader(engine, merge, ctx))
    assert measured is None and loaded.rows_read == 65  # the load itself is untouched
    monkeypatch.undo()
    counts = await measure_counts(engine, ctx, merge, loaded, measured)
    assert counts.written == counts.expected_unique == 65 and counts.download_total == 67


async def test_a_changed_exclusion_is_measured_again_not_reused(
    engine: AsyncEngine, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = RunContext("r1", D, D, data_dir)
    merge = await _merged(engine, data_dir, ctx)
    loaded, measured = await load_and_measure(engine, ctx, merge, _loader(engine, merge, ctx))
    assert measured is not None
    stale = Measured(measured.raw, measured.load, {"A1": [1, 2, 3]})
    calls: list[Any] = []
    real = app.reconcile.measure_raw

    async def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return await real(*args, **kwargs)

    monkeypatch.setattr(app.reconcile, "measure_raw", counting)
    assert await measure_counts(engine, ctx, merge, loaded, measured) is not None
    assert calls == []  # the same exclusion: the measure taken alongside is used
    await measure_counts(engine, ctx, merge, loaded, stale)
    assert len(calls) == 1  # another exclusion: measured again


def test_a_discarded_hand_off_is_not_handed_on(data_dir: Path) -> None:
    """The table step discards its measures before it runs again in the same run."""
    ctx = RunContext("r1", D, D, data_dir)
    save_result(ctx, "missed_leads", "measured", {"raw": 1})
    discard_result(ctx, "missed_leads", "measured")
    assert maybe_result(ctx, Measured, "missed_leads", "measured") is None
