"""Alert e-mails: what a failed run, a failed audit or a missed day says, and sending it by SMTP.

Plain Python (no Dagster): `crm_assets.alerts` decides *when* to alert; this module reads the
facts from `pipeline_audit` and turns them into a short plain-text message an operator can act
on without opening the UI: the run date, the buckets, the audit's counts and reason, and the
Dagster run id to look up.

Alerts are off unless both `SMTP_HOST` and `ALERT_TO` are set: then nothing is sent and one log
line per process says so (a sensor ticks every minute; one line is enough to notice).

No secret ever reaches a message: every free text (a reason, an error message) goes through the
JSON logger's redaction (DSN passwords, key=value secrets, cookies), and the configured secret
values themselves (SMTP, portal and database passwords) are replaced wherever they appear.
"""

import asyncio
import datetime as dt
import os
import smtplib
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TypeVar

from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from app.audit import AuditRecord, get_audit, latest_audit, passed_runs
from app.audit import audit_of_run as _audit_of_run
from app.db.engine import create_engine
from app.json_logger import REDACTED, log_event, redact_text
from app.settings import Settings

SUBJECT_PREFIX = "[CRM]"
SMTP_TIMEOUT_S = 30.0
IMPLICIT_TLS_PORT = 465  # SMTPS: TLS from the first byte, no STARTTLS
COUNT_FIELDS = ("download_total", "merged_rows", "ingested_rows", "quarantined", "blocking")

T = TypeVar("T")
_off_logged = threading.Event()


@dataclass(frozen=True)
class Alert:
    subject: str
    body: str


# ------------------------------------------------------------------------------------- sending


def recipients(settings: Settings) -> list[str]:
    return [a.strip() for a in (settings.alert_to or "").split(",") if a.strip()]


def alerts_enabled(settings: Settings) -> bool:
    """Both an SMTP server and somebody to tell: anything less sends nothing."""
    return bool((settings.smtp_host or "").strip()) and bool(recipients(settings))


def log_alerts_off_once() -> None:
    if not _off_logged.is_set():
        _off_logged.set()
        log_event(
            "alert",
            "e-mail alerts are off: set SMTP_HOST and ALERT_TO to receive them",
            status="warn",
        )


def _secrets(settings: Settings) -> list[str]:
    values = [settings.smtp_password, settings.tms_password, settings.database_url]
    found = [v.get_secret_value() for v in values if v is not None]
    found.append(os.environ.get("DAGSTER_PG_PASSWORD", ""))  # Dagster's storage, not a setting
    if settings.database_url is not None:
        password = make_url(settings.database_url.get_secret_value()).password
        found.append(str(password or ""))
    return sorted((s for s in found if len(s) >= 3), key=len, reverse=True)


def scrub(text: str, settings: Settings) -> str:
    """The text with DSN passwords, key=value secrets and every configured secret hidden."""
    text = redact_text(text)
    for secret in _secrets(settings):
        text = text.replace(secret, REDACTED)
    return text


def build_message(settings: Settings, alert: Alert) -> EmailMessage:
    msg = EmailMessage()
    sender = settings.smtp_from or settings.smtp_username or "crm-platform@localhost"
    msg["Subject"] = scrub(alert.subject, settings)
    msg["From"] = sender
    msg["To"] = ", ".join(recipients(settings))
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    msg.set_content(scrub(alert.body, settings))
    return msg


def _connect(settings: Settings) -> smtplib.SMTP:
    """Port 465: implicit TLS; otherwise STARTTLS unless SMTP_STARTTLS=false (a local relay)."""
    host, port = str(settings.smtp_host), settings.smtp_port
    context = ssl.create_default_context()
    if port == IMPLICIT_TLS_PORT:
        return smtplib.SMTP_SSL(host, port, timeout=SMTP_TIMEOUT_S, context=context)
    smtp = smtplib.SMTP(host, port, timeout=SMTP_TIMEOUT_S)
    try:
        if settings.smtp_starttls:
            smtp.starttls(context=context)  # refuses (raises) rather than send in the clear
    except BaseException:
        smtp.close()
        raise
    return smtp


def send_alert(settings: Settings, alert: Alert) -> bool:
    """Send `alert` to ALERT_TO; False (and one log line per process) when alerts are off.

    SMTP errors propagate: the sensor's tick then fails visibly in the UI and, where the sensor
    keeps its own cursor, the alert is tried again on the next tick.
    """
    if not alerts_enabled(settings):
        log_alerts_off_once()
        return False
    msg = build_message(settings, alert)
    with _connect(settings) as smtp:
        if settings.smtp_username:
            password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
            smtp.login(settings.smtp_username, password)
        smtp.send_message(msg)
    log_event(
        "alert",
        f"alert sent: {msg['Subject']}",
        extras={"to": recipients(settings), "smtp_host": settings.smtp_host},
    )
    return True


# ------------------------------------------------------------------------ facts from the database


@dataclass(frozen=True)
class AuditDay:
    """Where one run date stands: which buckets passed, and each bucket's latest audit."""

    run_date: dt.date
    buckets: tuple[str, ...]
    passed: frozenset[str]
    latest: dict[str, AuditRecord | None] = field(default_factory=dict)

    @property
    def missing(self) -> list[str]:
        """Buckets with no passed audit for the date (in the configured order)."""
        return [b for b in self.buckets if b not in self.passed]


