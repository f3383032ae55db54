"""Failure alerts by e-mail, on Dagster's sensor machinery; the message itself is `app.alerts`.

Three sensors, one e-mail per problem:
- `crm_audit_failure_alert`: a failed `audit_passed` check (the counts did not reconcile, the
  files are kept). It reads Dagster's asset-check executions, so it sees every run of the
  graph, whatever launched it (the CLI's in-process runs included). Its cursor is the set of
  failed executions already reported (not an id watermark: execution ids are assigned when a
  run is planned, not when its check finishes), and a tick that could not send keeps the
  cursor, so the next tick sends again.
- `crm_run_failure_alert`: a failed run of any job of this code location (`@run_failure_sensor`
  with no job filter): `crm_daily`, `crm_daily_<bucket>`, `crm_cleanup`, `crm_reports`, and the
  runs the UI's "Materialize" and backfills launch as Dagster's implicit asset job. A failure
  that only consists of failed audit checks is left to the audit alert (a blocking check fails
  its run, which would otherwise mean two e-mails); a run that Dagster will retry (run_retries
  in dagster.yaml) is reported only when its last attempt fails; a run of a date the portal no
  longer serves (`crm/not_servable`, nothing kept) is a request that cannot be met, not an
  outage, and sends nothing.
- `crm_cutoff_alert`: once a day after `CATCHUP_CUTOFF`, if some bucket of today has no passed
  audit (the catch-up schedule has stopped trying; the CRM misses a day of data).

Every message carries the date, the buckets, the counts and reason from `pipeline_audit` and the
Dagster run id, never a password or DSN. Alerts are off unless SMTP_HOST and ALERT_TO are set.
"""

import dataclasses
import datetime as dt
import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluation
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecord,
    AssetCheckExecutionRecordStatus,
)
from dagster._utils.error import SerializableErrorInfo
from sqlalchemy.engine import URL

from app import alerts
from app.db.engine import resolve_database_url
from app.json_logger import log_event
from app.run_lock import holder_of
from app.settings import Settings, load_settings
from crm_assets.catchup import BUCKETS, PARTITION_TAG
from crm_assets.jobs import DAILY_JOB
from crm_assets.keys import AUDIT, AUDIT_CHECK, bucket_of, key
from crm_resources.run_info import NOT_SERVABLE_TAG, pipeline_run_id

CHECK_FAILED_ERROR = "DagsterAssetCheckFailedError"
# Dagster's wrappers around the user's exception (a step that exhausted its RetryPolicy fails
# with RetryRequestedFromPolicy, whose cause is the real error; `without_retry` is a Failure).
_WRAPPERS = (
    "DagsterExecutionStepExecutionError",
    "DagsterUserCodeExecutionError",
    "RetryRequestedFromPolicy",
    "Failure",
)
WILL_RETRY_TAG = "dagster/will_retry"
RETRY_NUMBER_TAG = "dagster/retry_number"
HISTORY_LIMIT = 50
SEEN_LIMIT = 1000


# ------------------------------------------------------------------------------- run failures


def root_error(error: SerializableErrorInfo | None) -> SerializableErrorInfo | None:
    """The user's exception inside Dagster's wrappers: what actually went wrong."""
    while error is not None and error.cause is not None and error.cls_name in _WRAPPERS:
        error = error.cause
    return error


def error_text(error: SerializableErrorInfo | None) -> str:
    """`LoginError: portal login failed ...`: the class and the first line of the message."""
    if error is None:
        return "unknown error"
    first = (error.message or "").strip().splitlines()
    text = first[0] if first else ""
    head, sep, rest = text.partition(": ")
    if sep and error.cls_name and head.endswith(error.cls_name):
        text = f"{error.cls_name}: {rest}"
    return text or (error.cls_name or "unknown error")


def run_date_of(run: dg.DagsterRun) -> dt.date | None:
    raw = run.tags.get(PARTITION_TAG) or run.tags.get("crm/date")
    try:
        return dt.date.fromisoformat(raw) if raw else None
    except ValueError:
        return None


def buckets_of(run: dg.DagsterRun) -> tuple[str, ...]:
    """The buckets a run was about: its cleanup tag, its job, or its asset selection."""
    if run.tags.get("crm/bucket"):
        return (run.tags["crm/bucket"],)
    prefix = f"{DAILY_JOB}_"
    if run.job_name.startswith(prefix) and run.job_name[len(prefix) :] in BUCKETS:
        return (run.job_name[len(prefix) :],)
    if run.asset_selection:
        chosen = {bucket_of(k) for k in run.asset_selection}
        return tuple(b for b in BUCKETS if b in chosen)
    return BUCKETS


