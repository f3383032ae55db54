"""Jobs and schedules: one daily job for every bucket, one per bucket for targeted reruns.

The schedule's cron and timezone come from `app.settings.load_settings()` (`SCHEDULE_CRON`,
`TIMEZONE`, environment then `.env`), like the partitions, so the two never disagree.
"""

import datetime as dt

import dagster as dg

from app.config import MERGE_BUCKET_DB_SPECS
from app.local import SIMULATED_PORTAL_ENV, portal_is_simulated
from crm_assets.partitions import SETTINGS, TIMEZONE
from crm_resources.run_info import SOURCE_TAG, TODAY_TAG

DAILY_JOB = "crm_daily"
SCHEDULE_CRON = SETTINGS.schedule_cron

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


def simulated_portal_skip() -> dg.SkipReason | None:
    """A SkipReason when this process points at the built-in simulator, else None.

    `python -m app ui` on embedded defaults sets `CRM_PORTAL_SIMULATED=1` for its daemon: the
    simulator's data is for trying the UI by hand, so no schedule may fire against it (and
    fill the laptop's database every morning). Every schedule should ask this first.
    """
    if not portal_is_simulated():
        return None
    return dg.SkipReason(
        f"{SIMULATED_PORTAL_ENV} is set: the portal is the built-in simulator, so schedules "
        "do not fire; set TMS_WEB, TMS_BASE, TMS_USERNAME, TMS_PASSWORD for the real portal"
    )


@dg.schedule(
    name="crm_daily_schedule",
    job=daily_job,
    cron_schedule=SCHEDULE_CRON,
    execution_timezone=TIMEZONE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=f"Today's partition at {SCHEDULE_CRON} ({TIMEZONE}).",
)
def daily_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    """Today's partition in the franchise's timezone: the portal serves nothing else.

    (Dagster's partitioned-schedule builder only fires at the partition boundary; the run date
    here is the calendar day of the tick, at any configured hour.)
    """
    if skip := simulated_portal_skip():
        return skip
    tick = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
    day = tick.astimezone(SETTINGS.tz).date().isoformat()
    return dg.RunRequest(
        run_key=f"crm_daily:{day}",
        partition_key=day,
        tags={TODAY_TAG: day, SOURCE_TAG: "schedule"},
    )
