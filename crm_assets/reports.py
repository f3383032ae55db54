"""Store reports as Dagster assets: `reports/store_reports` → `reports/deliveries`.

`store_reports` sits downstream of every bucket's table *through its audit*, so in the daily
run it is built after the audits of the date are written and their checks evaluated. If a
blocking `audit_passed` check fails in that run, Dagster skips it there; the run-failure sensor
`crm_assets.report_sensor` then launches `crm_reports` for the date, whose reports say which
bucket is not reconciled and why (as do the UI and `python -m app report`). The bodies only
call `app.reports`, the CLI's code path.

`deliveries` mails each store its PDF when SMTP is configured (recipients in
`report_recipients`); a re-materialization never mails a recipient twice for a date.
"""

from typing import Any

import dagster as dg

from app import json_logger
from app.config import MERGE_BUCKET_DB_SPECS
from app.reports import ReportSet, build_reports
from app.reports.deliver import deliver_reports
from app.settings import load_settings
from crm_assets.keys import AUDIT, TABLE, key
from crm_assets.metadata import md_table
from crm_assets.partitions import daily_partitions, partition_date
from crm_resources import DatabaseResource, DataDirResource, RunDateLockResource

GROUP = "reports"
REPORTS_KEY = dg.AssetKey([GROUP, "store_reports"])
DELIVERIES_KEY = dg.AssetKey([GROUP, "deliveries"])
INDEX_HEADERS = [
    "store",
    "leads",
    "converted",
    "conv %",
    "undelivered",
    "amount",
    "to call",
    "to deliver",
    "not reconciled",
]

INDEX_FIELDS = (
    "leads",
    "converted",
    "conversion_pct",
    "undelivered",
    "undelivered_amount",
    "leads_to_call",
    "orders_to_deliver",
    "not_reconciled",
)


def _dash(value: object) -> object:
    return "-" if value is None else value


def report_metadata(built: ReportSet) -> dict[str, Any]:
    """Headline numbers and file paths per store, the index as an escaped markdown table."""
    rows: list[list[object]] = []
    per_store: dict[str, dict[str, object]] = {}
    for r in built.reports:
        h = r.headline()
        rows.append([r.store_code, *(_dash(h[k]) for k in INDEX_FIELDS)])
        per_store[r.store_code] = {**h, "html": str(r.html_path), "pdf": str(r.pdf_path)}
    meta: dict[str, Any] = {
        "stores": len(built.reports),
        "not_reconciled_stores": sum(1 for r in built.reports if r.not_reconciled),
        "folder": dg.MetadataValue.path(str(built.folder)),
        "index_page": dg.MetadataValue.path(str(built.index_path)),
        "index": dg.MetadataValue.md(md_table(INDEX_HEADERS, rows)),
        "by_store": dg.MetadataValue.json(per_store),
    }
    return meta


@dg.asset(
    key=REPORTS_KEY,
    deps=[key(b, s) for b in MERGE_BUCKET_DB_SPECS for s in (TABLE, AUDIT)],
    group_name=GROUP,
    partitions_def=daily_partitions,
    kinds={"html", "pdf"},
    description="One HTML and PDF report per report-scope store, and the date's index page.",
)
async def store_reports(
    context: dg.AssetExecutionContext,
    db: DatabaseResource,
    data_dir: DataDirResource,
    run_lock: RunDateLockResource,
) -> dg.MaterializeResult:
    run_date = partition_date(context.partition_key)
    with json_logger.run_context(context.run.run_id):
        built = await build_reports(db.engine, data_dir.root(), run_date)
    for r in built.reports:
        for status in r.not_reconciled:
            context.log.warning(f"{r.store_code}: {status.bucket} not reconciled: {status.reason}")
    return dg.MaterializeResult(metadata=report_metadata(built))


@dg.asset(
    key=DELIVERIES_KEY,
    deps=[REPORTS_KEY],
    group_name=GROUP,
    partitions_def=daily_partitions,
    kinds={"email"},
    description="Each store's PDF mailed to its recipients (SMTP settings of the alerts).",
)
async def report_deliveries(
    context: dg.AssetExecutionContext,
    db: DatabaseResource,
    data_dir: DataDirResource,
    run_lock: RunDateLockResource,
) -> dg.MaterializeResult:
    run_date = partition_date(context.partition_key)
    with json_logger.run_context(context.run.run_id):
        # Rebuilt rather than read back: the files are the PDFs this step attaches.
        built = await build_reports(db.engine, data_dir.root(), run_date)
        sent = await deliver_reports(db.engine, load_settings(), built)
    rows = [(d.store_code, d.status, ", ".join(d.recipients), d.error or "") for d in sent]
    return dg.MaterializeResult(
        metadata={
            "sent": sum(1 for d in sent if d.status == "sent"),
            "failed": sum(1 for d in sent if d.status == "failed"),
            "deliveries": dg.MetadataValue.md(
                md_table(["store", "status", "recipients", "error"], rows)
            ),
        }
    )


reports_job = dg.define_asset_job(
    "crm_reports",
    selection=dg.AssetSelection.groups(GROUP),
    executor_def=dg.in_process_executor,
    description="Build (and mail) the store reports of one date from the reconciled tables.",
)

REPORT_ASSETS = [store_reports, report_deliveries]
REPORT_JOBS = [reports_job]
