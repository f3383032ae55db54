"""Every operator mistake ends in one line that names the cause and what to do, never a
traceback (unless `--debug`), with exit 2 for configuration and 1 for a failed run.

Each case runs the real CLI as a subprocess against the suite's real PostgreSQL.
"""

import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from app.cli import explain
from app.db.urls import render
from app.settings import load_settings
from app.settings_dates import first_partition

# Variables a developer's shell may hold that would change what these tests see.
_SCRUBBED = (
    "TMS_",
    "DAGSTER_HOME",
    "DATABASE_URL",
    "JSON_LOG_FILE",
    "SCHEDULE_CRON",
    "GO_LIVE_DATE",
    "DATA_DIR",
)


def cli(
    args: list[str], env: dict[str, str], prefix: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "app", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def assert_one_line(done: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """Exit `code`, no traceback anywhere, exactly one `error:` line holding every needle."""
    output = done.stdout + done.stderr
    assert done.returncode == code, output[-3000:]
    assert "Traceback" not in output
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, done.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def assert_only_error_line(done: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """A failure of ours (not argparse's): stderr is that one line and nothing else."""
    line = assert_one_line(done, code, *needles)
    assert done.stderr.strip().splitlines() == [line]
    return line


@pytest.fixture
def env(database_url: URL, tmp_path: Path) -> dict[str, str]:
    return {"DATABASE_URL": render(database_url), "DATA_DIR": str(tmp_path / "data")}


PORTAL = {
    "TMS_WEB": "http://127.0.0.1:9",
    "TMS_BASE": "http://127.0.0.1:9",
    "TMS_USERNAME": "someone",
    "TMS_PASSWORD": "pw-never-shown",
}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_only_dir(path: Path) -> list[str]:
    """A folder this process cannot write, and the command prefix that makes it so for root
    (root ignores file modes unless it drops CAP_DAC_OVERRIDE)."""
    path.mkdir(parents=True)
    path.chmod(0o555)
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    prefix = [setpriv or "setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    probe = subprocess.run([*prefix, "touch", str(path / "x")], capture_output=True)
    if setpriv is None or probe.returncode == 0:
        pytest.skip("running as root without a way to drop CAP_DAC_OVERRIDE")
    return prefix


# ---- dates ----------------------------------------------------------------------------------


def test_run_before_go_live_date_exits_2_naming_the_first_partition(env) -> None:
    done = cli(["run", "--date", "2026-01-09"], {**env, "GO_LIVE_DATE": "2026-01-10"})
    assert_only_error_line(done, 2, "2026-01-09", "first partition 2026-01-10", "GO_LIVE_DATE")


def test_run_before_this_month_without_go_live_date_exits_2(env) -> None:
    first = first_partition(load_settings(go_live_date=None))
    before = first - dt.timedelta(days=1)
    done = cli(["run", "--date", before.isoformat()], env)
    assert_only_error_line(done, 2, f"first partition {first}", "GO_LIVE_DATE")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--date", "20261201"], "write it as YYYY-MM-DD"),
        (["run", "--date", "2026-02-30"], "not a real date"),
        (["run", "--date", "2026-1-5"], "write it as YYYY-MM-DD"),
        (["status", "--date", "20261201"], "write it as YYYY-MM-DD"),
        (["rejects", "--date", "2026-13-01"], "not a real date"),
    ],
)
def test_bad_dates_are_refused_by_the_parser(env, args: list[str], needle: str) -> None:
    done = cli(args, env)
    line = assert_one_line(done, 2, "--date", needle)
    assert line.startswith(f"python -m app {args[0]}: error:")
    assert "usage: python -m app" in done.stderr


# ---- the data folder and the log file --------------------------------------------------------


def test_read_only_data_dir_is_refused_by_run(env, tmp_path) -> None:
    prefix = read_only_dir(tmp_path / "ro")
    done = cli(["run"], {**env, **PORTAL, "DATA_DIR": str(tmp_path / "ro" / "data")}, prefix)
    assert_only_error_line(done, 2, "DATA_DIR", "not writable", "Permission denied")


@pytest.mark.parametrize("args", [["demo"], ["stores", "list"]])
def test_read_only_data_dir_with_the_embedded_database(tmp_path, args: list[str]) -> None:
    prefix = read_only_dir(tmp_path / "ro")
    done = cli(args, {"DATA_DIR": str(tmp_path / "ro")}, prefix)
    assert_only_error_line(done, 2, f"DATA_DIR {tmp_path / 'ro'}", "not writable")


def test_json_log_file_that_is_a_folder_is_refused(env, tmp_path) -> None:
    done = cli(["stores", "list"], {**env, "JSON_LOG_FILE": str(tmp_path)})
    assert_only_error_line(done, 2, "JSON_LOG_FILE", "point it at a writable file")


def test_json_log_file_in_a_read_only_folder_is_refused(env, tmp_path) -> None:
    prefix = read_only_dir(tmp_path / "ro")
    log = tmp_path / "ro" / "events.jsonl"
    done = cli(["run"], {**env, **PORTAL, "JSON_LOG_FILE": str(log)}, prefix)
    assert_only_error_line(done, 2, f"JSON_LOG_FILE {log}", "Permission denied")


# ---- the database ----------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["run"], ["stores", "list"], ["db", "upgrade"], ["status"]])
def test_database_on_a_closed_port_exits_2_in_one_line(tmp_path, args: list[str]) -> None:
    url = f"postgresql+asyncpg://crm:s3cret-pw@127.0.0.1:{_closed_port()}/crm"
    done = cli(args, {**PORTAL, "DATABASE_URL": url, "DATA_DIR": str(tmp_path / "data")})
    line = assert_only_error_line(done, 2, "cannot connect to the database", "refused")
    assert "DATABASE_URL" in line
    assert "s3cret-pw" not in done.stdout + done.stderr
    assert "upgraded failed" not in done.stdout


def test_database_down_before_a_run_starts(tmp_path) -> None:
    """A Unix-socket server that is not running (the embedded server's kind of URL)."""
    url = f"postgresql://postgres@/crm?host={tmp_path / 'no-server'}"
    done = cli(["run"], {**PORTAL, "DATABASE_URL": url, "DATA_DIR": str(tmp_path / "data")})
    assert_only_error_line(done, 2, "cannot connect to the database", "no-server")
    assert not (tmp_path / "data" / ".dagster").exists()  # refused before anything started


def test_database_that_does_not_exist(database_url: URL, tmp_path) -> None:
    url = render(database_url.set(database="crm_test_no_such_db"))
    done = cli(["stores", "list"], {"DATABASE_URL": url, "DATA_DIR": str(tmp_path)})
    assert_only_error_line(done, 2, "cannot connect", 'database "crm_test_no_such_db"')


@pytest.mark.parametrize("args", [["stores", "list"], ["stores", "add", "A1"], ["status"]])
def test_before_db_upgrade_says_run_db_upgrade(empty_database_url, tmp_path, args) -> None:
    env = {"DATABASE_URL": render(empty_database_url), "DATA_DIR": str(tmp_path)}
    done = cli(args, env)
    assert_only_error_line(done, 2, "no CRM schema", "run `python -m app db upgrade` first")


def test_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path) -> None:
    url = f"postgresql+asyncpg://crm:pw@127.0.0.1:{_closed_port()}/crm"
    env = {"DATABASE_URL": url, "DATA_DIR": str(tmp_path)}
    for args in (["--debug", "stores", "list"], ["stores", "list", "--debug"]):
        done = cli(args, env)
        assert done.returncode == 2
        assert "Traceback" in done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("error: cannot connect")


# ---- files given on the command line ---------------------------------------------------------


def test_stores_import_of_a_non_utf8_file(env, tmp_path) -> None:
    path = tmp_path / "stores.csv"
    path.write_bytes("store_code,store_name\nA1,Andheri\nB2,Café\n".encode("cp1252"))
    done = cli(["stores", "import", str(path)], env)
    assert_only_error_line(done, 2, "not UTF-8", "byte 0xe9", "line 3", "UTF-8")


def test_stores_import_of_a_missing_file(env, tmp_path) -> None:
    done = cli(["stores", "import", str(tmp_path / "nope.csv")], env)
    assert_only_error_line(done, 2, "nope.csv", "no such file")


# ---- settings --------------------------------------------------------------------------------


def test_bad_schedule_cron_is_refused_at_start(env) -> None:
    done = cli(["stores", "list"], {**env, "SCHEDULE_CRON": "bad"})
    assert_only_error_line(done, 2, "SCHEDULE_CRON", "'bad'", "cron")
    for wrong in ("0 9 * *", "61 9 * * *", "0 9 30 2 *"):
        assert cli(["stores", "list"], {**env, "SCHEDULE_CRON": wrong}).returncode == 2


def test_a_custom_schedule_cron_is_accepted(env) -> None:
    done = cli(["stores", "list"], {**env, "SCHEDULE_CRON": "30 8 * * *"})
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("name", "value"), [("TMS_USERNAME", ""), ("TMS_PASSWORD", ""), ("TMS_PASSWORD", "   ")]
)
def test_an_empty_portal_login_counts_as_missing(env, make_portal_sim, name, value) -> None:
    sim = make_portal_sim(store_count=1)
    portal = {
        "TMS_WEB": sim.web_url,
        "TMS_BASE": sim.base_url,
        "TMS_USERNAME": sim.username,
        "TMS_PASSWORD": sim.password,
        name: value,
    }
    assert cli(["stores", "add", sim.store_codes[0], "--etl", "on"], env).returncode == 0
    done = cli(["run"], {**env, **portal})
    assert_only_error_line(done, 2, "portal settings missing", name)
    assert sim.login_count == 0 and sim.failed_login_count == 0  # nobody logged in with ''


