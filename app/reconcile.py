"""One bucket's audit step: measure every count from its own source, judge, record.

See `app.audit` for what is measured from where. A step that failed earlier still leaves an
audit row saying why (`record_failure`), and every file is kept.

When: the measurements need the server to parse every raw file and the merged file again
(docs/benchmarks.md). None of that needs to wait for the audit step, so each is taken while
the Python side of an earlier step keeps one core busy and the server idles:

- the raw files during the merge (`merge_and_measure`): the merger hands each store file to a
  measuring process (`app.measure_worker`) as soon as its first pass is done with it, so
  the server parses file k while the merger reads file k+1. The measure leaves out the records
  the merger rejected in that file;
- the merged file during the merge too, when the run's load follows (`then_load`): the same
  process reads the merged file as the merger writes it and stages it, and is kept for the
  load. The bytes staged count only if they are the final file's (SHA-256, `app.measure_tail`);
- the read-back after the load (`load_and_measure`): the kept process, or a new one that
  stages the merged file during the load, reads the table back once the load has committed.

The audit step then judges those measures (`audit_bucket`'s `raw_measured`, `load_measured`).
If the rejects recorded by the audit differ from the exclusion the raw measure used (the load
can add rejects), or either measure could not be taken, the audit measures again itself.
"""

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from app.audit import FAILED, AuditRecord, Counts, build_manifest, evaluate, save_audit
from app.ingest import IngestResult
from app.json_logger import log_event
from app.measure import LoadMeasure, RawMeasure, measure_load, measure_raw
from app.measure_worker import (
    LoadStepWorker,
    MergeStepWorker,
    keep_for_load,
    take_for_load,
    warm_up,
)
from app.merger import MergeResult, ScanListener, merge_bucket
from app.pipeline import RawFiles
from app.reject_store import first_rejects, reject_counts, rejected_records
from app.run_context import RunContext

DURING_MERGE, DURING_LOAD, BY_AUDIT = "during the merge", "during the load", "by the audit step"
STAGED_DURING_MERGE = "during the merge, read back after the load"
EMPTY_DAY = "every store returned an empty report: check that the portal knows these store codes"


@dataclass(frozen=True)
class RawMeasured:
    """The raw measure of one bucket, taken while its merge ran (the merge step's result)."""

    raw: RawMeasure
    exclude: dict[str, list[int]]  # the rejected records the raw measure left out


def _exclude_key(exclude: Mapping[str, Collection[int]]) -> dict[str, list[int]]:
    return {store: sorted(ordinals) for store, ordinals in sorted(exclude.items()) if ordinals}


def _raw_files(merge: MergeResult) -> dict[str, Path]:
    return {store: Path(path) for store, path in merge.merged_stores.items()}


def _side_failed(what: str, exc: BaseException, bucket: str, ctx: RunContext) -> None:
    log_event(
        "audit",
        f"measuring {what} failed ({type(exc).__name__}: {exc}); "
        "the audit measures after the load instead",
        status="warn",
        bucket=bucket,
        date=ctx.run_date,
    )


async def merge_and_measure(
    engine: AsyncEngine,
    ctx: RunContext,
    bucket: str,
    files: Mapping[str, Path],
    *,
    measure: bool = True,
    then_load: bool = False,
) -> tuple[MergeResult, RawMeasured | None]:
    """Merge the run's store `files` into the run's folder (`merge_bucket` in a worker thread)
    while the raw files it has scanned are measured in a process of their own, on `engine`'s
    database (`app.measure_worker`).

    With `then_load` (this run's load of the bucket follows in this process), the same process
    also stages the merged file as the merger writes it, and is kept for `load_and_measure`.

    The measure is None when it could not be taken, or when the files it measured are not
    exactly the merged stores' (the audit then measures itself), and without `measure`. A
    failed merge is re-raised once the measuring session has let go."""

    def merge(listener: ScanListener | None = None) -> MergeResult:
        return merge_bucket(
            bucket, ctx.run_date, files, ctx.data_dir, out_dir=ctx.run_dir, listener=listener
        )

    if not measure:
        return merge(), None
    try:
        warm_up()  # already done by the download step of the same run: then a no-op
        run = (ctx.run_id, ctx.run_date) if then_load else ()
        worker = MergeStepWorker(engine.url, bucket, *run)
    except Exception as exc:  # no process to be had (limits, memory): merge, the audit measures
        _side_failed("the raw files during the merge", exc, bucket, ctx)
        return merge(), None
    try:
        merged = await asyncio.to_thread(merge, worker)
    except BaseException:
        worker.stop()
        raise
    if then_load:
        keep_for_load(ctx.run_id, bucket, worker)  # stopped by the load, or when it is replaced
    try:
        raw, used = await worker.result()
    except Exception as exc:  # the audit measures again; the merge itself is fine
        _side_failed("the raw files during the merge", exc, bucket, ctx)
        return merged, None
    finally:
        if not then_load:
            worker.stop()
    if set(raw.by_store) != set(merged.merged_stores):
        return merged, None  # not the files merged (cannot happen: the merger names them)
    return merged, RawMeasured(raw, used)


