"""Build every report store's report of one date: the one code path of Dagster and the CLI.

Files go to `DATA_DIR/reports/<date>/` (`<store>.html`, `<store>.pdf`, `index.html`), written
to a temporary name and renamed, so a reader never sees half a report. The CSV cleanup only
ever removes the files listed in an audit's manifest, so nothing under `reports/` is deleted.
"""

import datetime as dt
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.models import StoreMaster
from app.json_logger import log_event
from app.reports import actions, kpis
from app.reports.actions import LeadToCall, OrderToDeliver
from app.reports.kpis import BucketStatus, Kpis
from app.stores import report_scope, validate_store_code

REPORTS_FOLDER = "reports"


@dataclass
class StoreReport:
    """Everything one store's report shows, and where its files are."""

    store_code: str
    store_name: str | None
    run_date: dt.date
    buckets: dict[str, BucketStatus]
    kpis: Kpis
    leads_to_call: list[LeadToCall] = field(default_factory=list)
    orders_to_deliver: list[OrderToDeliver] = field(default_factory=list)
    html_path: Path | None = None
    pdf_path: Path | None = None

    @property
    def not_reconciled(self) -> list[BucketStatus]:
        return [s for s in self.buckets.values() if not s.reconciled]

    def headline(self) -> dict[str, object]:
        """The numbers the index page and the Dagster metadata show per store."""
        k = self.kpis
        return {
            "leads": k.leads.total if k.leads else None,
            "converted": k.leads.converted if k.leads else None,
            "conversion_pct": k.leads.conversion_pct if k.leads else None,
            "undelivered": k.orders.count if k.orders else None,
            "undelivered_amount": str(k.orders.net_amount) if k.orders else None,
            "repeat_yes": k.repeat.yes if k.repeat else None,
            "leads_to_call": len(self.leads_to_call),
            "orders_to_deliver": len(self.orders_to_deliver),
            "not_reconciled": ", ".join(s.bucket for s in self.not_reconciled) or None,
        }


@dataclass
class ReportSet:
    run_date: dt.date
    folder: Path
    reports: list[StoreReport]
    index_path: Path | None = None


def reports_dir(data_dir: Path, run_date: dt.date) -> Path:
    return data_dir / REPORTS_FOLDER / run_date.isoformat()


async def _store_names(engine: AsyncEngine) -> dict[str, str | None]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(StoreMaster.store_code, StoreMaster.store_name))
        return {code: name for code, name in rows}


async def store_report(
    engine: AsyncEngine, store: str, name: str | None, run_date: dt.date
) -> StoreReport:
    """One store's figures, using only the buckets reconciled for this store and date."""
    buckets = {
        b: await kpis.bucket_status(engine, b, store, run_date)
        for b in (kpis.LEADS, kpis.ORDERS, kpis.REPEAT)
    }
    ok = {b for b, s in buckets.items() if s.reconciled}
    figures = Kpis(since=await kpis.since_yesterday(engine, store, run_date, ok))
    report = StoreReport(store, name, run_date, buckets, figures)
    if kpis.LEADS in ok:
        figures.leads = await kpis.lead_kpis(engine, store, run_date)
        report.leads_to_call = await actions.leads_to_call(engine, store, run_date)
    if kpis.ORDERS in ok:
        figures.orders = await kpis.order_kpis(engine, store, run_date)
        report.orders_to_deliver = await actions.orders_to_deliver(engine, store, run_date)
    if kpis.REPEAT in ok:
        figures.repeat = await kpis.repeat_kpis(engine, store, run_date)
    figures.trend = await kpis.trend(
        engine, store, run_date, leads=kpis.LEADS in ok, orders=kpis.ORDERS in ok
    )
    return report


def write_atomic(path: Path, data: bytes) -> None:
    """Temporary file in the same folder, then rename: a reader sees the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def _scope(engine: AsyncEngine, only: list[str] | None) -> list[str]:
    """The report scope, narrowed by `only` (never widened: a store outside it is an error)."""
    scope = await report_scope(engine)
    if not only:
        return scope
    by_lower = {s.lower(): s for s in scope}
    outside = [s for s in only if validate_store_code(s).lower() not in by_lower]
    if outside:
        raise ValueError("not in the report scope (report_flag): " + ", ".join(outside))
    return [by_lower[s.lower()] for s in only]


async def build_reports(
    engine: AsyncEngine, data_dir: Path, run_date: dt.date, only: list[str] | None = None
) -> ReportSet:
    """Every (or `only` these) report store's HTML and PDF, and the date's index page."""
    from app.reports import render

    stores = await _scope(engine, only)
    names = await _store_names(engine)
    folder = reports_dir(data_dir, run_date)
    result = ReportSet(run_date, folder, [])
    for store in stores:
        report = await store_report(engine, store, names.get(store), run_date)
        validate_store_code(store)  # it becomes a file name
        report.html_path = folder / f"{store}.html"
        report.pdf_path = folder / f"{store}.pdf"
        write_atomic(report.html_path, render.store_html(report).encode("utf-8"))
        write_atomic(report.pdf_path, render.store_pdf(report))
        result.reports.append(report)
    result.index_path = folder / "index.html"
    write_atomic(result.index_path, render.index_html(result).encode("utf-8"))
    log_event(
        "report",
        f"{len(result.reports)} reports written for {run_date.isoformat()}",
        date=run_date,
        extras={"folder": str(folder), "stores": stores},
    )
    return result
