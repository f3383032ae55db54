"""The commands the Docker image, compose and the deploy workflow call work, outside Docker.

Each command is read from the file that runs it in production (docker-compose.yml,
deploy-prod.yml, the Dockerfile's CMD) and started as a subprocess the way the container starts
it: source on PYTHONPATH, settings from the environment only, a real PostgreSQL (the suite's test
server), Dagster's instance from the repository's own dagster.yaml (Postgres storage). Paths in
the image (/opt/crm) map to the repository; the webserver binds 127.0.0.1 on a free port.
"""

import importlib.util
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml
from sqlalchemy.engine import URL

from app.config import MERGE_BUCKET_DB_SPECS
from app.db.urls import render, to_sync_url
from tests.conftest import PREFIX, create_database, drop_database
from tests.test_deploy_files import (
    COMPOSE,
    INITDB,
    _dockerfile_stages,
    deploy_remote_commands,
)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IMAGE_ROOT = "/opt/crm"  # WORKDIR and PYTHONPATH of the image
SETTINGS_VARS = (
    "DATABASE_URL", "DATA_DIR", "DAGSTER_HOME", "DAGSTER_PG_HOST", "DAGSTER_PG_USER",
    "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB", "TMS_WEB", "TMS_BASE", "TMS_USERNAME",
    "TMS_PASSWORD", "JSON_LOG_FILE", "INGEST_BATCH_SIZE", "DOWNLOAD_CONCURRENCY", "TIMEZONE",
    "SCHEDULE_CRON", "PYTHONPATH",
)  # fmt: skip


def _services() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _local(argv: list[str], *, port: int | None = None) -> list[str]:
    """An image command, runnable here: this interpreter, this venv's scripts, repo paths."""
    out = []
    for i, arg in enumerate(argv):
        if i == 0 and arg in ("python", "python3"):
            arg = sys.executable
        elif i == 0 and (BIN / arg).exists():
            arg = str(BIN / arg)
        elif arg.startswith(IMAGE_ROOT + "/"):
            arg = str(ROOT / arg[len(IMAGE_ROOT) + 1 :])
        elif port is not None and arg == "0.0.0.0":
            arg = "127.0.0.1"
        elif port is not None and arg == "3000":
            arg = str(port)
        out.append(arg)
    return out


def _compose_run_commands(prefix: list[str]) -> list[list[str]]:
    """`docker compose run --rm app <cmd>` lines of the deploy whose <cmd> starts with prefix."""
    lead = "docker compose run --rm app "
    commands = [shlex.split(c[len(lead) :]) for c in deploy_remote_commands() if c.startswith(lead)]
    return [c for c in commands if c[: len(prefix)] == prefix]


@dataclass
class Env:
    """The environment of a container: nothing inherited that the app reads as a setting."""

    values: dict[str, str]
    cwd: Path

    def run(self, argv: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _local(argv),
            env=self.values,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _base_env(tmp_path: Path, **settings: str) -> Env:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARS}
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    # The image finds the source through PYTHONPATH, and has no .env: run from an empty folder.
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    env.update(PYTHONPATH=str(ROOT), DATA_DIR=str(data), PYTHONUNBUFFERED="1", **settings)
    return Env(env, cwd)


def _json_lines(stdout: str) -> list[dict[str, Any]]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"stdout is not JSON-only; this line is not JSON: {line!r}")
        assert isinstance(event, dict), line
        events.append(event)
    return events


