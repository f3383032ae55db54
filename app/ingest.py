"""Load one merged CSV into its bucket table: stream, validate, upsert, and account for every row.

How a file is loaded, and why:

- The file is read as a stream in batches of `INGEST_BATCH_SIZE` (default 3000). Headers are
  resolved by name exactly like the merger does (`app.merger.map_header`); unknown columns get
  one warning each and are skipped; a missing dedupe-key column fails the bucket before anything
  is written (`IngestError` names it); a missing non-key column loads as NULL, with a warning.
- Every row is validated with the bucket's row model rules (`app.row_models` = `app.coercion`):
  the hot loop calls the same `coerce_value` per column, memoised (`app.row_check` says why), and
  a row that fails is re-validated by the Pydantic model, whose message is the reject reason.
  A rejected row (bad date, amount, missing key...) goes to `ingest_rejects` with file, line
  number, raw values and the reason; it is never dropped.
- asyncpg allows 32,767 bind parameters per statement, so 3000 rows x 15 columns cannot be one
  multi-row VALUES. Each batch is instead sent with binary COPY (`copy_records_to_table`) into a
  `TEMP ... ON COMMIT DROP` staging table typed like the target, followed by one
  `INSERT ... SELECT ... ON CONFLICT (dedupe_keys) DO UPDATE ... RETURNING (xmax = 0)` whose
  result is aggregated in the server, so only two numbers travel back per batch.
- Parsing and validation of batch N+1 happen while the server executes batch N's upsert (see
  `_load`), so the client and the server use the two cores at the same time.

Transactions and locking: one bucket and date is one transaction, so after any failure nothing of
it is in the table (rows and rejects alike) and a rerun converges to the same state. The
transaction first takes `pg_advisory_xact_lock` keyed on (bucket, run_date), so two runs of the
same bucket and date never interleave; the second waits for the first to commit or roll back.

Rejects: the merger already rejected every raw record it could not read or coerce
(`app.report_check`), so a reject here means the load disagrees with the merger; it is always
blocking. They are written in the same transaction, after deleting the rejects this run recorded
earlier for the same merged file (a retried step never duplicates them; the merger's rejects of
the raw files and other runs' rejects are untouched).

Snapshots and backfills: every row stores the `run_date` it was loaded from. The conflict update
only fires `WHERE target.run_date <= EXCLUDED.run_date`, so loading an older snapshot after a
newer one leaves the newer values in place. Counting (`IngestResult`):

- `inserted`: new keys; `updated`: existing keys rewritten from this snapshot (same or newer
  date; a same-date rerun counts as updated);
- `kept_newer`: keys whose table row already came from a newer snapshot and was left alone. The
  key *is* present and reconciled, only with newer values, so these rows count toward
  `ingested_rows = inserted + updated + kept_newer`. This keeps the audit's equation
  `merged_rows == ingested_rows` true for a backfill while `kept_newer` says how many were kept.
- `rejected`: rows written to `ingest_rejects` (never part of `ingested_rows`);
- `duplicates_in_file`: the merger never writes a key twice, but a hand-made file may. Within a
  batch the later line wins in Python (an `ON CONFLICT DO UPDATE` statement may not touch a row
  twice) and the earlier copies count here; across batches the later line simply updates the
  earlier one and counts as `updated`. Either way the audit sees `expected_unique` disagree.

So `rows_read == inserted + updated + kept_newer + rejected + duplicates_in_file`, always.
"""

import asyncio
import contextlib
import datetime as dt
import decimal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    MetaData,
    String,
    Table,
    delete,
    func,
    insert,
    literal,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Insert

from app.coercion import CoercionError
from app.config import MERGE_BUCKET_DB_SPECS
from app.csv_io import open_records
from app.db.models import IngestReject, bucket_table
from app.history import ChangeRecorder
from app.json_logger import log_event
from app.merger import map_header
from app.rejects import BAD_VALUE
from app.row_check import RowCoercer

SAMPLE_ROWS = 5
DEFAULT_BATCH_SIZE = 3000


class IngestError(Exception):
    """The bucket could not be loaded; nothing of it was written."""


@dataclass(frozen=True)
class IngestResult:
    bucket: str
    run_date: dt.date
    path: Path
    rows_read: int
    inserted: int
    updated: int
    kept_newer: int
    rejected: int
    ingested_rows: int
    batches: int
    unknown_columns: list[str]
    missing_columns: list[str]
    column_mapping: dict[str, str]
    sample_rows: list[dict[str, Any]]
    dry_run: bool
    duration_ms: float
    duplicates_in_file: int = 0
    run_id: str = ""
    batch_size: int = DEFAULT_BATCH_SIZE


