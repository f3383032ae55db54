"""Per-store recipients, and mailing each store its report PDF by SMTP (the alerts' settings).

Tables (migration 0003, owned by the change-history work): `report_recipients(store_code,
email)` and `report_deliveries(store_code, run_date, recipient, status, error, message_id,
sent_at)`. One row per store, date and recipient records the outcome:

- `sent`: the message went out; a resend of the date skips that recipient (idempotent).
- `failed`: SMTP refused or failed; the error is kept and the next `--send` tries again.

When SMTP is not configured (`SMTP_HOST` unset) nothing is sent and nothing is recorded (the
table only holds real attempts); the outcome `skipped` is returned and logged.

One message per store goes to all of its recipients not yet `sent`, with the PDF attached and
the action-list counts in the body.
"""

import csv
import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.alerts import _connect as smtp_connect
from app.alerts import scrub
from app.json_logger import log_event
from app.reports.build import ReportSet, StoreReport
from app.settings import Settings
from app.stores import validate_store_code

SENT, FAILED, SKIPPED = "sent", "failed", "skipped"
_EMAIL = re.compile(r"^[^@\s,;<>\"']+@[^@\s,;<>\"']+\.[^@\s,;<>\"']+$")


def validate_email(value: str) -> str:
    """A plain address (no display name, no list): it goes into a To header as it is."""
    address = value.strip()
    if not _EMAIL.fullmatch(address):
        raise ValueError(f"invalid e-mail address {value!r}")
    return address.lower()


# ---------------------------------------------------------------------------- recipients


async def add_recipient(engine: AsyncEngine, store: str, email: str) -> bool:
    """True when added, False when the store already had it."""
    store, email = validate_store_code(store), validate_email(email)
    async with engine.begin() as conn:
        exists = await conn.execute(
            text("SELECT 1 FROM store_master WHERE store_code = :s"), {"s": store}
        )
        if not exists.first():
            raise ValueError(f"unknown store {store}: add it with `python -m app stores add`")
        known = await conn.execute(
            text("SELECT 1 FROM report_recipients WHERE store_code = :s AND lower(email) = :e"),
            {"s": store, "e": email},
        )
        if known.first():
            return False
        await conn.execute(
            text("INSERT INTO report_recipients (store_code, email) VALUES (:s, :e)"),
            {"s": store, "e": email},
        )
    return True


async def remove_recipient(engine: AsyncEngine, store: str, email: str) -> int:
    async with engine.begin() as conn:
        result = await conn.execute(
            text("DELETE FROM report_recipients WHERE store_code = :s AND lower(email) = :e"),
            {"s": validate_store_code(store), "e": validate_email(email)},
        )
        return int(getattr(result, "rowcount", 0) or 0)


async def list_recipients(engine: AsyncEngine, store: str | None = None) -> list[tuple[str, str]]:
    sql = "SELECT store_code, email FROM report_recipients"
    if store:
        sql += " WHERE store_code = :s"
    async with engine.connect() as conn:
        rows = await conn.execute(text(sql + " ORDER BY store_code, email"), {"s": store})
        return [(s, e) for s, e in rows]


def read_recipients_csv(path: Path) -> list[tuple[str, str]]:
    """`store_code,email` rows (header required); the whole file is refused on any bad line."""
    problems: list[str] = []
    rows: list[tuple[str, str]] = []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        names = {(n or "").strip().lower(): n for n in reader.fieldnames or []}
        if not {"store_code", "email"} <= set(names):
            raise ValueError(f"{path}: the header must name store_code and email")
        for line, row in enumerate(reader, start=2):
            try:
                store = validate_store_code((row[names["store_code"]] or "").strip())
                rows.append((store, validate_email(row[names["email"]] or "")))
            except ValueError as exc:
                problems.append(f"line {line}: {exc}")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems[:10]))
    return rows


async def import_recipients(engine: AsyncEngine, path: Path) -> int:
    """Add every recipient of the file (existing ones are left alone); returns how many new."""
    added = 0
    for store, email in read_recipients_csv(path):
        added += await add_recipient(engine, store, email)
    return added


# ------------------------------------------------------------------------------- delivery


@dataclass(frozen=True)
class Delivery:
    """The outcome of one store's report for one date."""

    store_code: str
    status: str  # sent | failed | skipped | already sent | no recipients
    recipients: tuple[str, ...] = ()
    error: str | None = None
    message_id: str | None = None


def smtp_configured(settings: Settings) -> bool:
    return bool((settings.smtp_host or "").strip())


