"""Reports for a date whose run failed: the day the CRM team most needs to be told so.

In a run of the whole graph, Dagster skips `reports/store_reports` when an upstream step fails
or a blocking `audit_passed` check fails. Those are exactly the days whose report must say which
bucket is not reconciled and why, so this run-failure sensor gives them a `crm_reports` run of
their own (one per failed run: the run key names it). It watches every job of this code
location, so runs launched from the UI's "Materialize" and backfills count as well as
`crm_daily` and the schedules; in-process CLI runs are not Dagster-launched (`python -m app
report` is their path). It requests nothing when the report step ran (succeeded, or failed on
its own: the run-failure alert reports that), when the run did not include the reports, when
Dagster will retry the run (the retry builds them), or for a date the portal no longer serves.
"""

import dagster as dg
from dagster._core.execution.stats import StepEventStatus

from crm_assets.alerts import settled_elsewhere
from crm_assets.catchup import PARTITION_TAG
from crm_assets.jobs import DAILY_JOB
from crm_assets.reports import REPORTS_KEY, reports_job
from crm_resources.run_info import SOURCE_TAG

REPORT_STEP = "reports__store_reports"
AFTER_TAG = "crm/reports_after"


def _included_reports(run: dg.DagsterRun) -> bool:
    """A subset run names its assets; a whole-job run has an empty selection."""
    if run.asset_selection:
        return REPORTS_KEY in run.asset_selection
    return run.job_name == DAILY_JOB


def reports_left_out(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str | None:
    """Why this failed run left its date's reports unbuilt, or None if it did not."""
    partition = run.tags.get(PARTITION_TAG)
    if run.job_name == reports_job.name or not partition:
        return None
    if settled_elsewhere(run) is not None:
        return None
    if not _included_reports(run):
        return None
    stats = {s.step_key: s.status for s in instance.get_run_step_stats(run.run_id)}
    if stats.get(REPORT_STEP, StepEventStatus.SKIPPED) != StepEventStatus.SKIPPED:
        return None
    return f"run {run.run_id} of {partition} failed before its reports were built"


def report_request(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dg.RunRequest | None:
    return None if reports_left_out(instance, run) is None else _request(run)


def _request(run: dg.DagsterRun) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=f"reports-after:{run.run_id}",
        partition_key=run.tags[PARTITION_TAG],
        tags={AFTER_TAG: run.run_id, SOURCE_TAG: "sensor"},
    )


@dg.run_failure_sensor(
    name="crm_reports_after_failure",
    request_job=reports_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Builds a date's store reports when its run failed before building them.",
)
def reports_after_failure(context: dg.RunFailureSensorContext) -> dg.RunRequest | dg.SkipReason:
    run = context.instance.get_run_by_id(context.dagster_run.run_id) or context.dagster_run
    why = reports_left_out(context.instance, run)  # one read of the run's step stats
    if why is None:
        return dg.SkipReason(f"run {run.run_id}: its reports need no run of their own")
    context.log.info(f"{why}: requesting crm_reports")
    return _request(run)