def _step_errors(context: dg.RunFailureSensorContext) -> list[tuple[str, SerializableErrorInfo]]:
    found = []
    for event in context.get_step_failure_events():
        data = event.step_failure_data
        error = root_error(data.error if data else None)
        if error is not None:
            found.append((event.step_key or "?", error))
    return found


def _records_for(url: URL, run: dg.DagsterRun, buckets: Sequence[str]) -> list[Any]:
    run_date = run_date_of(run)
    if run.tags.get("crm/audit_id", "").isdigit():
        return alerts.audits_by_id(url, [int(run.tags["crm/audit_id"])])
    if run_date is None:
        return []
    return alerts.audits_of_run(url, pipeline_run_id(run), run_date, buckets)


def settled_elsewhere(run: dg.DagsterRun) -> str | None:
    """Why a failed run needs no action of a failure sensor: Dagster will retry it (the retry
    reports or builds what is due), or its date is one the portal no longer serves."""
    if run.tags.get(WILL_RETRY_TAG) == "true":
        return f"run {run.run_id} will be retried by Dagster (run_retries)"
    if run.tags.get(NOT_SERVABLE_TAG) == "true":
        return f"run {run.run_id}: a date the portal no longer serves (no outage)"
    return None


def run_failure_of(
    context: dg.RunFailureSensorContext,
) -> alerts.RunFailure | dg.SkipReason:
    """What to report about a failed run, or why this sensor does not report it."""
    run = context.instance.get_run_by_id(context.dagster_run.run_id) or context.dagster_run
    if (settled := settled_elsewhere(run)) is not None:
        return dg.SkipReason(settled)
    errors = _step_errors(context)
    if errors and all(e.cls_name == CHECK_FAILED_ERROR for _, e in errors):
        return dg.SkipReason(f"run {run.run_id}: only audit checks failed (the audit alert)")
    attempt = run.tags.get(RETRY_NUMBER_TAG, "0")
    return alerts.RunFailure(
        job_name=run.job_name,
        run_id=run.run_id,
        run_date=run_date_of(run),
        buckets=buckets_of(run),
        message=context.failure_event.message or "",
        step_errors=tuple(
            (step, error_text(e)) for step, e in errors if e.cls_name != CHECK_FAILED_ERROR
        ),
        attempt=int(attempt) if attempt.isdigit() else 0,
    )


def _read_audits(settings: Settings, read: Any) -> tuple[list[Any], str | None]:
    """Audit rows for the message; a database that cannot be read must not stop the alert."""
    try:
        return read(resolve_database_url(settings)), None
    except Exception as exc:
        return [], f"could not read pipeline_audit: {type(exc).__name__}: {exc}"


@dg.run_failure_sensor(
    name="crm_run_failure_alert",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="E-mails ALERT_TO when a run of this code location fails (UI runs included)",
)
def run_failure_alert(context: dg.RunFailureSensorContext) -> dg.SkipReason | None:
    failure = run_failure_of(context)
    if isinstance(failure, dg.SkipReason):
        return failure
    settings = load_settings()
    if not alerts.alerts_enabled(settings):
        alerts.log_alerts_off_once()
        return dg.SkipReason("alerts are off (SMTP_HOST and ALERT_TO are not both set)")
    run = context.dagster_run
    records, problem = _read_audits(settings, lambda url: _records_for(url, run, failure.buckets))
    if problem:
        failure = dataclasses.replace(failure, message=f"{failure.message}\n{problem}")
    alerts.send_alert(settings, alerts.run_failure_alert(failure, records))
    return None


# ---------------------------------------------------------------------------- failed audits


def failed_audit_checks(instance: dg.DagsterInstance) -> list[AssetCheckExecutionRecord]:
    """The latest failed `audit_passed` executions of every bucket (completed, passed=False)."""
    found: list[AssetCheckExecutionRecord] = []
    for bucket in BUCKETS:
        found += instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(key(bucket, AUDIT), AUDIT_CHECK),
            limit=HISTORY_LIMIT,
            status={AssetCheckExecutionRecordStatus.FAILED},
        )
    return found


def _seen(cursor: str | None) -> list[int]:
    try:
        return [int(i) for i in json.loads(cursor or "{}").get("seen", [])]
    except (ValueError, TypeError, AttributeError):
        return []


def _cursor(seen: Sequence[int]) -> str:
    return json.dumps({"seen": sorted(set(seen))[-SEEN_LIMIT:]})


def _evaluation(record: AssetCheckExecutionRecord) -> AssetCheckEvaluation | None:
    evaluation = record.evaluation
    return evaluation if isinstance(evaluation, AssetCheckEvaluation) else None


def _from_metadata(evaluation: AssetCheckEvaluation | None) -> str:
    """The check's own copy of the audit's verdict, for when `pipeline_audit` cannot be read."""
    if evaluation is None:
        return "the check recorded no result"
    meta = {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}
    counts = " ".join(f"{name}={meta.get(name, '-')}" for name in alerts.COUNT_FIELDS)
    return f"{evaluation.description or 'failed'}; {counts}"


