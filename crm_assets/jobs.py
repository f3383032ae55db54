"""Jobs and schedules: one daily job for every bucket, one per bucket for targeted reruns."""

import datetime as dt
import os
import zoneinfo

import dagster as dg

from app.config import MERGE_BUCKET_DB_SPECS
from crm_assets.partitions import TIMEZONE
from crm_resources.run_info import SOURCE_TAG, TODAY_TAG

DAILY_JOB = "crm_daily"
SCHEDULE_CRON = os.environ.get("SCHEDULE_CRON", "0 9 * * *")

# In-process: the run-date lock (crm_resources.run_lock) is a database session held by the run's
# one process from the first step to the last; a process per step would drop it between steps.
daily_job = dg.define_asset_job(
    DAILY_JOB,
    selection=dg.AssetSelection.all(),
    executor_def=dg.in_process_executor,
    description="Download → merge → load → audit for every bucket, one run date.",
)

bucket_jobs = [
    dg.define_asset_job(
        f"{DAILY_JOB}_{bucket}",
        selection=dg.AssetSelection.groups(bucket),
        executor_def=dg.in_process_executor,
        description=f"The {bucket} chain only (downloads only that bucket's reports).",
    )
    for bucket in MERGE_BUCKET_DB_SPECS
]


@dg.schedule(
    name="crm_daily_schedule",
    job=daily_job,
    cron_schedule=SCHEDULE_CRON,
    execution_timezone=TIMEZONE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=f"Today's partition at {SCHEDULE_CRON} ({TIMEZONE}).",
)
def daily_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Today's partition in the franchise's timezone: the portal serves nothing else.

    (Dagster's partitioned-schedule builder only fires at the partition boundary; the run date
    here is the calendar day of the tick, at any configured hour.)
    """
    tick = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
    day = tick.astimezone(zoneinfo.ZoneInfo(TIMEZONE)).date().isoformat()
    return dg.RunRequest(
        run_key=f"crm_daily:{day}",
        partition_key=day,
        tags={TODAY_TAG: day, SOURCE_TAG: "schedule"},
    )
