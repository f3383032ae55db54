"""The reconciliation verdict per bucket and run date, and its `pipeline_audit` row.

The audit is what makes deleting the downloaded files safe: it passes only when
`merged_rows == ingested_rows == expected_unique` and nothing was rejected, and it records the
manifest (path, size, sha256) of exactly the files that cleanup may later remove, so cleanup can
prove that what it deletes is what was reconciled.

Counting conventions come from the producers: `ingested_rows` already includes the rows kept
because the table held a newer snapshot (`app.ingest`), and a row without a dedupe key counts in
`merged_rows` and `expected_unique` but lands in `rejected` (`app.merger`), so such a row always
fails the audit, loudly.
"""

import datetime as dt
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.models import PipelineAudit
from app.ingest import IngestResult
from app.json_logger import log_event
from app.merger import MergeResult

PASSED = "passed"
FAILED = "failed"


@dataclass(frozen=True)
class AuditRecord:
    """A `pipeline_audit` row (`id` is None for a verdict that was not written, e.g. dry run)."""

    id: int | None
    run_id: str
    bucket: str
    run_date: dt.date
    status: str
    reason: str | None
    download_total: int
    download_rows_by_store: dict[str, int]
    failed_stores: dict[str, str]
    merged_rows: int | None
    expected_unique: int | None
    ingested_rows: int | None
    inserted: int | None
    updated: int | None
    kept_newer: int | None
    rejected: int | None
    manifest: list[dict[str, Any]] = field(default_factory=list)
    cleanup_status: str | None = None
    cleaned_at: dt.datetime | None = None
    created_at: dt.datetime | None = None

    @property
    def passed(self) -> bool:
        return self.status == PASSED


def evaluate(
    merged_rows: int | None,
    ingested_rows: int | None,
    expected_unique: int | None,
    rejected: int | None,
) -> tuple[str, str | None]:
    """("passed", None) or ("failed", a reason naming every number that differs)."""
    reasons: list[str] = []
    named = {
        "merged_rows": merged_rows,
        "ingested_rows": ingested_rows,
        "expected_unique": expected_unique,
    }
    if missing := [name for name, value in named.items() if value is None]:
        reasons.append(f"missing counts: {', '.join(missing)}")
    if merged_rows is not None and ingested_rows is not None and merged_rows != ingested_rows:
        reasons.append(f"merged_rows={merged_rows} != ingested_rows={ingested_rows}")
    if merged_rows is not None and expected_unique is not None and merged_rows != expected_unique:
        reasons.append(f"merged_rows={merged_rows} != expected_unique={expected_unique}")
    if (
        merged_rows is None
        and ingested_rows is not None
        and expected_unique is not None
        and ingested_rows != expected_unique
    ):
        reasons.append(f"ingested_rows={ingested_rows} != expected_unique={expected_unique}")
    if rejected is None:
        reasons.append("rejected count missing")
    elif rejected:
        reasons.append(f"rejected={rejected}")
    return (FAILED, "; ".join(reasons)) if reasons else (PASSED, None)


