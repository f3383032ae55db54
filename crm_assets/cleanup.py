"""Cleanup: a passed audit check launches the deletion of exactly that audit's files.

The sensor finds its work by query, not by a cursor: passed audits in `pipeline_audit` that have
no cleanup outcome yet, for which Dagster holds a passed `audit_passed` evaluation naming that
audit id. (An id cursor skipped audits for ever: asset-check execution ids are assigned when a
run is created, not when its check finishes, so with two dates running at once a later id can
finish first.) Each becomes one run of `crm_cleanup` with run key
`cleanup:<bucket>:<date>:<audit id>`, so an audit is never cleaned twice however often the
sensor ticks. A date whose lock is held (a run of that date is still going, or the CLI is
cleaning up inline) is skipped this tick: the CLI records its cleanup before it releases the
date, so the sensor launches nothing for it. A failed check launches nothing: the files stay,
and the check's description in the UI says why.
"""

import asyncio
import datetime as dt
from collections.abc import Iterable

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluation
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from sqlalchemy import Table, select
from sqlalchemy.engine import URL

from app import json_logger
from app.cleanup import cleanup_audit
from app.db.engine import create_engine, resolve_database_url
from app.db.models import PipelineAudit
from app.run_lock import is_held
from app.settings import load_settings
from crm_assets.keys import AUDIT, AUDIT_CHECK, key
from crm_resources import DatabaseResource, DataDirResource

PENDING_LIMIT = 200
HISTORY_LIMIT = 50


class CleanupConfig(dg.Config):
    bucket: str
    run_date: str
    audit_id: int


@dg.op(description="Delete the files of one passed audit (all or nothing), holding its date.")
async def cleanup_files(
    context: dg.OpExecutionContext,
    config: CleanupConfig,
    db: DatabaseResource,
    data_dir: DataDirResource,
) -> None:
    with json_logger.run_context(context.run_id):
        result = await cleanup_audit(
            db.engine,
            config.audit_id,
            data_dir.root(),
            run_id=context.run_id,
            wait_s=load_settings().run_lock_wait_s,
        )
    context.log.info(f"cleanup of audit {config.audit_id}: {result.status} {result.reason or ''}")
    if result.status == "refused":
        raise dg.Failure(f"cleanup refused for audit {config.audit_id}: {result.reason}")


@dg.job(
    name="crm_cleanup",
    executor_def=dg.in_process_executor,
    description="Cleanup of one passed audit; launched by the sensor.",
)
def cleanup_job() -> None:
    cleanup_files()


async def _pending(url: URL, ids: Iterable[int] | None = None) -> list[tuple[int, str, dt.date]]:
    """Passed audits without a cleanup outcome (optionally only among `ids`), oldest first."""
    table: Table = PipelineAudit.__table__  # type: ignore[assignment]
    stmt = (
        select(table.c.id, table.c.bucket, table.c.run_date)
        .where(table.c.status == "passed", table.c.cleanup_status.is_(None))
        .order_by(table.c.id)
        .limit(PENDING_LIMIT)
    )
    if ids is not None:
        stmt = stmt.where(table.c.id.in_(list(ids)))
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return [(int(r[0]), str(r[1]), r[2]) for r in await conn.execute(stmt)]
    finally:
        await engine.dispose()


def pending_cleanups(url: URL, ids: Iterable[int] | None = None) -> list[tuple[int, str, dt.date]]:
    return asyncio.run(_pending(url, ids))


def check_passed_for(
    instance: dg.DagsterInstance, bucket: str, run_date: dt.date, audit_id: int
) -> bool:
    """Dagster holds a passed `audit_passed` evaluation of this partition naming `audit_id`."""
    records = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(key(bucket, AUDIT), AUDIT_CHECK),
        limit=HISTORY_LIMIT,
        status={AssetCheckExecutionRecordStatus.SUCCEEDED},
        partition_filter=PartitionKeyFilter(key=run_date.isoformat()),
    )
    for record in records:
        evaluation = record.evaluation
        if not isinstance(evaluation, AssetCheckEvaluation) or not evaluation.passed:
            continue
        value = getattr(evaluation.metadata.get("audit_id"), "value", None)
        if str(value) == str(audit_id):
            return True
    return False


def cleanup_requests(instance: dg.DagsterInstance, url: URL) -> list[dg.RunRequest]:
    """One request per passed, checked, not yet cleaned audit whose date nobody holds."""
    candidates = []
    for audit_id, bucket, run_date in pending_cleanups(url):
        if is_held(url, run_date):
            continue  # a run of that date is going (it may clean up itself): next tick
        if check_passed_for(instance, bucket, run_date, audit_id):
            candidates.append((audit_id, bucket, run_date))
    # Read again after the lock check: a CLI run records its cleanup before releasing the date.
    still = {a for a, _, _ in pending_cleanups(url, [a for a, _, _ in candidates])}
    return [
        dg.RunRequest(
            run_key=f"cleanup:{bucket}:{run_date.isoformat()}:{audit_id}",
            run_config=dg.RunConfig(
                ops={
                    "cleanup_files": CleanupConfig(
                        bucket=bucket, run_date=run_date.isoformat(), audit_id=audit_id
                    )
                }
            ),
            tags={
                "crm/bucket": bucket,
                "crm/date": run_date.isoformat(),
                "crm/audit_id": str(audit_id),
            },
        )
        for audit_id, bucket, run_date in candidates
        if audit_id in still
    ]


@dg.sensor(
    job=cleanup_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Deletes a bucket's CSVs for a date once its audit check passed.",
)
def cleanup_on_passed_audit(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    url = resolve_database_url(load_settings())  # the same database the runs write
    return dg.SensorResult(run_requests=cleanup_requests(context.instance, url))
