"""One daily partition per run date, in the franchise's timezone; the newest is today."""

import datetime as dt
import os

import dagster as dg

TIMEZONE = os.environ.get("TIMEZONE", "Asia/Kolkata")
START_DATE = os.environ.get("CRM_PARTITIONS_START", "2025-01-01")

# end_offset=1 makes today's (still running) day a partition, so the 09:00 schedule and a
# manual run both target today's data, which is all the portal serves.
daily_partitions = dg.DailyPartitionsDefinition(
    start_date=START_DATE, timezone=TIMEZONE, end_offset=1
)


def partition_date(partition_key: str) -> dt.date:
    return dt.date.fromisoformat(partition_key)
