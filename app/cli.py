"""`python -m app ...`: the operator's entry point.

Exit codes (stable, scripts and tests outside the repo rely on them):
0 everything reconciled, 1 some bucket or store failed, 2 configuration or scope error.

Every failure ends in one line on stderr (and one JSON `error` event on stdout) that names the
cause and what to do: an operator reading a cron mail should not have to find the last line of
a 120-line traceback. `--debug` adds the traceback for a developer.
"""

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from app import json_logger
from app.config import BUCKETS
from app.settings import ConfigError, Settings, load_settings

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
T = TypeVar("T")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

# ---- argument parsing ---------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse with one error line that says where to look, and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _csv_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def parse_date(value: str) -> dt.date:
    """YYYY-MM-DD only: `20261201` (which Python would accept) is refused, so that a typo is
    never read as some other day."""
    text = value.strip()
    if not _ISO_DATE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a date: write it as YYYY-MM-DD, e.g. 2026-11-27"
        )
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a real date ({exc})") from None


def _bucket(value: str) -> str:
    if value not in BUCKETS:
        raise argparse.ArgumentTypeError(
            f"unknown bucket {value!r}: choose from {', '.join(BUCKETS)}"
        )
    return value


def _days(value: str) -> int:
    try:
        days = int(value)
    except ValueError:
        days = 0
    if not 1 <= days <= 366:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of days from 1 to 366")
    return days


