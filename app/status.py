"""`python -m app status` and `python -m app rejects`: what happened to a date, for a person.

An operator asks three things the morning after: did every bucket reconcile, what did the
reader reject, and which files are still on disk and why (a kept file is either evidence of a
failed audit, a dry run, a run that stopped early, or a report someone dropped in by hand). The
answers come from `pipeline_audit`, `ingest_rejects` and `DATA_DIR/<date>/`; nothing here writes.

The shape: async loaders read the database, `scan_date` reads the disk, pure `build_*` functions
combine them into dataclasses, and the renderers print them (a rich table at a terminal, JSON
lines otherwise, as `stores list` does). Dagster's view of a run (its source, whether it was a
dry run) is passed in by the caller as `RunInfo`, so this module imports no Dagster.
"""

import csv
import dataclasses
import datetime as dt
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Table, func, select, union_all
from sqlalchemy.ext.asyncio import AsyncEngine

from app.audit import PASSED, AuditRecord
from app.config import BUCKETS, FILE_SPECS, merged_name
from app.db.models import IngestReject, PipelineAudit
from app.settings_dates import not_servable_reason, portal_serves_date

NOT_SERVABLE = "not servable"

# ---- what the loaders and the disk scan return -------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """Dagster's view of one run (unknown fields are None)."""

    source: str | None = None
    dry_run: bool | None = None


@dataclass(frozen=True)
class FileOnDisk:
    path: Path  # absolute
    size: int
    run_id: str | None  # the run folder it is in; None = dropped into DATA_DIR/<date>/
    bucket: str | None  # None: not a file of any bucket (an unknown name)
    kind: str  # "raw" | "merged" | "other"


@dataclass(frozen=True)
class KeptFile:
    path: str  # relative to DATA_DIR
    size: int
    why: str


@dataclass(frozen=True)
class BucketStatus:
    run_date: dt.date
    bucket: str | None  # None: files of no bucket
    run_id: str | None = None
    source: str | None = None
    run_at: dt.datetime | None = None
    verdict: str = "no run"
    reason: str | None = None
    quarantined: int | None = None
    blocking: int | None = None
    cleanup: str | None = None
    cleanup_reason: str | None = None
    cleaned_at: dt.datetime | None = None
    kept_files: list[KeptFile] = field(default_factory=list)

    @property
    def kept_bytes(self) -> int:
        return sum(f.size for f in self.kept_files)


@dataclass(frozen=True)
class DiskUsage:
    total: int
    by_part: dict[str, int]  # "dates", ".pg", ".dagster", ".trash", "reports", "other"
    unreadable: int = 0  # folders that could not be listed (another user's, e.g. .pg as non-root)


@dataclass(frozen=True)
class StatusReport:
    data_dir: Path
    buckets: list[BucketStatus]
    disk: DiskUsage


@dataclass(frozen=True)
class RejectRow:
    bucket: str
    run_id: str
    store_code: str | None
    file: str
    line_number: int
    code: str
    blocking: bool
    reason: str
    raw_row: dict[str, Any]


# ---- database -----------------------------------------------------------------------------


def _audit_table() -> Table:
    table: Table = PipelineAudit.__table__  # type: ignore[assignment]
    return table


async def audits_of(engine: AsyncEngine, dates: Sequence[dt.date]) -> list[AuditRecord]:
    """Every audit row of these dates, newest first (a date has one per run and bucket)."""
    table = _audit_table()
    stmt = (
        select(table)
        .where(table.c.run_date.in_(list(dates)))
        .order_by(table.c.created_at.desc(), table.c.id.desc())
    )
    fields = AuditRecord.__dataclass_fields__
    async with engine.connect() as conn:
        rows = await conn.execute(stmt)
        return [AuditRecord(**{k: v for k, v in r._mapping.items() if k in fields}) for r in rows]


async def latest_run_id(engine: AsyncEngine, bucket: str, run_date: dt.date) -> str | None:
    """The newest run that audited or rejected anything for the bucket and date."""
    audit = _audit_table()
    runs = union_all(
        select(audit.c.run_id, audit.c.created_at).where(
            audit.c.bucket == bucket, audit.c.run_date == run_date
        ),
        select(IngestReject.run_id, IngestReject.created_at).where(
            IngestReject.bucket == bucket, IngestReject.run_date == run_date
        ),
    ).subquery()
    stmt = (
        select(runs.c.run_id)
        .group_by(runs.c.run_id)
        .order_by(func.max(runs.c.created_at).desc(), runs.c.run_id.desc())
        .limit(1)
    )
    async with engine.connect() as conn:
        return (await conn.execute(stmt)).scalar_one_or_none()


