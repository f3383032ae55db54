"""`python -m app run|demo|ui`: the asset graph, driven from the command line.

This is the CLI's run path, the one place in `app/` that imports Dagster (lazily). `run`
executes the same graph the daemon runs, in-process (`execute_in_process` with the real
instance, so the run shows up in the UI), then performs the cleanup the sensor would, so a run
outside the daemon does the whole cycle. Exit codes: 0 everything reconciled, 1 a bucket or
store failed, 2 configuration or scope error (checked before anything is downloaded).
"""

import asyncio
import dataclasses
import datetime as dt
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app import json_logger
from app.config import BUCKETS
from app.run_context import RunContext
from app.run_lock import RunDateBusy, hold_run_date
from app.settings import ConfigError, Settings

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


@dataclasses.dataclass
class BucketSummary:
    bucket: str
    download_total: int | None = None
    failed_stores: dict[str, str] = dataclasses.field(default_factory=dict)
    merged_rows: int | None = None
    expected_unique: int | None = None
    ingested_rows: int | None = None
    rejected: int | None = None
    quarantined: int | None = None
    blocking: int | None = None
    audit: str = "not run"
    audit_id: int | None = None
    reason: str | None = None
    cleanup: str = "-"
    error: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.audit in ("passed", "dry run")
            and not self.failed_stores
            and self.error is None
            and self.cleanup not in ("refused", "failed")
        )


@dataclasses.dataclass
class RunOutcome:
    run_id: str
    run_date: dt.date
    dry_run: bool
    buckets: dict[str, BucketSummary]
    login_error: str | None = None

    @property
    def exit_code(self) -> int:
        if self.login_error:
            return EXIT_CONFIG
        return EXIT_OK if all(b.ok for b in self.buckets.values()) else EXIT_FAILED


def ensure_dagster_home(settings: Settings) -> Path:
    """Local default: Dagster's embedded storage under DATA_DIR/.dagster (Docker sets its own)."""
    home = os.environ.get("DAGSTER_HOME")
    if home:
        Path(home).mkdir(parents=True, exist_ok=True)
        return Path(home)
    local = (settings.data_dir / ".dagster").resolve()
    local.mkdir(parents=True, exist_ok=True)
    config = local / "dagster.yaml"
    if not config.exists():  # embedded SQLite storage; no telemetry banner on the console
        config.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(local)
    return local


def _today(settings: Settings) -> dt.date:
    return dt.datetime.now(settings.tz).date()


def _validate_buckets(buckets: Sequence[str] | None) -> list[str]:
    if not buckets:
        return list(BUCKETS)
    unknown = sorted(set(buckets) - set(BUCKETS))
    if unknown:
        raise ConfigError(f"unknown buckets {unknown}; choose from {', '.join(BUCKETS)}")
    return [b for b in BUCKETS if b in buckets]


async def _preflight(url: Any, stores: Sequence[str] | None) -> list[str]:
    """Schema at head and a valid store scope, before anything is downloaded (else exit 2)."""
    from app import stores as store_scope
    from app.db import migrate
    from app.db.engine import create_engine

    current, head = migrate.current_revision(url), migrate.head_revision()
    if current != head:
        raise ConfigError(
            f"database schema is at revision {current}, expected {head}: "
            "run `python -m app db upgrade` first"
        )
    engine = create_engine(url)
    try:
        scope = await store_scope.etl_scope(engine, stores)
        await store_scope.report_scope(engine)
        return scope
    finally:
        await engine.dispose()


def run_pipeline(
    settings: Settings,
    *,
    run_date: dt.date | None = None,
    buckets: Sequence[str] | None = None,
    stores: Sequence[str] | None = None,
    dry_run: bool = False,
    portal_override: dict[str, Any] | None = None,
) -> int:
    """`python -m app run`: validate, execute the graph for one date, clean up, summarise."""
    from app.db.engine import resolve_database_url

    selected = _validate_buckets(buckets)
    today = _today(settings)  # fixed once for the whole run, passed down as the run's "today"
    run_date = run_date or today
    if run_date > today:
        raise ConfigError(f"--date {run_date} is in the future")
    missing = settings.missing_portal_settings()
    if portal_override is None and run_date == today and missing:
        raise ConfigError(
            "portal settings missing: "
            + ", ".join(missing)
            + " (set them in the environment or .env; `python -m app demo` uses the simulator)"
        )
    url = resolve_database_url(settings)
    scope = asyncio.run(_preflight(url, stores))
    # One id for the whole execution: the Dagster run id, also on every JSON event of it.
    run_id = str(uuid.uuid4())
    with json_logger.run_context(run_id):
        try:
            with hold_run_date(
                url, run_date, run_id, source="cli", wait_s=settings.run_lock_wait_s
            ):
                return _run(
                    settings,
                    url,
                    RunContext(run_id, run_date, today, settings.data_dir.resolve(), "cli"),
                    selected,
                    scope,
                    stores,
                    dry_run,
                    portal_override,
                )
        except RunDateBusy as exc:
            json_logger.log_event("error", str(exc), status="error", date=run_date)
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED


def _run(
    settings: Settings,
    url: Any,
    ctx: RunContext,
    selected: list[str],
    scope: list[str],
    stores: Sequence[str] | None,
    dry_run: bool,
    portal_override: dict[str, Any] | None,
) -> int:
    """Inside the date lock: the graph, then the sensor's cleanup inline, then the summary."""
    json_logger.log_event(
        "run",
        f"running {', '.join(selected)} for {ctx.run_date} over {len(scope)} stores",
        date=ctx.run_date,
        extras={"buckets": selected, "stores": len(scope), "dry_run": dry_run},
    )
    outcome = execute_graph(
        settings,
        ctx=ctx,
        buckets=selected,
        stores=stores,
        dry_run=dry_run,
        portal_override=portal_override,
        url=url,
    )
    if not dry_run:
        _cleanup_passed(outcome, url, ctx)
    from app.run_summary import report

    report(outcome)
    if outcome.login_error:
        json_logger.log_event(
            "error", outcome.login_error, status="error", extras={"exit_code": EXIT_CONFIG}
        )
        print(f"error: {outcome.login_error}", file=sys.stderr)
    return outcome.exit_code


def execute_date(
    settings: Settings,
    *,
    run_date: dt.date,
    buckets: Sequence[str],
    stores: Sequence[str] | None = None,
    dry_run: bool = False,
    portal_override: dict[str, Any] | None = None,
) -> RunOutcome:
    """The graph for one date under a fresh run id, holding the date; no cleanup, no report."""
    from app.db.engine import resolve_database_url

    url = resolve_database_url(settings)
    ctx = RunContext(
        str(uuid.uuid4()), run_date, _today(settings), settings.data_dir.resolve(), "cli"
    )
    with hold_run_date(url, run_date, ctx.run_id, source="cli", wait_s=settings.run_lock_wait_s):
        return execute_graph(
            settings,
            ctx=ctx,
            buckets=buckets,
            stores=stores,
            dry_run=dry_run,
            url=url,
            portal_override=portal_override,
        )


def execute_graph(
    settings: Settings,
    *,
    ctx: RunContext,
    buckets: Sequence[str],
    stores: Sequence[str] | None,
    dry_run: bool,
    url: Any,
    portal_override: dict[str, Any] | None = None,
) -> RunOutcome:
    """The daily job in-process for `ctx.run_date`, under the run id `ctx.run_id`."""
    import dagster as dg

    from crm_assets.definitions import defs
    from crm_assets.jobs import DAILY_JOB
    from crm_assets.keys import AUDIT, MERGED, RAW, TABLE, key
    from crm_resources.run_info import SOURCE_TAG, TODAY_TAG

    ensure_dagster_home(settings)
    job = defs.resolve_job_def(DAILY_JOB)
    # A dry run plans no audit (and so no check): nothing is recorded a later step or the UI
    # could take as real; `table` logs the ingestion plan and materializes nothing.
    stages = (RAW, MERGED, TABLE) if dry_run else (RAW, MERGED, TABLE, AUDIT)
    selection = [key(b, stage) for b in buckets for stage in stages]
    resources: dict[str, Any] = {
        "options": {"config": {"dry_run": dry_run}},
        "store_scope": {"config": {"only": list(stores) if stores else None}},
    }
    if portal_override:
        resources["portal"] = {"config": portal_override}
    with dg.DagsterInstance.get() as instance, _quiet_dagster():
        result = job.execute_in_process(
            partition_key=ctx.run_date.isoformat(),
            instance=instance,
            asset_selection=selection,
            run_config={
                "resources": resources,
                "loggers": {"console": {"config": {"log_level": "WARNING"}}},
            },
            raise_on_error=False,
            run_id=ctx.run_id,
            tags={
                SOURCE_TAG: "cli",
                TODAY_TAG: ctx.today.isoformat(),
                "crm/dry_run": str(dry_run).lower(),
            },
        )
    return summarise(result, ctx=ctx, buckets=buckets, dry_run=dry_run, url=url)


@contextmanager
def _quiet_dagster() -> Iterator[None]:
    """Dagster's own console lines go to stderr; keep stdout for our JSON events."""
    import logging

    logger = logging.getLogger("dagster")
    old = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old)


def _meta(event: Any) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in (event.metadata or {}).items()}


