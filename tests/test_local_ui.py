"""`python -m app ui` (`make ui`) on embedded defaults, driven end to end without a browser.

The slow test starts the UI exactly as the Makefile's `ui` recipe does (this venv's python,
another port) from an empty folder, with no database and no portal settings, and then does what
a person would do in the browser, through the webserver's GraphQL API: launch today's partition
of `crm_daily`, wait for it, and wait for the daemon's cleanup sensor to delete the files. The
database is read through the connection parameters the UI logs (never a password).

The fast tests pin the guards: a real database or real portal settings never start the
simulator; demo and UI hand the portal's login over through the environment, not run config.
"""

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import pytest
from sqlalchemy.engine import URL, make_url

import app.local
from app.config import MERGE_BUCKET_DB_SPECS
from app.db.urls import render
from app.local import SIMULATED_PORTAL_ENV, run_demo, run_ui
from app.portal_sim import SimConfig
from app.settings import ConfigError, load_settings
from crm_resources import PortalResource

ROOT = Path(__file__).resolve().parents[1]
BUCKETS = list(MERGE_BUCKET_DB_SPECS)
SIM_PASSWORD = SimConfig().password
# Everything the app or Dagster reads as a setting: the UI starts as on a fresh clone.
SETTINGS_VARS = (
    "DATABASE_URL", "DATA_DIR", "DAGSTER_HOME", "TMS_WEB", "TMS_BASE", "TMS_USERNAME",
    "TMS_PASSWORD", "TIMEZONE", "SCHEDULE_CRON", "GO_LIVE_DATE", "JSON_LOG_FILE",
    SIMULATED_PORTAL_ENV, "PYTHONPATH",
)  # fmt: skip


# ------------------------------------------------------------------------------------------------
# the UI process


def make_ui_argv(port: int) -> list[str]:
    """The Makefile's `ui` recipe with this venv's interpreter and the given port."""
    text = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^ui:.*\n\t(?P<cmd>.+)$", text, re.MULTILINE)
    assert recipe, "the Makefile has no `ui` target"
    values = {"BIN": str(Path(sys.executable).parent), "UI_HOST": "127.0.0.1", "UI_PORT": str(port)}
    command = re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], recipe["cmd"])
    argv = command.split()
    assert argv[1:4] == ["-m", "app", "ui"] and str(port) in argv, argv
    return argv


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class UiProcess:
    process: subprocess.Popen[bytes]
    root: Path
    data_dir: Path
    log: Path
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return found

    def tail(self) -> str:
        return self.output()[-6000:]


def _wait_for(what: str, check: Callable[[], Any], timeout: float, ui: UiProcess) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if ui.process.poll() is not None:
            pytest.fail(f"the ui exited ({ui.process.returncode}) before {what}:\n{ui.tail()}")
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n{ui.tail()}")