def _reject_row(bucket: str, run_id: str, r: Any) -> RejectRow:
    return RejectRow(
        bucket=bucket,
        run_id=run_id,
        store_code=r.store_code,
        file=r.file,
        line_number=r.line_number,
        code=r.code,
        blocking=r.blocking,
        reason=r.error,
        raw_row=dict(r.raw_row or {}),
    )


async def rejects_of(
    engine: AsyncEngine, run_date: dt.date, buckets: Sequence[str]
) -> list[RejectRow]:
    """The rejects of the latest run of each bucket on that date, by store and line."""
    out: list[RejectRow] = []
    for bucket in buckets:
        run_id = await latest_run_id(engine, bucket, run_date)
        if run_id is None:
            continue
        stmt = (
            select(
                IngestReject.store_code,
                IngestReject.file,
                IngestReject.line_number,
                IngestReject.code,
                IngestReject.blocking,
                IngestReject.error,
                IngestReject.raw_row,
            )
            .where(
                IngestReject.run_id == run_id,
                IngestReject.bucket == bucket,
                IngestReject.run_date == run_date,
            )
            .order_by(IngestReject.store_code, IngestReject.file, IngestReject.line_number)
        )
        async with engine.connect() as conn:
            rows = await conn.execute(stmt)
            out += [_reject_row(bucket, run_id, r) for r in rows]
    return out


# ---- disk ---------------------------------------------------------------------------------

_RAW_SUFFIXES = {
    spec["out_name_template"].split("{sc}")[-1]: spec["merge_bucket"]
    for spec in FILE_SPECS.values()
}


def classify_name(name: str, run_date: dt.date) -> tuple[str | None, str]:
    """(bucket, kind) of a file name: a store report, a merged file, or something else."""
    for merged_bucket in BUCKETS:
        if name == merged_name(merged_bucket, run_date):
            return merged_bucket, "merged"
    for suffix, bucket in _RAW_SUFFIXES.items():
        if name.endswith(suffix) and len(name) > len(suffix):
            return bucket, "raw" if bucket else "other"
    return None, "other"


def scan_date(data_dir: Path, run_date: dt.date) -> list[FileOnDisk]:
    """Files under DATA_DIR/<date>/ (dropped ones and one level of run folders); bookkeeping
    (`.steps`, partial `.part`/`.tmp` files) is left out."""
    root = data_dir / run_date.isoformat()
    found: list[FileOnDisk] = []
    if not root.is_dir():
        return found
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        files: list[tuple[Path, str | None]]
        if entry.is_dir():
            files = [(p, entry.name) for p in sorted(entry.iterdir()) if p.is_file()]
        else:
            files = [(entry, None)]
        for path, run_id in files:
            if path.name.startswith("."):
                continue
            bucket, kind = classify_name(path.name, run_date)
            found.append(FileOnDisk(path.resolve(), path.stat().st_size, run_id, bucket, kind))
    return found


def _tree_size(path: Path) -> tuple[int, int]:
    """(bytes, folders that could not be listed) under a path, without following symlinks."""
    total, unreadable = 0, 0

    def _err(_: OSError) -> None:
        nonlocal unreadable
        unreadable += 1

    if path.is_file():
        return path.stat().st_size, 0
    for folder, _dirs, files in os.walk(path, onerror=_err):
        for name in files:
            try:
                total += Path(folder, name).lstat().st_size
            except OSError:
                unreadable += 1
    return total, unreadable


def disk_usage(data_dir: Path) -> DiskUsage:
    """Bytes under DATA_DIR, split into the date folders and the rest (.pg is the database)."""
    parts: dict[str, int] = {}
    unreadable = 0
    if data_dir.is_dir():
        for entry in data_dir.iterdir():
            name = entry.name
            try:
                dt.date.fromisoformat(name)
                part = "dates"
            except ValueError:
                part = name if name in (".pg", ".dagster", ".trash", "reports") else "other"
            size, bad = _tree_size(entry)
            parts[part] = parts.get(part, 0) + size
            unreadable += bad
    return DiskUsage(sum(parts.values()), dict(sorted(parts.items())), unreadable)


# ---- combining (pure) ---------------------------------------------------------------------


