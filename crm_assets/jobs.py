"""Jobs and schedules: one daily job for every bucket, one per bucket for targeted reruns."""

import os

import dagster as dg

from app.config import MERGE_BUCKET_DB_SPECS
from crm_assets.partitions import TIMEZONE

DAILY_JOB = "crm_daily"
SCHEDULE_CRON = os.environ.get("SCHEDULE_CRON", "0 9 * * *")

daily_job = dg.define_asset_job(
    DAILY_JOB,
    selection=dg.AssetSelection.all(),
    description="Download → merge → load → audit for every bucket, one run date.",
)

bucket_jobs = [
    dg.define_asset_job(
        f"{DAILY_JOB}_{bucket}",
        selection=dg.AssetSelection.groups(bucket)
        | dg.AssetSelection.keys(dg.AssetKey([bucket, "raw_csvs"])),
        description=f"The {bucket} chain only (downloads only that bucket's reports).",
    )
    for bucket in MERGE_BUCKET_DB_SPECS
]

daily_schedule = dg.build_schedule_from_partitioned_job(
    daily_job,
    name="crm_daily_schedule",
    cron_schedule=SCHEDULE_CRON,
    execution_timezone=TIMEZONE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=f"Today's partition at {SCHEDULE_CRON} ({TIMEZONE}).",
)
