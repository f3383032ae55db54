"""The reconciliation verdict per run, bucket and date, and its `pipeline_audit` row.

The audit is what makes deleting the downloaded files safe, so every number it compares is
measured from its own source, never computed from another number:

- `download_total`: records of the raw files as saved, counted by PostgreSQL's CSV parser
  (`app.measure.measure_raw`), not by the merger's reader; per store, and compared with the
  reader's own count per store.
- `expected_unique`: distinct dedupe keys over those server-parsed raw records (SQL
  `COUNT(DISTINCT ...)` with the key rules re-implemented in SQL), leaving out the records this run
  rejected.
- `merged_rows`: records of the merged file, counted by the server's parser.
- `ingested_rows`: read back from the table after the load committed: rows whose key is in the
  merged file and that this run wrote, plus rows a newer snapshot already holds (a backfill),
  each counted by a query; and an anti-join proving every merged key is in the table.
- `quarantined` / `blocking`: counted in `ingest_rejects` by query.

It passes only when `download_total - in_file_duplicates - quarantined = merged_rows =
expected_unique = ingested_rows`, no merged key is missing from the table, nothing blocking was
rejected and every count could be measured. A failure's reason names the counts and up to five
example keys. Quarantined rows alone pass, with a warning: their raw rows are kept in
`ingest_rejects`, so deleting the file loses nothing. The manifest (path, size, sha256, origin)
lists exactly the files the cleanup may later remove; files of failed stores are not in it.
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
from app.json_logger import log_event

PASSED = "passed"
FAILED = "failed"


@dataclass(frozen=True)
class Counts:
    """Every measured number of one bucket's audit (None: it could not be measured)."""

    download_total: int | None = None
    in_file_duplicates: int | None = None
    quarantined: int | None = None
    blocking: int | None = None
    merged_rows: int | None = None
    expected_unique: int | None = None
    ingested_rows: int | None = None
    written: int | None = None
    kept_newer: int | None = None
    missing_keys: int | None = None
    missing_examples: list[dict[str, Any]] = field(default_factory=list)
    measured_by_store: dict[str, int | None] = field(default_factory=dict)
    reader_by_store: dict[str, int] = field(default_factory=dict)
    measure_errors: dict[str, str] = field(default_factory=dict)
    first_blocking: list[dict[str, Any]] = field(default_factory=list)
    # where each measure was taken: {"raw_files": ..., "merged_file": ...} (app.reconcile)
    measured_when: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditRecord:
    """A `pipeline_audit` row."""

    id: int | None
    run_id: str
    bucket: str
    run_date: dt.date
    status: str
    reason: str | None
    download_total: int | None
    download_rows_by_store: dict[str, Any]
    failed_stores: dict[str, str]
    merged_rows: int | None
    expected_unique: int | None
    ingested_rows: int | None
    inserted: int | None
    updated: int | None
    kept_newer: int | None
    rejected: int | None
    quarantined: int | None = None
    blocking: int | None = None
    in_file_duplicates: int | None = None
    written: int | None = None
    missing_keys: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    manifest: list[dict[str, Any]] = field(default_factory=list)
    cleanup_status: str | None = None
    cleanup_run_id: str | None = None
    cleanup_reason: str | None = None
    cleaned_at: dt.datetime | None = None
    created_at: dt.datetime | None = None

    @property
    def passed(self) -> bool:
        return self.status == PASSED


def _missing(c: Counts) -> list[str]:
    named = {
        "download_total": c.download_total,
        "in_file_duplicates": c.in_file_duplicates,
        "quarantined": c.quarantined,
        "blocking": c.blocking,
        "merged_rows": c.merged_rows,
        "expected_unique": c.expected_unique,
        "ingested_rows": c.ingested_rows,
        "missing_keys": c.missing_keys,
    }
    return [name for name, value in named.items() if value is None]


def _store_reasons(c: Counts) -> list[str]:
    reasons = [
        f"store {s}: postgres could not parse its file: {e}" for s, e in c.measure_errors.items()
    ]
    for store, reader in sorted(c.reader_by_store.items()):
        measured = c.measured_by_store.get(store)
        if measured is not None and measured != reader:
            reasons.append(
                f"store {store}: postgres counts {measured} records, the reader {reader}"
            )
    return reasons