def audit_alert_for(url: URL, records: Sequence[AssetCheckExecutionRecord]) -> alerts.Alert:
    """One message for the failed checks of one run, with their audit rows."""
    ids: dict[int, AssetCheckExecutionRecord] = {}
    unaudited: dict[str, str] = {}
    for record in records:
        evaluation = _evaluation(record)
        value = getattr(evaluation.metadata.get("audit_id"), "value", None) if evaluation else None
        if value is not None and str(value).isdigit():
            ids[int(str(value))] = record
        else:
            why = evaluation.description if evaluation else None
            unaudited[bucket_of(record.key.asset_key)] = why or "the check found no audit"
    audits, problem = [], None
    try:
        audits = alerts.audits_by_id(url, ids)
    except Exception as exc:  # the database may be why the day failed: still tell someone
        problem = f"pipeline_audit could not be read ({type(exc).__name__})"
    found = {a.id for a in audits}
    for audit_id, record in ids.items():
        if audit_id not in found:
            why = _from_metadata(_evaluation(record))
            unaudited[bucket_of(record.key.asset_key)] = f"{why} ({problem or 'audit row gone'})"
    partition = records[0].partition
    run_date = dt.date.fromisoformat(partition) if partition else dt.date.today()
    return alerts.audit_failure_alert(run_date, records[0].run_id, audits, unaudited)


def audit_alerts_tick(
    instance: dg.DagsterInstance, cursor: str | None, settings: Settings
) -> dg.SensorResult:
    """Report failed audit checks not reported yet (the first tick only records the present)."""
    records = failed_audit_checks(instance)
    if cursor is None:
        return dg.SensorResult(
            skip_reason=f"started: {len(records)} earlier failed audit checks are not re-sent",
            cursor=_cursor([r.id for r in records]),
        )
    seen = _seen(cursor)
    new = [r for r in records if r.id not in set(seen)]
    if not new:
        return dg.SensorResult(skip_reason="no new failed audit check", cursor=cursor)
    by_run: dict[str, list[AssetCheckExecutionRecord]] = defaultdict(list)
    for record in sorted(new, key=lambda r: r.id):
        by_run[record.run_id].append(record)
    if alerts.alerts_enabled(settings):
        url = resolve_database_url(settings)
        for group in by_run.values():
            alerts.send_alert(settings, audit_alert_for(url, group))
    else:
        alerts.log_alerts_off_once()
    return dg.SensorResult(
        skip_reason=f"{len(new)} failed audit checks in {len(by_run)} runs reported",
        cursor=_cursor([*seen, *(r.id for r in new)]),
    )


@dg.sensor(
    name="crm_audit_failure_alert",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="E-mails ALERT_TO when an audit_passed check fails (counts, reason, run id).",
)
def audit_failure_alert(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    return audit_alerts_tick(context.instance, context.cursor, load_settings())


# ------------------------------------------------------------------------------- the cut-off


def _now(settings: Settings) -> dt.datetime:
    return dt.datetime.now(settings.tz)


def cutoff_tick(now: dt.datetime, cursor: str | None, settings: Settings) -> dg.SensorResult:
    """After the cut-off, once per day: alert when some bucket of today has not passed."""
    today, cutoff = now.date(), settings.catchup_cutoff
    if now.time() < cutoff:
        return dg.SensorResult(skip_reason=f"before the cut-off ({cutoff:%H:%M})", cursor=cursor)
    if cursor == today.isoformat():
        return dg.SensorResult(skip_reason=f"{today} already checked", cursor=cursor)
    url = resolve_database_url(settings)
    day = alerts.audit_day(url, today, BUCKETS)
    if not day.missing:
        return dg.SensorResult(
            skip_reason=f"{today}: every bucket passed", cursor=today.isoformat()
        )
    holder = holder_of(url, today)
    alert = alerts.cutoff_alert(
        day, cutoff, settings.timezone, holder.describe() if holder else None
    )
    sent = alerts.send_alert(settings, alert)
    log_event("alert", alert.subject, status="error", date=today, extras={"sent": sent})
    return dg.SensorResult(
        skip_reason=f"{today}: no passed audit for {', '.join(day.missing)}",
        cursor=today.isoformat(),
    )


@dg.sensor(
    name="crm_cutoff_alert",
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After CATCHUP_CUTOFF: e-mails ALERT_TO if some bucket of today has not passed.",
)
def cutoff_alert(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    settings = load_settings()
    return cutoff_tick(_now(settings), context.cursor, settings)


ALERT_SENSORS: list[dg.SensorDefinition] = [run_failure_alert, audit_failure_alert, cutoff_alert]
