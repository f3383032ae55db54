"""Partitions and the schedule come from the one settings path (environment, then `.env`).

The `.env` tests run a fresh interpreter in a folder holding only a `.env`, importing the code
location as Dagster would: the partitions and the schedule are built at import, so only a new
process shows what a deployment with that `.env` gets.
"""

import datetime as dt
import json
import os
import subprocess
import sys
import zoneinfo
from pathlib import Path

import dagster as dg
import pytest

from app.local import SIMULATED_PORTAL_ENV
from app.settings import load_settings
from crm_assets.definitions import defs
from crm_assets.partitions import build_daily_partitions

ROOT = Path(__file__).resolve().parents[1]
READ_VARS = ("TIMEZONE", "SCHEDULE_CRON", "GO_LIVE_DATE", SIMULATED_PORTAL_ENV, "PYTHONPATH")
# Prints what the code location got: partitions of an asset, the schedule, and the run date
# the schedule picks for 2026-11-27 03:00 UTC (the 26th in New York, the 27th in Kolkata).
PROBE = """
import datetime as dt, json
import dagster as dg
from crm_assets.definitions import defs
from crm_assets.keys import RAW, key
parts = defs.resolve_asset_graph().get(key("missed_leads", RAW)).partitions_def
schedule = defs.resolve_schedule_def("crm_daily_schedule")
tick = dt.datetime(2026, 11, 27, 3, 0, tzinfo=dt.UTC)
with dg.build_schedule_context(
    scheduled_execution_time=tick, repository_def=defs.get_repository_def()
) as context:
    (request,) = schedule.evaluate_tick(context).run_requests
print(json.dumps({
    "timezone": parts.timezone,
    "first": parts.get_first_partition_key(),
    "cron": schedule.cron_schedule,
    "schedule_tz": schedule.execution_timezone,
    "run_date": request.partition_key,
}))
"""


def _probe(cwd: Path, **env_vars: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in READ_VARS}
    env.update(PYTHONPATH=str(ROOT), **env_vars)
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_dotenv_moves_the_partitions_and_the_schedule(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "TIMEZONE=America/New_York\nSCHEDULE_CRON=30 7 * * *\nGO_LIVE_DATE=2026-02-01\n"
    )
    got = _probe(tmp_path)
    assert got == {
        "timezone": "America/New_York",
        "first": "2026-02-01",
        "cron": "30 7 * * *",
        "schedule_tz": "America/New_York",
        "run_date": "2026-11-26",
    }


def test_the_environment_wins_over_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TIMEZONE=America/New_York\nGO_LIVE_DATE=2026-02-01\n")
    got = _probe(tmp_path, TIMEZONE="Asia/Kolkata")
    assert (got["timezone"], got["schedule_tz"], got["run_date"]) == (
        "Asia/Kolkata",
        "Asia/Kolkata",
        "2026-11-27",
    )
    assert got["cron"] == "0 9 * * *"


def test_first_partition_is_go_live_and_the_newest_is_today(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TIMEZONE", raising=False)
    parts = build_daily_partitions(load_settings(go_live_date=dt.date(2026, 1, 15)))
    assert parts.timezone == "Asia/Kolkata"
    assert parts.get_first_partition_key() == "2026-01-15"
    # 2026-11-27 00:30 in Kolkata is still the 26th in UTC: the newest partition is Kolkata's day
    now = dt.datetime(2026, 11, 26, 19, 0, tzinfo=dt.UTC)
    assert parts.get_partition_keys(current_time=now)[-1] == "2026-11-27"


def test_without_go_live_the_first_partition_is_last_month(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("TIMEZONE", "GO_LIVE_DATE"):
        monkeypatch.delenv(var, raising=False)
    parts = build_daily_partitions(load_settings())
    today = dt.datetime.now(zoneinfo.ZoneInfo("Asia/Kolkata")).date()
    last_month = (today.replace(day=1) - dt.timedelta(days=1)).replace(day=1)
    assert parts.get_first_partition_key() == last_month.isoformat()
    assert parts.get_last_partition_key() == today.isoformat()


def _tick(schedule: dg.ScheduleDefinition, day: dt.date) -> dg.SkipReason | list[dg.RunRequest]:
    tick = dt.datetime.combine(day, dt.time(9, 0), tzinfo=zoneinfo.ZoneInfo("Asia/Kolkata"))
    with dg.build_schedule_context(
        scheduled_execution_time=tick, repository_def=defs.get_repository_def()
    ) as context:
        data = schedule.evaluate_tick(context)
    if data.skip_message:
        return dg.SkipReason(data.skip_message)
    return list(data.run_requests or [])


def test_schedule_skips_while_the_portal_is_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    schedule = defs.resolve_schedule_def("crm_daily_schedule")
    today = dt.datetime.now(zoneinfo.ZoneInfo("Asia/Kolkata")).date()  # always a partition
    monkeypatch.setenv(SIMULATED_PORTAL_ENV, "1")
    skipped = _tick(schedule, today)
    assert isinstance(skipped, dg.SkipReason)
    assert SIMULATED_PORTAL_ENV in (skipped.skip_message or "")

    monkeypatch.delenv(SIMULATED_PORTAL_ENV)
    requests = _tick(schedule, today)
    assert isinstance(requests, list)
    assert [r.partition_key for r in requests] == [today.isoformat()]
