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
FAULT_BEHAVIOURS = frozenset(
    {"429", "500", "502", "503", "reset", "truncate", "html", "slow", "plaintext"}
)
# Damaged bodies: HTTP 200 with a body that is not the clean report (applied in this order).
BODY_BEHAVIOURS: tuple[str, ...] = (
    "otherstore",
    "paddedstore",
    "nul",
    "cp1252",
    "ragged",
    "quote",
    "footer",
    "whitespace",
    "junk",
    "utf16",
)
PLAINTEXT_BODY = "Service temporarily unavailable, please try again later."
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
    "plaintext": 1,
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
      connection drops), `html` (the "You need to be logged in" page instead of a CSV), `slow`,
      `plaintext` (HTTP 200, `text/plain`, body `PLAINTEXT_BODY`), or a body token below.
      `times` is how often the fault fires per target before the store behaves (`*` = always;
      default once for 429/5xx/reset/truncate/plaintext, always for html/slow and every body
      token). `target` is a report key (`missed_leads`, ...) or `dashboard` (not for body
      tokens); without it the token applies to every CSV.
      Example: `{"A001": "sentinel", "A002": "500:*@missed_leads", "A003": "429:2,reset"}`.
    - Body tokens (HTTP 200, `text/csv`, a damaged body; counted per (store, report) when given
      `:N`, then the clean body). Record faults hit the record at index `len(rows) // 2` of
      `served_rows` (0-based), in its free-text cell (missed_leads `special_instruction`,
      undelivered `status`, repeat customers `Status`; `data.FREE_TEXT` holds the text used).
      On a store without records (sentinel, empty) only the encodings and whole-body tokens act.
      - `otherstore`: the clean report of `PortalSimulator.other_store(code)` (the next store,
        cyclically; `Z999` when the simulator has one store). `otherstore:1` serves it once.
      - `paddedstore`: every record's store code written ` <code lower case> `.
      - `ragged`: the free-text cell holds an unquoted `Gate 2, ring twice` (`Ready, packed`,
        `Yes, twice`): that record has one field more than the header.
      - `quote`: the cell is `"` + that text, never closed. A CSV reader swallows the rest of
        the line and following lines up to the next `"` in the file: in missed_leads and
        undelivered (whose store name is always quoted) the next record's quoted store name,
        so two records become one; in repeat customers (no quotes at all) the end of file.
      - `nul`: the cell is that text with its comma replaced by a NUL byte.
      - `cp1252`: the whole body is cp1252, and the cell is `data.ACCENTED_TEXT` ("Deliver to
        José at Café Mondegar"): strict UTF-8 decoding fails at the first byte 0xE9,
        `served_bytes(...).index(b"\\xe9")`, inside that record.
      - `footer`: a last line `Total,<records>` (repeat customers) or `Total,<records>,,...`
        padded to the header's width (others), with the export's newline.
      - `whitespace`: the body `data.WHITESPACE_BODY`, spaces and newlines only.
      - `junk`: `junk_bytes` seeded random printable bytes (space..tilde), no newline.
      - `utf16`: the (otherwise normal) body as UTF-16-LE with a BOM (`FF FE`).
      Tokens combine (applied in `BODY_BEHAVIOURS` order; on the same record the later wins).
    - Test helpers for body tokens (all default to the always (`*`) tokens, i.e. what every request
      gets; `all_faults=True` includes the counted ones, i.e. what the first requests get):
      `served_bytes` is the exact body (HTTP faults such as `plaintext`, `html` or `truncate`
      replace the response and are not reflected in it); `served_rows` / `served_header` are always
      the clean records of the store asked for (no token changes them: not the other store's, not
      padded, not damaged); `fault_lines` lists the physical lines (1 = header) of the body where a
      record that a CSV reader gets wrong begins (the damaged record, each record a runaway quote
      swallowed, the footer); `damaged_records` lists the indices into `served_rows` of records the
      body does not carry intact (the footer is none of them). Whole-file tokens (`otherstore`,
      `paddedstore`, `whitespace`, `junk`, `utf16`) have no fault lines; `body_faults(report, code)`
      says which tokens apply.
    - `rate_429`, `rate_5xx`, `rate_reset`, `rate_truncate`, `rate_html`: probability that any
      CSV request gets that fault (seeded, so a run is reproducible in aggregate).
    - `retry_after_s`: the `Retry-After` value sent with a 429.
    - `session_expires_after`: a reports-site session dies after this many requests.
    - `single_session`: a new login ends every older reports-site session of the account.
    - `hide_reports_card`: the home page lacks the "Daily Operations Tracker" card.
    - `junk_bytes`: the size of a `junk` body.
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
    junk_bytes: int = 64 * 1024


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
        if name not in DATA_BEHAVIOURS | FAULT_BEHAVIOURS | set(BODY_BEHAVIOURS):
            raise ValueError(f"unknown simulator behaviour {name!r} in {spec!r}")
        if name in BODY_BEHAVIOURS and target.strip() == "dashboard":
            raise ValueError(f"{name!r} changes a CSV body; it cannot target the dashboard")
        times: int | None
        if not times_text:
            times = DEFAULT_TIMES.get(name)
        elif times_text.strip() == "*":
            times = None
        else:
            times = int(times_text)
        result.append(Behaviour(name=name, times=times, target=target.strip() or None))
    return result
