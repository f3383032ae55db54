"""Local, embedded-defaults entry points: `python -m app demo` and `python -m app ui`.

Only these use the built-in portal simulator, and only on the embedded database, so simulated
data never reaches a real one: with `DATABASE_URL` set, `demo` refuses to run and `ui` never
starts the simulator; with any real portal setting (`TMS_*`) present, `ui` uses that portal.

Secrets never travel as run config (Dagster keeps run config in its run storage and shows it
in the UI): the simulator's login reaches the runs through the process environment
(`TMS_WEB`, `TMS_BASE`, `TMS_USERNAME`, `TMS_PASSWORD`), read by `PortalResource` at run time,
plus the marker `CRM_PORTAL_SIMULATED=1`, which keeps the schedules from firing against it.
"""

import asyncio
import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from sqlalchemy.engine import URL

from app import json_logger
from app.runner import _today, ensure_dagster_home, run_pipeline
from app.settings import ConfigError, Settings

SIMULATED_PORTAL_ENV = "CRM_PORTAL_SIMULATED"
PORTAL_ENV_VARS = ("TMS_WEB", "TMS_BASE", "TMS_USERNAME", "TMS_PASSWORD")
# demo and ui seed the same stores, so both agree on what the embedded database holds
SIM_STORES, SIM_SEED = 6, 42
REPORT_STORES = 2  # demo and ui seed two report stores: a newcomer sees reports at once
_SHUTDOWN_GRACE_S = 10.0  # a group-wide Ctrl-C or SIGTERM already reached `dagster dev`
_KILL_AFTER_S = 30.0


def portal_is_simulated() -> bool:
    """This process tree's portal settings point at the built-in simulator (set by demo/ui)."""
    return os.environ.get(SIMULATED_PORTAL_ENV, "").strip() not in ("", "0")


def configured_portal_settings(settings: Settings) -> list[str]:
    """The `TMS_*` variables that hold a value: any of them means a real portal is meant."""
    present = []
    for name in PORTAL_ENV_VARS:
        value = getattr(settings, name.lower())
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value:
            present.append(name)
    return present


@dataclass(frozen=True)
class SimulatedPortal:
    """A running simulator, the embedded database it seeded, and the env that points at it."""

    sim: Any  # app.portal_sim.PortalSimulator
    database_url: URL

    def env(self) -> dict[str, str]:
        return {
            "TMS_WEB": self.sim.web_url,
            "TMS_BASE": self.sim.base_url,
            "TMS_USERNAME": self.sim.username,
            "TMS_PASSWORD": self.sim.password,
            SIMULATED_PORTAL_ENV: "1",
        }


def _refuse_real_database(settings: Settings, command: str) -> None:
    if settings.database_url is not None:
        raise ConfigError(
            f"{command} only runs on the embedded database (simulated data must never reach a "
            "real one): unset DATABASE_URL"
        )


def embedded_database(settings: Settings) -> URL:
    """Start (or reuse) the embedded Postgres under DATA_DIR/.pg, migrated to head."""
    from app.db import migrate
    from app.db.embedded import start_embedded

    url = start_embedded(settings.data_dir).database_url()
    migrate.upgrade(url)
    return url


