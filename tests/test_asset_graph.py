"""The Dagster code location and full partition runs against the simulator and real Postgres."""

import asyncio
import datetime as dt
from collections import defaultdict
from pathlib import Path

import dagster as dg
from sqlalchemy.engine import URL

from app.audit import latest_audit
from app.config import MERGE_BUCKET_DB_SPECS, merged_name
from app.db.engine import create_engine
from app.runner import RunOutcome, execute_date, run_pipeline
from app.settings import load_settings
from crm_assets.cleanup import cleanup_on_passed_audit
from crm_assets.definitions import defs
from crm_assets.keys import AUDIT, AUDIT_CHECK, DOWNLOAD_CHECK, MERGED, RAW, TABLE, key
from crm_assets.partitions import daily_partitions
from tests.graph_helpers import TODAY
from tests.graph_helpers import expected_keys_at as _expected_keys_at
from tests.graph_helpers import portal_config as _portal
from tests.graph_helpers import query as _query
from tests.graph_helpers import seed as _seed

BUCKETS = list(MERGE_BUCKET_DB_SPECS)

# ---------------------------------------------------------------- code location


def test_code_location_loads_with_every_bucket_chain() -> None:
    graph = defs.resolve_asset_graph()
    keys = set(graph.get_all_asset_keys())
    for bucket in BUCKETS:
        for stage in (RAW, MERGED, TABLE, AUDIT):
            assert key(bucket, stage) in keys
            assert graph.get(key(bucket, stage)).partitions_def == daily_partitions
            assert graph.get(key(bucket, stage)).group_name == bucket
        checks = {ck.name for ck in graph.get_check_keys_for_assets([key(bucket, AUDIT)])}
        assert checks == {AUDIT_CHECK, DOWNLOAD_CHECK}
    assert defs.resolve_sensor_def("cleanup_on_passed_audit")
    assert defs.resolve_job_def("crm_daily")
    for bucket in BUCKETS:
        assert defs.resolve_job_def(f"crm_daily_{bucket}")
    assert daily_partitions.timezone == "Asia/Kolkata"


def test_schedule_targets_todays_partition() -> None:
    schedule = defs.resolve_schedule_def("crm_daily_schedule")
    assert schedule.cron_schedule == "0 9 * * *"
    assert schedule.execution_timezone == "Asia/Kolkata"
    tick = dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    with dg.build_schedule_context(
        scheduled_execution_time=tick, repository_def=defs.get_repository_def()
    ) as context:
        data = schedule.evaluate_tick(context)
    (request,) = data.run_requests or []
    assert request.partition_key == "2026-11-27"


# ---------------------------------------------------------------- full runs


def _expected_keys(sim, bucket: str, stores: list[str]) -> set[tuple]:
    return _expected_keys_at(sim, bucket, stores, TODAY)


def test_full_partition_run_loads_what_the_portal_served_and_cleans_up(
    graph_env: Path, database_url: URL, make_portal_sim
) -> None:
    sim = make_portal_sim(store_count=4, seed=11, today=TODAY)
    _seed(database_url, sim)
    code = run_pipeline(load_settings(), run_date=TODAY, portal_override=_portal(sim))
    assert code == 0
    for bucket in BUCKETS:
        spec = MERGE_BUCKET_DB_SPECS[bucket]
        keys = ", ".join(spec["dedupe_keys"])
        rows = _query(database_url, f"SELECT {keys} FROM {spec['table_name']}")
        got = {tuple(r[k] for k in spec["dedupe_keys"]) for r in rows}
        assert got == _expected_keys(sim, bucket, sim.store_codes), bucket
        audits = _query(
            database_url,
            f"SELECT status, merged_rows, ingested_rows, expected_unique, cleanup_status "
            f"FROM pipeline_audit WHERE bucket = '{bucket}'",
        )
        assert len(audits) == 1
        audit = audits[0]
        assert audit["status"] == "passed"
        assert (
            audit["merged_rows"] == audit["ingested_rows"] == audit["expected_unique"] == len(got)
        )
        assert audit["cleanup_status"] == "deleted"
    leftovers = (
        [p for p in (graph_env / TODAY.isoformat()).rglob("*.csv")]
        if (graph_env / TODAY.isoformat()).exists()
        else []
    )
    assert leftovers == []


