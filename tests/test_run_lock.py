"""One run per date: the advisory lock, its waiting, its holder's name, and kill -9."""

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from sqlalchemy.engine import URL

from app.db.urls import render
from app.run_lock import RunDateBusy, hold_run_date, holder_of, is_held

D = dt.date(2026, 11, 27)


def test_a_second_run_of_the_date_waits_then_fails_naming_the_holder(database_url: URL) -> None:
    with hold_run_date(database_url, D, "run-one", source="cli"):
        assert is_held(database_url, D)
        holder = holder_of(database_url, D)
        assert holder is not None and (holder.run_id, holder.source) == ("run-one", "cli")
        started = time.monotonic()
        with (
            pytest.raises(RunDateBusy) as info,
            hold_run_date(database_url, D, "run-two", source="schedule", wait_s=1.0),
        ):
            pass  # pragma: no cover - never entered
        assert 0.9 <= time.monotonic() - started < 10
        assert "2026-11-27 is held by run run-one (cli" in str(info.value)
        # another date is free
        with hold_run_date(database_url, D + dt.timedelta(days=1), "run-two", source="ui"):
            pass
    assert not is_held(database_url, D)
    with hold_run_date(database_url, D, "run-two", source="schedule", wait_s=0):
        pass


def test_the_lock_is_reentrant_for_the_same_run_only(database_url: URL) -> None:
    with hold_run_date(database_url, D, "r", source="cli"):
        with hold_run_date(database_url, D, "r", source="dagster", wait_s=0):
            assert is_held(database_url, D)
        assert is_held(database_url, D)  # the inner exit does not release the outer hold
    assert not is_held(database_url, D)


def test_a_waiting_run_gets_the_date_when_the_holder_finishes(database_url: URL) -> None:
    script = textwrap.dedent(
        f"""
        import datetime as dt, sys, time
        from app.run_lock import hold_run_date
        with hold_run_date({render(database_url)!r}, dt.date(2026, 11, 27), "short", source="cli"):
            print("held", flush=True)
            time.sleep(1.5)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        started = time.monotonic()
        with hold_run_date(database_url, D, "patient", source="cli", wait_s=30):
            waited = time.monotonic() - started
        assert 0.5 < waited < 30
    finally:
        proc.wait(timeout=30)


def test_kill_9_of_the_holder_releases_the_date(database_url: URL) -> None:
    script = textwrap.dedent(
        f"""
        import datetime as dt, time
        from app.run_lock import hold_run_date
        with hold_run_date({render(database_url)!r}, dt.date(2026, 11, 27), "doomed", source="cli"):
            print("held", flush=True)
            time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        holder = holder_of(database_url, D)
        assert holder is not None and holder.run_id == "doomed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        with hold_run_date(database_url, D, "next", source="cli", wait_s=20):
            holder = holder_of(database_url, D)
            assert holder is not None and holder.run_id == "next"
    finally:
        if proc.poll() is None:
            proc.kill()
