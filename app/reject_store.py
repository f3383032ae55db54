"""`ingest_rejects`: every raw record a run did not load, with its reason, queryable by the audit.

The audit counts quarantined and blocking rejects here, by query, rather than trusting the
merger's own tally: what the table holds is what an operator (and `python -m app rejects`) sees.
"""

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db.models import IngestReject
from app.rejects import Reject

_BATCH = 1000


def _scope(run_id: str, bucket: str, run_date: dt.date) -> list[Any]:
    return [
        IngestReject.run_id == run_id,
        IngestReject.bucket == bucket,
        IngestReject.run_date == run_date,
    ]


async def replace_rejects(
    engine: AsyncEngine, run_id: str, bucket: str, run_date: dt.date, rejects: Sequence[Reject]
) -> None:
    """This run's rejects of a bucket and date, replacing what a retried step wrote before."""
    base = {"run_id": run_id, "bucket": bucket, "run_date": run_date}
    async with engine.begin() as conn:
        await conn.execute(delete(IngestReject).where(*_scope(run_id, bucket, run_date)))
        rows = [{**base, **r.as_row()} for r in rejects]
        for start in range(0, len(rows), _BATCH):
            await conn.execute(insert(IngestReject), rows[start : start + _BATCH])


async def reject_counts(
    conn: AsyncConnection, run_id: str, bucket: str, run_date: dt.date
) -> tuple[int, int]:
    """(quarantined, blocking) rejects this run recorded for the bucket and date."""
    row = (
        await conn.execute(
            select(
                func.count().filter(IngestReject.blocking.is_(False)),
                func.count().filter(IngestReject.blocking.is_(True)),
            ).where(*_scope(run_id, bucket, run_date))
        )
    ).one()
    return int(row[0]), int(row[1])


async def rejected_records(
    conn: AsyncConnection, run_id: str, bucket: str, run_date: dt.date
) -> dict[str, set[int]]:
    """Per store, the ordinals of the raw records this run rejected (to leave out of counts)."""
    rows = await conn.execute(
        select(IngestReject.store_code, IngestReject.record_no).where(
            *_scope(run_id, bucket, run_date),
            IngestReject.store_code.is_not(None),
            IngestReject.record_no.is_not(None),
        )
    )
    out: dict[str, set[int]] = {}
    for store, record_no in rows:
        if store is not None and record_no is not None:
            out.setdefault(store, set()).add(int(record_no))
    return out


async def first_rejects(
    engine: AsyncEngine, run_id: str, bucket: str, run_date: dt.date, limit: int = 5
) -> list[dict[str, Any]]:
    """The first rejects (blocking first), for the check's metadata and the failure reason."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(
                IngestReject.store_code,
                IngestReject.file,
                IngestReject.line_number,
                IngestReject.code,
                IngestReject.error,
                IngestReject.blocking,
            )
            .where(*_scope(run_id, bucket, run_date))
            .order_by(IngestReject.blocking.desc(), IngestReject.id)
            .limit(limit)
        )
        return [dict(r._mapping) for r in rows]