def _keys(examples: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join("(" + ", ".join(str(v) for v in e.values()) + ")" for e in examples[:5])


def evaluate(c: Counts) -> tuple[str, str | None]:
    """("passed", note or None) or ("failed", a reason naming every number that differs)."""
    reasons = [f"missing counts: {', '.join(m)}"] if (m := _missing(c)) else []
    reasons += _store_reasons(c)
    if not m:
        assert c.download_total is not None and c.in_file_duplicates is not None
        assert c.quarantined is not None and c.merged_rows is not None
        expected = c.download_total - c.in_file_duplicates - c.quarantined
        if expected != c.merged_rows:
            reasons.append(
                f"download_total={c.download_total} - in_file_duplicates={c.in_file_duplicates}"
                f" - quarantined={c.quarantined} = {expected} != merged_rows={c.merged_rows}"
            )
        if c.expected_unique != c.merged_rows:
            reasons.append(f"merged_rows={c.merged_rows} != expected_unique={c.expected_unique}")
        if c.ingested_rows != c.merged_rows:
            reasons.append(
                f"merged_rows={c.merged_rows} != ingested_rows={c.ingested_rows} "
                f"(written={c.written}, kept_newer={c.kept_newer})"
            )
        if c.missing_keys:
            reasons.append(
                f"{c.missing_keys} merged keys are not in the table, e.g. "
                + _keys(c.missing_examples)
            )
        if c.blocking:
            first = "; ".join(
                f"line {r.get('line_number')} of {Path(str(r.get('file'))).name}: {r.get('error')}"
                for r in c.first_blocking[:5]
            )
            reasons.append(f"blocking rejects={c.blocking}" + (f" ({first})" if first else ""))
    if reasons:
        return FAILED, "; ".join(reasons)
    if c.quarantined:
        return PASSED, f"passed with {c.quarantined} quarantined rows (kept in ingest_rejects)"
    return PASSED, None


def file_entry(path: Path, **extra: Any) -> dict[str, Any]:
    """Manifest entry: what cleanup will verify before it deletes the file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return {
        "path": str(path.resolve()),
        "size": path.stat().st_size,
        "sha256": digest.hexdigest(),
        **{k: v for k, v in extra.items() if v is not None},
    }


def build_manifest(
    files: Sequence[Path], extras: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """(entries for the files that exist, paths that do not); duplicates are listed once.

    `extras[str(path)]` adds fields to a file's entry (store, origin, taken_from).
    """
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
            entries.append(file_entry(path, **dict((extras or {}).get(str(raw), {}))))
        else:
            missing.append(str(path))
    return entries, missing


_COLUMNS = (
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
    "quarantined",
    "blocking",
    "in_file_duplicates",
    "written",
    "missing_keys",
    "details",
    "status",
    "reason",
    "manifest",
)


def _record(row: Any) -> AuditRecord:
    m = dict(row._mapping)
    return AuditRecord(
        **{name: m[name] for name in AuditRecord.__dataclass_fields__ if name in m},
    )


async def save_audit(engine: AsyncEngine, record: AuditRecord) -> AuditRecord:
    """Write (or, for a retried step, overwrite) the audit row of (run_id, bucket, run_date)."""
    started = time.perf_counter()
    values = {name: getattr(record, name) for name in _COLUMNS}
    values["download_total"] = values["download_total"] or 0
    table: Table = PipelineAudit.__table__  # type: ignore[assignment]
    stmt = pg_insert(table).values(
        run_id=record.run_id, bucket=record.bucket, run_date=record.run_date, **values
    )
    upsert = stmt.on_conflict_do_update(
        index_elements=["run_id", "bucket", "run_date"],
        set_={name: stmt.excluded[name] for name in _COLUMNS},
    ).returning(*table.columns)
    async with engine.begin() as conn:
        saved = _record((await conn.execute(upsert)).one())
    _log(saved, (time.perf_counter() - started) * 1000)
    return saved


def _log(record: AuditRecord, duration_ms: float) -> None:
    log_event(
        "audit",
        ("audit passed" if record.passed else "audit failed")
        + (f": {record.reason}" if record.reason else ""),
        status="error" if not record.passed else ("warn" if record.quarantined else "ok"),
        bucket=record.bucket,
        date=record.run_date,
        duration_ms=duration_ms,
        counts={
            "download_total": record.download_total,
            "merged_rows": record.merged_rows,
            "ingested_rows": record.ingested_rows,
            "expected_unique": record.expected_unique,
            "in_file_duplicates": record.in_file_duplicates,
            "quarantined": record.quarantined,
            "blocking": record.blocking,
            "written": record.written,
            "kept_newer": record.kept_newer,
            "missing_keys": record.missing_keys,
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


def _select() -> Any:
    table: Table = PipelineAudit.__table__  # type: ignore[assignment]
    return table, select(table)


async def get_audit(engine: AsyncEngine, audit_id: int) -> AuditRecord | None:
    table, stmt = _select()
    async with engine.connect() as conn:
        row = (await conn.execute(stmt.where(table.c.id == audit_id))).first()
    return _record(row) if row is not None else None


async def audit_of_run(
    engine: AsyncEngine, run_id: str, bucket: str, run_date: dt.date
) -> AuditRecord | None:
    """The audit this run wrote for a bucket and date (a check reads only its own run's)."""
    table, stmt = _select()
    stmt = stmt.where(
        table.c.run_id == run_id, table.c.bucket == bucket, table.c.run_date == run_date
    )
    async with engine.connect() as conn:
        row = (await conn.execute(stmt)).first()
    return _record(row) if row is not None else None


async def latest_audit(engine: AsyncEngine, bucket: str, run_date: dt.date) -> AuditRecord | None:
    """The most recent audit of a bucket and date, whichever run wrote it (for people)."""
    table, stmt = _select()
    stmt = (
        stmt.where(table.c.bucket == bucket, table.c.run_date == run_date)
        .order_by(table.c.created_at.desc(), table.c.id.desc())
        .limit(1)
    )
    async with engine.connect() as conn:
        row = (await conn.execute(stmt)).first()
    return _record(row) if row is not None else None


async def passed_runs(engine: AsyncEngine, bucket: str, run_date: dt.date) -> set[str]:
    """Runs whose audit of this bucket and date passed: their files are not 'kept'."""
    table, _ = _select()
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(table.c.run_id).where(
                table.c.bucket == bucket, table.c.run_date == run_date, table.c.status == PASSED
            )
        )
        return {r[0] for r in rows}
