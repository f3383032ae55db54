"""Dates the settings imply: the first daily partition, and "today" in the franchise timezone.

Kept apart from `app.settings` (which only parses the environment) so that the CLI, the
partitions, the raw step and the status report share one answer to "how far back can a run go".
"""

import datetime as dt

from app.config import file_specs_for_bucket
from app.settings import Settings


def today(settings: Settings) -> dt.date:
    """Today in `TIMEZONE`: run dates are the franchise's days, not the server's UTC day."""
    return dt.datetime.now(settings.tz).date()


def first_partition(settings: Settings) -> dt.date:
    """`GO_LIVE_DATE`, else the first day of the previous month in `TIMEZONE`.

    The portal serves month-to-date exports only, so nothing much older can ever have been
    downloaded; the previous month stays in range so that the files kept for its last days
    (a failed audit on the 30th) can still be reprocessed after the month turns.
    """
    if settings.go_live_date is not None:
        return settings.go_live_date
    return (today(settings).replace(day=1) - dt.timedelta(days=1)).replace(day=1)


def portal_serves_date(bucket: str, run_date: dt.date, today: dt.date) -> bool:
    """The portal serves current data only, unless every report's URL takes a `{date}`."""
    if run_date == today:
        return True
    return all("{date}" in spec["url_template"] for spec in file_specs_for_bucket(bucket).values())


def not_servable_reason(bucket: str, run_date: dt.date, today: dt.date, folder: str) -> str:
    """Why a past date with nothing kept cannot be run, and the one way to fill it anyway."""
    return (
        f"the portal only serves current data (today is {today.isoformat()}) and no raw "
        f"{bucket} files for {run_date.isoformat()} are kept under {folder}; nothing to "
        f"reprocess (a report saved from the portal by hand can be dropped there)"
    )