def why_kept(
    file: FileOnDisk,
    audit: AuditRecord | None,
    info: RunInfo | None,
    running: str | None,
) -> str:
    """Why a file is still on disk, from the audit of its own run (never another run's)."""
    if file.bucket is None:
        return "not a report of any bucket"
    if file.run_id is None:
        return "operator-dropped (the next run of the date takes it)"
    if audit is None:
        if running == file.run_id:
            return "run in progress"
        if info is not None and info.dry_run:
            return "dry run"
        return "not audited (the run stopped before its audit)"
    if audit.status != PASSED:
        return "audit failed" + (f": {audit.reason}" if audit.reason else "")
    if str(file.path) not in {str(e.get("path")) for e in audit.manifest}:
        return "not in the audit's manifest (its store failed)"
    if audit.cleanup_status is None:
        return "audit passed, cleanup pending"
    return f"cleanup {audit.cleanup_status}" + (
        f": {audit.cleanup_reason}" if audit.cleanup_reason else ""
    )


def _relative(path: Path, data_dir: Path) -> str:
    try:
        return str(path.relative_to(data_dir.resolve()))
    except ValueError:
        return str(path)


def build_bucket(
    run_date: dt.date,
    bucket: str | None,
    latest: AuditRecord | None,
    kept: list[KeptFile],
    runs: Mapping[str, RunInfo],
) -> BucketStatus:
    """One bucket's line of the report: its latest audit and the files it left on disk."""
    if latest is None:
        return BucketStatus(run_date, bucket, kept_files=kept)
    return BucketStatus(
        run_date=run_date,
        bucket=bucket,
        run_id=latest.run_id,
        source=runs.get(latest.run_id, RunInfo()).source,
        run_at=latest.created_at,
        verdict=latest.status,
        reason=latest.reason,
        quarantined=latest.quarantined,
        blocking=latest.blocking,
        cleanup=latest.cleanup_status,
        cleanup_reason=latest.cleanup_reason,
        cleaned_at=latest.cleaned_at,
        kept_files=kept,
    )


def not_servable(
    line: BucketStatus, files: Sequence[FileOnDisk], today: dt.date | None
) -> BucketStatus:
    """A past date with no passed audit and no raw file to reprocess can never be filled from
    the portal: say so, instead of leaving it to read as an unexplained failure or gap."""
    if today is None or line.verdict == PASSED or line.bucket is None:
        return line
    if portal_serves_date(line.bucket, line.run_date, today) or any(
        f.bucket == line.bucket and f.kind == "raw" for f in files
    ):
        return line
    folder = f"DATA_DIR/{line.run_date.isoformat()}/"
    why = not_servable_reason(line.bucket, line.run_date, today, folder)
    return dataclasses.replace(line, verdict=NOT_SERVABLE, reason=why)


def build_date(
    run_date: dt.date,
    data_dir: Path,
    audits: Sequence[AuditRecord],
    files: Sequence[FileOnDisk],
    runs: Mapping[str, RunInfo],
    running: str | None = None,
    today: dt.date | None = None,
) -> list[BucketStatus]:
    """Every bucket of one date (plus a line for files of no bucket, if any)."""
    of_run = {(a.run_id, a.bucket): a for a in audits if a.run_date == run_date}
    latest: dict[str, AuditRecord] = {}
    for audit in audits:  # newest first
        if audit.run_date == run_date:
            latest.setdefault(audit.bucket, audit)
    kept: dict[str | None, list[KeptFile]] = {}
    for f in files:
        own = of_run.get((f.run_id or "", f.bucket or ""))
        why = why_kept(f, own, runs.get(f.run_id or ""), running)
        kept.setdefault(f.bucket, []).append(KeptFile(_relative(f.path, data_dir), f.size, why))
    out = [
        not_servable(build_bucket(run_date, b, latest.get(b), kept.get(b, []), runs), files, today)
        for b in BUCKETS
    ]
    if None in kept:
        out.append(BucketStatus(run_date, None, verdict="-", kept_files=kept[None]))
    return out


def build_report(
    data_dir: Path,
    dates: Sequence[dt.date],
    audits: Sequence[AuditRecord],
    *,
    run_info: Callable[[set[str]], Mapping[str, RunInfo]],
    running: Callable[[dt.date], str | None],
    today: dt.date | None = None,
) -> StatusReport:
    """The report of these dates from their audits (`audits_of`) and the disk; `run_info` asks
    Dagster about the runs found, `running` names the run holding a date now (both may know
    nothing); with `today`, past dates the portal cannot serve are marked `not servable`."""
    files = {day: scan_date(data_dir, day) for day in dates}
    run_ids = {a.run_id for a in audits} | {
        f.run_id for found in files.values() for f in found if f.run_id
    }
    runs = run_info(run_ids) if run_ids else {}
    buckets = [
        b
        for day in sorted(dates, reverse=True)
        for b in build_date(day, data_dir, audits, files[day], runs, running(day), today)
    ]
    return StatusReport(data_dir.resolve(), buckets, disk_usage(data_dir))


