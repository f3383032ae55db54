"""Two `python -m app run` of one date at once (issue 9, point 2): one run per date, end to end.

Before the run-date lock, two runs of a date shared `DATA_DIR/<date>/`: one run's audit passed
with another run's files and its cleanup deleted a file the other was about to load. Now the
second run waits for the first (or fails after `RUN_LOCK_WAIT_S`, naming it), each run works in
its own folder, and the tables end as one uninterrupted run leaves them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from app.db.urls import render
from tests.graph_helpers import expected_keys_at, query

BUCKETS = ("missed_leads", "undelivered_all", "repeat_customers")
TABLES = {"missed_leads": "missed_leads", "undelivered_all": "undelivered_orders"}


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TMS_", "DAGSTER_HOME"))}
    return subprocess.Popen(
        [sys.executable, "-m", "app", *args],
        env={**base, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _env(database_url: URL, tmp_path: Path, sim) -> dict[str, str]:
    values = {
        "DATABASE_URL": render(database_url),
        "DATA_DIR": str(tmp_path / "data"),
        "TMS_WEB": sim.web_url,
        "TMS_BASE": sim.base_url,
        "TMS_USERNAME": sim.username,
        "TMS_PASSWORD": sim.password,
        "RUN_LOCK_WAIT_S": "240",
    }
    for code in sim.store_codes:
        done = subprocess.run(
            [sys.executable, "-m", "app", "stores", "add", code, "--etl", "on"],
            env={**os.environ, **values},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    return values


@pytest.fixture
def env(database_url: URL, tmp_path: Path, make_portal_sim) -> tuple[dict[str, str], object]:
    sim = make_portal_sim(store_count=4, seed=51, dashboard_latency_s=0.4)
    return _env(database_url, tmp_path, sim), sim


def _keys(database_url: URL, bucket: str) -> set[tuple]:
    table = TABLES.get(bucket, "repeat_customers")
    key = {"missed_leads": "pickup_no", "undelivered_all": "order_id"}.get(bucket, "mobile_no")
    rows = query(database_url, f"SELECT store_code, {key} AS k FROM {table}")
    return {(r["store_code"], r["k"]) for r in rows}


def _both(first: list[str], second: list[str], env: dict[str, str]) -> list[tuple[int, str]]:
    """Both at once; output goes to files so that neither blocks on a full pipe."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TMS_", "DAGSTER_HOME"))}
    out = Path(env["DATA_DIR"]).parent
    procs = []
    for index, args in enumerate((first, second)):
        stdout = (out / f"run{index}.out").open("w")
        stderr = (out / f"run{index}.err").open("w")
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, "-m", "app", *args],
                    env={**base, **env},
                    stdout=stdout,
                    stderr=stderr,
                    text=True,
                ),
                stderr,
                stdout,
            )
        )
    results = []
    for index, (proc, stderr, stdout) in enumerate(procs):
        code = proc.wait(timeout=600)
        stderr.close()
        stdout.close()
        results.append((code, (out / f"run{index}.err").read_text()))
    return results


@pytest.mark.parametrize("split", [True, False], ids=["different-stores", "same-stores"])
def test_two_runs_of_one_date_end_like_one_uninterrupted_run(
    env, database_url: URL, split: bool
) -> None:
    values, sim = env
    codes = sim.store_codes
    one = ["run", "--stores", ",".join(codes[:2] if split else codes)]
    two = ["run", "--stores", ",".join(codes[2:] if split else codes)]
    for code, err in _both(one, two, values):
        assert code == 0, err[-3000:]
        assert "Traceback" not in err
    audits = query(database_url, "SELECT bucket, status, cleanup_status FROM pipeline_audit")
    assert len(audits) == 2 * len(BUCKETS)
    assert all(a["status"] == "passed" and a["cleanup_status"] == "deleted" for a in audits)
    for bucket in BUCKETS:
        assert _keys(database_url, bucket) == expected_keys_at(sim, bucket, codes, sim.today)
    assert not list(Path(values["DATA_DIR"]).rglob("*.csv"))


def test_a_second_run_waits_a_bounded_time_then_names_the_holder(
    database_url: URL, tmp_path: Path, make_portal_sim
) -> None:
    sim = make_portal_sim(store_count=3, seed=52, dashboard_latency_s=3.0)
    slow = {
        **_env(database_url, tmp_path, sim),
        "RUN_LOCK_WAIT_S": "1",
        "DOWNLOAD_CONCURRENCY": "1",  # 3 stores x 3 s of dashboard: the first run holds ~9 s
    }
    first = _start(["run"], slow)
    # the first run logs its run id before it downloads
    assert first.stdout is not None
    run_id = None
    for line in first.stdout:
        event = json.loads(line)
        if event["phase"] == "run" and event["run_id"]:
            run_id = event["run_id"]
            break
    second = _start(["run"], slow)
    _, err = second.communicate(timeout=300)
    code = second.returncode
    first.communicate(timeout=300)
    assert first.returncode == 0
    assert code == 1
    assert f"is held by run {run_id} (cli" in err and "waited 1 s" in err
    assert "Traceback" not in err