def build_message(settings: Settings, report: StoreReport, to: Sequence[str]) -> EmailMessage:
    """Subject with store and date, the action-list counts in the body, the PDF attached."""
    assert report.pdf_path is not None
    sender = settings.smtp_from or settings.smtp_username or "crm-platform@localhost"
    day = report.run_date.isoformat()
    msg = EmailMessage()
    msg["Subject"] = f"[CRM] Store report {report.store_code} {day}"
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    lines = [
        f"Store {report.store_code} {report.store_name or ''}".rstrip() + f", report of {day}.",
        "",
        f"Leads to call: {len(report.leads_to_call)}",
        f"Orders to deliver: {len(report.orders_to_deliver)}",
    ]
    lines += [f"Not reconciled: {s.bucket}: {s.reason}" for s in report.not_reconciled]
    lines += ["", "The full report is attached (PDF)."]
    msg.set_content(scrub("\n".join(lines) + "\n", settings))
    msg.add_attachment(
        report.pdf_path.read_bytes(),
        maintype="application",
        subtype="pdf",
        filename=f"{report.store_code}-{day}.pdf",
    )
    return msg


def _send(settings: Settings, msg: EmailMessage) -> None:
    with smtp_connect(settings) as smtp:
        if settings.smtp_username:
            password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
            smtp.login(settings.smtp_username, password)
        smtp.send_message(msg)


async def _record(
    engine: AsyncEngine, store: str, day: dt.date, to: Sequence[str], outcome: dict[str, Any]
) -> None:
    """One row per store, date and recipient; a `sent` row is never overwritten."""
    async with engine.begin() as conn:
        for recipient in to:
            await conn.execute(
                text(
                    "INSERT INTO report_deliveries (store_code, run_date, recipient, status,"
                    " error, message_id, sent_at)"
                    " VALUES (:s, :d, :r, :status, :error, :message_id, COALESCE(:sent_at, now()))"
                    " ON CONFLICT (store_code, run_date, recipient) DO UPDATE SET"
                    " status = EXCLUDED.status, error = EXCLUDED.error,"
                    " message_id = EXCLUDED.message_id, sent_at = EXCLUDED.sent_at"
                    " WHERE report_deliveries.status <> 'sent'"
                ),
                {"s": store, "d": day, "r": recipient, **outcome},
            )


async def _already_sent(engine: AsyncEngine, store: str, day: dt.date) -> set[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT lower(recipient) FROM report_deliveries"
                " WHERE store_code = :s AND run_date = :d AND status = 'sent'"
            ),
            {"s": store, "d": day},
        )
        return {r[0] for r in rows}


async def deliver_store(engine: AsyncEngine, settings: Settings, report: StoreReport) -> Delivery:
    """Mail one store's report to its recipients not yet `sent` for the date, and record it."""
    store, day = report.store_code, report.run_date
    everyone = [e for _, e in await list_recipients(engine, store)]
    if not everyone:
        return Delivery(store, "no recipients")
    done = await _already_sent(engine, store, day)
    to = [e for e in everyone if e.lower() not in done]
    if not to:
        return Delivery(store, "already sent", tuple(everyone))
    if not smtp_configured(settings):
        return Delivery(store, SKIPPED, tuple(to), "SMTP_HOST is not set")
    msg = build_message(settings, report, to)
    try:
        _send(settings, msg)
    except Exception as exc:  # one store's failure never stops the others; it is recorded
        error = scrub(f"{type(exc).__name__}: {exc}", settings)
        await _record(engine, store, day, to, _outcome(FAILED, error))
        log_event("report", f"report mail failed: {error}", status="error", store_code=store)
        return Delivery(store, FAILED, tuple(to), error)
    message_id = str(msg["Message-ID"])
    sent_at = dt.datetime.now(dt.UTC)
    await _record(engine, store, day, to, _outcome(SENT, None, message_id, sent_at))
    log_event("report", "report mailed", store_code=store, date=day, extras={"to": to})
    return Delivery(store, SENT, tuple(to), None, message_id)


def _outcome(
    status: str,
    error: str | None,
    message_id: str | None = None,
    sent_at: dt.datetime | None = None,
) -> dict[str, Any]:
    return {"status": status, "error": error, "message_id": message_id, "sent_at": sent_at}


async def deliver_reports(
    engine: AsyncEngine, settings: Settings, reports: ReportSet
) -> list[Delivery]:
    """Every store of the set, one after the other (a handful of messages, one SMTP each)."""
    if not smtp_configured(settings):
        log_event("report", "report e-mails are off: SMTP_HOST is not set", status="warn")
    return [await deliver_store(engine, settings, r) for r in reports.reports]
