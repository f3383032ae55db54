"""Delete a reconciled bucket's files: all of them or none, and only the ones the audit saw.

Why it is this careful: these CSVs are the only copy of what the portal served that day, and the
portal serves current data only. So cleanup deletes nothing unless the audit passed, and then
exactly the files in the audit's manifest, each still inside `DATA_DIR` (resolved, no symlink)
and unchanged since the audit (same size and sha256).

All-or-nothing: every file is first renamed into one trash folder on the same filesystem
(`DATA_DIR/.trash/<date>/<tag>-<random>/`), next to a journal listing the moves. Only when every
move succeeded is the journal marked committed and the folder removed. Any failure moves back
what was moved. A crash in the middle leaves a journal behind; the next cleanup of the same date
first recovers it: an uncommitted journal is rolled back (every file returns to its place), a
committed one is rolled forward (the trash is removed). So after recovery either all the
manifest's files are in place or none is.

One cleanup per date at a time: `cleanup_audit` holds the run date (`app.run_lock`) while it
recovers and moves, so recovery only ever touches journals of its own date, whose cleanup
cannot be running (a cleanup of another date has its own trash folder and is never undone).
Every outcome is recorded on the audit row (`cleanup_status`, `cleanup_run_id`,
`cleanup_reason`): the sensor launches cleanups only for passed audits without an outcome.

Running cleanup twice is harmless: files already gone (and a committed earlier cleanup) give
`already_clean`. A failed audit gives `kept`, and its reason is logged as the discrepancy.
"""

import contextlib
import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Table, func, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.models import PipelineAudit
from app.json_logger import log_event
from app.run_lock import DEFAULT_WAIT_S, hold_run_date_async

TRASH_DIR = ".trash"
JOURNAL = "journal.json"


@dataclass(frozen=True)
class CleanupResult:
    status: str  # "deleted" | "kept" | "refused" | "already_clean"
    reason: str | None
    deleted: list[str] = field(default_factory=list)
    bucket: str | None = None
    run_date: dt.date | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_journal(folder: Path, state: str, moves: list[tuple[str, str]]) -> None:
    tmp = folder / f".{JOURNAL}.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump({"state": state, "moves": moves}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(folder / JOURNAL)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _move_back(moves: Sequence[Sequence[str]]) -> list[str]:
    """Undo moves (trash -> original); returns the paths it could not restore."""
    failed = []
    for src, dst in reversed(moves):
        trashed, original = Path(dst), Path(src)
        if trashed.exists() and not original.exists():
            try:
                trashed.rename(original)
            except OSError:
                failed.append(src)
    return failed


def trash_root(data_dir: Path, run_date: dt.date | None) -> Path:
    """The trash of one date's cleanups (`None`: the undated trash of `cleanup_manifest`)."""
    return Path(data_dir) / TRASH_DIR / (run_date.isoformat() if run_date else "undated")


