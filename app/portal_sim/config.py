"""What the simulated portal serves and how it misbehaves.

The simulator exists so every path of the downloader can be exercised over real HTTP without
portal credentials; each knob below reproduces something PORTAL.md says was seen in production.
"""

import datetime as dt
import zoneinfo
from dataclasses import dataclass, field

IST = zoneinfo.ZoneInfo("Asia/Kolkata")

# Behaviours a store (or one of its reports) can be told to show. The "data" ones change what is
# served; the others are faults that the downloader must survive or report.
DATA_BEHAVIOURS = frozenset({"sentinel", "empty"})
FAULT_BEHAVIOURS = frozenset({"429", "500", "502", "503", "reset", "truncate", "html", "slow"})
# How many times a fault fires per (store, target) when the token gives no count. Faults that a
# retry should cure fire once; the ones meant to exhaust the client's patience fire forever.
DEFAULT_TIMES: dict[str, int | None] = {
    "429": 1,
    "500": 1,
    "502": 1,
    "503": 1,
    "reset": 1,
    "truncate": 1,
    "html": None,
    "slow": None,
}


def ist_today() -> dt.date:
    return dt.datetime.now(IST).date()


@dataclass
class SimConfig:
    """Configuration of a `PortalSimulator`.

    Stores and login:
    - `store_count` stores with generated codes, unless `store_codes` lists them explicitly.
    - `username` / `password`: the one account that opens every store.
    - `today`: the portal's current date (default: today in Asia/Kolkata); CSVs are month-to-date
      snapshots as of this date. `PortalSimulator.set_today` moves it.
    - `split_origins`: serve the main site on `http://127.0.0.1:<p>` and the reports site on
      `http://localhost:<q>` (two cookie domains, like production). `False`: one origin.

    Data volume and quality:
    - `rows_per_day` (lo, hi): records created per store, report and day (month-to-date, so day D
      serves the records of days 1..D). `repeat_rows` (lo, hi): repeat customers per store and
      month (that report is flat within a month).
    - `duplicate_rate`: chance per store and day that a record repeats an earlier key.
    - `bad_rows_per_store`: rows appended to each downloaded report with an uncoercible value
      (order / pickup date `31/31/2026`, a blank repeat-customer mobile) so ingest tests can
      produce rejects. 0 keeps every value coercible and every dedupe key non-empty.

    Misbehaviour:
    - `dashboard_latency_s`, `csv_latency_s`: per-response delays (asyncio.sleep, so concurrent
      requests overlap); `slow_latency_s`: the extra delay of a "slow" store.
    - `store_behaviour`: store code → comma list of tokens `name[:times][@target]`, where name is
      one of `sentinel`, `empty` (what the store's CSVs contain), `429`, `500`, `502`, `503`,
      `reset` (connection dropped before a response), `truncate` (half the body, then the
      connection drops), `html` (the "You need to be logged in" page instead of a CSV), `slow`.
      `times` is how often the fault fires per target before the store behaves (`*` = always;
      default once for 429/5xx/reset/truncate, always for html/slow). `target` is a report key
      (`missed_leads`, ...) or `dashboard`; without it the token applies to every CSV.
      Example: `{"A001": "sentinel", "A002": "500:*@missed_leads", "A003": "429:2,reset"}`.
    - `rate_429`, `rate_5xx`, `rate_reset`, `rate_truncate`, `rate_html`: probability that any
      CSV request gets that fault (seeded, so a run is reproducible in aggregate).
    - `retry_after_s`: the `Retry-After` value sent with a 429.
    - `session_expires_after`: a reports-site session dies after this many requests.
    - `single_session`: a new login ends every older reports-site session of the account.
    - `hide_reports_card`: the home page lacks the "Daily Operations Tracker" card.
    """

    store_count: int = 5
    store_codes: list[str] | None = None
    seed: int = 1
    username: str = "demo"
    password: str = "demo-password"  # noqa: S105 - the simulator's public demo account
    today: dt.date | None = None
    split_origins: bool = True

    rows_per_day: tuple[int, int] = (1, 2)
    repeat_rows: tuple[int, int] = (5, 40)
    duplicate_rate: float = 0.15
    bad_rows_per_store: int = 0

    dashboard_latency_s: float = 0.0
    csv_latency_s: float = 0.0
    slow_latency_s: float = 2.0
    store_behaviour: dict[str, str] = field(default_factory=dict)
    rate_429: float = 0.0
    rate_5xx: float = 0.0
    rate_reset: float = 0.0
    rate_truncate: float = 0.0
    rate_html: float = 0.0
    retry_after_s: int = 1
    session_expires_after: int | None = None
    single_session: bool = False
    hide_reports_card: bool = False


@dataclass(frozen=True)
class Behaviour:
    """One parsed `store_behaviour` token."""

    name: str
    times: int | None  # None = always
    target: str | None  # None = every CSV report


def parse_behaviours(spec: str) -> list[Behaviour]:
    """Parse `name[:times][@target]` tokens; a typo raises instead of silently doing nothing."""
    result: list[Behaviour] = []
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            continue
        head, _, target = token.partition("@")
        name, _, times_text = head.partition(":")
        name = name.strip().lower()
        if name not in DATA_BEHAVIOURS | FAULT_BEHAVIOURS:
            raise ValueError(f"unknown simulator behaviour {name!r} in {spec!r}")
        times: int | None
        if not times_text:
            times = DEFAULT_TIMES.get(name)
        elif times_text.strip() == "*":
            times = None
        else:
            times = int(times_text)
        result.append(Behaviour(name=name, times=times, target=target.strip() or None))
    return result
