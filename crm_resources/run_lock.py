"""The run-date lock as a Dagster resource: a run of date D holds D from its first step to its end.

The graph runs with the in-process executor (see `crm_assets.definitions`), so this resource is
initialised once per run, before the first step, and released when the run ends, whatever
launched it (daemon, UI, backfill, `python -m app run`). A second run of the same date waits at
most `RUN_LOCK_WAIT_S` and then fails, naming the run that holds the date. See `app.run_lock`
for why the lock is a PostgreSQL session advisory lock.
"""

import contextlib
import datetime as dt
from collections.abc import Iterator

import dagster as dg

from app.db.engine import resolve_database_url
from app.run_lock import hold_run_date
from app.settings import load_settings
from crm_resources.run_info import pipeline_run_id, run_source


class RunDateLockResource(dg.ConfigurableResource):
    """`wait_s` unset → `RUN_LOCK_WAIT_S` (default 600 s)."""

    wait_s: float | None = None

    @contextlib.contextmanager
    def yield_for_execution(
        self, context: dg.InitResourceContext
    ) -> Iterator["RunDateLockResource"]:
        run = context.run
        partition = run.tags.get("dagster/partition") if run is not None else None
        if run is None or not partition:
            yield self  # not a run of one date (e.g. a definitions check): nothing to hold
            return
        settings = load_settings()
        with hold_run_date(
            resolve_database_url(settings),
            dt.date.fromisoformat(partition),
            pipeline_run_id(run),
            source=run_source(run),
            wait_s=settings.run_lock_wait_s if self.wait_s is None else self.wait_s,
        ):
            yield self
