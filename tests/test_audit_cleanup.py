"""Audit verdicts and the all-or-nothing cleanup, end to end on portal-shaped files."""

import asyncio
import datetime as dt
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.audit import Counts, evaluate, get_audit, latest_audit
from app.cleanup import TRASH_DIR, cleanup_audit, cleanup_manifest, recover_trash
from app.ingest import IngestError, ingest_file
from app.merger import merge_bucket
from app.reconcile import record_failure
from app.run_context import RunContext
from tests.chain import run_chain, run_dir
from tests.portal_files import MISSED_HEADER, missed_row, write_csv, write_sentinel

D = dt.date(2026, 3, 7)
OK = Counts(
    download_total=12,
    in_file_duplicates=1,
    quarantined=1,
    blocking=0,
    merged_rows=10,
    expected_unique=10,
    ingested_rows=10,
    written=10,
    kept_newer=0,
    missing_keys=0,
)


@pytest.mark.parametrize(
    ("counts", "status", "reason"),
    [
        (OK, "passed", "passed with 1 quarantined rows (kept in ingest_rejects)"),
        (replace(OK, quarantined=0, download_total=11), "passed", None),
        (
            replace(OK, ingested_rows=9, written=9, missing_keys=1, missing_examples=[{"k": "P9"}]),
            "failed",
            "merged_rows=10 != ingested_rows=9 (written=9, kept_newer=0); "
            "1 merged keys are not in the table, e.g. (P9)",
        ),
        (
            replace(OK, download_total=13),
            "failed",
            "download_total=13 - in_file_duplicates=1 - quarantined=1 = 11 != merged_rows=10",
        ),
        (replace(OK, expected_unique=11), "failed", "merged_rows=10 != expected_unique=11"),
        (replace(OK, merged_rows=None), "failed", "missing counts: merged_rows"),
        (
            replace(OK, measured_by_store={"A1": 7}, reader_by_store={"A1": 6}),
            "failed",
            "store A1: postgres counts 7 records, the reader 6",
        ),
    ],
)
def test_evaluate(counts: Counts, status: str, reason: str | None) -> None:
    assert evaluate(counts) == (status, reason)


def test_blocking_rejects_fail_even_when_the_rest_adds_up() -> None:
    status, reason = evaluate(replace(OK, quarantined=0, blocking=1, download_total=12))
    assert status == "failed" and "blocking rejects=1" in (reason or "")


async def run_bucket(
    engine: AsyncEngine,
    data_dir: Path,
    rows_by_store: dict[str, list[dict[str, object]] | None],
    alongside: bool = True,
) -> tuple[Any, list[Path]]:
    folder = run_dir(data_dir, D)
    files: dict[str, Path] = {}
    for store, rows in rows_by_store.items():
        path = folder / f"{store}-missed-leads.csv"
        files[store] = (
            write_sentinel(path) if rows is None else write_csv(path, MISSED_HEADER, rows)
        )
    chain = await run_chain(engine, data_dir, files, run_date=D, alongside=alongside)
    return chain.audit, chain.files


async def test_pass_then_cleanup_deletes_exactly_the_manifest(
    engine: AsyncEngine, data_dir: Path
) -> None:
    unrelated = data_dir / D.isoformat() / "A1-undelivered-all.csv"
    audit, files = await run_bucket(
        engine,
        data_dir,
        {"A1": [missed_row("A1", "P1"), missed_row("A1", "P1")], "B1": None},
    )
    unrelated.write_text("order_no\nO1\n")
    assert audit.status == "passed" and audit.id is not None, audit.reason
    assert audit.download_total == 2 and audit.in_file_duplicates == 1
    assert audit.merged_rows == audit.ingested_rows == audit.expected_unique == 1
    assert {e["path"] for e in audit.manifest} == {str(p.resolve()) for p in files}
    assert all(len(e["sha256"]) == 64 and e["size"] >= 0 for e in audit.manifest)

    result = await cleanup_audit(engine, audit.id, data_dir, run_id="c1")
    assert result.status == "deleted" and sorted(result.deleted) == sorted(
        str(p.resolve()) for p in files
    )
    assert not any(p.exists() for p in files)
    assert unrelated.exists()  # not in the manifest: never touched
    assert not (data_dir / TRASH_DIR).exists()  # no litter left behind
    assert not (data_dir / D.isoformat() / "r1").exists()  # the run's folder went with its files
    stored = await get_audit(engine, audit.id)
    assert stored is not None and stored.cleanup_status == "deleted" and stored.cleaned_at
    assert stored.cleanup_run_id == "c1"

    again = await cleanup_audit(engine, audit.id, data_dir, run_id="c2")  # harmless second run
    assert again.status == "already_clean"
    stored2 = await get_audit(engine, audit.id)
    assert stored2 is not None and stored2.cleanup_status == "deleted"
    assert stored2.cleaned_at == stored.cleaned_at and stored2.cleanup_run_id == "c1"