def _merged_worker(
    engine: AsyncEngine, ctx: RunContext, merge: MergeResult
) -> MergeStepWorker | LoadStepWorker:
    """The merge step's measuring process, which staged the merged file as it was written, or
    a new one that stages it now."""
    kept = take_for_load(ctx.run_id, merge.bucket, merge.path)
    if kept is not None:
        return kept
    warm_up()
    return LoadStepWorker(engine.url, merge.bucket, merge.path, ctx.run_id, ctx.run_date)


async def load_and_measure(
    engine: AsyncEngine,
    ctx: RunContext,
    merge: MergeResult,
    load: Callable[[], Awaitable[IngestResult]],
) -> tuple[IngestResult, LoadMeasure | None]:
    """Run `load()` (the ingest of `merge.path`) while the merged file is staged by a measuring
    process: the merge step's, which read it as it was written (`merge_and_measure`'s
    `then_load`), else a new `app.measure_worker.LoadStepWorker`. It reads the table back
    once the load has committed.

    The measure is None when it could not be taken (the audit then measures itself); a failed
    load is re-raised, and the measuring process is stopped with its session."""
    try:
        worker = _merged_worker(engine, ctx, merge)
    except Exception as exc:  # no process to be had: load, the audit measures
        _side_failed("the merged file alongside the load", exc, merge.bucket, ctx)
        return await load(), None
    try:
        loaded = await load()
    except BaseException:
        worker.stop()
        raise
    try:
        measured = await worker.merged_result()
    except Exception as exc:  # the audit measures again; the load itself is fine
        _side_failed("the merged file alongside the load", exc, merge.bucket, ctx)
        measured = None
    finally:
        worker.stop()
    return loaded, measured


async def measure_counts(
    engine: AsyncEngine,
    ctx: RunContext,
    merge: MergeResult,
    ingest: IngestResult,
    raw_measured: RawMeasured | None = None,
    load_measured: LoadMeasure | None = None,
) -> Counts:
    """Every number of the audit, each from its own source (server-side parsers and queries):
    the measures taken during the merge and the load, or measured now where there are none."""
    bucket = merge.bucket
    files = _raw_files(merge)
    async with engine.connect() as conn:
        exclude = await rejected_records(conn, ctx.run_id, bucket, ctx.run_date)
        quarantined, blocking = await reject_counts(conn, ctx.run_id, bucket, ctx.run_date)
        await conn.commit()

    when = {"raw_files": DURING_MERGE, "merged_file": DURING_LOAD}
    if load_measured is not None and load_measured.staged_during_merge:
        when["merged_file"] = STAGED_DURING_MERGE

    async def _raw() -> RawMeasure:
        if raw_measured is not None and raw_measured.exclude == _exclude_key(exclude):
            return raw_measured.raw
        when["raw_files"] = BY_AUDIT
        async with engine.connect() as conn:
            return await measure_raw(conn, bucket, files, exclude)

    async def _load() -> LoadMeasure:
        if load_measured is not None:
            return load_measured
        when["merged_file"] = BY_AUDIT
        async with engine.connect() as conn:
            return await measure_load(
                conn, bucket, merge.path, run_id=ctx.run_id, run_date=ctx.run_date
            )

    # Two sessions at once: the raw files and the merged file are parsed by the server in
    # parallel (the two measures are independent), which roughly halves the audit's time.
    raw, load = await asyncio.gather(_raw(), _load())
    errors = dict(raw.errors)
    if load.error:
        errors["merged file"] = load.error
    return Counts(
        download_total=raw.total,
        in_file_duplicates=merge.duplicates_dropped,
        quarantined=quarantined,
        blocking=blocking,
        merged_rows=load.merged_rows,
        expected_unique=raw.expected_unique,
        ingested_rows=load.ingested_rows if load.error is None else None,
        written=load.written,
        kept_newer=load.kept_newer,
        missing_keys=load.missing_keys if load.error is None else None,
        missing_examples=list(load.missing_examples),
        measured_by_store=dict(raw.by_store),
        reader_by_store=dict(merge.download_rows_by_store),
        measure_errors=errors,
        first_blocking=(
            await first_rejects(engine, ctx.run_id, bucket, ctx.run_date) if blocking else []
        ),
        measured_when=when,
    )