# ---- flags -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "prog"),
    [
        (["--bogus"], "python -m app"),
        (["run", "--bogus"], "python -m app run"),
        (["run", "--date", "2026-11-27", "--bogus=1"], "python -m app run"),
        (["db", "--bogus"], "python -m app db"),
        (["stores", "list", "--bogus"], "python -m app stores list"),
    ],
)
def test_an_unknown_flag_is_named_with_the_usage(env, args: list[str], prog: str) -> None:
    done = cli(args, env)
    line = assert_one_line(done, 2, "unrecognized arguments: --bogus", f"`{prog} --help`")
    assert line.startswith(f"{prog}: error:")
    assert done.stderr.startswith(f"usage: {prog} ")
    assert done.stdout == ""


def test_a_missing_command_is_named(env) -> None:
    for args, prog in (([], "python -m app"), (["stores"], "python -m app stores")):
        done = cli(args, env)
        assert_one_line(done, 2, f"{prog}: error: a command is required")


# ---- the classification itself --------------------------------------------------------------


def test_an_unexpected_error_is_exit_1_and_points_at_debug() -> None:
    code, message, unexpected = explain(RuntimeError("boom\nsecond line"), None)
    assert (code, unexpected) == (1, True)
    assert message == "unexpected RuntimeError: boom"
