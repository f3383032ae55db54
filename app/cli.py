"""`python -m app ...`: the operator's entry point.

Exit codes (stable, scripts and tests outside the repo rely on them):
0 everything reconciled, 1 some bucket or store failed, 2 configuration or scope error.
"""

import argparse
import asyncio
import datetime as dt
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from app import json_logger
from app.config import BUCKETS
from app.settings import ConfigError, Settings, load_settings

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _csv_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD date: {value!r}") from None


def _on_off(value: str) -> bool:
    text = value.strip().lower()
    if text in ("on", "true", "1", "yes"):
        return True
    if text in ("off", "false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected on/off, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="CRM data platform: download, merge, load and reconcile portal reports.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daily graph for one date, then clean up")
    run.add_argument("--date", type=_date, help="run date YYYY-MM-DD (default: today, IST)")
    run.add_argument("--buckets", type=_csv_list, help=f"comma list of {','.join(BUCKETS)}")
    run.add_argument("--stores", type=_csv_list, help="comma list of store codes (within scope)")
    run.add_argument(
        "--dry_run",
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="no database writes and no cleanup; log the ingestion plan and sample rows",
    )

    db = sub.add_parser("db", help="schema migrations (Alembic)")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply migrations")
    up.add_argument("revision", nargs="?", default="head")
    db_sub.add_parser("current", help="show the database's revision")
    db_sub.add_parser("check", help="fail if the models and migrations have drifted")

    stores = sub.add_parser("stores", help="manage store_master")
    st_sub = stores.add_subparsers(dest="stores_command", required=True)
    st_list = st_sub.add_parser("list", help="list stores and flags")
    st_list.add_argument("--json", action="store_true", help="one JSON object per store")
    st_add = st_sub.add_parser("add", help="add or update one store")
    st_add.add_argument("store_code")
    st_add.add_argument("--name")
    st_add.add_argument("--etl", type=_on_off, metavar="on|off")
    st_add.add_argument("--report", type=_on_off, metavar="on|off")
    st_add.add_argument("--active", type=_on_off, metavar="on|off")
    st_set = st_sub.add_parser("set", help="set flags on existing stores")
    st_set.add_argument("store_codes", nargs="+")
    st_set.add_argument("--etl", type=_on_off, metavar="on|off")
    st_set.add_argument("--report", type=_on_off, metavar="on|off")
    st_set.add_argument("--active", type=_on_off, metavar="on|off")
    st_import = st_sub.add_parser("import", help="idempotent import from a CSV file")
    st_import.add_argument("file", type=Path)
    st_sub.add_parser("scope", help="show the ETL and report scopes (exit 2 if invalid)")

    sub.add_parser("demo", help="the whole cycle on embedded defaults with the portal simulator")

    sim = sub.add_parser("portal-sim", help="serve the built-in portal simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8765)
    sim.add_argument("--stores", type=int, default=5, help="number of stores it serves")
    sim.add_argument("--seed", type=int, default=1)

    ui = sub.add_parser("ui", help="Dagster webserver and daemon for local use")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    return parser


def _database(settings: Settings) -> Any:
    from app.db.engine import resolve_database_url

    return resolve_database_url(settings)


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from app.db import migrate
    from app.db.urls import safe_url

    url = _database(settings)
    if args.db_command == "upgrade":
        with json_logger.timed("db", "schema upgraded", extras={"database": safe_url(url)}) as t:
            migrate.upgrade(url, args.revision)
            t.extras["revision"] = migrate.current_revision(url)
        return EXIT_OK
    if args.db_command == "current":
        current, head = migrate.current_revision(url), migrate.head_revision()
        json_logger.log_event(
            "db",
            f"database at revision {current} (head {head})",
            status="ok" if current == head else "warn",
            extras={"current": current, "head": head, "database": safe_url(url)},
        )
        return EXIT_OK
    migrate.check(url)
    json_logger.log_event("db", "models and migrations agree")
    return EXIT_OK


def cmd_stores(args: argparse.Namespace, settings: Settings) -> int:
    from app import stores
    from app.db.engine import create_engine

    url = _database(settings)

    async def _run() -> int:
        engine = create_engine(url)
        try:
            if args.stores_command == "list":
                rows = await stores.list_stores(engine)
                _print_stores(rows, as_json=args.json)
            elif args.stores_command == "add":
                await stores.upsert_stores(
                    engine,
                    [
                        {
                            "store_code": args.store_code,
                            "store_name": args.name,
                            "etl_flag": args.etl,
                            "report_flag": args.report,
                            "is_active": args.active,
                        }
                    ],
                )
                json_logger.log_event("stores", "store saved", store_code=args.store_code)
            elif args.stores_command == "set":
                n = await stores.set_flags(
                    engine,
                    args.store_codes,
                    etl_flag=args.etl,
                    report_flag=args.report,
                    is_active=args.active,
                )
                json_logger.log_event("stores", f"flags set on {n} stores")
            elif args.stores_command == "import":
                n = await stores.upsert_stores(engine, stores.read_store_csv(args.file))
                json_logger.log_event("stores", f"imported {n} stores from {args.file}")
            else:
                etl = await stores.etl_scope(engine)
                report = await stores.report_scope(engine)
                json_logger.log_event(
                    "stores",
                    f"{len(etl)} stores in ETL scope, {len(report)} in report scope",
                    extras={"etl_scope": etl, "report_scope": report},
                )
            return EXIT_OK
        finally:
            await engine.dispose()

    return asyncio.run(_run())


def _print_stores(rows: Sequence[Any], *, as_json: bool) -> None:
    import json

    if as_json or not sys.stdout.isatty():
        for row in rows:
            print(json.dumps(row.__dict__))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("store_code", "store_name", "etl_flag", "report_flag", "is_active")
    for row in rows:
        table.add_row(
            row.store_code,
            row.store_name or "",
            str(row.etl_flag),
            str(row.report_flag),
            str(row.is_active),
        )
    Console().print(table)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from app.runner import run_pipeline

    return run_pipeline(
        settings,
        run_date=args.date,
        buckets=args.buckets,
        stores=args.stores,
        dry_run=args.dry_run,
    )


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from app.local import run_demo

    return run_demo(settings)


def cmd_portal_sim(args: argparse.Namespace, settings: Settings) -> int:
    from app.portal_sim.server import serve_forever

    serve_forever(host=args.host, port=args.port, stores=args.stores, seed=args.seed)
    return EXIT_OK


def cmd_ui(args: argparse.Namespace, settings: Settings) -> int:
    from app.local import run_ui

    return run_ui(settings, host=args.host, port=args.port)


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "run": cmd_run,
    "db": cmd_db,
    "stores": cmd_stores,
    "demo": cmd_demo,
    "portal-sim": cmd_portal_sim,
    "ui": cmd_ui,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        json_logger.configure(file_path=settings.json_log_file)
        os.environ.setdefault("DATA_DIR", str(settings.data_dir))
        return COMMANDS[args.command](args, settings)
    except ConfigError as exc:
        json_logger.log_event("error", str(exc), status="error", extras={"exit_code": EXIT_CONFIG})
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