def _on_off(value: str) -> bool:
    from app.stores import parse_flag

    try:
        return parse_flag(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _common() -> argparse.ArgumentParser:
    """`--debug` is accepted after any command too (`python -m app run --debug`)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    return common


def _add_run(sub: Any, common: argparse.ArgumentParser) -> None:
    run = sub.add_parser(
        "run", parents=[common], help="run the daily graph for one date, then clean up"
    )
    run.add_argument("--date", type=parse_date, help="run date YYYY-MM-DD (default: today, IST)")
    run.add_argument("--buckets", type=_csv_list, help=f"comma list of {','.join(BUCKETS)}")
    run.add_argument("--stores", type=_csv_list, help="comma list of store codes (within scope)")
    run.add_argument(
        "--dry_run",
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="no database writes and no cleanup; log the ingestion plan and sample rows",
    )


def _add_db(sub: Any, common: argparse.ArgumentParser) -> None:
    db = sub.add_parser("db", parents=[common], help="schema migrations (Alembic)")
    db.set_defaults(_parser=db, _needs="db_command")
    db_sub = db.add_subparsers(dest="db_command", metavar="{upgrade,current,check}")
    up = db_sub.add_parser("upgrade", parents=[common], help="apply migrations")
    up.add_argument("revision", nargs="?", default="head")
    db_sub.add_parser("current", parents=[common], help="show the database's revision")
    db_sub.add_parser("check", parents=[common], help="fail if models and migrations drifted")
    for child in db_sub.choices.values():
        child.set_defaults(_parser=child)


def _flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--etl", type=_on_off, metavar="on|off")
    parser.add_argument("--report", type=_on_off, metavar="on|off")
    parser.add_argument("--active", type=_on_off, metavar="on|off")


def _add_stores(sub: Any, common: argparse.ArgumentParser) -> None:
    stores = sub.add_parser("stores", parents=[common], help="manage store_master")
    stores.set_defaults(_parser=stores, _needs="stores_command")
    st_sub = stores.add_subparsers(dest="stores_command", metavar="{list,add,set,import,scope}")
    st_list = st_sub.add_parser("list", parents=[common], help="list stores and flags")
    st_list.add_argument("--json", action="store_true", help="one JSON object per store")
    st_add = st_sub.add_parser("add", parents=[common], help="add or update one store")
    st_add.add_argument("store_code")
    st_add.add_argument("--name")
    _flags(st_add)
    st_set = st_sub.add_parser("set", parents=[common], help="set flags on existing stores")
    st_set.add_argument("store_codes", nargs="+")
    _flags(st_set)
    st_import = st_sub.add_parser(
        "import", parents=[common], help="validated, idempotent import from a CSV file"
    )
    st_import.add_argument("file", type=Path)
    st_sub.add_parser(
        "scope", parents=[common], help="show the ETL and report scopes (exit 2 if invalid)"
    )
    for child in st_sub.choices.values():
        child.set_defaults(_parser=child)


def _add_status(sub: Any, common: argparse.ArgumentParser) -> None:
    status = sub.add_parser(
        "status", parents=[common], help="per bucket and date: last run, audit, cleanup, files"
    )
    status.add_argument("--date", type=parse_date, help="YYYY-MM-DD (default: today)")
    status.add_argument("--days", type=_days, help="the N days up to --date (default 1)")
    status.add_argument("--json", action="store_true", help="JSON lines even at a terminal")
    rejects = sub.add_parser(
        "rejects", parents=[common], help="the rejected records of a date's latest run"
    )
    rejects.add_argument("--date", type=parse_date, required=True, help="YYYY-MM-DD")
    rejects.add_argument("--bucket", type=_bucket, help=f"one of {', '.join(BUCKETS)}")
    out = rejects.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true", help="CSV on stdout")
    out.add_argument("--json", action="store_true", help="JSON lines even at a terminal")


def _add_local(sub: Any, common: argparse.ArgumentParser) -> None:
    sub.add_parser(
        "demo",
        parents=[common],
        help="the whole cycle on embedded defaults with the portal simulator",
    )
    sim = sub.add_parser("portal-sim", parents=[common], help="serve the built-in simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8765)
    # The same stores `demo` and `ui` seed into store_master, so the two agree by default.
    sim.add_argument("--stores", type=int, default=6, help="number of stores it serves")
    sim.add_argument("--seed", type=int, default=42)
    ui = sub.add_parser("ui", parents=[common], help="Dagster webserver and daemon, locally")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m app",
        description="CRM data platform: download, merge, load and reconcile portal reports.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.set_defaults(_parser=parser, _needs="command")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    common = _common()
    for add in (_add_run, _add_db, _add_stores, _add_status, _add_local):
        add(sub, common)
    from app.report_cli import add_report_commands

    add_report_commands(sub, common)  # `report`, and `stores recipients ...`
    for name, child in sub.choices.items():
        if name not in ("db", "stores"):
            child.set_defaults(_parser=child)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse, then refuse leftovers naming them, from the (sub)command they were given to."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    target: argparse.ArgumentParser = getattr(args, "_parser", parser)
    if extras:
        target.error(f"unrecognized arguments: {' '.join(extras)}")
    needs = getattr(args, "_needs", "command")
    if getattr(args, needs, None) is None:
        target.error("a command is required")
    return args


# ---- one line per failure -----------------------------------------------------------------

_SCHEMA_STATES = {"42P01", "42703"}  # undefined table / column: not migrated (or behind)
_CONNECT_STATES = ("08", "28", "3D000", "57P", "53300")  # connection, auth, no database, down
_DRIVERS = ("asyncpg", "psycopg2")


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, its causes and contexts, and the driver errors SQLAlchemy wraps."""
    out: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or current in out:
            continue
        out.append(current)
        todo += [getattr(current, "orig", None), current.__cause__, current.__context__]
    return [e for e in out if isinstance(e, BaseException)]


def _sqlstate(chain: Iterable[BaseException]) -> str | None:
    for e in chain:
        state = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if isinstance(state, str) and state:
            return state
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()


def _database_where(settings: Settings | None) -> str:
    if settings is None or settings.database_url is None:
        where = settings.data_dir if settings else Path("DATA_DIR")
        return f"the embedded PostgreSQL under {where}/.pg"
    from app.db.urls import safe_url

    return f"the database {safe_url(settings.database_url.get_secret_value())}"


def _raised_in_driver(exc: BaseException) -> bool:
    """Whether an OSError came out of a database driver (asyncpg connects with plain sockets)."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    return any(f"{os.sep}{name}{os.sep}" in f.filename for f in frames for name in _DRIVERS)


def _connection_reason(chain: Sequence[BaseException]) -> str | None:
    """Why the database could not be reached, or None when this is not a connection failure."""
    import socket

    state = _sqlstate(chain)
    for e in chain:
        module = type(e).__module__
        if isinstance(e, socket.gaierror):
            return f"unknown host ({e.strerror or e})"
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, OSError) and (_raised_in_driver(e) or ".s.PGSQL." in str(e)):
            if isinstance(e, FileNotFoundError):
                return "no server socket there (no such file or directory)"
            return (e.strerror or _first_line(e)).lower()
        if isinstance(e, TimeoutError):
            return "timed out"
        psycopg2_op = module.startswith("psycopg2") and type(e).__name__ == "OperationalError"
        if psycopg2_op and (state is None or state.startswith(_CONNECT_STATES)):
            return _first_line(e)
        if module.startswith("asyncpg") and state and state.startswith(_CONNECT_STATES):
            return _first_line(e)
    return None


def _alembic(exc: BaseException) -> tuple[int, str] | None:
    try:
        from alembic.util import AutogenerateDiffsDetected, CommandError
    except ImportError:  # pragma: no cover - alembic is a dependency
        return None
    if isinstance(exc, AutogenerateDiffsDetected):
        return EXIT_FAILED, f"models and migrations have drifted: {_first_line(exc)}"
    if isinstance(exc, CommandError):
        return EXIT_CONFIG, f"alembic: {_first_line(exc)}"
    return None


def explain(exc: BaseException, settings: Settings | None) -> tuple[int, str, bool]:
    """(exit code, one line naming the cause and what to do, whether it was unexpected)."""
    if isinstance(exc, (ConfigError, json_logger.LogFileError)):
        return EXIT_CONFIG, str(exc), False
    chain = _chain(exc)
    if _sqlstate(chain) in _SCHEMA_STATES:
        return (
            EXIT_CONFIG,
            f"{_database_where(settings)} has no CRM schema or an old one "
            f"({_first_line(chain[-1])}): run `python -m app db upgrade` first",
            False,
        )
    if (reason := _connection_reason(chain)) is not None:
        return (
            EXIT_CONFIG,
            f"cannot connect to {_database_where(settings)}: {reason}: check DATABASE_URL "
            "(unset = the embedded PostgreSQL) and that the server is running and reachable",
            False,
        )
    if (known := _alembic(exc)) is not None:
        return (*known, False)
    if isinstance(exc, PermissionError):
        return EXIT_CONFIG, f"{exc.filename or ''}: {exc.strerror or exc}", False
    return EXIT_FAILED, f"unexpected {type(exc).__name__}: {_first_line(exc)}", True


def fail(exc: BaseException, settings: Settings | None, *, debug: bool) -> int:
    code, message, unexpected = explain(exc, settings)
    message = json_logger.redact_text(" ".join(message.split()))
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    elif unexpected:
        message += " (run again with --debug for the traceback)"
    with contextlib.suppress(Exception):  # the stderr line below is what matters
        json_logger.log_event(
            "error",
            message,
            status="error",
            extras={"exit_code": code, "error_type": type(exc).__name__},
        )
    print(f"error: {message}", file=sys.stderr)
    return code


# ---- commands -----------------------------------------------------------------------------


def _database(settings: Settings) -> Any:
    from app.db.engine import resolve_database_url

    return resolve_database_url(settings)


async def _with_engine(url: Any, work: Callable[[Any], Awaitable[T]]) -> T:
    from app.db.engine import create_engine

    engine = create_engine(url)
    try:
        return await work(engine)
    finally:
        await engine.dispose()


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from app.db import migrate
    from app.db.urls import safe_url

    url = _database(settings)
    where = {"database": safe_url(url)}
    if args.db_command == "upgrade":
        started = time.perf_counter()
        migrate.upgrade(url, args.revision)
        revision = migrate.current_revision(url)
        json_logger.log_event(
            "db",
            f"schema upgraded to {revision}",
            duration_ms=(time.perf_counter() - started) * 1000,
            extras={**where, "revision": revision},
        )
        return EXIT_OK
    if args.db_command == "current":
        current, head = migrate.current_revision(url), migrate.head_revision()
        json_logger.log_event(
            "db",
            f"database at revision {current} (head {head})",
            status="ok" if current == head else "warn",
            extras={"current": current, "head": head, **where},
        )
        return EXIT_OK
    migrate.check(url)
    json_logger.log_event("db", "models and migrations agree")
    return EXIT_OK


async def _stores(args: argparse.Namespace, engine: Any) -> None:
    from app import stores

    command = args.stores_command
    if command == "list":
        _print_stores(await stores.list_stores(engine), as_json=args.json)
    elif command == "add":
        row = {
            "store_code": stores.validate_store_code(args.store_code),
            "store_name": args.name,
            "etl_flag": args.etl,
            "report_flag": args.report,
            "is_active": args.active,
        }
        await stores.upsert_stores(engine, [row])
        json_logger.log_event("stores", "store saved", store_code=args.store_code)
    elif command == "set":
        n = await stores.set_flags(
            engine,
            args.store_codes,
            etl_flag=args.etl,
            report_flag=args.report,
            is_active=args.active,
        )
        json_logger.log_event("stores", f"flags set on {n} stores")
    elif command == "import":
        n = await stores.import_stores(engine, args.file)
        json_logger.log_event("stores", f"imported {n} stores from {args.file}")
    else:
        etl = await stores.etl_scope(engine)
        report = await stores.report_scope(engine)
        json_logger.log_event(
            "stores",
            f"{len(etl)} stores in ETL scope, {len(report)} in report scope",
            extras={"etl_scope": etl, "report_scope": report},
        )


def cmd_stores(args: argparse.Namespace, settings: Settings) -> int:
    if args.stores_command == "import":
        from app.stores import read_store_rows

        read_store_rows(args.file)  # a bad file is refused before the database is touched
    asyncio.run(_with_engine(_database(settings), lambda engine: _stores(args, engine)))
    return EXIT_OK


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


def _before_first_partition(run_date: dt.date, settings: Settings) -> str | None:
    from app.settings_dates import first_partition

    first = first_partition(settings)
    if run_date >= first:
        return None
    origin = (
        "GO_LIVE_DATE"
        if settings.go_live_date
        else "the first day of this month; the portal serves month-to-date data only"
    )
    return (
        f"--date {run_date} is before the first partition {first} ({origin}): choose a date "
        f"from {first} on, or set GO_LIVE_DATE=YYYY-MM-DD earlier to backfill kept files"
    )


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from app.runner import run_pipeline

    if args.date is not None and (problem := _before_first_partition(args.date, settings)):
        raise ConfigError(problem)
    return run_pipeline(
        settings,
        run_date=args.date,
        buckets=args.buckets,
        stores=args.stores,
        dry_run=args.dry_run,
    )


def _dagster_runs(settings: Settings, run_ids: set[str]) -> Mapping[str, Any]:
    """Source and dry-run flag of each run from Dagster's run storage; empty when there is none
    (status still works from the database and the disk)."""
    from app.status import RunInfo

    home = os.environ.get("DAGSTER_HOME") or str(settings.data_dir / ".dagster")
    if not Path(home, "dagster.yaml").is_file():
        return {}
    try:
        import warnings

        import dagster as dg

        from crm_resources.run_info import run_source

        out: dict[str, RunInfo] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with dg.DagsterInstance.from_config(home) as instance:
                for run_id in run_ids:
                    run = instance.get_run_by_id(run_id)
                    if run is not None:
                        dry = run.tags.get("crm/dry_run")
                        out[run_id] = RunInfo(
                            run_source(run), None if dry is None else dry == "true"
                        )
        return out
    except Exception as exc:  # Dagster's view is a nicety here, never a failure
        json_logger.log_event("status", f"Dagster's run storage not read: {exc}", status="warn")
        return {}


def _status_dates(args: argparse.Namespace, settings: Settings) -> list[dt.date]:
    from app.settings_dates import today

    last = args.date or today(settings)
    return [last - dt.timedelta(days=i) for i in range(args.days or 1)]


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from app import status
    from app.run_lock import holder_of
    from app.settings_dates import today

    dates = _status_dates(args, settings)
    url = _database(settings)
    audits = asyncio.run(_with_engine(url, lambda engine: status.audits_of(engine, dates)))

    def running(day: dt.date) -> str | None:
        holder = holder_of(url, day)
        return holder.run_id if holder else None

    report = status.build_report(
        settings.data_dir,
        dates,
        audits,
        run_info=lambda ids: _dagster_runs(settings, ids),
        running=running,
        today=today(settings),
    )
    if args.json or not sys.stdout.isatty():
        status.write_json_lines(status.status_lines(report), sys.stdout)
    else:
        from rich.console import Console

        status.render_status(report, Console())
    return EXIT_OK


def cmd_rejects(args: argparse.Namespace, settings: Settings) -> int:
    from app import status

    buckets = [args.bucket] if args.bucket else list(BUCKETS)
    rows = asyncio.run(
        _with_engine(
            _database(settings), lambda engine: status.rejects_of(engine, args.date, buckets)
        )
    )
    if args.csv:
        status.write_rejects_csv(rows, sys.stdout)
    elif args.json or not sys.stdout.isatty():
        status.write_json_lines(status.reject_dicts(rows), sys.stdout)
    else:
        from rich.console import Console

        status.render_rejects(rows, Console())
    return EXIT_OK


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
    "status": cmd_status,
    "rejects": cmd_rejects,
    "demo": cmd_demo,
    "portal-sim": cmd_portal_sim,
    "ui": cmd_ui,
    "report": lambda args, settings: int(args._handler(args, settings)),
}
_WRITES_DATA_DIR = {"run", "demo", "ui", "report"}
_USES_DATABASE = {"db", "stores", "status", "rejects", "report"}


def check_data_dir(command: str, settings: Settings) -> None:
    """A read-only DATA_DIR is refused before any work, naming it, not halfway through a run."""
    embedded = settings.database_url is None and command in _USES_DATABASE
    if command not in _WRITES_DATA_DIR and not embedded:
        return
    path = settings.data_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as exc:
        why = (
            "the embedded PostgreSQL lives in DATA_DIR/.pg while DATABASE_URL is unset"
            if embedded
            else "runs keep their files there"
        )
        raise ConfigError(
            f"DATA_DIR {path} is not writable ({exc.strerror or exc}); {why}: point DATA_DIR "
            "at a folder this user can write"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings: Settings | None = None
    try:
        settings = load_settings()
        json_logger.configure(file_path=settings.json_log_file)
        os.environ.setdefault("DATA_DIR", str(settings.data_dir))
        check_data_dir(args.command, settings)
        handler = getattr(args, "_handler", None)  # commands added by app.report_cli
        if handler is not None:
            return int(handler(args, settings))
        return COMMANDS[args.command](args, settings)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `python -m app stores list | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:
        return fail(exc, settings, debug=bool(getattr(args, "debug", False)))
