"""`python -m app report ...` and `python -m app stores recipients ...` (wired by app.cli).

`report` builds the same files as the Dagster asset (`app.reports.build_reports`) and, with
`--send`, mails them (`app.reports.deliver`). Exit codes follow app.cli: 0 all built (and every
mail sent or already sent), 1 some mail failed, 2 a scope error (a store outside report scope).

Every parser here sets `_handler`: app.cli calls `args._handler(args, settings)` when present.
"""

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from app.settings import ConfigError, Settings

T = TypeVar("T")
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _date(value: str) -> dt.date:
    from app.cli import parse_date

    return parse_date(value)


def _csv_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _subparsers_of(parser: argparse.ArgumentParser) -> Any:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def add_report_commands(subparsers: Any, common: argparse.ArgumentParser | None = None) -> None:
    """Add `report` to the top-level subparsers and `recipients` under `stores` (if present)."""
    parents = [common] if common is not None else []
    report = subparsers.add_parser(
        "report", parents=parents, help="build (and mail) the store reports of a date"
    )
    report.add_argument("--date", type=_date, help="run date YYYY-MM-DD (default: today)")
    report.add_argument("--stores", type=_csv_list, help="comma list of report-scope stores")
    report.add_argument("--send", action="store_true", help="mail each store its PDF (SMTP)")
    report.set_defaults(_handler=cmd_report, _parser=report)
    stores = subparsers.choices.get("stores")
    stores_sub = _subparsers_of(stores) if stores is not None else None
    if stores_sub is not None:
        _add_recipients(stores_sub, parents)


def _add_recipients(stores_sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    rec = stores_sub.add_parser("recipients", parents=parents, help="report e-mail recipients")
    rec.set_defaults(_parser=rec, _needs="recipients_command", _handler=cmd_recipients)
    sub = rec.add_subparsers(dest="recipients_command", metavar="{add,remove,list,import}")
    for name in ("add", "remove"):
        p = sub.add_parser(name, parents=parents, help=f"{name} one store's recipient")
        p.add_argument("store_code")
        p.add_argument("email")
    listing = sub.add_parser("list", parents=parents, help="list recipients (JSON lines)")
    listing.add_argument("--store", dest="store_code")
    imp = sub.add_parser("import", parents=parents, help="add recipients from a CSV file")
    imp.add_argument("file", type=Path, help="CSV with a header: store_code,email")


async def _with_engine(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from app.db.engine import create_engine, resolve_database_url

    engine = create_engine(resolve_database_url(settings))
    try:
        return await work(engine)
    finally:
        await engine.dispose()


def _today(settings: Settings) -> dt.date:
    return dt.datetime.now(settings.tz).date()


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    """Build the date's reports; with --send, mail them. Prints one JSON line per store."""
    from app.reports import build_reports
    from app.reports.deliver import deliver_reports

    run_date = args.date or _today(settings)

    async def work(engine: Any) -> int:
        try:
            built = await build_reports(engine, settings.data_dir, run_date, args.stores)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        sent = await deliver_reports(engine, settings, built) if args.send else []
        outcome = {d.store_code: d for d in sent}
        for r in built.reports:
            line: dict[str, Any] = {"store_code": r.store_code, **r.headline()}
            line |= {"html": str(r.html_path), "pdf": str(r.pdf_path)}
            if r.store_code in outcome:
                line |= {"mail": outcome[r.store_code].status, "error": outcome[r.store_code].error}
            print(json.dumps(line, default=str))
        print(json.dumps({"index": str(built.index_path), "stores": len(built.reports)}))
        return EXIT_FAILED if any(d.status == "failed" for d in sent) else EXIT_OK

    return asyncio.run(_with_engine(settings, work))


def cmd_recipients(args: argparse.Namespace, settings: Settings) -> int:
    from app.reports import deliver

    async def work(engine: Any) -> int:
        command = args.recipients_command
        try:
            if command == "add":
                added = await deliver.add_recipient(engine, args.store_code, args.email)
                print(json.dumps({"added": added, "store_code": args.store_code}))
            elif command == "remove":
                n = await deliver.remove_recipient(engine, args.store_code, args.email)
                print(json.dumps({"removed": n, "store_code": args.store_code}))
            elif command == "import":
                print(json.dumps({"added": await deliver.import_recipients(engine, args.file)}))
            else:
                for store, email in await deliver.list_recipients(engine, args.store_code):
                    print(json.dumps({"store_code": store, "email": email}))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        return EXIT_OK

    return asyncio.run(_with_engine(settings, work))