@contextlib.contextmanager
def simulated_portal(settings: Settings, today: dt.date) -> Iterator[SimulatedPortal]:
    """The simulator in a thread of this process, its stores seeded into the embedded DB."""
    from app import stores as store_master
    from app.db.engine import create_engine
    from app.portal_sim import PortalSimulator, SimConfig

    _refuse_real_database(settings, "the portal simulator")
    url = embedded_database(settings)
    with PortalSimulator(SimConfig(store_count=SIM_STORES, seed=SIM_SEED, today=today)) as sim:

        async def _seed() -> None:
            engine = create_engine(url)
            try:
                await store_master.upsert_stores(
                    engine,
                    [
                        # every store is loaded; the first REPORT_STORES also get reports
                        {
                            **s,
                            "etl_flag": True,
                            "report_flag": index < REPORT_STORES,
                            "is_active": True,
                        }
                        for index, s in enumerate(sim.stores())
                    ],
                )
            finally:
                await engine.dispose()

        asyncio.run(_seed())
        yield SimulatedPortal(sim, url)


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block, then put back what was there."""
    old = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_demo(settings: Settings) -> int:
    """The whole cycle on embedded defaults: simulator, embedded Postgres, seeded stores."""
    _refuse_real_database(settings, "demo")
    today = _today(settings)
    with simulated_portal(settings, today) as portal, _environ(portal.env()):
        sim = portal.sim
        json_logger.log_event(
            "demo",
            f"simulator serving {len(sim.store_codes)} stores at {sim.web_url}; "
            "running today's partition end to end",
            date=today,
        )
        # The resources read the portal from the environment set above; these settings only
        # have to agree with it for the runner's own check.
        demo_settings = settings.model_copy(
            update={
                "tms_web": sim.web_url,
                "tms_base": sim.base_url,
                "tms_username": sim.username,
                "tms_password": SecretStr(sim.password),
            }
        )
        code = run_pipeline(demo_settings, run_date=today)
        _demo_reports(settings, portal.database_url, today)
        return code


def _demo_reports(settings: Settings, url: Any, today: dt.date) -> None:
    """The report stores' HTML and PDF for today, so the first command shows them too."""
    from app.db.engine import create_engine
    from app.reports import build_reports

    async def _build() -> Any:
        engine = create_engine(url)
        try:
            return await build_reports(engine, settings.data_dir, today)
        finally:
            await engine.dispose()

    built = asyncio.run(_build())
    json_logger.log_event(
        "report",
        f"store reports for {today}: {built.index_path or built.folder}",
        date=today,
        extras={"stores": [r.store_code for r in built.reports]},
    )


# ------------------------------------------------------------------------------------ ui


def dagster_dev_argv(host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "-m",
        "crm_assets.definitions",
        "-h",
        host,
        "-p",
        str(port),
    ]


def _refuse_empty_portal_lines_in_env_file() -> None:
    """`dagster dev` loads `./.env` over the environment it was given; an empty `TMS_*=` line
    there (a copied `.env.example`) would blank the simulator's address in every run."""
    env_file = Path(".env")
    if not env_file.is_file():
        return
    from dotenv import dotenv_values

    blank = sorted(
        name.upper()
        for name, value in dotenv_values(env_file).items()
        if name.upper() in PORTAL_ENV_VARS and not (value or "").strip()
    )
    if blank:
        raise ConfigError(
            f".env sets {', '.join(blank)} to empty values, which `dagster dev` would apply over "
            "the simulator's settings: remove those lines to try the UI on the simulator, or "
            "fill them in for the real portal"
        )


def database_parameters(url: URL) -> dict[str, Any]:
    """libpq connection parameters of `url` without the password (safe to log and print)."""
    params: dict[str, Any] = {
        "host": url.query.get("host") or url.host or "localhost",
        "dbname": url.database,
        "user": url.username,
    }
    if url.port:
        params["port"] = url.port
    return params


def run_ui(settings: Settings, *, host: str, port: int) -> int:
    """`dagster dev` (webserver + daemon) as a child process, on embedded defaults if need be.

    No `DATABASE_URL` and no portal setting: the embedded Postgres (migrated), the simulator
    in a thread of this process with its stores seeded, and the child pointed at it. Otherwise
    the configured database and portal, and never the simulator.
    """
    from app.db.engine import resolve_database_url

    env = {
        **os.environ,
        "DAGSTER_HOME": str(ensure_dagster_home(settings)),
        "DATA_DIR": str(settings.data_dir.resolve()),
    }
    env.pop(SIMULATED_PORTAL_ENV, None)
    simulate = settings.database_url is None and not configured_portal_settings(settings)
    with contextlib.ExitStack() as stack:
        portal: SimulatedPortal | None = None
        if simulate:
            _refuse_empty_portal_lines_in_env_file()
            portal = stack.enter_context(simulated_portal(settings, _today(settings)))
            env.update(portal.env())
            url = portal.database_url
        else:
            # the embedded default is ours to migrate; a real database is the operator's
            real = settings.database_url is not None
            url = resolve_database_url(settings) if real else embedded_database(settings)
        ui = _Ui(settings, f"http://{_url_host(host)}:{port}", url, portal)
        ui.announce_start(env["DAGSTER_HOME"])
        return ui.supervise(dagster_dev_argv(host, port), env)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):  # noqa: S104 - the address to print, not to bind
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