def _ok(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, (
        f"{shlex.join(result.args)} exited {result.returncode}\n"
        f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    )
    return _json_lines(result.stdout)


# ------------------------------------------------------------------------------------------------
# the app's commands


def test_deploy_migration_and_default_commands_on_an_empty_database(
    empty_database_url: URL, tmp_path: Path
) -> None:
    env = _base_env(tmp_path, DATABASE_URL=render(empty_database_url))
    upgrades = _compose_run_commands(["python", "-m", "app"])
    assert upgrades == [["python", "-m", "app", "db", "upgrade"]], upgrades

    # first deploy: an empty database gets the whole schema
    events = _ok(env.run(upgrades[0]))
    assert events and all(e["status"] != "error" for e in events), events

    # the app service's default command reports the revision: head, nothing else happens
    default = [str(a) for a in _services()["app"]["command"]]
    current = _ok(env.run(default))[-1]
    assert current["extras"]["current"] is not None
    assert current["extras"]["current"] == current["extras"]["head"], current
    assert current["status"] == "ok"

    # every later deploy runs it again: a no-op
    _ok(env.run(upgrades[0]))

    # the image's CMD (a bare `docker run` of the image) only prints the help
    cmd = next(
        json.loads(args)
        for keyword, args in _dockerfile_stages()[-1]["instructions"]
        if keyword == "CMD"
    )
    help_run = env.run(cmd)
    assert help_run.returncode == 0, help_run.stderr
    assert "usage: python -m app" in help_run.stdout


def test_run_dry_run_with_the_deployment_instance(
    database_url: URL,
    dagster_home: "DagsterHome",
    make_portal_sim: Callable[..., Any],
    tmp_path: Path,
) -> None:
    sim = make_portal_sim(store_count=1, today=None)
    store = sim.store_codes[0]
    env = _base_env(
        tmp_path,
        DATABASE_URL=render(database_url),
        TMS_WEB=sim.web_url,
        TMS_BASE=sim.base_url,
        TMS_USERNAME=sim.username,
        TMS_PASSWORD=sim.password,
        **dagster_home.env,
    )
    _ok(env.run(["python", "-m", "app", "stores", "add", store, "--etl", "on"]))

    events = _ok(env.run(["python", "-m", "app", "run", "--dry_run"], timeout=180))
    assert events, "a dry run logs its plan"
    assert not [e for e in events if e.get("status") == "error"], events
    assert sim.password not in json.dumps(events)

    # a dry run writes nothing to the app's tables
    conn = psycopg2.connect(render(to_sync_url(database_url).set(drivername="postgresql")))
    try:
        with conn.cursor() as cur:
            for spec in MERGE_BUCKET_DB_SPECS.values():
                cur.execute(f'SELECT count(*) FROM "{spec["table_name"]}"')
                assert cur.fetchone() == (0,), spec["table_name"]
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------------
# Dagster with the repository's dagster.yaml on a real PostgreSQL


@dataclass
class DagsterHome:
    path: Path
    env: dict[str, str]
    server: URL
    database: str


def _dagster_yaml_for(server: URL) -> str:
    """The repository's dagster.yaml, changed only where this test server needs it.

    CI's server (TCP on port 5432) uses the file as it is. The embedded server listens on a Unix
    socket: dagster-postgres builds `scheme://user:pw@host:port/db`, so the socket folder goes
    in as the libpq `host` query parameter (`params`), which overrides the URL's host.
    """
    text = (ROOT / "dagster.yaml").read_text()
    socket_dir = server.query.get("host")
    port = server.port or 5432
    if not socket_dir and port == 5432:
        return text
    config = yaml.safe_load(text)
    db = config["storage"]["postgres"]["postgres_db"]
    if socket_dir:
        db["params"] = {"host": socket_dir}
    db["port"] = port
    return yaml.safe_dump(config)


@pytest.fixture
def dagster_home(pg_server: URL, tmp_path: Path) -> Iterator[DagsterHome]:
    name = f"{PREFIX}dagster_{uuid.uuid4().hex[:10]}"
    create_database(pg_server, name)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(_dagster_yaml_for(pg_server))
    env = {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": pg_server.host or "localhost",
        "DAGSTER_PG_USER": pg_server.username or "postgres",
        # the embedded server trusts its socket; dagster.yaml still wants a value
        "DAGSTER_PG_PASSWORD": pg_server.password or "unused-by-trust-auth",
        "DAGSTER_PG_DB": name,
    }
    yield DagsterHome(home, env, pg_server, name)
    drop_database(pg_server, name)


def _tables(server: URL, database: str) -> set[str]:
    url = server.set(database=database, drivername="postgresql")
    conn = psycopg2.connect(render(url))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return {row[0] for row in cur.fetchall()}
    finally:
        conn.close()


def test_repo_dagster_yaml_is_used_unchanged_on_a_tcp_server() -> None:
    tcp = URL.create("postgresql+psycopg2", "u", "p", "db", 5432, "postgres")
    assert _dagster_yaml_for(tcp) == (ROOT / "dagster.yaml").read_text()


def test_dagster_instance_loads_the_repo_config_on_postgres(
    dagster_home: DagsterHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster import DagsterInstance
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_postgres import (
        PostgresEventLogStorage,
        PostgresRunStorage,
        PostgresScheduleStorage,
    )

    for key, value in dagster_home.env.items():
        monkeypatch.setenv(key, value)
    assert _tables(dagster_home.server, dagster_home.database) == set()
    with DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        assert instance.run_storage._engine.url.drivername == "postgresql+psycopg2"
        assert instance.get_runs() == []
    tables = _tables(dagster_home.server, dagster_home.database)
    assert {"runs", "event_logs", "jobs", "job_ticks", "alembic_version"} <= tables, tables


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(process: subprocess.Popen[str]) -> str:
    """SIGTERM the process group this test started (the daemon has children), then collect."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    return (process.stdout.read() if process.stdout else "")[-3000:]


def _wait_for(check: Callable[[], bool], timeout: float, *processes: subprocess.Popen[str]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        if any(p.poll() is not None for p in processes):
            return False
        time.sleep(0.5)
    return False


def test_dagster_entry_points_with_the_deployment_instance(
    dagster_home: DagsterHome, database_url: URL, tmp_path: Path
) -> None:
    env = _base_env(
        tmp_path,
        DATABASE_URL=render(database_url),
        TMS_WEB="http://127.0.0.1:9",
        TMS_BASE="http://127.0.0.1:9",
        TMS_USERNAME="entrypoint-test",
        TMS_PASSWORD="entrypoint-test",
        **dagster_home.env,
    )
    services = _services()

    # deploy: `docker compose run --rm app dagster instance migrate`
    migrations = _compose_run_commands(["dagster"])
    assert migrations == [["dagster", "instance", "migrate"]], migrations
    result = env.run(migrations[0])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "runs" in _tables(dagster_home.server, dagster_home.database)

    # the code location of workspace.yaml loads
    workspace = [str(a) for a in services["dagster-webserver"]["command"]]
    workspace_file = workspace[workspace.index("-w") + 1]
    result = env.run(["dagster", "definitions", "validate", "-w", workspace_file])
    assert result.returncode == 0, result.stdout + result.stderr

    # the webserver and the daemon exactly as compose starts them, until their healthchecks pass
    port = _free_port()
    web_cmd = _local([str(a) for a in services["dagster-webserver"]["command"]], port=port)
    daemon_cmd = _local([str(a) for a in services["dagster-daemon"]["command"]])
    assert f"127.0.0.1 -p {port} -w {ROOT / 'workspace.yaml'}" in " ".join(web_cmd)
    started = []
    try:
        for argv in (web_cmd, daemon_cmd):
            started.append(
                subprocess.Popen(
                    argv,
                    env=env.values,
                    cwd=env.cwd,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                )
            )
        web, daemon = started

        web_health = [str(a) for a in services["dagster-webserver"]["healthcheck"]["test"][1:]]
        web_probe = [a.replace("127.0.0.1:3000", f"127.0.0.1:{port}") for a in web_health]
        up = _wait_for(lambda: env.run(web_probe, timeout=30).returncode == 0, 60, web)
        assert up, f"webserver never became healthy:\n{_stop(web)}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5) as resp:
            info = json.loads(resp.read())
        assert "dagster_webserver_version" in info or "dagit_version" in info, info

        daemon_health = [str(a) for a in services["dagster-daemon"]["healthcheck"]["test"][1:]]
        live = _wait_for(lambda: env.run(daemon_health, timeout=30).returncode == 0, 75, daemon)
        assert live, f"daemon never became live:\n{_stop(daemon)}"
    finally:
        for process in started:
            _stop(process)


# ------------------------------------------------------------------------------------------------
# the db service's init script, against the test server


def _psql_bin_dir() -> Path:
    """psql 16 from the embedded server's package (the script's \\getenv needs psql 15+).

    Found without importing pgserver (its import warns about XDG_RUNTIME_DIR).
    """
    spec = importlib.util.find_spec("pgserver")
    assert spec and spec.origin, "pgserver (a dependency of the app) is not installed"
    bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
    assert (bin_dir / "psql").is_file(), bin_dir
    return bin_dir


def test_initdb_script_creates_one_private_database_per_role(pg_server: URL) -> None:
    suffix = uuid.uuid4().hex[:8]
    names = {
        "CRM_DB_USER": f"{PREFIX}crm_{suffix}",
        "CRM_DB_NAME": f"{PREFIX}crm_{suffix}",
        "CRM_DB_PASSWORD": f"pw-{suffix}-a",
        "DAGSTER_PG_USER": f"{PREFIX}dagster_{suffix}",
        "DAGSTER_PG_DB": f"{PREFIX}dagster_db_{suffix}",
        "DAGSTER_PG_PASSWORD": f"pw-{suffix}-b",
    }
    server_host = pg_server.query.get("host") or pg_server.host or "localhost"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        names,
        PATH=f"{_psql_bin_dir()}{os.pathsep}{env.get('PATH', '')}",
        PGHOST=str(server_host),
        PGPORT=str(pg_server.port or 5432),
        PGPASSWORD=pg_server.password or "",
        POSTGRES_USER=pg_server.username or "postgres",
    )
    admin = psycopg2.connect(render(pg_server.set(drivername="postgresql")))
    admin.autocommit = True
    try:
        for _ in range(2):  # idempotent: a second run changes nothing and does not fail
            result = subprocess.run(
                ["bash", str(INITDB)], env=env, capture_output=True, text=True, check=False
            )
            assert result.returncode == 0, result.stdout + result.stderr
        with admin.cursor() as cur:
            cur.execute(
                "SELECT datname, pg_get_userbyid(datdba), has_database_privilege('public', oid,"
                " 'CONNECT') FROM pg_database WHERE datname = ANY(%s) ORDER BY datname",
                ([names["CRM_DB_NAME"], names["DAGSTER_PG_DB"]],),
            )
            assert sorted(cur.fetchall()) == sorted(
                [
                    (names["CRM_DB_NAME"], names["CRM_DB_USER"], False),
                    (names["DAGSTER_PG_DB"], names["DAGSTER_PG_USER"], False),
                ]
            )
            cur.execute(
                "SELECT rolname, rolsuper, rolcreatedb, rolcanlogin, rolpassword IS NOT NULL"
                " FROM pg_authid WHERE rolname = ANY(%s)",
                ([names["CRM_DB_USER"], names["DAGSTER_PG_USER"]],),
            )
            assert {row[1:] for row in cur.fetchall()} == {(False, False, True, True)}

        def connect(role: str, password: str, database: str) -> None:
            url = pg_server.set(
                drivername="postgresql", username=role, password=password, database=database
            )
            psycopg2.connect(render(url)).close()

        # each role reaches its own database, and not the other one
        connect(names["CRM_DB_USER"], names["CRM_DB_PASSWORD"], names["CRM_DB_NAME"])
        connect(names["DAGSTER_PG_USER"], names["DAGSTER_PG_PASSWORD"], names["DAGSTER_PG_DB"])
        with pytest.raises(psycopg2.OperationalError, match="permission denied"):
            connect(names["CRM_DB_USER"], names["CRM_DB_PASSWORD"], names["DAGSTER_PG_DB"])
    finally:
        with admin.cursor() as cur:
            for database in (names["CRM_DB_NAME"], names["DAGSTER_PG_DB"]):
                assert database.startswith(PREFIX)
                cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            for role in (names["CRM_DB_USER"], names["DAGSTER_PG_USER"]):
                assert role.startswith(PREFIX)
                cur.execute(f'DROP ROLE IF EXISTS "{role}"')
        admin.close()
