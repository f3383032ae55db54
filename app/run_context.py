"""What one run is: its id, its date, the "today" it started on, and the folder its files live in.

Fixed once, when the run starts, and passed down: a run that starts at 23:59 IST must not
decide at 00:01 that "today" is the next day (it would save the next day's data, on the 1st the
month reset, under the previous date).

A run's files live in `DATA_DIR/<date>/<run id>/`, under the names of `FILE_SPECS` and
`MERGED_NAMES`. Two runs of one date never share a mutable file: each downloads into, merges into
and cleans up only its own folder. A rerun that reuses files kept by an earlier run (or dropped
by an operator into `DATA_DIR/<date>/`) moves them into its own folder first and records where
each came from, so the earlier run's cleanup can never delete a file this run uses.
"""

import datetime as dt
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunContext:
    run_id: str  # the pipeline run id: a Dagster re-execution continues its root run
    run_date: dt.date
    today: dt.date  # "today" in the franchise timezone when the run started
    data_dir: Path
    source: str = "dagster"  # cli | schedule | ui | backfill | dagster

    @property
    def date_dir(self) -> Path:
        return self.data_dir / self.run_date.isoformat()

    @property
    def run_dir(self) -> Path:
        return self.date_dir / self.run_id

    @property
    def is_today(self) -> bool:
        return self.run_date == self.today
