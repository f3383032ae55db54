"""The end-of-run summary: one JSON event per bucket, and a table for a person at a terminal."""

import sys

from app import json_logger
from app.runner import RunOutcome


def report(outcome: RunOutcome) -> None:
    """A table for a person at a terminal; one JSON summary event per bucket otherwise."""
    for summary in outcome.buckets.values():
        json_logger.log_event(
            "run",
            f"{summary.bucket}: audit {summary.audit}, cleanup {summary.cleanup}",
            status="ok" if summary.ok else "error",
            bucket=summary.bucket,
            date=outcome.run_date,
            counts={
                "download_total": summary.download_total,
                "merged_rows": summary.merged_rows,
                "ingested_rows": summary.ingested_rows,
                "expected_unique": summary.expected_unique,
                "rejected": summary.rejected,
            },
            extras={
                "dagster_run_id": outcome.run_id,
                "failed_stores": summary.failed_stores,
                "reason": summary.reason,
                "error": summary.error,
            },
        )
    if not sys.stdout.isatty():
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"CRM run {outcome.run_date} ({outcome.run_id[:8]})")
    for column in ("bucket", "download", "failed stores", "merged", "ingested", "rejected"):
        table.add_column(column, justify="right" if column != "bucket" else "left")
    table.add_column("audit")
    table.add_column("cleanup")
    for s in outcome.buckets.values():
        table.add_row(
            s.bucket,
            _n(s.download_total),
            str(len(s.failed_stores)),
            _n(s.merged_rows),
            _n(s.ingested_rows),
            _n(s.rejected),
            f"[green]{s.audit}[/]" if s.audit == "passed" else f"[red]{s.audit}[/]",
            s.cleanup,
        )
    Console().print(table)


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"
