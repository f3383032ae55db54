"""The audit's measures taken while earlier steps run: the raw files during the merge
(`app.reconcile.merge_and_measure`), the merged file during the load (`load_and_measure`).

Real PostgreSQL throughout. What must hold: the measures taken alongside equal the measures
taken after the load, the raw files are measured while the merge still runs, the table is read
back only after the load committed, a failed merge or load or a failed measurement never hangs
or hides the step's outcome, and a stale exclusion is never used.
"""

import asyncio
import dataclasses
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Collection
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

import app.measure
import app.measure_worker
import app.merger
import app.reconcile
from app.ingest import IngestError, IngestResult, ingest_file
from app.measure import LoadMeasure, measure_raw, measure_raw_streamed
from app.measure_worker import LoadStepWorker, MergeStepWorker, stop_kept, take_for_load
from app.merger import MergeError, MergeResult
from app.reconcile import (
    BY_AUDIT,
    DURING_LOAD,
    DURING_MERGE,
    STAGED_DURING_MERGE,
    RawMeasured,
    load_and_measure,
    measure_counts,
    merge_and_measure,
)
from app.reject_store import replace_rejects
from app.run_context import RunContext
from app.step_results import discard_result, maybe_result, save_result
from tests.chain import run_dir
from tests.portal_files import MISSED_HEADER, missed_row, write_csv

D = dt.date(2026, 3, 7)


def _store_files(data_dir: Path, ctx: RunContext) -> dict[str, Path]:
    """Two stores, an in-file duplicate and a row without its key (quarantined: a reject the
    raw measure must leave out of the distinct keys)."""
    folder = run_dir(data_dir, D, ctx.run_id)
    rows = [missed_row("A1", f"P{i}") for i in range(40)] + [missed_row("A1", "P3")]
    rows.insert(5, missed_row("A1", ""))
    a1 = write_csv(folder / "A1-missed-leads.csv", MISSED_HEADER, rows)
    b_rows = [missed_row("B1", f"Q{i}") for i in range(25)]
    b1 = write_csv(folder / "B1-missed-leads.csv", MISSED_HEADER, b_rows)
    return {"A1": a1, "B1": b1}


async def _merged_measured(
    engine: AsyncEngine, data_dir: Path, ctx: RunContext, *, then_load: bool = False
) -> tuple[MergeResult, RawMeasured | None]:
    files = _store_files(data_dir, ctx)
    merge, measured = await merge_and_measure(
        engine, ctx, "missed_leads", files, then_load=then_load
    )
    await replace_rejects(engine, ctx.run_id, "missed_leads", D, merge.rejects)
    assert merge.rejects, "the fixture must exercise the raw measure's exclusions"
    return merge, measured


async def _merged(engine: AsyncEngine, data_dir: Path, ctx: RunContext) -> MergeResult:
    return (await _merged_measured(engine, data_dir, ctx))[0]


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
    merge, raw_measured = await _merged_measured(engine, data_dir, ctx)
    assert raw_measured is not None
    loaded, measured = await load_and_measure(engine, ctx, merge, _loader(engine, merge, ctx))
    assert measured is not None
    alongside = await measure_counts(engine, ctx, merge, loaded, raw_measured, measured)
    after = await measure_counts(engine, ctx, merge, loaded)
    assert alongside.measured_when == {"raw_files": DURING_MERGE, "merged_file": DURING_LOAD}
    assert after.measured_when == {"raw_files": BY_AUDIT, "merged_file": BY_AUDIT}
    assert dataclasses.replace(alongside, measured_when={}) == dataclasses.replace(
        after, measured_when={}
    )
    # the read-back ran after the commit: it found every row this run wrote
    assert alongside.written == alongside.merged_rows == alongside.expected_unique == 65
    assert alongside.missing_keys == 0 and alongside.quarantined == 1
    assert alongside.download_total == 67 and raw_measured.exclude == {"A1": [6]}
    assert measured.duration_ms > 0 and raw_measured.raw.duration_ms > 0


