"""One daily partition per run date, in the franchise's timezone, from go-live to today.

Read through `app.settings.load_settings()` (environment, then `.env`), the same path the CLI
and every resource use, so a `TIMEZONE` or `GO_LIVE_DATE` in `.env` moves the partitions too.
The definitions are built when the code location loads (Dagster needs them then); a bad value
stops the load with one line naming the variable.

- First partition: `first_partition(settings)`, i.e. `GO_LIVE_DATE`, else the first day of the
  current month (the portal serves month-to-date snapshots only, so older dates cannot be
  downloaded; set `GO_LIVE_DATE` to keep the history of earlier months backfillable from kept
  files).
- Newest partition: today. `end_offset=1` makes today's (still running) day a partition, so
  the morning schedule and a manual run both target today's data, all the portal serves.
"""

import datetime as dt

import dagster as dg

from app.settings import Settings, load_settings
from app.settings_dates import first_partition


def build_daily_partitions(settings: Settings) -> dg.DailyPartitionsDefinition:
    """The run-date partitions for these settings (a function so tests can vary them)."""
    return dg.DailyPartitionsDefinition(
        start_date=first_partition(settings).isoformat(),
        timezone=settings.timezone,
        end_offset=1,
    )


SETTINGS = load_settings()
TIMEZONE = SETTINGS.timezone
daily_partitions = build_daily_partitions(SETTINGS)


def partition_date(partition_key: str) -> dt.date:
    return dt.date.fromisoformat(partition_key)