def default_batch_size() -> int:
    """`INGEST_BATCH_SIZE` from the validated settings, falling back to 3000."""
    try:
        from app.settings import get_settings

        return get_settings().ingest_batch_size
    except Exception:  # settings unreadable: the caller's run fails elsewhere, loudly
        return DEFAULT_BATCH_SIZE


@dataclass
class _Batch:
    records: list[tuple[Any, ...]]
    rejects: list[dict[str, Any]]
    rows_read: int
    duplicates: int
    samples: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class _Plan:
    columns: list[str]  # DB columns, in spec order: the staging/COPY column order
    positions: list[int | None]  # index in the record of each DB column (None: missing)
    key_slots: list[int]  # positions of the dedupe keys inside `columns`
    header: list[str]
    mapping: dict[str, str]  # file header -> DB column
    unknown: list[str]
    missing: list[str]


def _plan(bucket: str, path: Path, header: Sequence[str]) -> _Plan:
    spec = MERGE_BUCKET_DB_SPECS[bucket]
    hmap = map_header(bucket, header)
    columns = list(spec["coerce"])
    to_db = spec["column_map"]
    by_db = {to_db[csv_name]: index for csv_name, index in hmap.positions.items()}
    missing = [c for c in columns if c not in by_db]
    if header and (lost := [k for k in spec["dedupe_keys"] if k in missing]):
        raise IngestError(
            f"{bucket}: {path.name} has no dedupe-key column "
            f"{', '.join(lost)} (header: {list(header)})"
        )
    return _Plan(
        columns=columns,
        positions=[by_db.get(c) for c in columns],
        key_slots=[columns.index(k) for k in spec["dedupe_keys"]],
        header=[h.replace("\ufeff", "").strip() for h in header],
        mapping={h: to_db[c] for h, c in hmap.mapping.items()},
        unknown=hmap.unknown + hmap.duplicated,
        missing=missing,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return value


def _raw_row(plan: _Plan, record: Sequence[str]) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for index, value in enumerate(record):
        name = plan.header[index] if index < len(plan.header) else f"_extra_{index}"
        raw[name or f"_column_{index}"] = value
    return raw


def _batches(
    bucket: str,
    path: Path,
    plan: _Plan,
    batch_size: int,
    want_samples: int,
    validation: str = "compiled",
) -> Iterator[_Batch]:
    """Parse and validate the file, one batch at a time (runs in a worker thread)."""
    coerce = RowCoercer(bucket, plan.positions, len(plan.header), validation)
    slots = plan.key_slots
    samples_left = want_samples
    with open_records(path) as (_header, records):
        pending: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        rejects: list[dict[str, Any]] = []
        rows = duplicates = 0
        samples: list[dict[str, Any]] = []
        for line, record in records:
            rows += 1
            try:
                values = coerce(record)
            except CoercionError as exc:
                rejects.append(
                    {
                        "file": str(path),
                        "line_number": line,
                        "raw_row": _raw_row(plan, record),
                        "error": str(exc),
                    }
                )
            else:
                key = tuple(values[s] for s in slots)
                if key in pending:
                    duplicates += 1
                    del pending[key]  # the later line wins and moves to the end
                pending[key] = values
                if samples_left:
                    samples.append(
                        {
                            "line": line,
                            **{c: _jsonable(v) for c, v in zip(plan.columns, values, strict=True)},
                        }
                    )
                    samples_left -= 1
            if rows % batch_size == 0:
                coerce.tune()
                yield _Batch(list(pending.values()), rejects, rows, duplicates, samples)
                pending, rejects, rows, duplicates, samples = {}, [], 0, 0, []
        if rows:
            yield _Batch(list(pending.values()), rejects, rows, duplicates, samples)


def _staging_table(bucket: str) -> Table:
    target = bucket_table(bucket)
    columns = list(MERGE_BUCKET_DB_SPECS[bucket]["coerce"])
    return Table(
        f"crm_stage_{bucket}",
        MetaData(),
        *[Column(c, target.c[c].type) for c in columns],
        prefixes=["TEMPORARY"],
        postgresql_on_commit="DROP",
    )


def upsert_from_staging(bucket: str, stage: Table, run_date: dt.date, run_id: str) -> Any:
    """The per-batch statement: staging -> target, newer snapshots kept, counts aggregated."""
    spec = MERGE_BUCKET_DB_SPECS[bucket]
    target = bucket_table(bucket)
    columns = list(spec["coerce"])
    keys = spec["dedupe_keys"]
    source = select(
        *[stage.c[c] for c in columns],
        literal(run_date, Date).label("run_date"),
        literal(run_id, String).label("run_id"),
    )
    stmt: Insert = pg_insert(target).from_select([*columns, "run_date", "run_id"], source)
    excluded = stmt.excluded  # type: ignore[attr-defined]
    stmt = stmt.on_conflict_do_update(  # type: ignore[attr-defined]
        index_elements=keys,
        set_={
            **{c: excluded[c] for c in columns if c not in keys},
            "run_date": excluded.run_date,
            "run_id": excluded.run_id,
            "updated_at": func.now(),
            # created_at is deliberately absent: it keeps the first load's time
        },
        # never roll a row back to an older snapshot (a backfill after a newer load)
        where=target.c.run_date <= excluded.run_date,
    )
    returned = stmt.returning(literal_column("(xmax = 0)", Boolean).label("inserted")).cte("ins")
    flag = returned.c.inserted
    return select(
        func.count().filter(flag).label("inserted"),
        func.count().filter(~flag).label("updated"),
    )


async def _write_rejects(
    conn: AsyncConnection, rows: list[dict[str, Any]], base: dict[str, Any]
) -> None:
    if rows:
        await conn.execute(insert(IngestReject), [{**base, **row} for row in rows])


async def ingest_file(
    engine: AsyncEngine,
    bucket: str,
    run_date: dt.date,
    path: Path,
    *,
    run_id: str,
    batch_size: int | None = None,
    dry_run: bool = False,
    validation: Literal["compiled", "model"] = "compiled",
) -> IngestResult:
    """Validate and upsert one merged file as one transaction (see the module docstring).

    Takes a transaction-scoped advisory lock on (bucket, run_date), so concurrent runs of the
    same bucket and date serialise instead of interleaving. `dry_run` reads and validates the
    whole file but never writes: it returns (and logs) the plan and a few coerced sample rows.
    `batch_size` defaults to `INGEST_BATCH_SIZE`.
    """
    started = time.perf_counter()
    size = batch_size or default_batch_size()
    if size < 1:
        raise ValueError("batch_size must be positive")
    path = Path(path)
    fields: dict[str, Any] = {"bucket": bucket, "date": run_date, "merged_file": path}
    with open_records(path) as (header, _records):
        header = list(header)
    try:
        plan = _plan(bucket, path, header)
    except IngestError as exc:
        log_event("ingest", str(exc), status="error", extras={"header": header}, **fields)
        raise
    for name in plan.unknown:
        log_event(
            "ingest",
            f"unknown column {name!r} skipped",
            status="warn",
            extras={"column": name},
            **fields,
        )
    if header:
        for name in plan.missing:
            log_event(
                "ingest",
                f"column {name!r} is missing; loaded as NULL",
                status="warn",
                extras={"column": name},
                **fields,
            )

    totals = dict.fromkeys(("rows", "inserted", "updated", "rejected", "dups", "batches"), 0)
    totals["would_load"] = 0
    samples: list[dict[str, Any]] = []
    batches: Iterator[_Batch] = (
        _batches(bucket, path, plan, size, SAMPLE_ROWS if dry_run else 0, validation)
        if header
        else iter(())
    )
    try:
        if dry_run:
            for batch in batches:
                _account(totals, batch, 0, 0)
                totals["would_load"] += len(batch.records)
                samples.extend(batch.samples)
        else:
            await _load(engine, bucket, run_date, run_id, path, batches, totals)
    except IngestError as exc:
        log_event("ingest", str(exc), status="error", counts=_counts(totals), **fields)
        raise
    except (DBAPIError, OSError, UnicodeDecodeError) as exc:
        message = (
            f"{bucket} {run_date}: load failed after {totals['batches']} committed-in-transaction "
            f"batches and was rolled back: {type(exc).__name__}: {exc}"
        )
        log_event("ingest", message, status="error", counts=_counts(totals), **fields)
        raise IngestError(message) from exc
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()

    kept_newer = totals["rows"] - totals["dups"] - totals["rejected"]
    kept_newer -= totals["inserted"] + totals["updated"]
    if dry_run:
        kept_newer = 0
    result = IngestResult(
        bucket=bucket,
        run_date=run_date,
        path=path,
        rows_read=totals["rows"],
        inserted=totals["inserted"],
        updated=totals["updated"],
        kept_newer=kept_newer,
        rejected=totals["rejected"],
        ingested_rows=totals["inserted"] + totals["updated"] + kept_newer,
        batches=totals["batches"],
        unknown_columns=plan.unknown,
        missing_columns=plan.missing if header else [],
        column_mapping=plan.mapping,
        sample_rows=samples,
        dry_run=dry_run,
        duration_ms=(time.perf_counter() - started) * 1000,
        duplicates_in_file=totals["dups"],
        run_id=run_id,
        batch_size=size,
    )
    counts = {
        "ingested_rows": result.ingested_rows,
        "rows_read": result.rows_read,
        "inserted": result.inserted,
        "updated": result.updated,
        "kept_newer": result.kept_newer,
        "rejected": result.rejected,
        "duplicates_in_file": result.duplicates_in_file,
    }
    if dry_run:
        log_event(
            "ingest",
            "dry run: ingestion plan (nothing written)",
            status="warn" if result.rejected or plan.unknown else "ok",
            counts=counts,
            duration_ms=result.duration_ms,
            extras={
                "plan": {
                    "file": str(path),
                    "table": MERGE_BUCKET_DB_SPECS[bucket]["table_name"],
                    "column_mapping": plan.mapping,
                    "unknown_columns": plan.unknown,
                    "missing_columns": result.missing_columns,
                    "batch_size": size,
                    "batches": result.batches,
                    "rows": result.rows_read,
                    "would_load": totals["would_load"],
                    "would_reject": result.rejected,
                },
                "samples": samples,
            },
            **fields,
        )
    else:
        log_event(
            "ingest",
            "ingested",
            status="warn" if result.rejected or result.duplicates_in_file else "ok",
            counts=counts,
            duration_ms=result.duration_ms,
            extras={"batches": result.batches, "batch_size": size, "run_id": run_id},
            **fields,
        )
    return result


def _account(totals: dict[str, int], batch: _Batch, inserted: int, updated: int) -> None:
    totals["rows"] += batch.rows_read
    totals["inserted"] += inserted
    totals["updated"] += updated
    totals["rejected"] += len(batch.rejects)
    totals["dups"] += batch.duplicates
    totals["batches"] += 1


def _counts(totals: dict[str, int]) -> dict[str, int | None]:
    return {"ingested_rows": None, "rows_read": totals["rows"], "rejected": totals["rejected"]}


async def _load(
    engine: AsyncEngine,
    bucket: str,
    run_date: dt.date,
    run_id: str,
    path: Path,
    batches: Iterator[_Batch],
    totals: dict[str, int],
) -> None:
    """One transaction: lock, clear this snapshot's old rejects, then COPY + upsert per batch.

    Each batch's change history (`app.history`) is written by the batch's upsert statement
    itself (extra CTEs, same snapshot), and the keys gone from the snapshot after the last
    batch, all in the same transaction.

    Overlap without threads: the upsert of batch N is sent, and while the server executes it
    the next batch is parsed and validated right here (blocking the loop on purpose; the reply
    waits in the socket). A parser thread would fight the event loop for the GIL on every
    socket wake-up, which measured slower than this.
    """
    stage = _staging_table(bucket)
    columns = [c.name for c in stage.columns]
    history = ChangeRecorder(bucket, stage.name, run_date, run_id)
    upsert = history.attach(upsert_from_staging(bucket, stage, run_date, run_id))
    truncate = text(f"TRUNCATE {stage.name}")
    # A value the merger accepted but the load cannot: never quarantined, always blocking.
    base = {
        "run_id": run_id,
        "bucket": bucket,
        "run_date": run_date,
        "code": BAD_VALUE,
        "blocking": True,
    }
    async with engine.connect() as conn, conn.begin():
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": f"crm-ingest:{bucket}:{run_date.isoformat()}"},
        )
        await conn.execute(
            delete(IngestReject).where(
                IngestReject.run_id == run_id,
                IngestReject.bucket == bucket,
                IngestReject.run_date == run_date,
                IngestReject.file == str(path),
            )
        )
        await conn.run_sync(lambda sync_conn: stage.create(sync_conn))
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        pending: asyncio.Future[Any] | None = None
        try:
            batch = next(batches, None)
            while batch is not None:
                if batch.records:
                    await driver.copy_records_to_table(
                        stage.name, records=batch.records, columns=columns
                    )
                    history.saw(batch.records)
                    pending = asyncio.ensure_future(conn.execute(upsert))
                    for _ in range(3):  # let the task put the statement on the wire
                        await asyncio.sleep(0)
                following = next(batches, None)  # parsed while the server upserts `batch`
                inserted = updated = 0
                if pending is not None:
                    inserted, updated = (await pending).one()
                    pending = None
                    await conn.execute(truncate)
                await _write_rejects(conn, batch.rejects, base)
                _account(totals, batch, inserted, updated)
                batch = following
            await history.record_gone(conn)
        finally:
            if pending is not None:  # a parse error while the server was busy: drain, then fail
                with contextlib.suppress(Exception):
                    await pending