async def _settled_sessions(engine: AsyncEngine, at_most: int) -> int:
    """The session count once a terminated process's backend has noticed (within 10 s)."""
    count = await _sessions(engine)
    for _ in range(100):
        if count <= at_most:
            break
        await asyncio.sleep(0.1)
        count = await _sessions(engine)
    return count


async def _staging_seen(engine: AsyncEngine, kind: str = "") -> bool:
    """Has another session COPYed into a measure's staging table (its last statement), of
    `kind` if given ("merged": a merged file's)?"""
    table = f"crm\\_measure\\_%\\_{kind}%" if kind else "crm_measure_%"
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
        f"AND query LIKE 'COPY \"{table}'"
    )
    async with engine.connect() as conn:
        return bool((await conn.execute(text(sql))).scalar_one())


async def test_the_raw_files_are_measured_while_the_merge_still_runs(
    engine: AsyncEngine, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the merger is still scanning the last store file, the measuring process has
    already COPYed the first one (seen in pg_stat_activity: the measure runs elsewhere)."""
    ctx = RunContext("r1", D, D, data_dir)
    files = _store_files(data_dir, ctx)
    loop = asyncio.get_running_loop()
    seen_during_b1: list[bool] = []
    real_scan = app.merger._scan

    def slow_scan(bucket: str, source: Any, *args: Any) -> Any:
        if source.store_code == "B1":  # A1 has been handed on; wait for it to be staged
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if asyncio.run_coroutine_threadsafe(_staging_seen(engine), loop).result(10):
                    seen_during_b1.append(True)
                    break
                time.sleep(0.1)
        return real_scan(bucket, source, *args)

    monkeypatch.setattr(app.merger, "_scan", slow_scan)
    _merge, measured = await merge_and_measure(engine, ctx, "missed_leads", files)
    assert seen_during_b1 == [True], "A1 was not staged while the merger scanned B1"
    assert measured is not None and measured.raw.by_store == {"A1": 42, "B1": 25}


async def test_the_merged_file_is_staged_while_the_merger_writes_it(
    engine: AsyncEngine, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `then_load`, the merge step's measuring process COPYs the merged file before the
    merger has finished with it (seen in pg_stat_activity while the merger re-reads the
    file, before its rename), and the table step uses that staging: no other measuring
    process, and the same counts as the audit's own measure."""
    ctx = RunContext("r1", D, D, data_dir)
    files = _store_files(data_dir, ctx)
    loop = asyncio.get_running_loop()
    seen_before_rename: list[bool] = []
    real_count = app.merger.count_records

    def slow_count(path: Path) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not seen_before_rename:
            if asyncio.run_coroutine_threadsafe(_staging_seen(engine, "merged"), loop).result(10):
                seen_before_rename.append(True)
            time.sleep(0.05)
        return real_count(path)

    monkeypatch.setattr(app.merger, "count_records", slow_count)
    merge, raw_measured = await merge_and_measure(
        engine, ctx, "missed_leads", files, then_load=True
    )
    assert seen_before_rename == [True], "the merged file was not staged as it was written"
    await replace_rejects(engine, ctx.run_id, "missed_leads", D, merge.rejects)

    class _NoneExpected:
        def __init__(self, *args: Any) -> None:
            raise AssertionError("the load started a measuring process of its own")

    monkeypatch.setattr(app.reconcile, "LoadStepWorker", _NoneExpected)
    loaded, measured = await load_and_measure(engine, ctx, merge, _loader(engine, merge, ctx))
    assert measured is not None and measured.staged_during_merge
    alongside = await measure_counts(engine, ctx, merge, loaded, raw_measured, measured)
    after = await measure_counts(engine, ctx, merge, loaded)
    assert alongside.measured_when == {
        "raw_files": DURING_MERGE,
        "merged_file": STAGED_DURING_MERGE,
    }
    assert dataclasses.replace(alongside, measured_when={}) == dataclasses.replace(
        after, measured_when={}
    )
    assert alongside.written == alongside.merged_rows == 65 and alongside.missing_keys == 0


async def test_a_kept_staging_whose_load_never_comes_lets_go_of_its_session(
    engine: AsyncEngine, data_dir: Path
) -> None:
    """A merge step that kept its staging for a load that does not follow (the run ended, or
    the table step reads another merged file) leaves no measuring session behind."""
    ctx = RunContext("r1", D, D, data_dir)
    await engine.dispose()
    before = await _sessions(engine)
    files = _store_files(data_dir, ctx)
    merge, _ = await merge_and_measure(engine, ctx, "missed_leads", files, then_load=True)
    assert take_for_load(ctx.run_id, "missed_leads", merge.path.with_name("other.csv")) is None
    assert take_for_load(ctx.run_id, "missed_leads", merge.path) is None  # already stopped
    await merge_and_measure(engine, ctx, "missed_leads", files, then_load=True)
    stop_kept()  # what ends the process (atexit) does with a staging nobody took
    await engine.dispose()
    assert await _settled_sessions(engine, before) <= before


async def test_a_streamed_measure_equals_a_listed_one_even_with_a_refused_file(
    engine: AsyncEngine, data_dir: Path
) -> None:
    """A ragged file sends the streamed measure down its careful path: same result."""
    ctx = RunContext("r1", D, D, data_dir)
    files = _store_files(data_dir, ctx)
    ragged = files["A1"].read_text().splitlines()
    ragged[3] += ",one,cell,too,many"
    files["A1"].write_text("\n".join(ragged) + "\n")
    exclude: dict[str, Collection[int]] = {"A1": {3, 6}, "B1": set()}

    async def stream() -> AsyncIterator[tuple[str, Path, Collection[int]]]:
        for store in sorted(files):
            yield store, files[store], exclude[store]

    async with engine.connect() as conn:
        streamed, used = await measure_raw_streamed(conn, "missed_leads", stream())
    async with engine.connect() as conn:
        listed = await measure_raw(conn, "missed_leads", files, exclude)
    assert "A1" in streamed.errors and "line 4" in streamed.errors["A1"]
    assert used == {"A1": [3, 6]}
    for name in ("by_store", "total", "expected_unique", "errors", "keyless_rows"):
        assert getattr(streamed, name) == getattr(listed, name), name


async def test_a_failed_merge_is_raised_and_lets_go_of_the_measuring_session(
    engine: AsyncEngine, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = RunContext("r1", D, D, data_dir)
    files = _store_files(data_dir, ctx)
    before = await _sessions(engine)

    def failing_write(*args: Any, **kwargs: Any) -> int:
        raise MergeError("missed_leads: A1-missed-leads.csv changed while merging")

    monkeypatch.setattr(app.merger, "_write", failing_write)
    with pytest.raises(MergeError, match="changed while merging"):
        await asyncio.wait_for(merge_and_measure(engine, ctx, "missed_leads", files), 60)
    assert await _sessions(engine) <= before


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
    assert await _settled_sessions(engine, before) <= before


class _NoDatabase:
    """A measuring process given a database that is not there: its connect fails."""

    def __init__(self, url: URL, *args: Any) -> None:
        super().__init__(url.set(database="crm_no_such_database"), *args)  # type: ignore[call-arg]


class _NoProcess:
    """No measuring process can be started (a process limit, no memory)."""

    def __init__(self, *args: Any) -> None:
        raise OSError(11, "Resource temporarily unavailable")


class _Killed:
    """A measuring process killed with SIGKILL just before the step's last word to it."""

    def _end(self, item: Any) -> None:
        process = self._process  # type: ignore[attr-defined]
        if self._started() and process.is_alive():  # type: ignore[attr-defined]
            os.kill(process.pid or 0, signal.SIGKILL)
            process.join(10)
        super()._end(item)  # type: ignore[misc]


@pytest.mark.parametrize("then_load", [False, True], ids=["merge-alone", "merge-then-load"])
@pytest.mark.parametrize("fault", [_NoDatabase, _NoProcess, _Killed])
async def test_measuring_sides_that_fail_leave_the_audit_to_measure(
    engine: AsyncEngine,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    fault: type,
    then_load: bool,
) -> None:
    ctx = RunContext("r1", D, D, data_dir)
    await engine.dispose()
    before = await _sessions(engine)
    for name, worker in (
        ("MergeStepWorker", MergeStepWorker),
        ("LoadStepWorker", LoadStepWorker),
    ):
        monkeypatch.setattr(app.reconcile, name, type(name, (fault, worker), {}))
    merging = _merged_measured(engine, data_dir, ctx, then_load=then_load)
    merge, raw_measured = await asyncio.wait_for(merging, 60)
    assert raw_measured is None and merge.merged_rows == 65  # the merge itself is untouched
    loaded, measured = await load_and_measure(engine, ctx, merge, _loader(engine, merge, ctx))
    assert measured is None and loaded.rows_read == 65  # the load itself is untouched
    monkeypatch.undo()
    counts = await measure_counts(engine, ctx, merge, loaded, raw_measured, measured)
    assert counts.written == counts.expected_unique == 65 and counts.download_total == 67
    await engine.dispose()  # only this test's own pooled sessions go; a child's would stay
    assert await _settled_sessions(engine, before) <= before


def test_a_measuring_process_outlives_no_killed_parent(database_url: URL, tmp_path: Path) -> None:
    """A step killed with SIGKILL leaves no measuring process behind (it watches its parent)."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, signal, sys\n"
        "from sqlalchemy.engine import make_url\n"
        "from app.measure_worker import LoadStepWorker, MergeStepWorker\n"
        "if __name__ == '__main__':\n"
        "    worker = MergeStepWorker(make_url(sys.argv[1]), 'missed_leads')\n"
        "    worker._starter.join()\n"
        "    print(worker._process.pid, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    url = database_url.render_as_string(hide_password=False)
    done = subprocess.run(
        [sys.executable, str(script), url], capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    child = int(done.stdout.split()[0])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.2)
    assert not _alive(child), f"measuring process {child} outlived its killed parent"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's reaping is left


async def test_a_changed_exclusion_is_measured_again_not_reused(
    engine: AsyncEngine, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = RunContext("r1", D, D, data_dir)
    merge, raw_measured = await _merged_measured(engine, data_dir, ctx)
    assert raw_measured is not None
    loaded, measured = await load_and_measure(engine, ctx, merge, _loader(engine, merge, ctx))
    stale = RawMeasured(raw_measured.raw, {"A1": [1, 2, 3]})
    calls: list[Any] = []
    real = app.reconcile.measure_raw

    async def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return await real(*args, **kwargs)

    monkeypatch.setattr(app.reconcile, "measure_raw", counting)
    assert await measure_counts(engine, ctx, merge, loaded, raw_measured, measured) is not None
    assert calls == []  # the same exclusion: the measure taken during the merge is used
    await measure_counts(engine, ctx, merge, loaded, stale, measured)
    assert len(calls) == 1  # another exclusion: measured again


@pytest.mark.parametrize(
    ("kind", "step"), [(RawMeasured, "measured_raw"), (LoadMeasure, "measured")]
)
def test_a_discarded_hand_off_is_not_handed_on(data_dir: Path, kind: type, step: str) -> None:
    """The merge and table steps discard their measures before they run again in one run."""
    ctx = RunContext("r1", D, D, data_dir)
    save_result(ctx, "missed_leads", step, {"raw": 1})
    discard_result(ctx, "missed_leads", step)
    assert maybe_result(ctx, kind, "missed_leads", step) is None


async def test_a_staging_whose_commit_never_comes_gives_up_and_lets_go(
    engine: AsyncEngine, data_dir: Path, database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A measuring process's merged part waits a bounded time for "committed", then fails
    (the table step, if it ever comes, falls back) and closes its session."""
    ctx = RunContext("r1", D, D, data_dir)
    merge = await _merged(engine, data_dir, ctx)
    await engine.dispose()
    before = await _sessions(engine)
    monkeypatch.setattr(app.measure_worker, "_COMMIT_WAIT_S", 0.5)
    job = app.measure_worker._MergedJob(str(merge.path), ctx.run_id, ctx.run_date)
    words: asyncio.Queue[Any] = asyncio.Queue()  # nobody says "committed"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(
            app.measure_worker._merged_part(database_url, "missed_leads", job, words), 30
        )
    await engine.dispose()
    assert await _settled_sessions(engine, before) <= before