@dataclass
class _Ui:
    """What the local UI tells the person, and the life of its `dagster dev` child."""

    settings: Settings
    web_url: str
    database_url: URL
    portal: SimulatedPortal | None

    def announce_start(self, dagster_home: str) -> None:
        extras: dict[str, Any] = {
            "url": self.web_url,
            "simulated": self.portal is not None,
            "db": database_parameters(self.database_url),
            "embedded_db": self.settings.database_url is None,
            "dagster_home": dagster_home,
            "data_dir": str(self.settings.data_dir.resolve()),
        }
        if self.portal is not None:
            sim = self.portal.sim
            extras["portal"] = {"web": sim.web_url, "base": sim.base_url, "stores": sim.store_codes}
        else:
            extras["portal"] = {"web": self.settings.tms_web, "base": self.settings.tms_base}
            missing = self.settings.missing_portal_settings()
            if missing:
                json_logger.log_event(
                    "ui",
                    "portal settings missing: " + ", ".join(missing) + "; runs of today will "
                    "fail until they are set",
                    status="warn",
                )
        json_logger.log_event("ui", f"starting the Dagster UI on {self.web_url}", extras=extras)

    def next_steps(self) -> str:
        db = database_parameters(self.database_url)
        libpq = " ".join(f"{k}={v}" for k, v in db.items())
        lines = [f"Dagster UI: {self.web_url}   (stop: Ctrl-C)"]
        if self.portal is not None:
            codes = ", ".join(self.portal.sim.store_codes)
            lines += [
                f"  portal:   the built-in simulator ({codes}), on the embedded database;",
                f"            schedules skip their ticks ({SIMULATED_PORTAL_ENV}=1)",
            ]
        else:
            lines.append(f"  portal:   {self.settings.tms_web or 'not configured (set TMS_*)'}")
            lines.append(f"  schedule: crm_daily_schedule at {self.settings.schedule_cron}")
        lines += [
            "  next:     Jobs → crm_daily → Materialize all → pick today's partition → Launch;",
            "            the cleanup sensor deletes a date's CSVs within a minute of its audit",
            "            passing (Automation → cleanup_on_passed_audit)",
            f'  data:     psql "{libpq}"   or   python -m app stores list',
        ]
        return "\n".join(lines)

    def _webserver_up(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.web_url}/server_info", timeout=2):  # noqa: S310
                return True
        except OSError:
            return False

    def supervise(self, argv: list[str], env: Mapping[str, str]) -> int:
        """Start the child, say when the UI is up, and stop the child when asked to.

        SIGINT and SIGTERM get Python handlers before the child starts: a handled signal is
        reset to the default in the child, an ignored one stays ignored (a shell's background
        job ignores SIGINT, and `dagster dev` maps SIGTERM to its SIGINT handler, so it would
        ignore both and never shut its webserver and daemon down).
        """
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, signal.default_int_handler)
        process = subprocess.Popen(argv, env=dict(env))  # noqa: S603 - fixed argv, no shell
        ready = False
        try:
            while True:
                try:
                    return process.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    pass
                if not ready and self._webserver_up():
                    ready = True
                    json_logger.log_event("ui", f"Dagster UI ready on {self.web_url}")
                    print(self.next_steps(), file=sys.stderr, flush=True)
                if self.portal is not None:  # the simulator's day follows the clock
                    self.portal.sim.set_today(_today(self.settings))
        except KeyboardInterrupt:
            _stop_child(process)
            return 0
        finally:
            for sig, handler in previous.items():
                if handler is not None:  # None: a handler not installed from Python
                    signal.signal(sig, handler)


def _stop_child(process: "subprocess.Popen[bytes]") -> None:
    """Give `dagster dev` time to shut its webserver and daemon down, then insist.

    Ctrl-C and a process-group SIGTERM reach the child too, so it is not signalled at once
    (a second interrupt would cut its own shutdown short).
    """
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    try:
        process.wait(timeout=_SHUTDOWN_GRACE_S)
        return
    except subprocess.TimeoutExpired:
        process.terminate()
    try:
        process.wait(timeout=_KILL_AFTER_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