def _with_engine(url: URL, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run `work` on a one-connection engine of its own (sensors call this from sync code)."""

    async def go() -> T:
        engine = create_engine(url, pool_size=1)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def audit_day(url: URL, run_date: dt.date, buckets: Sequence[str]) -> AuditDay:
    """Passed buckets (any run's passed audit counts) and the latest audit of each bucket."""

    async def work(engine: AsyncEngine) -> AuditDay:
        passed = {b for b in buckets if await passed_runs(engine, b, run_date)}
        latest = {b: await latest_audit(engine, b, run_date) for b in buckets}
        return AuditDay(run_date, tuple(buckets), frozenset(passed), latest)

    return _with_engine(url, work)


def audits_by_id(url: URL, ids: Iterable[int]) -> list[AuditRecord]:
    async def work(engine: AsyncEngine) -> list[AuditRecord]:
        found = [await get_audit(engine, i) for i in dict.fromkeys(ids)]
        return [r for r in found if r is not None]

    return _with_engine(url, work)


def audits_of_run(
    url: URL, run_id: str, run_date: dt.date, buckets: Sequence[str]
) -> list[AuditRecord]:
    """The audits one pipeline run (root run id) wrote for the date, in bucket order."""

    async def work(engine: AsyncEngine) -> list[AuditRecord]:
        found = [await _audit_of_run(engine, run_id, b, run_date) for b in buckets]
        return [r for r in found if r is not None]

    return _with_engine(url, work)


# ------------------------------------------------------------------------------------- messages


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def audit_lines(record: AuditRecord) -> list[str]:
    """One bucket's verdict, its counts and its reason, as `pipeline_audit` holds them."""
    lines = [
        f"{record.bucket}: audit {record.status} (audit id {record.id}, run {record.run_id})",
        "  " + " ".join(f"{name}={_n(getattr(record, name))}" for name in COUNT_FIELDS),
    ]
    if record.reason:
        lines.append(f"  reason: {record.reason}")
    if record.failed_stores:
        stores = ", ".join(sorted(record.failed_stores))
        lines.append(f"  failed stores ({len(record.failed_stores)}): {stores}")
    if record.cleanup_status:
        lines.append(f"  cleanup: {record.cleanup_status} {record.cleanup_reason or ''}".rstrip())
    return lines


def _header(run_date: dt.date | None, buckets: Sequence[str], run_id: str | None) -> list[str]:
    lines = [f"Date: {run_date.isoformat() if run_date else '-'}"]
    lines.append(f"Buckets: {', '.join(buckets) or '-'}")
    if run_id:
        lines.append(f"Dagster run id: {run_id}")
    return lines


def audit_failure_alert(
    run_date: dt.date,
    run_id: str,
    records: Sequence[AuditRecord],
    unaudited: dict[str, str] | None = None,
) -> Alert:
    """Failed `audit_passed` checks of one run: the files stay, and this says why."""
    unaudited = unaudited or {}
    buckets = [r.bucket for r in records] + [
        b for b in unaudited if b not in {r.bucket for r in records}
    ]
    body = _header(run_date, buckets, run_id)
    body += ["", "The audit did not reconcile; the files are kept (nothing was deleted).", ""]
    for record in records:
        body += [*audit_lines(record), ""]
    for bucket, why in unaudited.items():
        body += [f"{bucket}: no audit row: {why}", ""]
    return Alert(
        subject=f"{SUBJECT_PREFIX} audit failed {run_date.isoformat()}: {', '.join(buckets)}",
        body="\n".join(body).rstrip() + "\n",
    )


@dataclass(frozen=True)
class RunFailure:
    """What a failed Dagster run amounts to, read by the sensor from Dagster's records."""

    job_name: str
    run_id: str
    run_date: dt.date | None
    buckets: tuple[str, ...]
    message: str
    step_errors: tuple[tuple[str, str], ...] = ()
    attempt: int = 0


def run_failure_alert(failure: RunFailure, records: Sequence[AuditRecord]) -> Alert:
    day = failure.run_date.isoformat() if failure.run_date else "-"
    body = _header(failure.run_date, failure.buckets, failure.run_id)
    body.insert(0, f"Job: {failure.job_name}")
    if failure.attempt:
        body.append(f"Attempt: {failure.attempt + 1} (Dagster retried it {failure.attempt}x)")
    body += ["", failure.message.strip() or "The run failed.", ""]
    if failure.step_errors:
        body.append("Failed steps:")
        body += [f"  {step}: {error}" for step, error in failure.step_errors]
        body.append("")
    if records:
        body.append("Audits written by this run:")
        for record in records:
            body += [*audit_lines(record), ""]
    return Alert(
        subject=f"{SUBJECT_PREFIX} run failed: {failure.job_name} {day}",
        body="\n".join(body).rstrip() + "\n",
    )


def cutoff_alert(day: AuditDay, cutoff: dt.time, timezone: str, holder: str | None) -> Alert:
    """No passed audit by the cut-off for some bucket: today's data is not (all) in the CRM."""
    missing = day.missing
    body = _header(day.run_date, missing, None)
    body += [
        "",
        f"By the cut-off ({cutoff:%H:%M} {timezone}) these buckets have no passed audit for "
        f"{day.run_date.isoformat()}; catch-up runs stop now.",
    ]
    if holder:
        body.append(f"A run of the date is still going: {holder}.")
    body.append("")
    for bucket in missing:
        record = day.latest.get(bucket)
        body += [*audit_lines(record), ""] if record else [f"{bucket}: no audit at all", ""]
    return Alert(
        subject=(
            f"{SUBJECT_PREFIX} no passed audit by {cutoff:%H:%M}: "
            f"{day.run_date.isoformat()} {', '.join(missing)}"
        ),
        body="\n".join(body).rstrip() + "\n",
    )
