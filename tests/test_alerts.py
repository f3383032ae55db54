"""Alert e-mails reach a real SMTP server on loopback (aiosmtpd), from real failed runs.

The sensors are called the way the daemon calls them (`build_run_status_sensor_context`,
`build_sensor_context`) on runs executed in process against the portal simulator and this
test's PostgreSQL; what they send is read back from the SMTP server as a parsed message.
"""

import asyncio
import datetime as dt
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from sqlalchemy.engine import URL

import app.alerts
import app.pipeline
import crm_assets.alerts
from app.alerts import Alert, audit_failure_alert, send_alert
from app.audit import AuditRecord, save_audit
from app.config import MERGE_BUCKET_DB_SPECS
from app.db.engine import create_engine
from app.downloader import PortalCredentials
from app.runner import RunOutcome, execute_date
from app.settings import load_settings
from crm_assets.alerts import audit_failure_alert as audit_sensor
from crm_assets.alerts import cutoff_alert as cutoff_sensor
from crm_assets.alerts import cutoff_tick, run_failure_alert
from crm_assets.definitions import defs
from tests.graph_helpers import portal_config as _portal
from tests.graph_helpers import seed as _seed
from tests.smtp_server import Mailbox, free_port

BUCKETS = list(MERGE_BUCKET_DB_SPECS)
IST = zoneinfo.ZoneInfo("Asia/Kolkata")
TODAY = dt.datetime.now(IST).date()  # always a partition, whatever GO_LIVE_DATE is
SMTP_VARS = (
    "SMTP_HOST", "SMTP_PORT", "SMTP_USERNAME", "SMTP_PASSWORD", "SMTP_STARTTLS", "SMTP_FROM",
    "ALERT_TO",
)  # fmt: skip


# ---------------------------------------------------------------- a local SMTP server


