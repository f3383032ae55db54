"""One bucket's chain (merge → rejects → load → audit) on files in a run's folder, without Dagster.

The same `app` calls the assets make, in the same order, so a test can break one stage (a
trigger on the table, a damaged line in a file) and see what the audit says.
"""

import datetime as dt
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from app.audit import AuditRecord
from app.csv_io import count_records
from app.ingest import IngestResult, ingest_file
from app.measure import LoadMeasure
from app.merger import MergeResult
from app.pipeline import RawFiles
from app.reconcile import audit_bucket, load_and_measure, merge_and_measure
from app.reject_store import replace_rejects
from app.run_context import RunContext


@dataclass
class Chain:
    ctx: RunContext
    raw: RawFiles
    merged: MergeResult
    loaded: IngestResult
    audit: AuditRecord

    @property
    def files(self) -> list[Path]:
        return [*self.raw.files.values(), self.merged.path]


def run_dir(data_dir: Path, run_date: dt.date, run_id: str = "r1") -> Path:
    folder = data_dir / run_date.isoformat() / run_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def run_chain(
    engine: AsyncEngine,
    data_dir: Path,
    files: Mapping[str, Path],
    *,
    bucket: str = "missed_leads",
    run_date: dt.date,
    run_id: str = "r1",
    batch_size: int = 3,
    alongside: bool = True,
) -> Chain:
    """`alongside`: measure the raw files while merging and the merged file while loading, as
    the `merged_csv` and `table` steps do (False: the audit measures after the load, its
    fallback)."""
    ctx = RunContext(run_id, run_date, run_date, data_dir)
    raw = RawFiles(
        bucket=bucket,
        run_date=run_date,
        source="download",
        files=dict(files),
        rows_by_store={s: count_records(p) for s, p in files.items()},
        failed={},
    )
    merged, raw_measured = await merge_and_measure(
        engine, ctx, bucket, raw.files, measure=alongside, then_load=alongside
    )
    assert (raw_measured is not None) == alongside, "the raw measure failed during the merge"
    await replace_rejects(engine, run_id, bucket, run_date, merged.rejects)

    def load() -> Awaitable[IngestResult]:
        return ingest_file(
            engine, bucket, run_date, merged.path, run_id=run_id, batch_size=batch_size
        )

    measured: LoadMeasure | None = None
    if alongside:
        loaded, measured = await load_and_measure(engine, ctx, merged, load)
        assert measured is not None, "the merged file could not be measured alongside the load"
    else:
        loaded = await load()
    audit = await audit_bucket(engine, ctx, raw, merged, loaded, raw_measured, measured)
    return Chain(ctx, raw, merged, loaded, audit)