# ---- rendering ----------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def status_lines(report: StatusReport) -> Iterable[dict[str, Any]]:
    """The JSON-lines form: one object per date and bucket, then one for the disk."""
    for b in report.buckets:
        yield {"kind": "bucket", **dataclasses.asdict(b), "kept_bytes": b.kept_bytes}
    yield {"kind": "disk", "data_dir": str(report.data_dir), **dataclasses.asdict(report.disk)}


def write_json_lines(rows: Iterable[Mapping[str, Any]], out: IO[str]) -> None:
    for row in rows:
        out.write(json.dumps(row, default=_jsonable, ensure_ascii=False) + "\n")


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _run_cell(b: BucketStatus) -> str:
    if not b.run_id:
        return "-"
    parts = [b.run_id[:8], b.source or "", f"{b.run_at:%H:%M}" if b.run_at else ""]
    return " ".join(p for p in parts if p)


_VERDICT_STYLE = {PASSED: "green", NOT_SERVABLE: "yellow", "no run": "default"}


def render_status(report: StatusReport, console: Any) -> None:
    """A rich table per date for a person at a terminal; kept files listed under it. Every
    value is plain text (a reason or a file name may hold `[...]`, which is not markup)."""
    from rich.table import Table
    from rich.text import Text

    dates = sorted({b.run_date for b in report.buckets}, reverse=True)
    for day in dates:
        rows = [b for b in report.buckets if b.run_date == day]
        table = Table(title=f"CRM status {day.isoformat()}", title_justify="left")
        for column in ("bucket", "last run", "audit", "quar/block", "cleanup", "kept"):
            table.add_column(column, overflow="fold")
        for b in rows:
            table.add_row(
                Text(b.bucket or "(other files)"),
                Text(_run_cell(b)),
                Text(b.verdict, style=_VERDICT_STYLE.get(b.verdict, "red")),
                Text(f"{_cell(b.quarantined)}/{_cell(b.blocking)}"),
                Text(_cell(b.cleanup)),
                Text(f"{len(b.kept_files)} ({human_size(b.kept_bytes)})" if b.kept_files else "-"),
            )
        console.print(table)
        for b in rows:
            if b.reason and b.verdict != PASSED:
                style = _VERDICT_STYLE.get(b.verdict, "red")
                console.print(Text.assemble((f"{b.bucket}", style), f": {b.reason}"))
            for f in b.kept_files:
                console.print(Text(f"  kept {f.path} ({human_size(f.size)}): {f.why}"))
    d = report.disk
    parts = ", ".join(f"{k} {human_size(v)}" for k, v in d.by_part.items())
    console.print(Text(f"disk used under {report.data_dir}: {human_size(d.total)} ({parts})"))


REJECT_COLUMNS = (
    "bucket",
    "run_id",
    "store_code",
    "file",
    "line_number",
    "code",
    "blocking",
    "reason",
    "raw_row",
)


def reject_dicts(rows: Sequence[RejectRow]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(r) for r in rows]


def write_rejects_csv(rows: Sequence[RejectRow], out: IO[str]) -> None:
    """CSV for a spreadsheet: one reject per line, the raw row as a JSON object."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(REJECT_COLUMNS)
    for r in rows:
        d = dataclasses.asdict(r)
        d["raw_row"] = json.dumps(r.raw_row, ensure_ascii=False)
        writer.writerow([d[c] for c in REJECT_COLUMNS])


def render_rejects(rows: Sequence[RejectRow], console: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{len(rows)} rejects", title_justify="left")
    for column in ("bucket", "store", "file", "line", "code", "blocking", "reason", "raw row"):
        table.add_column(column, overflow="fold")
    for r in rows:
        cells = (
            r.bucket,
            r.store_code or "-",
            Path(r.file).name,
            str(r.line_number),
            r.code,
            "yes" if r.blocking else "no",
            r.reason,
            json.dumps(r.raw_row, ensure_ascii=False),
        )
        table.add_row(*(Text(c) for c in cells))
    console.print(table)
