"""Catch-up: today's partition again, every few hours, until every bucket of today has passed.

The portal only serves today's data, so a day that failed at 09:00 (portal down longer than the
step retries wait, a bad file since replaced, an operator who dropped the missing reports into
`DATA_DIR/<date>/`) can only be rescued the same day. From `CATCHUP_START` every
`CATCHUP_INTERVAL_H` hours, strictly before `CATCHUP_CUTOFF` (times in `TIMEZONE`), the
schedule asks `pipeline_audit` (the app database, as the cleanup sensor does) which buckets of
today have no passed audit yet and requests one `crm_daily` run of today for exactly those.
At the cut-off the trying stops and `crm_assets.alerts` says what is still missing.

It skips, saying why:
- every bucket of today already passed (the usual case: nothing to do);
- a run of today is going: the date's advisory lock is held (`app.run_lock.is_held`; a run of
  any origin, the CLI included), or Dagster has a queued or in-progress run of the partition
  (it would take the lock next); the next tick looks again;
- the portal is simulated (`CRM_PORTAL_SIMULATED` set by the local demo / UI;
  `crm_assets.jobs.simulated_portal_skip`, which every schedule asks first).

The cron comes from `app.settings.load_settings()` when the code location loads (the same values
a run sees, `.env` included); a cut-off not after the start stops the load with the variable's
name, like every other invalid setting.
"""

import datetime as dt

import dagster as dg
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES, RunsFilter

from app.alerts import audit_day
from app.config import MERGE_BUCKET_DB_SPECS
from app.db.engine import resolve_database_url
from app.run_lock import holder_of
from app.settings import ConfigError, Settings, load_settings
from crm_assets.jobs import daily_job, simulated_portal_skip
from crm_assets.keys import AUDIT, AUDIT_CHECK, DOWNLOAD_CHECK, MERGED, RAW, TABLE, key
from crm_resources.run_info import SOURCE_TAG, TODAY_TAG

CATCHUP_SOURCE = "catchup"
PARTITION_TAG = "dagster/partition"
BUCKETS = tuple(MERGE_BUCKET_DB_SPECS)


def catchup_hours(settings: Settings) -> list[int]:
    """The tick hours: start, start + interval, ... while the tick is before the cut-off."""
    start, cutoff, step = (
        settings.catchup_start,
        settings.catchup_cutoff,
        settings.catchup_interval_h,
    )
    if (cutoff.hour, cutoff.minute) <= (start.hour, start.minute):
        raise ConfigError(
            f"invalid configuration: CATCHUP_CUTOFF ({cutoff:%H:%M}) must be after "
            f"CATCHUP_START ({start:%H:%M}) on the same day"
        )
    ticks = range(start.hour * 60 + start.minute, cutoff.hour * 60 + cutoff.minute, step * 60)
    return [minutes // 60 for minutes in ticks]


def catchup_cron(settings: Settings) -> str:
    """E.g. `0 11,13,15,17,19 * * *` for 11:00 every 2 h before 21:00."""
    hours = ",".join(str(h) for h in catchup_hours(settings))
    return f"{settings.catchup_start.minute} {hours} * * *"


def _tick_time(context: dg.ScheduleEvaluationContext, settings: Settings) -> dt.datetime:
    tick = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
    return tick.astimezone(settings.tz)


def _in_progress(instance: dg.DagsterInstance, day: str) -> str | None:
    """A queued or in-progress Dagster run of the partition (it would hold the date next)."""
    records = instance.get_run_records(
        RunsFilter(statuses=IN_PROGRESS_RUN_STATUSES, tags={PARTITION_TAG: day}), limit=1
    )
    if not records:
        return None
    run = records[0].dagster_run
    return f"Dagster run {run.run_id} ({run.job_name}, {run.status.value})"


def selection_for(buckets: list[str]) -> tuple[list[dg.AssetKey], list[dg.AssetCheckKey]]:
    """The chains (assets and both audit checks) of the buckets that have not passed."""
    assets = [key(b, stage) for b in buckets for stage in (RAW, MERGED, TABLE, AUDIT)]
    checks = [
        dg.AssetCheckKey(key(b, AUDIT), name)
        for b in buckets
        for name in (AUDIT_CHECK, DOWNLOAD_CHECK)
    ]
    return assets, checks


def catchup_request(
    context: dg.ScheduleEvaluationContext, settings: Settings
) -> dg.RunRequest | dg.SkipReason:
    """Today's run for the buckets without a passed audit, unless there is nothing to do."""
    if skip := simulated_portal_skip():
        return skip
    tick = _tick_time(context, settings)
    today = tick.date()
    url = resolve_database_url(settings)
    missing = audit_day(url, today, BUCKETS).missing
    if not missing:
        return dg.SkipReason(f"{today}: every bucket already has a passed audit")
    holder = holder_of(url, today)
    if holder is not None:
        return dg.SkipReason(f"{today}: a run of the date is going ({holder.describe()})")
    queued = _in_progress(context.instance, today.isoformat())
    if queued is not None:
        return dg.SkipReason(f"{today}: {queued} is queued or in progress")
    assets, checks = selection_for(missing) if len(missing) < len(BUCKETS) else (None, None)
    return dg.RunRequest(
        run_key=f"catchup:{today.isoformat()}:{tick:%H:%M}",
        partition_key=today.isoformat(),
        asset_selection=assets,
        asset_check_keys=checks,
        tags={
            TODAY_TAG: today.isoformat(),
            SOURCE_TAG: CATCHUP_SOURCE,
            "crm/buckets": ",".join(missing),
        },
    )


def build_catchup_schedule(settings: Settings) -> dg.ScheduleDefinition:
    cron = catchup_cron(settings)

    @dg.schedule(
        name="crm_catchup_schedule",
        job=daily_job,
        cron_schedule=cron,
        execution_timezone=settings.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            f"Today's buckets without a passed audit, again at {cron} ({settings.timezone}), "
            f"until {settings.catchup_cutoff:%H:%M}."
        ),
    )
    def crm_catchup_schedule(
        context: dg.ScheduleEvaluationContext,
    ) -> dg.RunRequest | dg.SkipReason:
        return catchup_request(context, load_settings())

    return crm_catchup_schedule


catchup_schedule = build_catchup_schedule(load_settings())
CATCHUP_SCHEDULES: list[dg.ScheduleDefinition] = [catchup_schedule]
