"""Runs whose process died: marked failed within minutes, so Dagster's run retries take over.

Why this exists next to Dagster's run monitoring (`run_monitoring` in dagster.yaml): with the
`DefaultRunLauncher` that a single server runs, a run whose worker process alone dies is
reported failed at once by the code server that started it, but when the code server dies too
(a container restart; checked in Docker, see docs/docker-check.md), or a `python -m app run`
is killed, nobody is left to report it, and Dagster's monitoring cannot ask whether the
process is alive: the run stays STARTED until `max_runtime_seconds` (2 h), and meanwhile the
queue's one-run-per-partition limit keeps every retry and catch-up of that date waiting. (The
Docker and Kubernetes launchers check their workers' health, and their monitoring acts sooner.)

The run itself already carries a liveness signal: every run of a date holds (or waits for) the
date's PostgreSQL advisory lock on a session named after its run id (`app.run_lock`), and that
session ends with the process. A STARTED run of a date that has had `GRACE_S` to open it and has
no such session is dead; this sensor reports it failed through Dagster's own API
(`report_run_failed`), which lets `run_retries` re-run it and the failure alert say so. Runs
without a partition (a cleanup, which holds its date only inside its op) are left to Dagster.
A run whose lock session was cut by a database restart has lost its hold on the date too, so it
is failed the same way: it can no longer promise that no other run of its date interleaves. A
tick that cannot read the sessions (the database is down) marks nothing.
"""

import time
from collections.abc import Callable, Iterable

import dagster as dg

from app.db.engine import resolve_database_url
from app.run_lock import live_run_ids
from app.settings import load_settings
from crm_assets.catchup import PARTITION_TAG
from crm_resources.run_info import pipeline_run_id

GRACE_S = 180.0  # from the run's start to its lock session: process start, imports, resources
DEAD_MESSAGE = (
    "the run's process is gone: its database session (its hold on {date}) ended while the run "
    "was STARTED (killed, out of memory, or a container restart); marked failed so Dagster's "
    "run retries can run the date again"
)


def dead_runs(
    records: Iterable[dg.RunRecord], alive: set[str], now: float, grace_s: float = GRACE_S
) -> list[dg.DagsterRun]:
    """The STARTED runs of a date, older than the grace, whose run id has no session."""
    dead = []
    for record in records:
        run = record.dagster_run
        if run.status != dg.DagsterRunStatus.STARTED or not run.tags.get(PARTITION_TAG):
            continue
        started = record.start_time or record.create_timestamp.timestamp()
        if now - started < grace_s:
            continue
        if pipeline_run_id(run) not in alive and run.run_id not in alive:
            dead.append(run)
    return dead


def dead_run_tick(
    instance: dg.DagsterInstance,
    alive: Callable[[], set[str]],
    now: float | None = None,
) -> dg.SkipReason | None:
    """Report every dead run failed; a database that cannot be asked marks nothing."""
    records = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    if not records:
        return dg.SkipReason("no run is STARTED")
    try:
        sessions = alive()
    except Exception as exc:  # the database is down: no evidence either way
        return dg.SkipReason(f"run sessions could not be read ({type(exc).__name__}): no change")
    dead = dead_runs(records, sessions, time.time() if now is None else now)
    for run in dead:
        date = run.tags.get(PARTITION_TAG, "its date")
        instance.report_run_failed(run, DEAD_MESSAGE.format(date=date))
    if not dead:
        return dg.SkipReason(
            f"{len(records)} STARTED run(s): none dead (each has its session, or is within "
            f"the {GRACE_S:.0f} s grace)"
        )
    return None


@dg.sensor(
    name="crm_dead_run_monitor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks failed a STARTED run of a date whose process is gone (no lock session).",
)
def dead_run_monitor(context: dg.SensorEvaluationContext) -> dg.SkipReason | None:
    url = resolve_database_url(load_settings())
    return dead_run_tick(context.instance, lambda: live_run_ids(url))