async def test_blocking_reject_fails_and_keeps_every_file(
    engine: AsyncEngine, data_dir: Path
) -> None:
    audit, files = await run_bucket(
        engine,
        data_dir,
        {"A1": [missed_row("A1", "P1"), missed_row("A1", "P2", pickup_created_date="31/31/2026")]},
    )
    assert audit.status == "failed" and audit.blocking == 1 and audit.quarantined == 0
    assert "blocking rejects=1" in (audit.reason or "") and "line 3" in (audit.reason or "")
    result = await cleanup_audit(engine, audit.id, data_dir, run_id="c1")  # type: ignore[arg-type]
    assert result.status == "kept" and result.reason == audit.reason
    assert all(p.exists() for p in files)
    latest = await latest_audit(engine, "missed_leads", D)
    assert latest is not None and latest.cleanup_status == "kept"


async def test_quarantined_row_passes_and_is_kept_in_rejects(
    engine: AsyncEngine, data_dir: Path
) -> None:
    audit, _ = await run_bucket(
        engine, data_dir, {"A1": [missed_row("A1", "P1"), missed_row("A1", "")]}
    )
    assert audit.status == "passed", audit.reason
    assert audit.quarantined == 1 and audit.blocking == 0 and "quarantined" in (audit.reason or "")
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT code, blocking, line_number, raw_row FROM ingest_rejects")
            )
        ).one()
    assert (row.code, row.blocking, row.line_number) == ("missing_key", False, 3)
    assert row.raw_row  # the raw record survives the deletion of its file
    assert (await cleanup_audit(engine, audit.id, data_dir, run_id="c1")).status == "deleted"  # type: ignore[arg-type]


