"""Retries and catch-up: a portal down for one attempt costs a retry, a failed day a catch-up run.

- The download's step RetryPolicy (crm_assets.policies) is Dagster's own: shown on a test-only
  asset that calls the real downloader against a portal that is down for its first attempt, and
  on the real graph once `portal_reports` carries the policy. Dagster's wait between attempts is
  computed from the real policy (60 s, exponential) and recorded, but not slept.
- The catch-up schedule is evaluated with `dg.build_schedule_context` over this test's real
  database: a passed day is skipped, a failed or missing one requested, a held date skipped.
"""

import datetime as dt
import os
import socket
import zoneinfo
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test
from sqlalchemy.engine import URL

import app.pipeline
from app.audit import AuditRecord, save_audit
from app.config import MERGE_BUCKET_DB_SPECS
from app.db.engine import create_engine
from app.downloader import LoginError, PortalCredentials, download_reports
from app.run_lock import hold_run_date
from app.runner import execute_date
from app.settings import ConfigError, load_settings
from crm_assets.catchup import catchup_cron, catchup_hours, catchup_schedule
from crm_assets.definitions import defs
from crm_assets.keys import AUDIT, AUDIT_CHECK, DOWNLOAD_CHECK, RAW, key
from crm_assets.policies import DOWNLOAD_RETRY_POLICY, without_retry
from tests.graph_helpers import portal_config as _portal
from tests.graph_helpers import seed as _seed

BUCKETS = list(MERGE_BUCKET_DB_SPECS)
IST = zoneinfo.ZoneInfo("Asia/Kolkata")
# Today's date for real: the newest partition whatever GO_LIVE_DATE is (the first partition
# defaults to the first day of the current month), and the only day a catch-up is about.
TODAY = dt.datetime.now(IST).date()
TICK = dt.datetime.combine(TODAY, dt.time(13, 0), tzinfo=IST)


