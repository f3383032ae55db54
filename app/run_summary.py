"""The end-of-run summary: one JSON event per bucket, and a table for a person at a terminal.

The table must be readable in a plain 80-column terminal (an SSH session, `docker compose run`)
without cutting bucket names or verdicts short: a cut "repeat_custo…" or "already_cl…" is worse
than no table. So the layout is chosen by width: one row per bucket when it fits, else one
column per bucket (metrics down the side), else one small block per bucket. Reasons and failed
stores go below the table as wrapped lines, never into a cell.
"""

import sys
from collections.abc import Callable, Sequence

from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from app import json_logger
from app.runner import BucketSummary, RunOutcome

# (label, value) of every metric the table shows, in order.
Metric = tuple[str, Callable[[BucketSummary], str]]


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _audit(s: BucketSummary) -> Text:
    return Text(s.audit, style="green" if s.audit == "passed" else "red")


METRICS: tuple[Metric, ...] = (
    ("downloaded", lambda s: _n(s.download_total)),
    ("failed stores", lambda s: str(len(s.failed_stores))),
    ("merged", lambda s: _n(s.merged_rows)),
    ("ingested", lambda s: _n(s.ingested_rows)),
    ("quarantined", lambda s: _n(s.quarantined)),
    ("blocking", lambda s: _n(s.blocking)),
)


def _title(outcome: RunOutcome) -> str:
    dry = ", dry run" if outcome.dry_run else ""
    return f"CRM run {outcome.run_date} ({outcome.run_id[:8]}{dry})"


def wide_table(outcome: RunOutcome) -> Table:
    """One row per bucket (wide terminals)."""
    table = Table(title=_title(outcome))
    table.add_column("bucket", no_wrap=True)
    for label, _ in METRICS:
        table.add_column(label, justify="right", no_wrap=True)
    table.add_column("audit", no_wrap=True)
    table.add_column("cleanup", no_wrap=True)
    for s in outcome.buckets.values():
        table.add_row(s.bucket, *(value(s) for _, value in METRICS), _audit(s), s.cleanup)
    return table


def transposed_table(outcome: RunOutcome) -> Table:
    """One column per bucket, metrics down the side (80 columns with the three buckets)."""
    table = Table(title=_title(outcome))
    table.add_column("", no_wrap=True)
    buckets = list(outcome.buckets.values())
    for s in buckets:
        table.add_column(s.bucket, justify="right", no_wrap=True)
    for label, value in METRICS:
        table.add_row(label, *(value(s) for s in buckets))
    table.add_row("audit", *(_audit(s) for s in buckets))
    table.add_row("cleanup", *(s.cleanup for s in buckets))
    return table


def vertical_tables(outcome: RunOutcome) -> list[Table]:
    """One two-column block per bucket: fits any width a name fits in."""
    blocks = []
    for s in outcome.buckets.values():
        block = Table(title=f"{_title(outcome)}: {s.bucket}", show_header=False)
        block.add_column(overflow="fold")
        block.add_column(overflow="fold")
        for label, value in METRICS:
            block.add_row(label, value(s))
        block.add_row("audit", _audit(s))
        block.add_row("cleanup", s.cleanup)
        blocks.append(block)
    return blocks


def _fits(console: Console, renderables: Sequence[RenderableType]) -> bool:
    """Whether each fits at its natural width (rich clamps a measurement to the space given,
    so measure in a space wider than any table)."""
    roomy = console.options.update(width=10_000, max_width=10_000)
    return all(Measurement.get(console, roomy, r).maximum <= console.width for r in renderables)


def _why(s: BucketSummary) -> list[str]:
    """The audit's reason, and the step error unless it only says the audit check failed (the
    reason already says why)."""
    out = [s.reason] if s.reason else []
    if s.error and not (s.reason and "AssetCheckFailed" in s.error):
        out.append(s.error)
    return [" ".join(text.split()) for text in out]


def notes(outcome: RunOutcome) -> list[Text]:
    """What went wrong, per bucket, as lines that wrap instead of being cut."""
    lines: list[Text] = []
    for s in outcome.buckets.values():
        style = "yellow" if s.audit == "passed" and s.error is None else "red"
        for why in _why(s):
            lines.append(Text.assemble((s.bucket, f"bold {style}"), f": {why}"))
        for store, reason in sorted(s.failed_stores.items()):
            lines.append(Text(f"  store {store} failed: {reason}"))
    return lines


def render(outcome: RunOutcome, console: Console) -> None:
    """The summary in the widest layout that fits `console`, then the notes."""
    layouts: list[list[Table]] = [
        [wide_table(outcome)],
        [transposed_table(outcome)],
        vertical_tables(outcome),
    ]
    chosen = next((tables for tables in layouts if _fits(console, tables)), layouts[-1])
    for table in chosen:
        console.print(table)
    for line in notes(outcome):
        console.print(line, overflow="fold")


def _log(outcome: RunOutcome) -> None:
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
                "quarantined": summary.quarantined,
                "blocking": summary.blocking,
            },
            extras={
                "dagster_run_id": outcome.run_id,
                "failed_stores": summary.failed_stores,
                "reason": summary.reason,
                "error": summary.error,
            },
        )


def report(outcome: RunOutcome, console: Console | None = None) -> None:
    """One JSON summary event per bucket; and a table for a person at a terminal (or `console`)."""
    _log(outcome)
    if console is None:
        if not sys.stdout.isatty():
            return
        console = Console()
    render(outcome, console)
