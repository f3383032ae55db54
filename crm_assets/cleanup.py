"""Cleanup: a passed audit check launches the deletion of exactly that audit's files.

The sensor reads the instance's asset-check executions (cursor = the last execution id it saw
per check). Each passed `audit_passed` evaluation becomes one run of `crm_cleanup`
with run key `cleanup:<bucket>:<date>:<audit id>`, so a bucket and date is never cleaned twice
for the same audit, however often the sensor ticks. A failed check launches nothing: the
files stay, and the check's description in the UI says why.
"""

import json
from collections.abc import Mapping

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluation
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecord,
    AssetCheckExecutionRecordStatus,
)

from app import json_logger
from app.cleanup import cleanup_audit
from app.config import MERGE_BUCKET_DB_SPECS
from crm_assets.keys import AUDIT, AUDIT_CHECK, key
from crm_resources import DatabaseResource, DataDirResource

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


def _new_passed_executions(
    instance: dg.DagsterInstance, check_key: dg.AssetCheckKey, last_seen: int
) -> list[AssetCheckExecutionRecord]:
    """Passed executions of one check with an id above `last_seen`, oldest first.

    The asset-check execution table is indexed in every Dagster storage (SQLite's run-sharded
    event log cannot page the global event stream by cursor; this table can).
    """
    found: list[AssetCheckExecutionRecord] = []
    page: int | None = None
    while True:
        records = instance.event_log_storage.get_asset_check_execution_history(
            check_key,
            limit=BATCH,
            cursor=page,
            status={AssetCheckExecutionRecordStatus.SUCCEEDED},
        )
        fresh = [r for r in records if r.id > last_seen]
        found += fresh
        if len(records) < BATCH or len(fresh) < len(records):
            return sorted(found, key=lambda r: r.id)
        page = records[-1].id


def cleanup_requests(
    instance: dg.DagsterInstance, cursor: Mapping[str, int]
) -> tuple[list[dg.RunRequest], dict[str, int]]:
    """Run requests for the passed audit checks not seen yet, and the new cursor."""
    requests: list[dg.RunRequest] = []
    new_cursor = dict(cursor)
    for bucket in MERGE_BUCKET_DB_SPECS:
        check_key = dg.AssetCheckKey(key(bucket, AUDIT), AUDIT_CHECK)
        name = check_key.to_user_string()
        for record in _new_passed_executions(instance, check_key, cursor.get(name, 0)):
            new_cursor[name] = max(new_cursor.get(name, 0), record.id)
            evaluation = record.evaluation
            if not isinstance(evaluation, AssetCheckEvaluation) or not evaluation.passed:
                continue
            audit_id = getattr(evaluation.metadata.get("audit_id"), "value", None)
            partition = record.partition or evaluation.partition
            if not isinstance(audit_id, int) or not partition:
                continue  # a dry run: nothing was audited, nothing to delete
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
                    tags={
                        "crm/bucket": bucket,
                        "crm/date": partition,
                        "crm/audit_id": str(audit_id),
                    },
                )
            )
    return requests, new_cursor


@dg.sensor(
    job=cleanup_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Deletes a bucket's CSVs for a date once its audit check passed.",
)
def cleanup_on_passed_audit(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    cursor = json.loads(context.cursor) if context.cursor else {}
    requests, cursor = cleanup_requests(context.instance, cursor)
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))