@pytest.fixture
def today_env(graph_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """graph_env, with the runner's and the portal's "today" being TODAY."""
    monkeypatch.setattr("app.runner._today", lambda settings: TODAY)
    return graph_env


# ---------------------------------------------------------------- the step retry policy


@pytest.fixture
def retry_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Dagster's computed retry waits, recorded; the run does not sleep them."""
    import dagster._core.definitions.policy as policy

    real = policy.calculate_delay
    waits: list[float] = []

    def record(*args: Any, **kwargs: Any) -> float:
        waits.append(float(real(*args, **kwargs)))
        return 0.0

    monkeypatch.setattr(policy, "calculate_delay", record)
    return waits


def _dead_portal() -> PortalCredentials:
    """A portal URL on loopback where nothing listens: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    return PortalCredentials(web_url=url, base_url=url, username="u", password="p")


def test_download_policy_is_exponential_and_bounded() -> None:
    assert DOWNLOAD_RETRY_POLICY.max_retries == 2
    assert DOWNLOAD_RETRY_POLICY.backoff == dg.Backoff.EXPONENTIAL
    assert DOWNLOAD_RETRY_POLICY.jitter is None
    waits = [DOWNLOAD_RETRY_POLICY.calculate_delay(n) for n in (1, 2)]
    assert waits == [60, 180]  # about four minutes of portal downtime absorbed in one run
    # the run holds its date meanwhile: the waits stay well inside a second run's patience
    assert sum(waits) < load_settings().run_lock_wait_s


def test_portal_down_for_the_first_attempt_is_retried_and_the_run_succeeds(
    make_portal_sim: Any, retry_waits: list[float], tmp_path: Path
) -> None:
    sim = make_portal_sim(store_count=1, seed=2, today=TODAY)
    attempts: list[tuple[int, str, int]] = []

    @dg.asset(retry_policy=DOWNLOAD_RETRY_POLICY)
    async def reports(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        attempts.append((context.retry_number, context.run.run_id, os.getpid()))
        creds = _dead_portal() if context.retry_number == 0 else PortalCredentials(**_portal(sim))
        report = await download_reports(
            creds,
            store_codes=sim.store_codes,
            buckets=["missed_leads"],
            run_date=TODAY,
            data_dir=tmp_path,
            max_retries=0,
            progress=False,
        )
        files = report.buckets["missed_leads"].files
        return dg.MaterializeResult(metadata={"files": len(files)})

    result = dg.materialize([reports], raise_on_error=False)

    assert result.success
    assert [a[0] for a in attempts] == [0, 1]
    assert len({(run_id, pid) for _, run_id, pid in attempts}) == 1  # one run, one process
    retried = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retried) == 1
    assert retry_waits == [60.0]  # Dagster asked for the policy's first, exponential wait
    (mat,) = result.asset_materializations_for_node("reports")
    assert mat.metadata["files"].value == 1


def test_a_wrong_password_is_not_retried_and_keeps_its_cause(retry_waits: list[float]) -> None:
    attempts: list[int] = []

    @dg.asset(retry_policy=DOWNLOAD_RETRY_POLICY)
    def login() -> None:
        attempts.append(1)
        try:
            raise LoginError("portal login failed: Invalid username/password")
        except LoginError as exc:
            raise without_retry(exc) from exc

    result = dg.materialize([login], raise_on_error=False)

    assert not result.success and attempts == [1] and retry_waits == []
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    error = failure.step_failure_data.error
    assert error.cls_name == "Failure" and error.cause.cls_name == "LoginError"


def _download_op_policy() -> dg.RetryPolicy | None:
    assets_def = defs.resolve_assets_def(key(BUCKETS[0], RAW))
    return assets_def.op.retry_policy


def test_portal_reports_uses_the_download_retry_policy() -> None:
    # Fails until crm_assets/factory.py passes `retry_policy=DOWNLOAD_RETRY_POLICY` to the
    # `portal_reports` multi-asset (the change is owned by the factory's maintainer).
    assert _download_op_policy() == DOWNLOAD_RETRY_POLICY


def test_the_real_graph_survives_a_portal_down_for_its_first_attempt(
    today_env: Path,
    database_url: URL,
    make_portal_sim: Any,
    retry_waits: list[float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if _download_op_policy() != DOWNLOAD_RETRY_POLICY:
        pytest.skip("portal_reports has no DOWNLOAD_RETRY_POLICY yet (see the wiring test)")
    sim = make_portal_sim(store_count=2, seed=6, today=TODAY)
    _seed(database_url, sim)
    real = app.pipeline.download_reports
    calls: list[str] = []

    async def down_once(creds: PortalCredentials, **kwargs: Any) -> Any:
        calls.append(creds.web_url)
        if len(calls) == 1:  # the portal is down: the real downloader really cannot reach it
            kwargs.update(max_retries=0)
            return await real(_dead_portal(), **kwargs)
        return await real(creds, **kwargs)

    monkeypatch.setattr(app.pipeline, "download_reports", down_once)

    outcome = execute_date(
        load_settings(), run_date=TODAY, buckets=["missed_leads"], portal_override=_portal(sim)
    )

    assert len(calls) == 2 and retry_waits == [60.0]
    assert outcome.buckets["missed_leads"].audit == "passed", outcome.buckets
    assert outcome.exit_code == 0
    with dg.DagsterInstance.get() as instance:
        retried = instance.all_logs(outcome.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert [e.step_key for e in retried] == ["portal_reports"]
    error = retried[0].dagster_event.event_specific_data.error
    causes = []
    while error is not None:
        causes.append(error.cls_name)
        error = error.cause
    assert "PortalUnavailableError" in causes  # the first attempt met the real outage


# ---------------------------------------------------------------- the catch-up cron


def test_cron_ticks_from_start_every_interval_until_before_the_cutoff() -> None:
    settings = load_settings()
    assert (settings.catchup_start, settings.catchup_interval_h, settings.catchup_cutoff) == (
        dt.time(11, 0),
        2,
        dt.time(21, 0),
    )
    assert catchup_cron(settings) == "0 11,13,15,17,19 * * *"
    assert catchup_schedule.cron_schedule == catchup_cron(settings)
    assert catchup_schedule.execution_timezone == settings.timezone
    assert catchup_schedule.job_name == "crm_daily"
    odd = load_settings(
        catchup_start=dt.time(10, 30), catchup_interval_h=3, catchup_cutoff=dt.time(22, 30)
    )
    assert catchup_hours(odd) == [10, 13, 16, 19]  # 22:30 is the cut-off itself: no tick
    assert catchup_cron(odd) == "30 10,13,16,19 * * *"
    with pytest.raises(ConfigError, match="CATCHUP_CUTOFF"):
        catchup_cron(load_settings(catchup_start=dt.time(21, 0), catchup_cutoff=dt.time(9, 0)))


# ---------------------------------------------------------------- the catch-up schedule


def _audit(database_url: URL, bucket: str, status: str, run_id: str = "run-1") -> None:
    import asyncio

    record = AuditRecord(
        id=None, run_id=run_id, bucket=bucket, run_date=TODAY, status=status,
        reason=None if status == "passed" else "merged_rows=4 != ingested_rows=3",
        download_total=4, download_rows_by_store={}, failed_stores={}, merged_rows=4,
        expected_unique=4, ingested_rows=4 if status == "passed" else 3, inserted=4, updated=0,
        kept_newer=0, rejected=0, quarantined=0, blocking=0,
    )  # fmt: skip

    async def go() -> None:
        engine = create_engine(database_url)
        try:
            await save_audit(engine, record)
        finally:
            await engine.dispose()

    asyncio.run(go())


def _tick(instance: dg.DagsterInstance, when: dt.datetime = TICK) -> Any:
    with dg.build_schedule_context(
        instance=instance, scheduled_execution_time=when, repository_def=defs.get_repository_def()
    ) as context:
        return catchup_schedule.evaluate_tick(context)


def test_a_passed_day_is_skipped(today_env: Path, database_url: URL) -> None:
    for bucket in BUCKETS:
        _audit(database_url, bucket, "failed", run_id="morning")
        _audit(database_url, bucket, "passed", run_id="later")  # any passed audit counts
    with dg.DagsterInstance.get() as instance:
        data = _tick(instance)
    assert not data.run_requests
    assert "every bucket already has a passed audit" in (data.skip_message or "")


def test_a_day_without_any_audit_requests_todays_whole_job(
    today_env: Path, database_url: URL
) -> None:
    with dg.DagsterInstance.get() as instance:
        data = _tick(instance)
    (request,) = data.run_requests or []
    assert request.partition_key == TODAY.isoformat()
    assert request.run_key == f"catchup:{TODAY.isoformat()}:13:00"
    assert request.tags["crm/today"] == TODAY.isoformat()
    assert request.tags["crm/source"] == "catchup"
    assert request.asset_selection is None  # every bucket: the whole crm_daily job


def test_a_failed_bucket_requests_its_chain_only(today_env: Path, database_url: URL) -> None:
    _audit(database_url, "missed_leads", "passed")
    _audit(database_url, "repeat_customers", "passed")
    _audit(database_url, "undelivered_all", "failed")
    with dg.DagsterInstance.get() as instance:
        data = _tick(instance)
    (request,) = data.run_requests or []
    assert request.tags["crm/buckets"] == "undelivered_all"
    assert {k.path[0] for k in request.asset_selection or []} == {"undelivered_all"}
    assert set(request.asset_check_keys or []) == {
        dg.AssetCheckKey(key("undelivered_all", AUDIT), AUDIT_CHECK),
        dg.AssetCheckKey(key("undelivered_all", AUDIT), DOWNLOAD_CHECK),
    }


def test_a_held_date_is_skipped_naming_the_holder(today_env: Path, database_url: URL) -> None:
    with (
        hold_run_date(database_url, TODAY, "run-in-progress", source="schedule", wait_s=0),
        dg.DagsterInstance.get() as instance,
    ):
        data = _tick(instance)
    assert not data.run_requests
    assert "run-in-progress" in (data.skip_message or "")


def test_a_starting_run_of_the_partition_is_skipped(today_env: Path, database_url: URL) -> None:
    with dg.DagsterInstance.get() as instance:
        run = create_run_for_test(
            instance,
            job_name="crm_daily",
            status=dg.DagsterRunStatus.STARTING,  # launched, not yet holding the date
            tags={"dagster/partition": TODAY.isoformat()},
        )
        data = _tick(instance)
    assert not data.run_requests
    assert run.run_id in (data.skip_message or "")


def test_a_simulated_portal_never_catches_up(
    today_env: Path, database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRM_PORTAL_SIMULATED", "1")
    with dg.DagsterInstance.get() as instance:
        data = _tick(instance)
    assert not data.run_requests
    assert "CRM_PORTAL_SIMULATED is set" in (data.skip_message or "")


def test_the_requested_run_rescues_the_day_and_the_next_tick_skips(
    today_env: Path, database_url: URL, make_portal_sim: Any
) -> None:
    sim = make_portal_sim(store_count=2, seed=8, today=TODAY)
    _seed(database_url, sim)
    for bucket in ("missed_leads", "repeat_customers"):
        _audit(database_url, bucket, "passed")
    with dg.DagsterInstance.get() as instance:
        (request,) = _tick(instance).run_requests or []
        result = defs.resolve_job_def("crm_daily").execute_in_process(
            instance=instance,
            partition_key=request.partition_key,
            asset_selection=list(request.asset_selection or []),
            tags=request.tags,
            run_config={"resources": {"portal": {"config": _portal(sim)}}},
            raise_on_error=False,
        )
        assert result.success
        assert result.dagster_run.tags["crm/source"] == "catchup"
        later = _tick(instance, TICK + dt.timedelta(hours=2))
    assert not later.run_requests
    assert "every bucket already has a passed audit" in (later.skip_message or "")
