"""Per-store daily reports for `report_flag` stores: KPIs, action lists, HTML, PDF, e-mail.

Plain Python (no Dagster): `crm_assets.reports` and `python -m app report` call the same
`build_reports`, so a report built from the UI and one built from the CLI are the same files.
"""

from app.reports.build import ReportSet, build_reports, reports_dir

__all__ = ["ReportSet", "build_reports", "reports_dir"]
