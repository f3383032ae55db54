"""Audit verdicts and the all-or-nothing cleanup, end to end on portal-shaped files."""

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.audit import evaluate, get_audit, latest_audit, write_audit
from app.cleanup import TRASH_DIR, cleanup_audit, cleanup_manifest, recover_trash
from app.ingest import IngestError, ingest_file
from app.merger import merge_bucket
from tests.portal_files import MISSED_HEADER, missed_row, store_file, write_csv, write_sentinel

D = dt.date(2026, 3, 7)


@pytest.mark.parametrize(
    ("counts", "status", "reason"),
    [
        ((120, 120, 120, 0), "passed", None),
        ((120, 118, 120, 2), "failed", "merged_rows=120 != ingested_rows=118; rejected=2"),
        ((120, 120, 119, 0), "failed", "merged_rows=120 != expected_unique=119"),
        ((0, 0, 0, 0), "passed", None),
        ((5, None, 5, None), "failed", "missing counts: ingested_rows; rejected count missing"),
    ],
)
def test_evaluate(counts: tuple[Any, ...], status: str, reason: str | None) -> None:
    assert evaluate(*counts) == (status, reason)


async def run_bucket(
    engine: AsyncEngine, data_dir: Path, rows_by_store: dict[str, list[dict[str, object]] | None]
) -> tuple[Any, list[Path]]:
    files: dict[str, Path] = {}
    for store, rows in rows_by_store.items():
        path = store_file(data_dir, D, "missed_leads", store)
        files[store] = (
            write_sentinel(path) if rows is None else write_csv(path, MISSED_HEADER, rows)
        )
    merge = merge_bucket("missed_leads", D, files, data_dir)
    ingest = await ingest_file(engine, "missed_leads", D, merge.path, run_id="r1", batch_size=3)
    all_files = [*files.values(), merge.path]
    audit = await write_audit(
        engine,
        run_id="r1",
        bucket="missed_leads",
        run_date=D,
        download_rows_by_store=merge.download_rows_by_store,
        failed_stores={"Z9": "HTTP 503 after retries"},
        merge=merge,
        ingest=ingest,
        files=all_files,
    )
    return audit, all_files


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
    assert audit.status == "passed" and audit.id is not None
    assert "Z9" in (audit.reason or "")  # noted, but the files that exist reconcile
    assert audit.download_total == 2 and audit.merged_rows == audit.ingested_rows == 1
    assert {e["path"] for e in audit.manifest} == {str(p.resolve()) for p in files}
    assert all(len(e["sha256"]) == 64 and e["size"] >= 0 for e in audit.manifest)

    result = await cleanup_audit(engine, audit.id, data_dir)
    assert result.status == "deleted" and sorted(result.deleted) == sorted(
        str(p.resolve()) for p in files
    )
    assert not any(p.exists() for p in files)
    assert unrelated.exists()  # not in the manifest: never touched
    assert not (data_dir / TRASH_DIR).exists() or not any((data_dir / TRASH_DIR).iterdir())
    stored = await get_audit(engine, audit.id)
    assert stored is not None and stored.cleanup_status == "deleted" and stored.cleaned_at

    again = await cleanup_audit(engine, audit.id, data_dir)  # harmless second run
    assert again.status == "already_clean"
    stored2 = await get_audit(engine, audit.id)
    assert stored2 is not None and stored2.cleanup_status == "deleted"
    assert stored2.cleaned_at == stored.cleaned_at


async def test_failed_audit_keeps_every_file(engine: AsyncEngine, data_dir: Path) -> None:
    audit, files = await run_bucket(
        engine, data_dir, {"A1": [missed_row("A1", "P1"), missed_row("A1", "")]}
    )
    assert audit.status == "failed"
    assert audit.reason == "merged_rows=2 != ingested_rows=1; rejected=1"
    result = await cleanup_audit(engine, audit.id, data_dir)  # type: ignore[arg-type]
    assert result.status == "kept" and result.reason == audit.reason
    assert all(p.exists() for p in files)
    latest = await latest_audit(engine, "missed_leads", D)
    assert latest is not None and latest.cleanup_status == "kept"


