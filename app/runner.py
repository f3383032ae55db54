"""The CLI's pipeline entry points (`run`, `demo`, `ui`). Filled in by the asset-graph issue."""

from app import json_logger
from app.settings import Settings


def run_pipeline(
    settings: Settings,
    *,
    run_date: object = None,
    buckets: list[str] | None = None,
    stores: list[str] | None = None,
    dry_run: bool = False,
) -> int:
    json_logger.log_event("run", "the pipeline is not built yet", status="error")
    return 1


def run_demo(settings: Settings) -> int:
    from app.db import migrate
    from app.db.engine import resolve_database_url

    url = resolve_database_url(settings)
    migrate.upgrade(url)
    json_logger.log_event(
        "demo",
        "embedded PostgreSQL is up and migrated; the download/merge/ingest graph is not built yet",
        status="warn",
    )
    return 0


def run_ui(settings: Settings, *, host: str, port: int) -> int:
    json_logger.log_event("ui", "the Dagster UI is not wired yet", status="error")
    return 1
