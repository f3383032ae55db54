"""A run killed with kill -9 mid-step is marked failed (and its date is free again).

A real `python -m app run` in its own process, stuck in its download against a slow portal
simulator, killed with SIGKILL; the monitor's tick is the one the daemon runs, against the same
Dagster instance and PostgreSQL. Only the clock is moved past the grace period.
"""

import datetime as dt
import os
import signal
import subprocess
import sys
import time
import zoneinfo
from pathlib import Path
from typing import Any

import dagster as dg
from sqlalchemy.engine import URL

from app.run_lock import holder_of, live_run_ids
from crm_assets.dead_runs import GRACE_S, dead_run_tick
from crm_assets.definitions import defs
from tests.graph_helpers import seed

ROOT = Path(__file__).resolve().parents[1]
TODAY = dt.datetime.now(zoneinfo.ZoneInfo("Asia/Kolkata")).date()


def _wait(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _started(instance: dg.DagsterInstance) -> list[dg.RunRecord]:
    return list(instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])))


def test_a_run_killed_mid_download_is_marked_failed_after_the_grace(
    graph_env: Path, database_url: URL, make_portal_sim: Any
) -> None:
    sim = make_portal_sim(store_count=2, seed=3, today=TODAY, csv_latency_s=120)
    seed(database_url, sim)
    env = {
        **os.environ,
        "TMS_WEB": sim.web_url,
        "TMS_BASE": sim.base_url,
        "TMS_USERNAME": sim.username,
        "TMS_PASSWORD": sim.password,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "run", "--date", TODAY.isoformat()],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        holder = _wait("the run to hold its date", lambda: holder_of(database_url, TODAY))
        with dg.DagsterInstance.get() as instance:
            (record,) = _wait("the run to be STARTED", lambda: _started(instance))
            run_id = record.dagster_run.run_id
            assert holder.run_id == run_id
            late = time.time() + GRACE_S + 1
            alive = lambda: live_run_ids(database_url)  # noqa: E731
            # alive, even past the grace: nothing is marked
            assert isinstance(dead_run_tick(instance, alive, now=late), dg.SkipReason)

            def unreadable() -> set[str]:
                raise ConnectionRefusedError("the database is down")

            down = dead_run_tick(instance, unreadable, now=late)
            assert isinstance(down, dg.SkipReason) and "could not be read" in str(down)

            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            _wait("the server to drop the session", lambda: run_id not in alive())
            assert holder_of(database_url, TODAY) is None  # the date is free at once
            # within the grace a run without a session may still be starting: left alone
            assert isinstance(dead_run_tick(instance, alive, now=time.time()), dg.SkipReason)
            assert dead_run_tick(instance, alive, now=late) is None
            run = instance.get_run_by_id(run_id)
            assert run is not None and run.status == dg.DagsterRunStatus.FAILURE
            (failure,) = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
            assert "process is gone" in (failure.message or "")
            assert TODAY.isoformat() in (failure.message or "")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_the_monitor_is_on_by_default() -> None:
    sensor = defs.resolve_sensor_def("crm_dead_run_monitor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
