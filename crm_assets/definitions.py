"""The code location: `crm_assets.definitions:defs` (workspace.yaml, `dagster dev -m ...`)."""

import dagster as dg

from crm_assets.alerts import ALERT_SENSORS
from crm_assets.catchup import CATCHUP_SCHEDULES
from crm_assets.cleanup import cleanup_job, cleanup_on_passed_audit
from crm_assets.dead_runs import dead_run_monitor
from crm_assets.factory import build_all_assets
from crm_assets.jobs import bucket_jobs, daily_job, daily_schedule
from crm_assets.loggers import json_console_logger
from crm_assets.report_sensor import reports_after_failure
from crm_assets.reports import REPORT_ASSETS, REPORT_JOBS
from crm_resources import default_resources

assets, asset_checks = build_all_assets()

defs = dg.Definitions(
    assets=[*assets, *REPORT_ASSETS],
    asset_checks=asset_checks,
    jobs=[daily_job, *bucket_jobs, cleanup_job, *REPORT_JOBS],
    schedules=[daily_schedule, *CATCHUP_SCHEDULES],
    sensors=[cleanup_on_passed_audit, *ALERT_SENSORS, reports_after_failure, dead_run_monitor],
    # Settings-backed, not `dg.EnvVar`: see `crm_resources.default_resources` for why.
    resources=default_resources(),
    # Also the executor of asset selections launched from the UI and of backfills: one process
    # per run, which holds the run date (crm_resources.run_lock) from first step to last.
    executor=dg.in_process_executor,
    # Dagster's console records as JSON events with the run's id (crm_assets.loggers).
    loggers={"console": json_console_logger},
)
