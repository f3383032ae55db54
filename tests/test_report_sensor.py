"""A date whose run failed still gets its reports, saying which bucket is not reconciled.

Real runs of the whole graph (`crm_daily`, in process, against the portal simulator and this
test's PostgreSQL); the run-failure sensor is called the way the daemon calls it, and the run
it requests is executed and its report read back.
"""

from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from sqlalchemy.engine import URL

from crm_assets.definitions import defs
from crm_assets.report_sensor import AFTER_TAG, report_request, reports_after_failure
from crm_assets.reports import REPORTS_KEY
from crm_resources.run_info import TODAY_TAG
from tests.graph_helpers import TODAY, portal_config, seed

DAY = TODAY.isoformat()


def _daily_run(
    instance: dg.DagsterInstance,
    sim: Any,
    selection: list[dg.AssetKey] | None = None,
    job: dg.JobDefinition | None = None,
) -> dg.DagsterRun:
    """A run of `job` (default `crm_daily`) for DAY against the simulator, failing or not."""
    result = (job or defs.resolve_job_def("crm_daily")).execute_in_process(
        partition_key=DAY,
        instance=instance,
        asset_selection=selection,
        run_config={"resources": {"portal": {"config": portal_config(sim)}}},
        raise_on_error=False,
        tags={TODAY_TAG: DAY},
    )
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    return run


def _failure_context(instance: dg.DagsterInstance, run: dg.DagsterRun) -> Any:
    (event,) = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    return dg.build_run_status_sensor_context(
        sensor_name="crm_reports_after_failure",
        dagster_event=event.get_dagster_event(),
        dagster_instance=instance,
        dagster_run=run,
    ).for_run_failure()


def _report_html(data_dir: Path, store: str) -> str:
    return (data_dir / "reports" / DAY / f"{store}.html").read_text(encoding="utf-8")


def test_a_failed_audit_gets_a_reports_run_whose_report_names_the_bucket(
    graph_env: Path, database_url: URL, make_portal_sim: Any
) -> None:
    sim = make_portal_sim(store_count=1, seed=5, today=TODAY, bad_rows_per_store=1)
    seed(database_url, sim)
    store = sim.stores()[0]["store_code"]
    with dg.DagsterInstance.get() as instance:
        run = _daily_run(instance, sim)
        assert run.status == dg.DagsterRunStatus.FAILURE
        steps = {s.step_key: s.status.value for s in instance.get_run_step_stats(run.run_id)}
        assert steps.get("reports__store_reports", "SKIPPED") == "SKIPPED"
        assert not (graph_env / "reports" / DAY).exists()  # Dagster skipped the reports

        request = reports_after_failure(_failure_context(instance, run))
        assert isinstance(request, dg.RunRequest)
        assert request.partition_key == DAY and request.tags[AFTER_TAG] == run.run_id
        assert request.run_key == f"reports-after:{run.run_id}"  # one per failed run

        reports = defs.resolve_job_def("crm_reports").execute_in_process(
            partition_key=DAY, instance=instance, tags=request.tags
        )
    assert reports.success
    html = _report_html(graph_env, store)
    assert "undelivered_all" in html and "not reconciled" in html.lower()


def test_a_run_without_the_reports_or_that_built_them_requests_nothing(
    graph_env: Path, database_url: URL, make_portal_sim: Any
) -> None:
    sim = make_portal_sim(store_count=1, seed=5, today=TODAY, bad_rows_per_store=1)
    seed(database_url, sim)
    with dg.DagsterInstance.get() as instance:
        run = _daily_run(instance, sim, selection=_undelivered_chain())
        assert run.status == dg.DagsterRunStatus.FAILURE
        assert report_request(instance, run) is None  # the reports were never part of it
        skipped = reports_after_failure(_failure_context(instance, run))
        assert isinstance(skipped, dg.SkipReason)

        instance.add_run_tags(run.run_id, {"dagster/will_retry": "true"})
        full = _daily_run(instance, sim)
        instance.add_run_tags(full.run_id, {"dagster/will_retry": "true"})
        retried = instance.get_run_by_id(full.run_id)
        assert retried is not None and report_request(instance, retried) is None


def _undelivered_chain() -> list[dg.AssetKey]:
    """One bucket's chain, without the reports."""
    stages = ("raw_csvs", "merged_csv", "table", "audit")
    return [dg.AssetKey(["undelivered_all", s]) for s in stages]


@pytest.mark.parametrize("name", ["crm_reports_after_failure", "crm_run_failure_alert"])
def test_the_failure_sensors_watch_every_job_of_the_location(name: str) -> None:
    """UI "Materialize" runs and backfills run as the implicit asset job: watched too."""
    sensor = defs.resolve_sensor_def(name)
    assert isinstance(sensor, dg.RunStatusSensorDefinition)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    # no job filter (Dagster keeps it private): every run of this code location is watched
    assert sensor._monitored_jobs == []


def test_a_ui_materialization_that_included_the_reports_gets_them_built(
    graph_env: Path, database_url: URL, make_portal_sim: Any
) -> None:
    """The UI's "Materialize" runs Dagster's implicit asset job with the selection it shows."""
    sim = make_portal_sim(store_count=1, seed=5, today=TODAY, bad_rows_per_store=1)
    seed(database_url, sim)
    selection = [*_undelivered_chain(), REPORTS_KEY]
    with dg.DagsterInstance.get() as instance:
        run = _daily_run(instance, sim, selection, defs.resolve_implicit_global_asset_job_def())
        assert run.status == dg.DagsterRunStatus.FAILURE
        assert run.job_name == "__ASSET_JOB"
        request = report_request(instance, run)
    assert request is not None and request.partition_key == DAY
