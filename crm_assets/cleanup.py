"""Cleanup: a passed audit check launches the deletion of exactly that audit's files.

The sensor reads asset-check evaluations from the instance's event log (cursor = the last
storage id it saw). Each passed `audit_passed` evaluation becomes one run of `crm_cleanup`
with run key `cleanup:<bucket>:<date>:<audit id>`, so a bucket and date is never cleaned twice
for the same audit, however often the sensor ticks. A failed check launches nothing: the
files stay, and the check's description in the UI says why.
"""

import dagster as dg
from dagster._core.events import DagsterEventType

from app import json_logger
from app.cleanup import cleanup_audit
from app.config import MERGE_BUCKET_DB_SPECS
from crm_assets.keys import AUDIT, AUDIT_CHECK, bucket_of, key
from crm_resources import DatabaseResource, DataDirResource

AUDIT_KEYS = {key(bucket, AUDIT) for bucket in MERGE_BUCKET_DB_SPECS}
BATCH = 500


class CleanupConfig(dg.Config):
    bucket: str
    run_date: str
    audit_id: int


@dg.op(description="Delete the files of one passed audit (all or nothing).")
async def cleanup_files(
    context: dg.OpExecutionContext,
    config: CleanupConfig,
    db: DatabaseResource,
    data_dir: DataDirResource,
) -> None:
    with json_logger.run_context(context.run_id):
        result = await cleanup_audit(db.engine, config.audit_id, data_dir.root())
    context.log.info(f"cleanup of audit {config.audit_id}: {result.status} {result.reason or ''}")
    if result.status == "refused":
        raise dg.Failure(f"cleanup refused for audit {config.audit_id}: {result.reason}")


@dg.job(name="crm_cleanup", description="Cleanup of one passed audit; launched by the sensor.")
def cleanup_job() -> None:
    cleanup_files()


def cleanup_requests(instance: dg.DagsterInstance, cursor: int) -> tuple[list[dg.RunRequest], int]:
    """Run requests for the passed audit checks after `cursor`, and the new cursor."""
    records = instance.get_event_records(
        dg.EventRecordsFilter(DagsterEventType.ASSET_CHECK_EVALUATION, after_cursor=cursor),
        ascending=True,
        limit=BATCH,
    )
    requests: list[dg.RunRequest] = []
    for record in records:
        cursor = max(cursor, record.storage_id)
        event = record.event_log_entry.dagster_event
        evaluation = event.event_specific_data if event else None
        if (
            evaluation is None
            or getattr(evaluation, "check_name", None) != AUDIT_CHECK
            or getattr(evaluation, "asset_key", None) not in AUDIT_KEYS
            or not getattr(evaluation, "passed", False)
        ):
            continue
        audit_id = evaluation.metadata.get("audit_id")
        audit_id = getattr(audit_id, "value", audit_id)
        partition = evaluation.partition
        if not isinstance(audit_id, int) or not partition:
            continue
        bucket = bucket_of(evaluation.asset_key)
        requests.append(
            dg.RunRequest(
                run_key=f"cleanup:{bucket}:{partition}:{audit_id}",
                run_config=dg.RunConfig(
                    ops={
                        "cleanup_files": CleanupConfig(
                            bucket=bucket, run_date=partition, audit_id=audit_id
                        )
                    }
                ),
                tags={"crm/bucket": bucket, "crm/date": partition, "crm/audit_id": str(audit_id)},
            )
        )
    return requests, cursor


@dg.sensor(
    job=cleanup_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Deletes a bucket's CSVs for a date once its audit check passed.",
)
def cleanup_on_passed_audit(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    requests, cursor = cleanup_requests(context.instance, int(context.cursor or 0))
    return dg.SensorResult(run_requests=requests, cursor=str(cursor))