@pytest.mark.parametrize("alongside", [True, False], ids=["measured-alongside", "measured-after"])
async def test_a_trigger_that_drops_one_stores_rows_fails_the_audit(
    engine: AsyncEngine, data_dir: Path, alongside: bool
) -> None:
    """The database loses rows silently: only a count read back from the table can notice,
    whether the measures were taken alongside the load (the graph's way) or after it."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE FUNCTION drop_b1() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN IF NEW.store_code = 'B1' THEN RETURN NULL; END IF; RETURN NEW; END $$"
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER drop_b1 BEFORE INSERT ON missed_leads "
                "FOR EACH ROW EXECUTE FUNCTION drop_b1()"
            )
        )
    audit, files = await run_bucket(
        engine,
        data_dir,
        {
            "A1": [missed_row("A1", f"P{i}") for i in range(4)],
            "B1": [missed_row("B1", f"Q{i}") for i in range(3)],
        },
        alongside,
    )
    assert audit.status == "failed"
    assert audit.merged_rows == 7 and audit.ingested_rows == 4 and audit.missing_keys == 3
    assert "3 merged keys are not in the table" in (audit.reason or "")
    assert "B1" in (audit.reason or "")
    assert (await cleanup_audit(engine, audit.id, data_dir, run_id="c1")).status == "kept"  # type: ignore[arg-type]
    assert all(p.exists() for p in files)


async def test_a_ragged_line_is_rejected_the_rest_loads_unshifted(
    engine: AsyncEngine, data_dir: Path
) -> None:
    path = run_dir(data_dir, D) / "A1-missed-leads.csv"
    write_csv(
        path, MISSED_HEADER, [missed_row("A1", f"P{i}", is_order_placed="1") for i in range(3)]
    )
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(",Ravi Kumar,", ",Ravi Kumar,gate 2, ring twice,")  # P1: +1 field
    path.write_text("\n".join(lines) + "\n")
    chain = await run_chain(engine, data_dir, {"A1": path}, run_date=D)
    assert chain.audit.status == "failed" and chain.audit.blocking == 1
    async with engine.connect() as conn:
        rows = (
            await conn.execute(text("SELECT pickup_no, is_order_placed FROM missed_leads"))
        ).all()
        reject = (await conn.execute(text("SELECT code, line_number FROM ingest_rejects"))).one()
    assert sorted(rows) == [("P0", True), ("P2", True)]
    assert (reject.code, reject.line_number) == ("ragged", 3)
    assert all(p.exists() for p in chain.files)


async def test_audit_upsert_on_retry(engine: AsyncEngine, data_dir: Path) -> None:
    first, _ = await run_bucket(engine, data_dir, {"A1": [missed_row("A1", "P1")]})
    second, _ = await run_bucket(engine, data_dir, {"A1": [missed_row("A1", "P1")]})
    assert first.id == second.id
    async with engine.connect() as conn:
        n = (await conn.execute(text("SELECT count(*) FROM pipeline_audit"))).scalar_one()
    assert n == 1


async def test_failed_ingest_audit_and_files_kept(engine: AsyncEngine, data_dir: Path) -> None:
    folder = run_dir(data_dir, D)
    files = {
        "A1": write_csv(
            folder / "A1-missed-leads.csv",
            MISSED_HEADER,
            [missed_row("A1", f"P{i}") for i in range(5)] + [missed_row("A1", "BOOM")],
        )
    }
    merge = merge_bucket("missed_leads", D, files, data_dir, out_dir=folder)
    async with engine.begin() as conn:
        await conn.execute(
            text("ALTER TABLE missed_leads ADD CONSTRAINT no_boom CHECK (pickup_no <> 'BOOM')")
        )
    with pytest.raises(IngestError) as info:
        await ingest_file(engine, "missed_leads", D, merge.path, run_id="r1", batch_size=2)
    ctx = RunContext("r1", D, D, data_dir)
    audit = await record_failure(engine, ctx, "missed_leads", str(info.value), merge=merge)
    assert audit.status == "failed" and "no_boom" in (audit.reason or "")
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM missed_leads"))).scalar_one() == 0
    assert (await cleanup_audit(engine, audit.id, data_dir, run_id="c1")).status == "kept"  # type: ignore[arg-type]
    assert files["A1"].exists() and merge.path.exists()


async def test_changed_file_refuses_and_keeps_all(engine: AsyncEngine, data_dir: Path) -> None:
    audit, files = await run_bucket(
        engine, data_dir, {"A1": [missed_row("A1", "P1")], "B1": [missed_row("B1", "P1")]}
    )
    with files[1].open("a") as fh:  # someone appended to B1's file after the audit
        fh.write("x")
    result = await cleanup_audit(engine, audit.id, data_dir, run_id="c1")  # type: ignore[arg-type]
    assert result.status == "refused" and "size" in (result.reason or "")
    assert all(p.exists() for p in files)
    same_size = files[0].read_bytes().replace(b"P1", b"P2")
    files[1].write_bytes(files[1].read_bytes()[:-1])  # B1 back as audited
    files[0].write_bytes(same_size)  # same size, other content
    audit_row = await get_audit(engine, audit.id)  # type: ignore[arg-type]
    assert audit_row is not None and audit_row.cleanup_status == "refused"
    # a refused cleanup is an outcome: it is not retried by itself; run it again by hand
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE pipeline_audit SET cleanup_status = NULL"))
    result = await cleanup_audit(engine, audit.id, data_dir, run_id="c2")  # type: ignore[arg-type]
    assert result.status == "refused" and "sha256" in (result.reason or "")
    assert all(p.exists() for p in files)


def _entry(path: Path) -> dict[str, Any]:
    from app.audit import file_entry

    return file_entry(path)


def test_outside_data_dir_and_symlinks_refused(tmp_path: Path, data_dir: Path) -> None:
    outside = tmp_path / "elsewhere.csv"
    outside.write_text("a\n1\n")
    inside = data_dir / "2026-03-07" / "A1-missed-leads.csv"
    inside.parent.mkdir()
    inside.write_text("a\n1\n")
    link = data_dir / "2026-03-07" / "link.csv"
    link.symlink_to(outside)
    for manifest in (
        [_entry(inside), _entry(outside)],
        [_entry(inside), {**_entry(outside), "path": str(link)}],
        [_entry(inside), {**_entry(inside), "path": str(data_dir / ".." / "elsewhere.csv")}],
    ):
        result = cleanup_manifest(manifest, data_dir)
        assert result.status == "refused", manifest
        assert inside.exists() and outside.exists()


def test_a_failing_move_rolls_everything_back(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = data_dir / "2026-03-07"
    folder.mkdir()
    files = [folder / f"S{i}-missed-leads.csv" for i in range(3)]
    for p in files:
        p.write_text(f"h\n{p.name}\n")
    manifest = [_entry(p) for p in files]
    real_rename = Path.rename
    calls = {"n": 0}

    def flaky_rename(self: Path, target: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # the third move fails (e.g. EXDEV, EACCES)
            raise OSError("simulated failure")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", flaky_rename)
    result = cleanup_manifest(manifest, data_dir)
    monkeypatch.undo()
    assert result.status == "refused" and "moved back" in (result.reason or "")
    assert all(p.exists() for p in files)
    assert [p.read_text() for p in files] == [f"h\n{p.name}\n" for p in files]
    assert not (data_dir / TRASH_DIR).exists()


def test_crash_mid_move_is_recovered_to_all_files(data_dir: Path) -> None:
    folder = data_dir / "2026-03-07"
    folder.mkdir()
    files = [folder / f"S{i}.csv" for i in range(3)]
    for p in files:
        p.write_text("h\n1\n")
    # What a crash after the first of three moves leaves behind: an uncommitted journal.
    trash = data_dir / TRASH_DIR / "2026-03-07" / "audit7-dead"
    trash.mkdir(parents=True)
    moves = [(str(p), str(trash / f"{i:04d}-{p.name}")) for i, p in enumerate(files)]
    (trash / "journal.json").write_text(json.dumps({"state": "moving", "moves": moves}))
    os.rename(files[0], moves[0][1])
    assert not files[0].exists()
    recover_trash(data_dir, dt.date(2026, 3, 8))  # another date's recovery never touches it
    assert not files[0].exists() and trash.exists()
    recover_trash(data_dir, dt.date(2026, 3, 7))
    assert all(p.exists() for p in files) and not trash.exists()
    # A crash after the commit point: the trash is removed, the files stay deleted.
    trash.mkdir(parents=True)
    for src, dst in moves:
        os.rename(src, dst)
    (trash / "journal.json").write_text(json.dumps({"state": "committed", "moves": moves}))
    recover_trash(data_dir, dt.date(2026, 3, 7))
    assert not any(p.exists() for p in files) and not trash.exists()


def test_partial_state_is_refused(data_dir: Path) -> None:
    folder = data_dir / "2026-03-07"
    folder.mkdir()
    a, b = folder / "a.csv", folder / "b.csv"
    a.write_text("h\n1\n")
    b.write_text("h\n2\n")
    manifest = [_entry(a), _entry(b)]
    b.unlink()
    result = cleanup_manifest(manifest, data_dir)
    assert result.status == "refused" and "partial" in (result.reason or "")
    assert a.exists()


async def test_a_cleanup_never_undoes_another_cleanup_in_flight(
    engine: AsyncEngine, data_dir: Path
) -> None:
    """Issue 9, point 7: recovery used to roll back every journal marked "moving"."""
    import threading

    from app.run_lock import hold_run_date

    first, first_files = await run_bucket(engine, data_dir, {"A1": [missed_row("A1", "P1")]})
    second = await run_chain(
        engine,
        data_dir,
        {
            "B1": write_csv(
                run_dir(data_dir, D, "r2") / "B1-missed-leads.csv",
                MISSED_HEADER,
                [missed_row("B1", "Q1")],
            )
        },
        run_date=D,
        run_id="r2",
    )
    # The first cleanup is in flight: it holds the date and has moved one file into its trash.
    trash = data_dir / TRASH_DIR / D.isoformat() / "audit1-inflight"
    trash.mkdir(parents=True)
    moves = [(str(first_files[0]), str(trash / f"0000-{first_files[0].name}"))]
    (trash / "journal.json").write_text(json.dumps({"state": "moving", "moves": moves}))
    os.rename(*moves[0])
    held, release = threading.Event(), threading.Event()

    def in_flight() -> None:
        with hold_run_date(engine.url, D, "cleanup-one", source="cleanup"):
            held.set()
            release.wait(30)
            (trash / "journal.json").write_text(json.dumps({"state": "committed", "moves": moves}))

    thread = threading.Thread(target=in_flight)
    thread.start()
    held.wait(30)
    task = asyncio.ensure_future(
        cleanup_audit(engine, second.audit.id, data_dir, run_id="cleanup-two", wait_s=30)  # type: ignore[arg-type]
    )
    await asyncio.sleep(1.0)
    assert not task.done()  # the second cleanup of the date waits for the first
    assert not first_files[0].exists()  # and has not rolled the first one back
    release.set()
    result = await task
    thread.join(30)
    assert result.status == "deleted"
    assert not first_files[0].exists()  # the first cleanup's commit was rolled forward
    assert not any(p.exists() for p in second.files)
    assert first.status == "passed"