def _stop_ui(ui: UiProcess) -> None:
    """SIGTERM the process group, then SIGKILL whatever of the tree is left, then the embedded
    Postgres (it daemonizes into its own session, so the group signal never reaches it)."""
    try:
        tree = psutil.Process(ui.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    if ui.process.poll() is None:
        os.killpg(ui.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            ui.process.wait(timeout=60)
    _, alive = psutil.wait_procs(tree, timeout=15)
    for proc in alive:
        proc.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(ui.process.pid, signal.SIGKILL)
    ui.process.wait(timeout=10)
    pid_file = ui.data_dir / ".pg" / "postmaster.pid"
    if pid_file.exists():
        try:
            postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
            postmaster.send_signal(signal.SIGINT)  # fast shutdown
            postmaster.wait(timeout=20)
        except (psutil.NoSuchProcess, ValueError, IndexError):
            pass
        except psutil.TimeoutExpired:
            postmaster.kill()


@pytest.fixture
def local_ui() -> Iterator[UiProcess]:
    # Outside pytest's basetemp (0700): the embedded server runs as another user under root.
    root = Path(tempfile.mkdtemp(prefix="crm-ui-test-"))
    root.chmod(0o755)
    data_dir, cwd = root / "data", root / "cwd"
    cwd.mkdir()  # no .env here: a fresh clone's settings
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARS}
    env.update(PYTHONPATH=str(ROOT), DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    port = _free_port()
    log = root / "ui.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            make_ui_argv(port),
            cwd=cwd,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: the teardown stops the whole tree
        )
    ui = UiProcess(process, root, data_dir, log, port)
    try:
        yield ui
    finally:
        _stop_ui(ui)
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# GraphQL, the way the UI's own pages talk to the webserver

LOCATIONS_QUERY = """
{ repositoriesOrError { __typename
    ... on RepositoryConnection { nodes { name location { name } pipelines { name } } } } }
"""
LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}
"""
RUN_QUERY = """
query Run($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { status runConfigYaml tags { key value } } }
}
"""
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


def graphql(ui: UiProcess, query: str, variables: dict[str, Any] | None = None) -> Any:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{ui.base}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # loopback
        payload = json.loads(response.read())
    assert "errors" not in payload, payload
    return payload["data"]


def _server_info(ui: UiProcess) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{ui.base}/server_info", timeout=3) as response:
            return dict(json.loads(response.read()))
    except OSError:
        return None


def _job_location(ui: UiProcess, job: str) -> tuple[str, str] | None:
    """(location, repository) holding `job`, once the code location has loaded."""
    data = graphql(ui, LOCATIONS_QUERY)["repositoriesOrError"]
    for node in data.get("nodes") or []:
        if job in {p["name"] for p in node["pipelines"]}:
            return node["location"]["name"], node["name"]
    return None


def launch_partition(ui: UiProcess, job: str, partition: str) -> str:
    location, repository = _wait_for(
        "the code location to load", lambda: _job_location(ui, job), 120, ui
    )
    params = {
        "selector": {
            "repositoryLocationName": location,
            "repositoryName": repository,
            "jobName": job,
        },
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
    }
    result = graphql(ui, LAUNCH_RUN, {"params": params})["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return str(result["run"]["runId"])


# ------------------------------------------------------------------------------------------------
# the embedded database, through what the UI logs


def database_params(ui: UiProcess) -> dict[str, Any]:
    def started() -> dict[str, Any] | None:
        for event in ui.events():
            if event.get("phase") == "ui" and "db" in (event.get("extras") or {}):
                return dict(event["extras"])
        return None

    extras = _wait_for("the ui's start event", started, 120, ui)
    assert extras["simulated"] is True and extras["embedded_db"] is True, extras
    assert extras["url"] == ui.base, extras
    params = dict(extras["db"])
    assert "password" not in params
    return params


def audit_rows(params: dict[str, Any], run_date: dt.date) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(**params)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT bucket, status, reason, cleanup_status, details FROM pipeline_audit"
                " WHERE run_date = %s ORDER BY bucket",
                (run_date,),
            )
            return list(cur.fetchall())
    finally:
        conn.close()


def _csv_files(data_dir: Path, run_date: dt.date) -> list[Path]:
    folder = data_dir / run_date.isoformat()
    return sorted(folder.rglob("*.csv")) if folder.exists() else []


@pytest.mark.timeout(600)  # start, one run, then up to a few sensor ticks; never skipped
def test_local_ui_runs_todays_partition_and_the_daemon_cleans_up(local_ui: UiProcess) -> None:
    ui = local_ui
    params = database_params(ui)
    info = _wait_for("GET /server_info", lambda: _server_info(ui), 180, ui)
    assert "dagster_webserver_version" in info or "dagit_version" in info, info

    today = dt.datetime.now(zoneinfo.ZoneInfo("Asia/Kolkata")).date()
    run_id = launch_partition(ui, "crm_daily", today.isoformat())

    def finished() -> dict[str, Any] | None:
        run = graphql(ui, RUN_QUERY, {"runId": run_id})["runOrError"]
        return run if run.get("status") in FINISHED else None

    run = _wait_for(f"run {run_id} to finish", finished, 300, ui)
    assert run["status"] == "SUCCESS", f"{run}\n{ui.tail()}"
    assert {"key": "dagster/partition", "value": today.isoformat()} in run["tags"]
    assert SIM_PASSWORD not in run["runConfigYaml"]  # the login came through the environment

    audits = audit_rows(params, today)
    assert [(b, s) for b, s, *_ in audits] == [(b, "passed") for b in sorted(BUCKETS)], audits
    # in a run worker too, the raw files were measured by the merge step's measuring process
    assert {a[4]["measured_when"]["raw_files"] for a in audits} == {"during the merge"}, audits

    def cleaned() -> bool:
        rows = audit_rows(params, today)
        return all(r[3] == "deleted" for r in rows) and not _csv_files(ui.data_dir, today)

    _wait_for("the cleanup sensor to delete the files", cleaned, 150, ui)
    assert SIM_PASSWORD not in ui.output()


# ------------------------------------------------------------------------------------------------
# the guards, without starting anything


@pytest.fixture
def fresh_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.chdir(tmp_path)
    for var in SETTINGS_VARS:
        if var != "PYTHONPATH":
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    return tmp_path


def _capture_child(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run `run_ui` up to the child's start; record the argv and environment it would get."""
    seen: dict[str, Any] = {}

    def fake_supervise(self: Any, argv: list[str], env: dict[str, str]) -> int:
        seen.update(argv=argv, env=dict(env), ui=self)
        return 0

    def no_simulator(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the simulator must not start here")

    monkeypatch.setattr(app.local._Ui, "supervise", fake_supervise)
    monkeypatch.setattr(app.local, "simulated_portal", no_simulator)
    monkeypatch.setattr(app.local, "embedded_database", lambda s: make_url("postgresql:///crm"))
    return seen


def test_ui_with_a_real_database_never_starts_the_simulator(
    fresh_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://crm:secret@db.example:5432/crm")
    monkeypatch.setenv(SIMULATED_PORTAL_ENV, "1")  # even a stray marker is not passed on
    seen = _capture_child(monkeypatch)
    assert run_ui(load_settings(), host="127.0.0.1", port=3999) == 0
    assert SIMULATED_PORTAL_ENV not in seen["env"]
    assert "TMS_WEB" not in seen["env"]
    assert seen["argv"][-4:] == ["-h", "127.0.0.1", "-p", "3999"]
    assert "secret" not in json.dumps(app.local.database_parameters(seen["ui"].database_url))


def test_ui_with_real_portal_settings_uses_them_on_the_embedded_database(
    fresh_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMS_WEB", "https://tms.example.com")
    seen = _capture_child(monkeypatch)
    assert run_ui(load_settings(), host="127.0.0.1", port=3999) == 0
    assert seen["env"]["TMS_WEB"] == "https://tms.example.com"
    assert SIMULATED_PORTAL_ENV not in seen["env"]
    assert seen["ui"].portal is None


def test_ui_refuses_blank_portal_lines_in_dotenv(
    fresh_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (fresh_env / ".env").write_text("TMS_WEB=\nTMS_PASSWORD=\nINGEST_BATCH_SIZE=500\n")
    seen = _capture_child(monkeypatch)
    with pytest.raises(ConfigError, match="TMS_PASSWORD, TMS_WEB"):
        run_ui(load_settings(), host="127.0.0.1", port=3999)
    assert not seen


def test_portal_resource_refuses_the_simulator_next_to_a_real_database(
    fresh_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SIMULATED_PORTAL_ENV, "1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://crm@db.example/crm")
    portal = PortalResource(web_url="http://x", base_url="http://x", username="u", password="p")
    with pytest.raises(ConfigError, match="never"):
        portal.credentials()
    monkeypatch.delenv("DATABASE_URL")
    assert portal.credentials().username == "u"


def test_demo_hands_the_login_over_through_the_environment(
    fresh_env: Path, monkeypatch: pytest.MonkeyPatch, database_url: URL
) -> None:
    seen: dict[str, Any] = {}

    def fake_run_pipeline(settings: Any, **kwargs: Any) -> int:
        seen.update(kwargs=kwargs, env=dict(os.environ), missing=settings.missing_portal_settings())
        return 0

    monkeypatch.setattr(app.local, "embedded_database", lambda s: database_url)
    monkeypatch.setattr(app.local, "run_pipeline", fake_run_pipeline)
    assert run_demo(load_settings()) == 0
    assert "portal_override" not in seen["kwargs"]
    assert seen["missing"] == []
    assert seen["env"]["TMS_PASSWORD"] == SIM_PASSWORD
    assert seen["env"][SIMULATED_PORTAL_ENV] == "1"
    assert "TMS_PASSWORD" not in os.environ and SIMULATED_PORTAL_ENV not in os.environ
    conn = psycopg2.connect(render(database_url.set(drivername="postgresql")))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FILTER (WHERE etl_flag), count(*) FILTER (WHERE report_flag) "
                "FROM store_master"
            )
            assert cur.fetchone() == (app.local.SIM_STORES, app.local.REPORT_STORES)
    finally:
        conn.close()


def test_make_ui_recipe_is_the_ui_command() -> None:
    argv = make_ui_argv(4321)
    assert argv[0] == str(Path(sys.executable).parent / "python")
    assert argv[1:] == ["-m", "app", "ui", "--host", "127.0.0.1", "--port", "4321"]
