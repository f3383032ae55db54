"""Dates the settings imply: the first daily partition, and "today" in the franchise timezone.

Kept apart from `app.settings` (which only parses the environment) so that the CLI, the
partitions and the status report share one answer to "how far back can a run go".
"""

import datetime as dt

from app.settings import Settings


def today(settings: Settings) -> dt.date:
    """Today in `TIMEZONE`: run dates are the franchise's days, not the server's UTC day."""
    return dt.datetime.now(settings.tz).date()


def first_partition(settings: Settings) -> dt.date:
    """`GO_LIVE_DATE`, else the first day of the current month in `TIMEZONE`.

    The portal serves month-to-date exports only, so without a go-live date nothing older than
    this month can ever have been downloaded.
    """
    if settings.go_live_date is not None:
        return settings.go_live_date
    return today(settings).replace(day=1)
