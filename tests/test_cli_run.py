"""`python -m app run` as an operator runs it: a subprocess, real Postgres, the simulator."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from app.db.urls import render
from app.json_logger import FIELDS


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TMS_", "DAGSTER_HOME"))}
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def cli_env(database_url: URL, tmp_path: Path) -> dict[str, str]:
    return {"DATABASE_URL": render(database_url), "DATA_DIR": str(tmp_path / "data")}


def _seed(env: dict[str, str], codes: list[str]) -> None:
    for code in codes:
        done = _run(["stores", "add", code, "--etl", "on", "--report", "on"], env)
        assert done.returncode == 0, done.stderr


def _portal_env(sim, password: str | None = None) -> dict[str, str]:
    return {
        "TMS_WEB": sim.web_url,
        "TMS_BASE": sim.base_url,
        "TMS_USERNAME": sim.username,
        "TMS_PASSWORD": password or sim.password,
    }


def test_run_without_portal_settings_names_what_is_missing(cli_env) -> None:
    _seed(cli_env, ["A1"])
    done = _run(["run"], cli_env)
    assert done.returncode == 2
    for name in ("TMS_WEB", "TMS_BASE", "TMS_USERNAME", "TMS_PASSWORD"):
        assert name in done.stderr
    assert "Traceback" not in done.stderr


def test_run_without_etl_stores_exits_2(cli_env, make_portal_sim) -> None:
    sim = make_portal_sim(store_count=1)
    done = _run(["run"], {**cli_env, **_portal_env(sim)})
    assert done.returncode == 2
    assert "no store has store_master.etl_flag = TRUE" in done.stderr


def test_run_with_unknown_bucket_exits_2(cli_env) -> None:
    _seed(cli_env, ["A1"])
    done = _run(["run", "--buckets", "missed_leads,laundry_lists"], cli_env)
    assert done.returncode == 2 and "laundry_lists" in done.stderr


def test_wrong_credentials_exit_2_naming_the_login(cli_env, make_portal_sim) -> None:
    sim = make_portal_sim(store_count=2)
    _seed(cli_env, sim.store_codes)
    done = _run(["run"], {**cli_env, **_portal_env(sim, password="not-the-password")})
    assert done.returncode == 2, done.stderr[-2000:]
    assert "login" in done.stderr.lower()
    assert "Traceback" not in done.stderr
    assert "not-the-password" not in done.stdout + done.stderr
    assert sim.login_count == 0  # no session was ever opened
    assert sim.failed_login_count == 1  # and it did not hammer the portal


def test_run_end_to_end_prints_json_only_and_cleans_up(cli_env, make_portal_sim) -> None:
    sim = make_portal_sim(store_count=3, seed=21)
    _seed(cli_env, sim.store_codes)
    done = _run(["run"], {**cli_env, **_portal_env(sim)})
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in done.stdout.splitlines()]  # every line is JSON
    assert events and all(tuple(e) == FIELDS for e in events)
    run_ids = {e["run_id"] for e in events if e["phase"] != "setup"}
    assert len(run_ids) == 1  # one id per execution, the Dagster run id
    phases = {e["phase"] for e in events}
    assert {"download", "merge", "ingest", "audit", "cleanup", "run"} <= phases
    # the audit's measures were taken during the merge (another process) and the load
    assert not [e["message"] for e in events if e["message"].startswith("measuring ")]
    summaries = [e for e in events if e["phase"] == "run" and e["bucket"]]
    assert len(summaries) == 3
    for event in summaries:
        counts = event["counts"]
        assert counts["merged_rows"] == counts["ingested_rows"] == counts["expected_unique"]
        assert "cleanup deleted" in event["message"]
    assert sim.password not in done.stdout
    day_dirs = [p for p in Path(cli_env["DATA_DIR"]).iterdir() if p.name[:2] == "20"]
    assert all(not list(d.glob("*.csv")) for d in day_dirs)


def test_report_command_is_wired_and_writes_the_reports(cli_env) -> None:
    _seed(cli_env, ["A1"])
    done = _run(["report", "--date", "2026-03-07"], cli_env)
    assert done.returncode == 0, done.stderr[-2000:]
    folder = Path(cli_env["DATA_DIR"]) / "reports" / "2026-03-07"
    assert (folder / "A1.html").exists() and (folder / "A1.pdf").exists()
    assert (folder / "index.html").exists()
    assert "not reconciled" in (folder / "A1.html").read_text()  # nothing was audited that day
    done = _run(["stores", "recipients", "add", "A1", "manager@example.com"], cli_env)
    assert done.returncode == 0, done.stderr[-2000:]
    listed = _run(["stores", "recipients", "list"], cli_env)
    assert "manager@example.com" in listed.stdout