def summarise(
    result: Any, *, ctx: RunContext, buckets: Sequence[str], dry_run: bool, url: Any
) -> RunOutcome:
    """Per-bucket counts from this run's own step results and audit rows, and its failures."""
    outcome = RunOutcome(
        run_id=ctx.run_id,
        run_date=ctx.run_date,
        dry_run=dry_run,
        buckets={b: BucketSummary(b) for b in buckets},
    )
    for summary in outcome.buckets.values():
        _from_steps(summary, ctx, dry_run)
    if not dry_run:
        for record in asyncio.run(_audits(url, ctx, buckets)):
            _from_audit(outcome.buckets[record.bucket], record)
    _step_failures(outcome, result)
    return outcome


def _from_steps(summary: BucketSummary, ctx: RunContext, dry_run: bool) -> None:
    from app.step_results import load_raw_result

    raw = load_raw_result(ctx, summary.bucket, "raw_csvs") or {}
    merged = load_raw_result(ctx, summary.bucket, "merged_csv") or {}
    table = load_raw_result(ctx, summary.bucket, "table") or {}
    if raw:
        summary.download_total = sum((raw.get("rows_by_store") or {}).values())
        summary.failed_stores = dict(raw.get("failed") or {})
    if merged:
        summary.failed_stores.update(merged.get("failed_stores") or {})
        summary.merged_rows = merged.get("merged_rows")
        summary.expected_unique = merged.get("expected_unique")
        summary.quarantined = merged.get("quarantined")
        summary.blocking = merged.get("blocking")
        summary.rejected = len(merged.get("rejects") or [])
        if dry_run:
            summary.audit = "dry run"
    if table:
        summary.ingested_rows = table.get("ingested_rows")


def _from_audit(summary: BucketSummary, record: Any) -> None:
    summary.audit = record.status
    summary.audit_id = record.id
    summary.reason = record.reason
    summary.failed_stores = dict(record.failed_stores) or summary.failed_stores
    for name in ("download_total", "merged_rows", "expected_unique", "ingested_rows"):
        if getattr(record, name) is not None:
            setattr(summary, name, getattr(record, name))
    summary.rejected, summary.quarantined, summary.blocking = (
        record.rejected,
        record.quarantined,
        record.blocking,
    )


async def _audits(url: Any, ctx: RunContext, buckets: Sequence[str]) -> list[Any]:
    from app.audit import audit_of_run
    from app.db.engine import create_engine

    engine = create_engine(url)
    try:
        found = [await audit_of_run(engine, ctx.run_id, b, ctx.run_date) for b in buckets]
    finally:
        await engine.dispose()
    return [r for r in found if r is not None]


def _step_failures(outcome: RunOutcome, result: Any) -> None:
    for event in result.all_events:
        if event.event_type_value != "STEP_FAILURE":
            continue
        error = event.step_failure_data.error if event.step_failure_data else None
        root = _root_error(error)
        message = _root_message(root)
        step = event.step_key or ""
        affected = [b for b in outcome.buckets if step.startswith(b)] or list(outcome.buckets)
        if root is not None and root.cls_name == "LoginError":
            outcome.login_error = message
        for bucket in affected:
            outcome.buckets[bucket].error = outcome.buckets[bucket].error or message
            if outcome.buckets[bucket].audit in ("not run", "dry run"):
                outcome.buckets[bucket].audit = "failed"


# Dagster's wrappers around the user's exception, and ours: a step's RetryPolicy gives up with
# RetryRequestedFromPolicy; `crm_assets.policies.without_retry` wraps in Failure (cause kept).
DAGSTER_WRAPPERS = (
    "DagsterExecutionStepExecutionError",
    "DagsterUserCodeExecutionError",
    "RetryRequestedFromPolicy",
    "Failure",
)


def _root_error(error: Any) -> Any:
    """The user's exception inside Dagster's wrappers (what actually went wrong)."""
    while error is not None and error.cause is not None and error.cls_name in DAGSTER_WRAPPERS:
        error = error.cause
    return error


def _root_message(root: Any) -> str:
    if root is None:
        return "step failed"
    if not root.message:
        return root.cls_name or ""
    line: str = root.message.strip().splitlines()[0]
    # A bare dg.Failure is our own sentence: drop Dagster's "dagster._core....Failure: " prefix.
    if root.cls_name == "Failure" and ".Failure: " in line:
        line = line.split(".Failure: ", 1)[1]
    return line


def _cleanup_passed(outcome: RunOutcome, url: Any, ctx: RunContext) -> None:
    """The sensor's job, done inline and inside this run's date lock; the outcome is recorded,
    so the sensor launches nothing for these audits."""
    from app.cleanup import cleanup_audit
    from app.db.engine import create_engine

    async def _run() -> None:
        engine = create_engine(url)
        try:
            for summary in outcome.buckets.values():
                if summary.audit_id is None:
                    continue
                result = await cleanup_audit(
                    engine, summary.audit_id, ctx.data_dir, run_id=ctx.run_id
                )
                summary.cleanup = result.status
        finally:
            await engine.dispose()

    asyncio.run(_run())