def file_entry(path: Path) -> dict[str, Any]:
    """Manifest entry: what cleanup will verify before it deletes the file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return {"path": str(path.resolve()), "size": path.stat().st_size, "sha256": digest.hexdigest()}


def build_manifest(files: Sequence[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """(entries for the files that exist, paths that do not); duplicates are listed once."""
    entries: list[dict[str, Any]] = []
    missing: list[str] = []
    seen: set[str] = set()
    for raw in files:
        path = Path(raw)
        key = str(path.resolve())
        if key in seen:
            continue
        seen.add(key)
        if path.is_file():
            entries.append(file_entry(path))
        else:
            missing.append(str(path))
    return entries, missing


def build_audit(
    *,
    run_id: str,
    bucket: str,
    run_date: dt.date,
    download_rows_by_store: Mapping[str, int],
    failed_stores: Mapping[str, str],
    merge: MergeResult | None,
    ingest: IngestResult | None,
    files: Sequence[Path],
    error: str | None = None,
) -> AuditRecord:
    """The verdict and manifest, without touching the database (what a dry run can show)."""
    by_store = {str(k): int(v) for k, v in download_rows_by_store.items()}
    reasons: list[str] = []
    if error:
        reasons.append(f"error: {error}")
    if merge is None:
        reasons.append("merge did not complete")
    if ingest is None:
        reasons.append("ingest did not complete")
    elif ingest.dry_run:
        reasons.append("dry run: nothing was ingested")
    loaded = ingest is not None and not ingest.dry_run
    if merge is not None and ingest is not None and loaded:
        _, verdict = evaluate(
            merge.merged_rows, ingest.ingested_rows, merge.expected_unique, ingest.rejected
        )
        if verdict:
            reasons.append(verdict)
    if merge is not None:
        for store, rows in merge.download_rows_by_store.items():
            if store in by_store and by_store[store] != rows:
                reasons.append(
                    f"store {store}: downloaded {by_store[store]} rows but merged {rows} "
                    "(the file changed after download)"
                )
    manifest, missing = build_manifest(files)
    if missing:
        reasons.append(f"files missing at audit time: {', '.join(missing)}")
    status = FAILED if reasons else PASSED
    reason = "; ".join(reasons) if reasons else None
    if status == PASSED and failed_stores:
        # The files that exist reconcile, so cleaning them up is safe; the stores that failed to
        # download are the run's failure (its exit code), not this reconciliation's.
        reason = "counts reconcile; stores that failed to download: " + ", ".join(
            f"{store} ({why})" for store, why in sorted(failed_stores.items())
        )
    return AuditRecord(
        id=None,
        run_id=run_id,
        bucket=bucket,
        run_date=run_date,
        status=status,
        reason=reason,
        download_total=sum(by_store.values()),
        download_rows_by_store=by_store,
        failed_stores={str(k): str(v) for k, v in failed_stores.items()},
        merged_rows=merge.merged_rows if merge else None,
        expected_unique=merge.expected_unique if merge else None,
        ingested_rows=ingest.ingested_rows if ingest and not ingest.dry_run else None,
        inserted=ingest.inserted if ingest and not ingest.dry_run else None,
        updated=ingest.updated if ingest and not ingest.dry_run else None,
        kept_newer=ingest.kept_newer if ingest and not ingest.dry_run else None,
        rejected=ingest.rejected if ingest and not ingest.dry_run else None,
        manifest=manifest,
    )


_COUNT_COLUMNS = (
    "download_total",
    "download_rows_by_store",
    "failed_stores",
    "merged_rows",
    "expected_unique",
    "ingested_rows",
    "inserted",
    "updated",
    "kept_newer",
    "rejected",
    "status",
    "reason",
    "manifest",
)


def _record(row: Any) -> AuditRecord:
    m = row._mapping
    return AuditRecord(
        id=m["id"],
        run_id=m["run_id"],
        bucket=m["bucket"],
        run_date=m["run_date"],
        status=m["status"],
        reason=m["reason"],
        download_total=m["download_total"],
        download_rows_by_store=dict(m["download_rows_by_store"] or {}),
        failed_stores=dict(m["failed_stores"] or {}),
        merged_rows=m["merged_rows"],
        expected_unique=m["expected_unique"],
        ingested_rows=m["ingested_rows"],
        inserted=m["inserted"],
        updated=m["updated"],
        kept_newer=m["kept_newer"],
        rejected=m["rejected"],
        manifest=list(m["manifest"] or []),
        cleanup_status=m["cleanup_status"],
        cleaned_at=m["cleaned_at"],
        created_at=m["created_at"],
    )


async def write_audit(
    engine: AsyncEngine,
    *,
    run_id: str,
    bucket: str,
    run_date: dt.date,
    download_rows_by_store: Mapping[str, int],
    failed_stores: Mapping[str, str],
    merge: MergeResult | None,
    ingest: IngestResult | None,
    files: Sequence[Path],
    error: str | None = None,
) -> AuditRecord:
    """Write (or, for a retried step, overwrite) the audit row of (run_id, bucket, run_date).

    `files` are the store files plus the merged file. Do not call this for a dry run: nothing
    was loaded and nothing may be written (use `build_audit` to show the verdict instead).
    """
    started = time.perf_counter()
    if ingest is not None and ingest.dry_run:
        raise ValueError("write_audit called for a dry run; use build_audit")
    audit = build_audit(
        run_id=run_id,
        bucket=bucket,
        run_date=run_date,
        download_rows_by_store=download_rows_by_store,
        failed_stores=failed_stores,
        merge=merge,
        ingest=ingest,
        files=files,
        error=error,
    )
    values = {name: getattr(audit, name) for name in _COUNT_COLUMNS}
    table: Table = PipelineAudit.__table__  # type: ignore[assignment]
    stmt = pg_insert(table).values(run_id=run_id, bucket=bucket, run_date=run_date, **values)
    # A retried audit step replaces the verdict; cleanup bookkeeping stays as it was.
    upsert = stmt.on_conflict_do_update(
        index_elements=["run_id", "bucket", "run_date"],
        set_={name: stmt.excluded[name] for name in _COUNT_COLUMNS},
    ).returning(*table.columns)
    async with engine.begin() as conn:
        row = (await conn.execute(upsert)).one()
    record = _record(row)
    log_event(
        "audit",
        "audit passed" if record.passed else f"audit failed: {record.reason}",
        status="ok" if record.passed else "error",
        bucket=bucket,
        date=run_date,
        merged_file=merge.path if merge else None,
        duration_ms=(time.perf_counter() - started) * 1000,
        counts={
            "download_total": record.download_total,
            "merged_rows": record.merged_rows,
            "ingested_rows": record.ingested_rows,
            "expected_unique": record.expected_unique,
            "inserted": record.inserted,
            "updated": record.updated,
            "kept_newer": record.kept_newer,
            "rejected": record.rejected,
        },
        extras={
            "audit_id": record.id,
            "verdict": record.status,
            "reason": record.reason,
            "download_rows_by_store": record.download_rows_by_store,
            "failed_stores": record.failed_stores,
            "files": len(record.manifest),
        },
    )
    return record


async def latest_audit(engine: AsyncEngine, bucket: str, run_date: dt.date) -> AuditRecord | None:
    """The most recent audit of a bucket and date, whichever run wrote it."""
    table: Table = PipelineAudit.__table__  # type: ignore[assignment]
    stmt = (
        select(table)
        .where(table.c.bucket == bucket, table.c.run_date == run_date)
        .order_by(table.c.created_at.desc(), table.c.id.desc())
        .limit(1)
    )
    async with engine.connect() as conn:
        row = (await conn.execute(stmt)).first()
    return _record(row) if row is not None else None


async def get_audit(engine: AsyncEngine, audit_id: int) -> AuditRecord | None:
    table: Table = PipelineAudit.__table__  # type: ignore[assignment]
    async with engine.connect() as conn:
        row = (await conn.execute(select(table).where(table.c.id == audit_id))).first()
    return _record(row) if row is not None else None
