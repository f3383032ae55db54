"""Who this run is, read once from Dagster's run record: id, date, "today", source, folder.

- The pipeline run id is the root run's id: a Dagster re-execution (a retry from failure) is a
  continuation of its root run and takes the results of the steps it did not re-execute, as
  Dagster's own re-execution does; any other run, of the same date or not, is somebody else.
- "Today" is fixed when the run is created: the `crm/today` tag (the CLI and the schedule set
  it), else the run's creation time in the franchise timezone, so every step of a run that
  crosses midnight agrees on it.
"""

import datetime as dt
from pathlib import Path
from typing import Any

import dagster as dg

from app.run_context import RunContext
from app.settings import load_settings

TODAY_TAG = "crm/today"
SOURCE_TAG = "crm/source"
# Set by the raw step on a run whose date the portal cannot serve and that has nothing kept:
# the run fails as the design says, but it is a request for an impossible date, not an outage,
# so the failure sensors (alerts, reports) leave it alone and the Runs list can filter on it.
NOT_SERVABLE_TAG = "crm/not_servable"


def pipeline_run_id(run: dg.DagsterRun) -> str:
    return run.root_run_id or run.run_id


def run_source(run: dg.DagsterRun) -> str:
    tags = run.tags
    if SOURCE_TAG in tags:
        return tags[SOURCE_TAG]
    if "dagster/schedule_name" in tags:
        return "schedule"
    if "dagster/backfill" in tags:
        return "backfill"
    if "dagster/sensor_name" in tags:
        return "sensor"
    return "ui"


def run_today(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dt.date:
    tz = load_settings().tz
    if TODAY_TAG in run.tags:
        return dt.date.fromisoformat(run.tags[TODAY_TAG])
    root = run.root_run_id or run.run_id
    record = instance.get_run_record_by_id(root) or instance.get_run_record_by_id(run.run_id)
    created = record.create_timestamp if record is not None else dt.datetime.now(dt.UTC)
    return created.astimezone(tz).date()


def run_context(context: Any, data_dir: Path) -> RunContext:
    """The RunContext of the step's run (an asset or asset-check execution context)."""
    run: dg.DagsterRun = context.run
    return RunContext(
        run_id=pipeline_run_id(run),
        run_date=dt.date.fromisoformat(context.partition_key),
        today=run_today(context.instance, run),
        data_dir=data_dir,
        source=run_source(run),
    )