@pytest.fixture(autouse=True)
def _no_smtp_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts without SMTP settings and with the 'alerts are off' line unsaid."""
    for name in SMTP_VARS:
        monkeypatch.delenv(name, raising=False)
    app.alerts._off_logged.clear()
    yield
    app.alerts._off_logged.clear()


@pytest.fixture
def smtp_env(monkeypatch: pytest.MonkeyPatch, mailbox: Mailbox) -> Mailbox:
    monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SMTP_PORT", str(mailbox.port))
    monkeypatch.setenv("SMTP_STARTTLS", "false")  # a loopback relay; the default is STARTTLS
    monkeypatch.setenv("SMTP_FROM", "crm-alerts@example.com")
    monkeypatch.setenv("ALERT_TO", "ops@example.com, crm-team@example.com")
    return mailbox


@pytest.fixture
def today_env(graph_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr("app.runner._today", lambda settings: TODAY)
    return graph_env


# ---------------------------------------------------------------- sending


def test_an_alert_reaches_the_smtp_server_with_its_subject_and_body(smtp_env: Mailbox) -> None:
    sent = send_alert(load_settings(), Alert(subject="[CRM] test", body="line one\nline two\n"))
    assert sent is True
    (msg,) = smtp_env.messages
    assert msg["Subject"] == "[CRM] test"
    assert msg["From"] == "crm-alerts@example.com"
    assert msg["To"] == "ops@example.com, crm-team@example.com"
    assert msg.get_content() == "line one\nline two\n"
    assert smtp_env.envelopes == [
        ("crm-alerts@example.com", ["ops@example.com", "crm-team@example.com"])
    ]


def test_without_smtp_settings_nothing_is_sent_and_a_log_says_so_once(
    mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SMTP_HOST", "127.0.0.1")  # a host but nobody to tell: still off
    monkeypatch.setenv("SMTP_PORT", str(mailbox.port))
    for _ in range(3):
        assert send_alert(load_settings(), Alert(subject="s", body="b")) is False
    assert mailbox.messages == []
    lines = [line for line in capsys.readouterr().out.splitlines() if "alerts are off" in line]
    assert len(lines) == 1 and "SMTP_HOST and ALERT_TO" in lines[0]


def test_starttls_is_required_by_default_never_a_silent_plaintext_send(
    smtp_env: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMTP_STARTTLS", "true")  # this server does not offer STARTTLS
    with pytest.raises(Exception, match=r"(?i)starttls"):
        send_alert(load_settings(), Alert(subject="s", body="b"))
    assert smtp_env.messages == []


def test_no_password_or_dsn_ever_reaches_a_message(
    smtp_env: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMS_PASSWORD", "portal-Secret-42")
    monkeypatch.setenv("SMTP_PASSWORD", "smtp-Secret-42")
    record = _record(
        "missed_leads",
        "failed",
        reason="ingest failed: could not connect to postgresql://crm:db-Secret-42@db:5432/crm "
        "while logging in with portal-Secret-42 (smtp-Secret-42)",
    )
    send_alert(load_settings(), audit_failure_alert(TODAY, "run-x", [record]))
    (msg,) = smtp_env.messages
    text = msg.as_string()
    for secret in ("db-Secret-42", "portal-Secret-42", "smtp-Secret-42"):
        assert secret not in text
    assert "postgresql://crm:***@db:5432/crm" in msg.get_content()


# ---------------------------------------------------------------- failed audits and runs


def _record(bucket: str, status: str, reason: str | None = None, **counts: int) -> AuditRecord:
    values = {"download_total": 7, "merged_rows": 6, "ingested_rows": 6, "quarantined": 1}
    values.update(counts)
    return AuditRecord(
        id=None, run_id="run-1", bucket=bucket, run_date=TODAY, status=status, reason=reason,
        download_rows_by_store={}, failed_stores={}, expected_unique=6, inserted=6, updated=0,
        kept_newer=0, rejected=1, blocking=0, **values,
    )  # fmt: skip


def _bad_rows_run(database_url: URL, sim: Any) -> RunOutcome:
    _seed(database_url, sim)
    return execute_date(
        load_settings(), run_date=TODAY, buckets=["undelivered_all"], portal_override=_portal(sim)
    )


def test_a_failed_audit_check_is_alerted_once_with_counts_reason_and_run_id(
    today_env: Path, database_url: URL, make_portal_sim: Any, smtp_env: Mailbox
) -> None:
    sim = make_portal_sim(store_count=2, seed=5, today=TODAY, bad_rows_per_store=1)
    with dg.DagsterInstance.get() as instance:
        started = audit_sensor(dg.build_sensor_context(instance=instance, definitions=defs))
        outcome = _bad_rows_run(database_url, sim)
        assert outcome.buckets["undelivered_all"].audit == "failed"
        tick = audit_sensor(
            dg.build_sensor_context(instance=instance, cursor=started.cursor, definitions=defs)
        )
        again = audit_sensor(
            dg.build_sensor_context(instance=instance, cursor=tick.cursor, definitions=defs)
        )
    (msg,) = smtp_env.messages  # one e-mail, and the next tick sends nothing new
    assert "no new failed audit check" in str(again.skip_reason)
    assert msg["Subject"] == f"[CRM] audit failed {TODAY.isoformat()}: undelivered_all"
    body = msg.get_content()
    summary = outcome.buckets["undelivered_all"]
    assert f"Date: {TODAY.isoformat()}" in body and "Buckets: undelivered_all" in body
    assert f"Dagster run id: {outcome.run_id}" in body
    assert f"download_total={summary.download_total} merged_rows={summary.merged_rows}" in body
    assert f"ingested_rows={summary.ingested_rows}" in body
    assert f"quarantined={summary.quarantined} blocking={summary.blocking}" in body
    assert summary.reason and summary.reason in body
    assert "files are kept" in body
    if database_url.password:  # CI's server has one; the embedded one trusts its socket
        assert database_url.password not in msg.as_string()


def test_an_unreadable_audit_table_still_sends_the_check_s_own_counts(
    today_env: Path,
    database_url: URL,
    make_portal_sim: Any,
    smtp_env: Mailbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = make_portal_sim(store_count=1, seed=5, today=TODAY, bad_rows_per_store=1)
    outcome = _bad_rows_run(database_url, sim)

    def down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionRefusedError("database is down")

    monkeypatch.setattr(app.alerts, "audits_by_id", down)
    with dg.DagsterInstance.get() as instance:
        audit_sensor(dg.build_sensor_context(instance=instance, cursor="{}", definitions=defs))
    (msg,) = smtp_env.messages
    body = msg.get_content()
    summary = outcome.buckets["undelivered_all"]
    assert f"Dagster run id: {outcome.run_id}" in body
    assert "pipeline_audit could not be read (ConnectionRefusedError)" in body
    assert f"download_total={summary.download_total} merged_rows={summary.merged_rows}" in body


def _failure_context(instance: dg.DagsterInstance, run_id: str) -> Any:
    run = instance.get_run_by_id(run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.FAILURE
    (event,) = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    return dg.build_run_status_sensor_context(
        sensor_name="crm_run_failure_alert",
        dagster_event=event.get_dagster_event(),
        dagster_instance=instance,
        dagster_run=run,
    )


def test_a_run_failing_only_its_audit_is_left_to_the_audit_alert(
    today_env: Path, database_url: URL, make_portal_sim: Any, smtp_env: Mailbox
) -> None:
    sim = make_portal_sim(store_count=1, seed=5, today=TODAY, bad_rows_per_store=1)
    outcome = _bad_rows_run(database_url, sim)
    with dg.DagsterInstance.get() as instance:
        result = run_failure_alert(_failure_context(instance, outcome.run_id))
    assert isinstance(result, dg.SkipReason) and "only audit checks failed" in str(
        result.skip_message
    )
    assert smtp_env.messages == []


def _dead_portal() -> dict[str, str]:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the portal is down
    return {"web_url": url, "base_url": url, "username": "u", "password": "portal-Secret-42"}


@pytest.fixture
def portal_down_run(
    today_env: Path, database_url: URL, make_portal_sim: Any, monkeypatch: pytest.MonkeyPatch
) -> RunOutcome:
    """A real crm_daily run whose download fails: the portal cannot be reached at all."""
    import dagster._core.definitions.policy as policy

    monkeypatch.setattr(policy, "calculate_delay", lambda *a, **k: 0)  # step retries: no waits
    real = app.pipeline.download_reports

    async def quick(creds: PortalCredentials, **kwargs: Any) -> Any:
        return await real(creds, **{**kwargs, "max_retries": 0})

    monkeypatch.setattr(app.pipeline, "download_reports", quick)
    _seed(database_url, make_portal_sim(store_count=1, seed=3, today=TODAY))
    outcome = execute_date(
        load_settings(), run_date=TODAY, buckets=BUCKETS, portal_override=_dead_portal()
    )
    assert outcome.exit_code != 0
    return outcome


def test_a_failed_run_is_alerted_with_its_date_buckets_error_and_run_id(
    portal_down_run: RunOutcome, smtp_env: Mailbox
) -> None:
    with dg.DagsterInstance.get() as instance:
        assert run_failure_alert(_failure_context(instance, portal_down_run.run_id)) is None
    (msg,) = smtp_env.messages
    assert msg["Subject"] == f"[CRM] run failed: crm_daily {TODAY.isoformat()}"
    body = msg.get_content()
    assert f"Dagster run id: {portal_down_run.run_id}" in body
    assert f"Date: {TODAY.isoformat()}" in body
    assert f"Buckets: {', '.join(BUCKETS)}" in body
    assert "portal_reports: PortalUnavailableError:" in body
    assert "portal-Secret-42" not in msg.as_string()


def test_a_run_dagster_will_retry_is_not_alerted_yet(
    portal_down_run: RunOutcome, smtp_env: Mailbox
) -> None:
    with dg.DagsterInstance.get() as instance:
        instance.add_run_tags(portal_down_run.run_id, {"dagster/will_retry": "true"})
        result = run_failure_alert(_failure_context(instance, portal_down_run.run_id))
    assert isinstance(result, dg.SkipReason) and "will be retried" in str(result.skip_message)
    assert smtp_env.messages == []


def test_without_smtp_settings_the_sensors_send_nothing(
    portal_down_run: RunOutcome, mailbox: Mailbox, capsys: pytest.CaptureFixture[str]
) -> None:
    with dg.DagsterInstance.get() as instance:
        result = run_failure_alert(_failure_context(instance, portal_down_run.run_id))
    assert isinstance(result, dg.SkipReason) and "alerts are off" in str(result.skip_message)
    assert mailbox.messages == []
    assert "alerts are off" in capsys.readouterr().out


def test_the_alert_sensors_are_on_by_default() -> None:
    # (that the run-failure alert watches every job: tests/test_report_sensor.py)
    for name in ("crm_run_failure_alert", "crm_audit_failure_alert", "crm_cutoff_alert"):
        sensor = defs.resolve_sensor_def(name)
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


# ---------------------------------------------------------------- the cut-off


def _save(database_url: URL, record: AuditRecord) -> None:
    async def go() -> None:
        engine = create_engine(database_url)
        try:
            await save_audit(engine, record)
        finally:
            await engine.dispose()

    asyncio.run(go())


def _at(hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(TODAY, dt.time(hour, minute), tzinfo=IST)


def test_no_passed_audit_by_the_cutoff_is_alerted_once_per_day(
    graph_env: Path, database_url: URL, smtp_env: Mailbox
) -> None:
    _save(database_url, _record("missed_leads", "passed"))
    _save(database_url, _record("repeat_customers", "passed"))
    _save(
        database_url,
        _record(
            "undelivered_all", "failed", reason="merged_rows=6 != ingested_rows=5", ingested_rows=5
        ),
    )
    settings = load_settings()
    early = cutoff_tick(_at(20, 59), None, settings)
    assert "before the cut-off (21:00)" in str(early.skip_reason) and not smtp_env.messages
    late = cutoff_tick(_at(21, 5), None, settings)
    assert late.cursor == TODAY.isoformat()
    (msg,) = smtp_env.messages
    assert msg["Subject"] == f"[CRM] no passed audit by 21:00: {TODAY.isoformat()} undelivered_all"
    body = msg.get_content()
    assert "Buckets: undelivered_all" in body and "missed_leads" not in body
    assert "download_total=7 merged_rows=6 ingested_rows=5 quarantined=1 blocking=0" in body
    assert "reason: merged_rows=6 != ingested_rows=5" in body
    again = cutoff_tick(_at(23, 0), late.cursor, settings)
    assert "already checked" in str(again.skip_reason) and len(smtp_env.messages) == 1


def test_the_cutoff_sensor_is_quiet_when_every_bucket_passed(
    graph_env: Path, database_url: URL, smtp_env: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    for bucket in BUCKETS:
        _save(database_url, _record(bucket, "passed"))
    monkeypatch.setattr(crm_assets.alerts, "_now", lambda settings: _at(21, 30))
    with dg.DagsterInstance.get() as instance:
        result = cutoff_sensor(dg.build_sensor_context(instance=instance, definitions=defs))
    assert "every bucket passed" in str(result.skip_reason)
    assert result.cursor == TODAY.isoformat()
    assert smtp_env.messages == []


def test_the_message_module_is_plain_python() -> None:
    import ast

    imported: set[str] = set()
    for node in ast.walk(ast.parse(Path(app.alerts.__file__).read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "dagster" not in imported, "app/ stays free of Dagster (crm_assets decides when)"