def test_rejected_row_keeps_files_fails_the_check_and_exits_1(
    graph_env: Path, database_url: URL, make_portal_sim
) -> None:
    sim = make_portal_sim(store_count=2, seed=5, today=TODAY, bad_rows_per_store=1)
    _seed(database_url, sim)
    outcome = execute_date(
        load_settings(),
        run_date=TODAY,
        buckets=["undelivered_all"],
        stores=None,
        dry_run=False,
        portal_override=_portal(sim),
    )
    summary = outcome.buckets["undelivered_all"]
    assert summary.audit == "failed" and summary.rejected and summary.rejected >= 2
    assert outcome.exit_code == 1
    (merged,) = (graph_env / TODAY.isoformat()).rglob(merged_name("undelivered_all", TODAY))
    rejects = _query(database_url, "SELECT bucket, line_number, error FROM ingest_rejects")
    assert rejects and all(r["bucket"] == "undelivered_all" and r["error"] for r in rejects)
    # the same path through the CLI wrapper: files kept, exit 1
    assert (
        run_pipeline(
            load_settings(),
            run_date=TODAY,
            buckets=["undelivered_all"],
            portal_override=_portal(sim),
        )
        == 1
    )
    assert merged.exists() and any((graph_env / TODAY.isoformat()).rglob("*-undelivered-all.csv"))


def test_one_store_failing_loads_the_others_warns_and_exits_1(
    graph_env: Path, database_url: URL, make_portal_sim
) -> None:
    bad = "F001"
    sim = make_portal_sim(
        store_codes=[bad, "G002", "H003"],
        seed=9,
        today=TODAY,
        store_behaviour={bad: "500:*@missed_leads"},
    )
    _seed(database_url, sim)
    outcome: RunOutcome = execute_date(
        load_settings(),
        run_date=TODAY,
        buckets=["missed_leads"],
        stores=None,
        dry_run=False,
        portal_override=_portal(sim),
    )
    summary = outcome.buckets["missed_leads"]
    assert list(summary.failed_stores) == [bad]
    assert summary.audit == "passed"  # the stores that did download reconcile
    assert outcome.exit_code == 1
    rows = _query(database_url, "SELECT DISTINCT store_code FROM missed_leads")
    assert {r["store_code"] for r in rows} == set(_expected_keys_stores(sim, sim.store_codes[1:]))
    with dg.DagsterInstance.get() as instance:
        evaluation = instance.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(key("missed_leads", AUDIT), DOWNLOAD_CHECK)
        )
        assert evaluation is not None
        assert evaluation.evaluation is not None
        assert evaluation.evaluation.passed is False


def _expected_keys_stores(sim, stores: list[str]) -> set[str]:
    return {k[0] for k in _expected_keys(sim, "missed_leads", stores)}


def test_sensor_fires_once_per_passed_bucket_and_date(
    graph_env: Path, database_url: URL, make_portal_sim
) -> None:
    sim = make_portal_sim(store_count=2, seed=3, today=TODAY)
    _seed(database_url, sim)
    outcome = execute_date(
        load_settings(),
        run_date=TODAY,
        buckets=BUCKETS,
        stores=None,
        dry_run=False,
        portal_override=_portal(sim),
    )
    assert all(b.audit == "passed" for b in outcome.buckets.values())
    with dg.DagsterInstance.get() as instance:
        ctx = dg.build_sensor_context(instance=instance, definitions=defs)
        result = cleanup_on_passed_audit(ctx)
        keys = sorted(r.run_key for r in result.run_requests)
        assert len(keys) == len(BUCKETS) == len(set(keys))
        assert all(f":{TODAY.isoformat()}:" in k for k in keys)
        # launching the requested cleanup job deletes exactly that audit's files
        request = next(r for r in result.run_requests if ":missed_leads:" in r.run_key)
        job = defs.resolve_job_def("crm_cleanup")
        done = job.execute_in_process(run_config=request.run_config, instance=instance)
        assert done.success
        # state, not a cursor: the cleaned audit is no longer asked for, the others still are
        again = cleanup_on_passed_audit(
            dg.build_sensor_context(instance=instance, definitions=defs)
        )
        assert sorted(r.run_key for r in again.run_requests) == [
            k for k in keys if ":missed_leads:" not in k
        ]
    audit = asyncio.run(_latest(database_url, "missed_leads"))
    assert audit is not None and audit.cleanup_status == "deleted"
    day = graph_env / TODAY.isoformat()
    assert not any(day.rglob("*-missed-leads.csv"))
    assert any(day.rglob("*-repeat-customers.csv"))  # other buckets untouched until their run


async def _latest(database_url: URL, bucket: str):
    engine = create_engine(database_url)
    try:
        return await latest_audit(engine, bucket, TODAY)
    finally:
        await engine.dispose()