def recover_trash(data_dir: Path, run_date: dt.date | None = None) -> list[dict[str, Any]]:
    """Finish what a crashed cleanup of `run_date` left: roll back uncommitted, drop committed.

    The caller holds the date, so no cleanup of that date is in flight.
    """
    root = trash_root(data_dir, run_date)
    actions: list[dict[str, Any]] = []
    if not root.is_dir():
        return actions
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        journal = folder / JOURNAL
        try:
            state = json.loads(journal.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = {"state": "moving", "moves": []}
        if state.get("state") == "committed":
            shutil.rmtree(folder, ignore_errors=True)
            actions.append({"trash": folder.name, "action": "rolled forward (deleted)"})
            continue
        failed = _move_back(state.get("moves", []))
        if not failed:
            shutil.rmtree(folder, ignore_errors=True)
        actions.append(
            {"trash": folder.name, "action": "rolled back (restored)", "not_restored": failed}
        )
    for action in actions:
        log_event(
            "cleanup",
            f"recovered an interrupted cleanup: {action['action']}",
            status="warn",
            date=run_date,
            extras=action,
        )
    _remove_empty(root)
    return actions


def _remove_empty(root: Path) -> None:
    """Drop the date's trash folder and `.trash` itself once empty (no litter after cleanup)."""
    for folder in (root, root.parent):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def cleanup_manifest(
    manifest: Sequence[Mapping[str, Any]],
    data_dir: Path,
    *,
    tag: str = "manifest",
    bucket: str | None = None,
    run_date: dt.date | None = None,
) -> CleanupResult:
    """Delete exactly the manifest's files, all or none (see the module docstring)."""
    started = time.perf_counter()
    root = Path(data_dir).resolve()
    fields: dict[str, Any] = {"bucket": bucket, "date": run_date}

    def decide(status: str, reason: str | None, deleted: list[str] | None = None) -> CleanupResult:
        log_event(
            "cleanup",
            f"cleanup {status}" + (f": {reason}" if reason else ""),
            status="ok" if status in ("deleted", "already_clean") else "warn",
            duration_ms=(time.perf_counter() - started) * 1000,
            extras={"decision": status, "reason": reason, "deleted": deleted or [], "tag": tag},
            **fields,
        )
        return CleanupResult(status, reason, list(deleted or []), bucket, run_date)

    recover_trash(root, run_date)
    problems: list[str] = []
    present: list[tuple[Path, Mapping[str, Any]]] = []
    gone: list[str] = []
    for entry in manifest:
        raw = Path(str(entry.get("path", "")))
        if not raw.is_absolute() or not _inside(raw, root) or raw.is_symlink():
            problems.append(f"{raw}: not a plain file inside DATA_DIR")
        elif not _inside(raw.resolve(), root) or _inside(raw.resolve(), root / TRASH_DIR):
            problems.append(f"{raw}: resolves outside DATA_DIR")
        elif not raw.exists():
            gone.append(str(raw))
        elif not raw.is_file():
            problems.append(f"{raw}: not a regular file")
        else:
            present.append((raw, entry))
        log_event(
            "cleanup",
            f"checked {raw.name}",
            extras={"path": str(raw), "present": raw.exists()},
            **fields,
        )
    if problems:
        return decide("refused", "; ".join(problems))
    if not present:
        return decide("already_clean", "every file of the manifest is already gone")
    if gone:
        return decide(
            "refused",
            f"partial state: {len(gone)} of {len(manifest)} files already gone "
            f"({', '.join(Path(g).name for g in gone)}); keeping the rest",
        )
    for path, entry in present:
        stat = path.stat()
        if stat.st_size != entry.get("size"):
            problems.append(f"{path.name}: size {stat.st_size} != audited {entry.get('size')}")
        elif _sha256(path) != entry.get("sha256"):
            problems.append(f"{path.name}: sha256 differs from the audited file")
    if problems:
        return decide("refused", "changed since the audit: " + "; ".join(problems))

    trash = trash_root(root, run_date) / f"{tag}-{secrets.token_hex(4)}"
    trash.mkdir(parents=True)
    planned = [(str(p), str(trash / f"{i:04d}-{p.name}")) for i, (p, _) in enumerate(present)]
    _write_journal(trash, "moving", planned)
    moved: list[tuple[str, str]] = []
    try:
        for (src, dst), (path, _entry) in zip(planned, present, strict=True):
            before = path.stat()
            Path(src).rename(dst)  # same filesystem: atomic, and never a copy
            after = Path(dst).stat()
            moved.append((src, dst))
            if (after.st_ino, after.st_size) != (before.st_ino, before.st_size):
                raise OSError(f"{path.name} changed while being moved")
        for src, _ in moved:
            _fsync_dir(Path(src).parent)
        _write_journal(trash, "committed", planned)
    except OSError as exc:
        not_restored = _move_back(moved)
        if not not_restored:
            shutil.rmtree(trash, ignore_errors=True)
            _remove_empty(trash.parent)
        reason = f"move into trash failed, everything moved back: {exc}"
        if not_restored:
            reason += f" (NOT restored, still in {trash}: {not_restored})"
        return decide("refused", reason)
    shutil.rmtree(trash, ignore_errors=True)
    _remove_empty(trash.parent)
    for src, _ in planned:
        log_event("cleanup", f"deleted {Path(src).name}", extras={"path": src}, **fields)
    for folder in sorted({Path(src).parent for src, _ in planned}, reverse=True):
        if folder != root and _inside(folder, root):
            with contextlib.suppress(OSError):  # only if empty: the date folder, once bare
                folder.rmdir()
    return decide("deleted", None, [src for src, _ in planned])


async def cleanup_audit(
    engine: AsyncEngine,
    audit_id: int,
    data_dir: Path,
    *,
    run_id: str,
    wait_s: float = DEFAULT_WAIT_S,
) -> CleanupResult:
    """Clean up after one audit: only a passed one, holding its run date, outcome recorded.

    `run_id` is the run doing the cleanup (the CLI run itself, or the sensor's cleanup run): the
    date lock is re-entrant for it, so the CLI cleans up inside the lock it ran under.
    """
    from app.audit import PASSED, get_audit

    audit = await get_audit(engine, audit_id)
    if audit is None:
        log_event("cleanup", f"no audit {audit_id}; nothing deleted", status="error")
        return CleanupResult("refused", f"no audit with id {audit_id}")
    if audit.status != PASSED:
        result = _kept(audit_id, audit)
    else:
        async with hold_run_date_async(
            engine.url, audit.run_date, run_id, source="cleanup", wait_s=wait_s
        ):
            fresh = await get_audit(engine, audit_id)
            if fresh is not None and fresh.cleanup_status is not None:
                return CleanupResult(
                    "already_clean",
                    f"cleanup already recorded: {fresh.cleanup_status} by run "
                    f"{fresh.cleanup_run_id}",
                    [],
                    audit.bucket,
                    audit.run_date,
                )
            result = cleanup_manifest(
                audit.manifest,
                data_dir,
                tag=f"audit{audit_id}",
                bucket=audit.bucket,
                run_date=audit.run_date,
            )
            if result.status == "deleted":
                _remove_run_bookkeeping(audit.manifest, audit.bucket, data_dir)
            await _record(engine, audit_id, result, run_id)
            return result
    await _record(engine, audit_id, result, run_id)
    return result


def _remove_run_bookkeeping(
    manifest: Sequence[Mapping[str, Any]], bucket: str, data_dir: Path
) -> None:
    """The bucket's step results go with its files; then the run and date folders, if bare."""
    from app.step_results import remove_results

    root = Path(data_dir).resolve()
    for entry in manifest:
        if entry.get("kind") != "merged":
            continue
        run_dir = Path(str(entry["path"])).parent
        if not _inside(run_dir, root) or run_dir == root:
            continue
        remove_results(run_dir, bucket)
        for folder in (run_dir, run_dir.parent):
            if folder != root:
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _kept(audit_id: int, audit: Any) -> CleanupResult:
    reason = audit.reason or f"audit status is {audit.status}"
    log_event(
        "cleanup",
        f"audit failed; keeping every file. discrepancy: {reason}",
        status="warn",
        bucket=audit.bucket,
        date=audit.run_date,
        counts={
            "download_total": audit.download_total,
            "merged_rows": audit.merged_rows,
            "ingested_rows": audit.ingested_rows,
            "expected_unique": audit.expected_unique,
            "rejected": audit.rejected,
        },
        extras={"decision": "kept", "audit_id": audit_id, "reason": reason},
    )
    return CleanupResult("kept", reason, [], audit.bucket, audit.run_date)


async def _record(engine: AsyncEngine, audit_id: int, result: CleanupResult, run_id: str) -> None:
    table: Table = PipelineAudit.__table__  # type: ignore[assignment]
    values: dict[str, Any] = {
        "cleanup_status": result.status,
        "cleanup_run_id": run_id,
        "cleanup_reason": result.reason,
    }
    if result.status == "deleted":
        values["cleaned_at"] = func.now()
    stmt = update(table).where(table.c.id == audit_id)
    if result.status == "already_clean":
        # A second run must not overwrite the first run's "deleted" and its time.
        stmt = stmt.where(table.c.cleanup_status.is_(None) | (table.c.cleanup_status != "deleted"))
        values["cleaned_at"] = func.coalesce(table.c.cleaned_at, func.now())
    async with engine.begin() as conn:
        await conn.execute(stmt.values(**values))