async def test_audit_upsert_on_retry(engine: AsyncEngine, data_dir: Path) -> None:
    first, _ = await run_bucket(engine, data_dir, {"A1": [missed_row("A1", "P1")]})
    second, _ = await run_bucket(engine, data_dir, {"A1": [missed_row("A1", "P1")]})
    assert first.id == second.id
    async with engine.connect() as conn:
        n = (await conn.execute(text("SELECT count(*) FROM pipeline_audit"))).scalar_one()
    assert n == 1


async def test_failed_ingest_audit_and_files_kept(engine: AsyncEngine, data_dir: Path) -> None:
    files = {
        "A1": write_csv(
            store_file(data_dir, D, "missed_leads", "A1"),
            MISSED_HEADER,
            [missed_row("A1", f"P{i}") for i in range(5)] + [missed_row("A1", "BOOM")],
        )
    }
    merge = merge_bucket("missed_leads", D, files, data_dir)
    async with engine.begin() as conn:
        await conn.execute(
            text("ALTER TABLE missed_leads ADD CONSTRAINT no_boom CHECK (pickup_no <> 'BOOM')")
        )
    with pytest.raises(IngestError) as info:
        await ingest_file(engine, "missed_leads", D, merge.path, run_id="r1", batch_size=2)
    audit = await write_audit(
        engine,
        run_id="r1",
        bucket="missed_leads",
        run_date=D,
        download_rows_by_store=merge.download_rows_by_store,
        failed_stores={},
        merge=merge,
        ingest=None,
        files=[*files.values(), merge.path],
        error=str(info.value),
    )
    assert audit.status == "failed" and "no_boom" in (audit.reason or "")
    assert "ingest did not complete" in (audit.reason or "")
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM missed_leads"))).scalar_one() == 0
    assert (await cleanup_audit(engine, audit.id, data_dir)).status == "kept"  # type: ignore[arg-type]
    assert files["A1"].exists() and merge.path.exists()


async def test_changed_file_refuses_and_keeps_all(engine: AsyncEngine, data_dir: Path) -> None:
    audit, files = await run_bucket(
        engine, data_dir, {"A1": [missed_row("A1", "P1")], "B1": [missed_row("B1", "P1")]}
    )
    with files[1].open("a") as fh:  # someone appended to B1's file after the audit
        fh.write("x")
    result = await cleanup_audit(engine, audit.id, data_dir)  # type: ignore[arg-type]
    assert result.status == "refused" and "size" in (result.reason or "")
    assert all(p.exists() for p in files)
    same_size = files[0].read_bytes().replace(b"P1", b"P2")
    files[1].write_bytes(files[1].read_bytes()[:-1])  # B1 back as audited
    files[0].write_bytes(same_size)  # same size, other content
    result = await cleanup_audit(engine, audit.id, data_dir)  # type: ignore[arg-type]
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
    assert not any((data_dir / TRASH_DIR).iterdir())


def test_crash_mid_move_is_recovered_to_all_files(data_dir: Path) -> None:
    folder = data_dir / "2026-03-07"
    folder.mkdir()
    files = [folder / f"S{i}.csv" for i in range(3)]
    for p in files:
        p.write_text("h\n1\n")
    # What a crash after the first of three moves leaves behind: an uncommitted journal.
    trash = data_dir / TRASH_DIR / "audit7-dead"
    trash.mkdir(parents=True)
    moves = [(str(p), str(trash / f"{i:04d}-{p.name}")) for i, p in enumerate(files)]
    (trash / "journal.json").write_text(json.dumps({"state": "moving", "moves": moves}))
    os.rename(files[0], moves[0][1])
    assert not files[0].exists()
    recover_trash(data_dir)
    assert all(p.exists() for p in files) and not trash.exists()
    # A crash after the commit point: the trash is removed, the files stay deleted.
    trash.mkdir()
    for src, dst in moves:
        os.rename(src, dst)
    (trash / "journal.json").write_text(json.dumps({"state": "committed", "moves": moves}))
    recover_trash(data_dir)
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