def test_backfill_of_a_past_date_reprocesses_kept_files(
    graph_env: Path, database_url: URL, make_portal_sim, monkeypatch
) -> None:
    past = TODAY - dt.timedelta(days=3)
    sim = make_portal_sim(store_count=2, seed=4, today=past)
    _seed(database_url, sim)
    # On the past day itself a dry run downloaded and merged, and (being dry) kept the files.
    monkeypatch.setattr("app.runner._today", lambda settings: past)
    assert (
        run_pipeline(
            load_settings(),
            run_date=past,
            buckets=["missed_leads"],
            dry_run=True,
            portal_override=_portal(sim),
        )
        == 0
    )
    # Days later the portal only serves newer data; the backfill must use the kept files.
    monkeypatch.setattr("app.runner._today", lambda settings: TODAY)
    sim.set_today(TODAY)
    logins = sim.login_count
    code = run_pipeline(load_settings(), run_date=past, buckets=["missed_leads"])
    assert code == 0
    assert sim.login_count == logins  # nothing downloaded (and no portal settings needed)
    rows = _query(database_url, "SELECT store_code, pickup_no, run_date FROM missed_leads")
    assert {(r["store_code"], r["pickup_no"]) for r in rows} == _expected_keys_at(
        sim, "missed_leads", sim.store_codes, past
    )
    assert {r["run_date"] for r in rows} == {past}
    audits = _query(database_url, "SELECT status, run_date, cleanup_status FROM pipeline_audit")
    assert [(a["status"], a["run_date"], a["cleanup_status"]) for a in audits] == [
        ("passed", past, "deleted")
    ]


def test_past_date_without_kept_files_fails_with_a_clear_message(
    graph_env: Path, database_url: URL, make_portal_sim
) -> None:
    sim = make_portal_sim(store_count=1, seed=4, today=TODAY)
    _seed(database_url, sim)
    past = TODAY - dt.timedelta(days=5)
    outcome = execute_date(
        load_settings(),
        run_date=past,
        buckets=["repeat_customers"],
        stores=None,
        dry_run=False,
        portal_override=_portal(sim),
    )
    summary = outcome.buckets["repeat_customers"]
    assert outcome.exit_code == 1
    assert summary.error and "only serves current data" in summary.error
    assert summary.error.startswith("not servable: ")
    # the run is tagged as a date that cannot be served: no alert e-mail, no reports run
    from crm_assets.alerts import run_failure_of
    from crm_assets.report_sensor import report_request

    with dg.DagsterInstance.get() as instance:
        run = instance.get_run_by_id(outcome.run_id)
        assert run is not None and run.tags.get("crm/not_servable") == "true"
        (event,) = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        context = dg.build_run_status_sensor_context(
            sensor_name="crm_run_failure_alert",
            dagster_event=event.get_dagster_event(),
            dagster_instance=instance,
            dagster_run=run,
        ).for_run_failure()
        skipped = run_failure_of(context)
        assert isinstance(skipped, dg.SkipReason) and "no longer serves" in str(skipped)
        assert report_request(instance, run) is None


def test_dry_run_writes_nothing_and_keeps_files(
    graph_env: Path, database_url: URL, make_portal_sim
) -> None:
    sim = make_portal_sim(store_count=2, seed=8, today=TODAY)
    _seed(database_url, sim)
    code = run_pipeline(load_settings(), run_date=TODAY, dry_run=True, portal_override=_portal(sim))
    assert code == 0
    for bucket in BUCKETS:
        table = MERGE_BUCKET_DB_SPECS[bucket]["table_name"]
        assert _query(database_url, f"SELECT count(*) AS n FROM {table}")[0]["n"] == 0
    assert _query(database_url, "SELECT count(*) AS n FROM pipeline_audit")[0]["n"] == 0
    assert any((graph_env / TODAY.isoformat()).rglob("merged_*.csv"))


def test_failed_download_counts_by_store(
    graph_env: Path, database_url: URL, make_portal_sim
) -> None:
    sim = make_portal_sim(store_count=2, seed=12, today=TODAY)
    _seed(database_url, sim)
    outcome = execute_date(
        load_settings(),
        run_date=TODAY,
        buckets=["repeat_customers"],
        stores=None,
        dry_run=False,
        portal_override=_portal(sim),
    )
    summary = outcome.buckets["repeat_customers"]
    served = defaultdict(int)
    for store in sim.store_codes:
        served[store] = len(sim.served_rows("repeat_customers", store, TODAY))
    assert summary.download_total == sum(served.values())