def _manifest(raw: RawFiles, merge: MergeResult) -> tuple[list[dict[str, Any]], list[str]]:
    """The merged stores' raw files and the merged file: exactly what cleanup may delete."""
    files = [Path(p) for p in merge.merged_stores.values()] + [merge.path]
    extras: dict[str, dict[str, Any]] = {str(merge.path): {"kind": "merged"}}
    for store, path in merge.merged_stores.items():
        extras[str(path)] = {
            "kind": "raw",
            "store": store,
            "origin": raw.origin.get(store, "download"),
            "taken_from": raw.taken_from.get(store),
        }
    return build_manifest(files, extras)


def failed_stores(raw: RawFiles, merge: MergeResult | None) -> dict[str, str]:
    out = dict(raw.failed)
    if merge is not None:
        out.update(merge.failed_stores)
    return out


async def audit_bucket(
    engine: AsyncEngine,
    ctx: RunContext,
    raw: RawFiles,
    merge: MergeResult,
    ingest: IngestResult,
    raw_measured: RawMeasured | None = None,
    load_measured: LoadMeasure | None = None,
) -> AuditRecord:
    """Judge and write the audit of one bucket (after its load committed), from the measures
    taken during the merge and the load, or measured now where there are none."""
    counts = await measure_counts(engine, ctx, merge, ingest, raw_measured, load_measured)
    status, reason = evaluate(counts)
    manifest, missing = _manifest(raw, merge)
    if missing:
        status = FAILED
        reason = "; ".join(filter(None, [reason, f"files missing at audit time: {missing}"]))
    failed = failed_stores(raw, merge)
    if status != FAILED and merge.merged_stores and counts.download_total == 0:
        # Nothing to lose by deleting empty reports, but a whole day of them usually means the
        # portal does not know these store codes (it answers an empty report): say so.
        reason = "; ".join(filter(None, [reason, EMPTY_DAY]))
    if status != FAILED and failed:
        # The files that exist reconcile, so cleaning them up is safe; the stores that failed are
        # the run's failure (its exit code) and their files, if any, are not in the manifest.
        reason = "; ".join(
            filter(None, [reason, "stores that failed: " + ", ".join(sorted(failed))])
        )
    return await save_audit(
        engine,
        AuditRecord(
            id=None,
            run_id=ctx.run_id,
            bucket=merge.bucket,
            run_date=ctx.run_date,
            status=status,
            reason=reason,
            download_total=counts.download_total,
            download_rows_by_store=dict(counts.measured_by_store),
            failed_stores=failed,
            merged_rows=counts.merged_rows,
            expected_unique=counts.expected_unique,
            ingested_rows=counts.ingested_rows,
            inserted=ingest.inserted,
            updated=ingest.updated,
            kept_newer=counts.kept_newer,
            rejected=(counts.quarantined or 0) + (counts.blocking or 0),
            quarantined=counts.quarantined,
            blocking=counts.blocking,
            in_file_duplicates=counts.in_file_duplicates,
            written=counts.written,
            missing_keys=counts.missing_keys,
            details=_details(counts),
            manifest=manifest,
        ),
    )


def _details(c: Counts) -> dict[str, Any]:
    return {
        "reader_rows_by_store": c.reader_by_store,
        "measure_errors": c.measure_errors,
        "missing_examples": c.missing_examples[:5],
        "measured_when": c.measured_when,
        "first_blocking": [
            {k: v for k, v in r.items() if k != "blocking"} for r in c.first_blocking[:5]
        ],
    }


async def record_failure(
    engine: AsyncEngine,
    ctx: RunContext,
    bucket: str,
    error: str,
    raw: RawFiles | None = None,
    merge: MergeResult | None = None,
) -> AuditRecord:
    """A step that failed still leaves an audit row that says why; every file is kept."""
    log_event(
        "error", f"{bucket} failed: {error}", status="error", bucket=bucket, date=ctx.run_date
    )
    return await save_audit(
        engine,
        AuditRecord(
            id=None,
            run_id=ctx.run_id,
            bucket=bucket,
            run_date=ctx.run_date,
            status=FAILED,
            reason=error,
            download_total=raw.download_total if raw else None,
            download_rows_by_store=dict(raw.rows_by_store) if raw else {},
            failed_stores=failed_stores(raw, merge) if raw else {},
            merged_rows=merge.merged_rows if merge else None,
            expected_unique=None,
            ingested_rows=None,
            inserted=None,
            updated=None,
            kept_newer=None,
            rejected=None,
            manifest=[],
        ),
    )
