"""Deterministic portal data: the same (seed, store, date) always yields the same bytes.

Determinism is what lets a test compare the database with what the portal sent without the
simulator having to remember anything, and lets two runs of the demo agree. Every random choice
draws from a `random.Random` seeded with a string of its coordinates (str seeds hash with SHA-512,
so they do not depend on PYTHONHASHSEED or on the process).

Month-to-date: a record is created on some day of the month; the export of day D holds every
record created on days 1..D, with the state it has on day D (an order gets delivered, a lead
converts). Repeat customers are flat within a month.
"""

import csv
import datetime as dt
import io
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from app.csv_io import SENTINEL
from app.portal_sim.config import SimConfig

MISSED_LEADS_HEADER = [
    "id",
    "mobile_number",
    "pickup_no",
    "pickup_created_date",
    "pickup_created_time",
    "store_code",
    "store_name",
    "pickup_date",
    "pickup_time",
    "customer_name",
    "special_instruction",
    "source",
    "final_source",
    "customer_type",
    "is_order_placed",
]
UNDELIVERED_HEADER = [
    "order_no",
    "order_date",
    "store_code",
    "store_name",
    "taxable_amount",
    "net_amount",
    "service_code",
    "mobile_no",
    "status",
    "customer_id",
    "expected_deliver_on",
    "actual_deliver_on",
]
REPEAT_HEADER = ["Store Code", "Mobile No.", "Status"]
NONPACKAGE_HEADER = ["order_no", "order_date", "store_code", "amount", "status"]

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_AREAS = (
    "Andheri (W)",
    "Koramangala",
    "Salt Lake",
    "Banjara Hills",
    "Anna Nagar",
    "Kothrud",
    "Vashi",
    "Indiranagar",
    "Dwarka Sec-7",
    "Gomti Nagar",
)
_BRANDS = ("FreshFold", "QuickWash", 'Kumar "Express" Laundry', "CleanCo", "DhobiGhat")
_FIRST = ("Ramesh", "Priya", "Anita", "Suresh", "Kavya", "Arjun", "Meera", "Farhan", "Joseph")
_LAST = ("Kumar", "Sharma", "D'Souza", "Iyer", "Reddy", "Khan", "Nair", "Gupta")
_INSTRUCTIONS = (
    "",
    "",
    "Call before pickup",
    "Gate 2, ring twice, then call",
    'Customer says "handle silk with care"',
    "Leave with security\nPay on delivery",
    "Two bags: whites, colours",
    'Use "eco" wash, no bleach,\nfold shirts',
)
_SOURCES = ("Walk-in", "App", "Call Center", "WhatsApp", "Website")
_SERVICES = ("DC", "WF", "WI", "SP", "SI")
_DATE_STYLES = ("iso", "iso_dt", "dmy_dash", "dmy_slash", "d_mon_y", "d_mon_y_time")


def _rng(*parts: object) -> random.Random:
    return random.Random("|".join(str(p) for p in parts))


def format_date(value: dt.datetime, style: str) -> str:
    """The date forms PORTAL.md lists; month names are spelled out so no locale can change them."""
    if style == "iso":
        return value.strftime("%Y-%m-%d")
    if style == "iso_dt":
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if style == "dmy_dash":
        return value.strftime("%d-%m-%Y")
    if style == "dmy_slash":
        return value.strftime("%d/%m/%Y")
    mon = _MONTHS[value.month - 1]
    if style == "d_mon_y":
        return f"{value.day:02d} {mon} {value.year}"
    hour = value.hour % 12 or 12
    ampm = "PM" if value.hour >= 12 else "AM"
    return f"{value.day:02d} {mon} {value.year} {hour}:{value.minute:02d}:{value.second:02d} {ampm}"


def format_amount(value: float, commas: bool) -> str:
    return f"{value:,.2f}" if commas else f"{value:.2f}"


def format_mobile(rng: random.Random, *, allow_blank: bool) -> str:
    digits = str(rng.choice("6789")) + "".join(str(rng.randrange(10)) for _ in range(9))
    roll = rng.random()
    if allow_blank and roll < 0.07:
        return ""
    if roll > 0.9:
        return f"+91 {digits[:5]}-{digits[5:]}"
    return digits


def _header_variant(name: str, style: int) -> str:
    """Headers vary in case and separator between exports (PORTAL.md)."""
    if style == 1:
        return "_".join(part.capitalize() for part in name.split("_"))  # Pickup_No
    if style == 2:
        return name.replace("_", " ").upper()  # PICKUP NO
    if style == 3:
        return name.replace("_", "-")  # mobile-number
    return name


def default_store_codes(count: int, seed: int) -> list[str]:
    """Codes shaped like the real ones (`A668`): a letter and three digits, unique, stable."""
    rng = _rng("stores", seed)
    codes: list[str] = []
    seen: set[str] = set()
    while len(codes) < count:
        code = f"{rng.choice('ABCDEFGHJKLMNPRSTUVW')}{rng.randrange(100, 1000)}"
        if count > 18000:  # more than the letter-digit space comfortably holds
            code = f"S{len(codes):05d}"
        if code not in seen:
            seen.add(code)
            codes.append(code)
    return codes


@dataclass(frozen=True)
class StoreProfile:
    """Per-store export quirks; fixed for a store so its files look alike from day to day."""

    code: str
    name: str
    header_style: int
    newline: str
    date_styles: dict[str, str]
    amount_commas: bool


@lru_cache(maxsize=4096)
def store_profile(seed: int, code: str) -> StoreProfile:
    rng = _rng("profile", seed, code)
    name = f"{rng.choice(_BRANDS)}, {rng.choice(_AREAS)}"
    columns = (
        "pickup_created_date",
        "pickup_date",
        "order_date",
        "expected_deliver_on",
        "actual_deliver_on",
    )
    return StoreProfile(
        code=code,
        name=name,
        header_style=rng.randrange(4),
        newline=rng.choice(("\n", "\r\n")),
        date_styles={c: rng.choice(_DATE_STYLES) for c in columns},
        amount_commas=rng.random() < 0.5,
    )


def _missing_date(rng: random.Random) -> str:
    return rng.choice(("", "N/A"))


def _person(rng: random.Random) -> str:
    name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    roll = rng.random()
    if roll < 0.08:
        return f"{rng.choice(_LAST)}, {rng.choice(_FIRST)}"
    if roll < 0.12:
        return f'{rng.choice(_FIRST)} "Bunty" {rng.choice(_LAST)}'
    return name


def _missed_leads(cfg: SimConfig, prof: StoreProfile, day: dt.date) -> list[list[str]]:
    rows: list[list[str]] = []
    keys_so_far: list[str] = []
    st = prof.date_styles
    for created_day in range(1, day.day + 1):
        rng = _rng("ml", cfg.seed, prof.code, day.year, day.month, created_day)
        n = rng.randint(*cfg.rows_per_day)
        fresh: list[str] = []
        for i in range(n):
            pickup_no = f"PK{day.year % 100:02d}{day.month:02d}{created_day:02d}{i:03d}"
            fresh.append(pickup_no)
            rows.append(_lead_row(cfg, prof, day, created_day, pickup_no, rng, st))
        if keys_so_far and rng.random() < cfg.duplicate_rate:
            # A customer books a second pickup under the same pickup number.
            again = rng.choice(keys_so_far)
            rows.append(_lead_row(cfg, prof, day, created_day, again, rng, st))
        keys_so_far.extend(fresh)
    return rows


def _lead_row(
    cfg: SimConfig,
    prof: StoreProfile,
    day: dt.date,
    created_day: int,
    pickup_no: str,
    rng: random.Random,
    st: dict[str, str],
) -> list[str]:
    created = dt.datetime(
        day.year, day.month, created_day, rng.randrange(8, 21), rng.randrange(60), rng.randrange(60)
    )
    pickup = created + dt.timedelta(days=rng.randrange(0, 3), hours=rng.randrange(1, 6))
    converts_after = rng.randrange(0, 6)
    converts = rng.random() < 0.6
    odd_value = rng.choice(("2", "", "yes")) if rng.random() < 0.05 else None
    if odd_value is not None:
        placed = odd_value
    else:
        placed = "1" if converts and day.day >= created_day + converts_after else "0"
    source = rng.choice(_SOURCES)
    missing = _missing_date(rng)
    return [
        str(int(f"{day.year % 100}{day.month:02d}{created_day:02d}{rng.randrange(100000):05d}")),
        format_mobile(rng, allow_blank=True),
        pickup_no,
        format_date(created, st["pickup_created_date"]),
        created.strftime("%H:%M:%S"),
        prof.code,
        prof.name,
        format_date(pickup, st["pickup_date"]) if rng.random() > 0.1 else missing,
        rng.choice(("10:00-12:00", "14:00-16:00", "18:00-20:00", "")),
        _person(rng),
        rng.choice(_INSTRUCTIONS),
        source,
        source if rng.random() < 0.8 else rng.choice(_SOURCES),
        rng.choice(("New", "Repeat")),
        placed,
    ]


def _undelivered(cfg: SimConfig, prof: StoreProfile, day: dt.date) -> list[list[str]]:
    rows: list[list[str]] = []
    earlier: list[list[str]] = []
    st = prof.date_styles
    for created_day in range(1, day.day + 1):
        rng = _rng("ud", cfg.seed, prof.code, day.year, day.month, created_day)
        n = rng.randint(*cfg.rows_per_day)
        fresh: list[list[str]] = []
        for i in range(n):
            order_no = f"ORD{day.year % 100:02d}{day.month:02d}{created_day:02d}{i:03d}"
            ordered = dt.datetime(
                day.year, day.month, created_day, rng.randrange(8, 21), rng.randrange(60)
            )
            expected = ordered + dt.timedelta(days=rng.randrange(2, 6))
            delivered_after = rng.randrange(1, 9) if rng.random() < 0.7 else None
            taxable = rng.randrange(100, 4000) + rng.choice((0.0, 0.5))
            # Draw everything before branching on the day, so the stream (and every later
            # record) is the same whatever day the snapshot is for.
            status = rng.choice(("Pending", "In Process", "Ready"))
            actual = _missing_date(rng)
            if delivered_after is not None and day.day >= created_day + delivered_after:
                delivered = ordered + dt.timedelta(days=delivered_after)
                status, actual = "Delivered", format_date(delivered, st["actual_deliver_on"])
            row = [
                order_no,
                format_date(ordered, st["order_date"]),
                prof.code,
                prof.name,
                format_amount(taxable, prof.amount_commas),
                format_amount(round(taxable * 1.18, 2), prof.amount_commas),
                rng.choice(_SERVICES),
                format_mobile(rng, allow_blank=True),
                status,
                f"C{rng.randrange(10000, 99999)}",
                format_date(expected, st["expected_deliver_on"]),
                actual,
            ]
            fresh.append(row)
        rows.extend(fresh)
        if earlier and rng.random() < cfg.duplicate_rate:
            # A stale pending copy of an earlier order shows up next to its current state.
            stale = list(rng.choice(earlier))
            stale[8], stale[11] = "Pending", ""
            rows.append(stale)
        earlier.extend(fresh)
    return rows


def _repeat(cfg: SimConfig, prof: StoreProfile, day: dt.date) -> list[list[str]]:
    rng = _rng("rc", cfg.seed, prof.code, day.year, day.month)
    n = rng.randint(*cfg.repeat_rows)
    rows = [
        [prof.code, format_mobile(rng, allow_blank=False), rng.choice(("Yes", "No"))]
        for _ in range(n)
    ]
    if rows and rng.random() < min(1.0, cfg.duplicate_rate * 3):
        rows.append([prof.code, rows[0][1], "No" if rows[0][2] == "Yes" else "Yes"])
    return rows


def _nonpackage(
    cfg: SimConfig, prof: StoreProfile, day: dt.date, pending_only: bool
) -> list[list[str]]:
    rng = _rng("np", cfg.seed, prof.code, day.year, day.month, day.day)
    rows = []
    for i in range(rng.randint(0, 6)):
        status = rng.choice(("Pending", "Delivered"))
        if pending_only and status != "Pending":
            continue
        ordered = dt.datetime(day.year, day.month, rng.randint(1, day.day))
        amount = format_amount(rng.randrange(50, 900), prof.amount_commas)
        rows.append([f"NP{i:04d}", format_date(ordered, "iso"), prof.code, amount, status])
    return rows


def _bad_rows(key: str, prof: StoreProfile, count: int) -> list[list[str]]:
    rows = []
    for i in range(count):
        if key == "missed_leads":
            rows.append(
                [
                    str(990000 + i),
                    "9876543210",
                    f"BAD{i:04d}",
                    "31/31/2026",
                    "10:00:00",
                    prof.code,
                    prof.name,
                    "",
                    "",
                    "Bad Row",
                    "",
                    "App",
                    "App",
                    "New",
                    "0",
                ]
            )
        elif key == "undelivered_all":
            rows.append(
                [
                    f"BAD{i:04d}",
                    "31/31/2026",
                    prof.code,
                    prof.name,
                    "100.00",
                    "118.00",
                    "DC",
                    "",
                    "Pending",
                    "C0",
                    "",
                    "",
                ]
            )
        elif key == "repeat_customers":
            rows.append([prof.code, "", "Yes"])
    return rows


_GENERATORS: dict[str, tuple[list[str], Callable[[SimConfig, StoreProfile, dt.date], list]]] = {
    "missed_leads": (MISSED_LEADS_HEADER, _missed_leads),
    "undelivered_all": (UNDELIVERED_HEADER, _undelivered),
    "repeat_customers": (REPEAT_HEADER, _repeat),
}


def report_table(
    cfg: SimConfig, key: str, store_code: str, day: dt.date, mode: str | None = None
) -> tuple[list[str], list[list[str]]]:
    """(header, records) of one export; `mode` is a data behaviour (`sentinel`, `empty`)."""
    prof = store_profile(cfg.seed, store_code)
    if key in _GENERATORS:
        base_header, gen = _GENERATORS[key]
        rows = gen(cfg, prof, day)
        rows.extend(_bad_rows(key, prof, cfg.bad_rows_per_store))
    elif key in ("undelivered_last10", "undelivered_u"):
        base_header = UNDELIVERED_HEADER
        rows = [r for r in _undelivered(cfg, prof, day) if r[8] != "Delivered"]
        if key == "undelivered_last10":
            rows = rows[-10:]
    elif key in ("nonpackage_all", "nonpackage_u"):
        base_header = NONPACKAGE_HEADER
        rows = _nonpackage(cfg, prof, day, pending_only=key == "nonpackage_u")
    else:
        raise KeyError(f"unknown report {key!r}")
    if key == "repeat_customers":
        header = [h.upper() for h in base_header] if prof.header_style == 2 else list(base_header)
    else:
        # `order_no` stays literal: PORTAL.md names it as the undelivered export's first header.
        header = [
            h if h == "order_no" else _header_variant(h, prof.header_style) for h in base_header
        ]
    if mode in ("sentinel", "empty"):
        rows = []
    return header, rows


def render_csv(header: list[str], rows: list[list[str]], newline: str) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=newline, quoting=csv.QUOTE_MINIMAL)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def report_bytes(
    cfg: SimConfig, key: str, store_code: str, day: dt.date, mode: str | None = None
) -> bytes:
    """The body the portal sends: the CSV, or the sentinel (no newline) when there are no rows."""
    header, rows = report_table(cfg, key, store_code, day, mode)
    if mode == "sentinel" or (not rows and mode != "empty"):
        return SENTINEL.encode()
    return render_csv(header, rows, store_profile(cfg.seed, store_code).newline)


def report_records(
    cfg: SimConfig, key: str, store_code: str, day: dt.date, mode: str | None = None
) -> list[dict[str, str]]:
    header, rows = report_table(cfg, key, store_code, day, mode)
    return [dict(zip(header, row, strict=True)) for row in rows]


# ----- damaged bodies (`store_behaviour` body tokens; semantics in SimConfig's docstring) -------

# The free-text cell a record fault damages, and the text it puts there (it holds a comma).
FREE_TEXT: dict[str, tuple[str, str]] = {
    "missed_leads": ("special_instruction", "Gate 2, ring twice"),
    "undelivered_all": ("status", "Ready, packed"),
    "repeat_customers": ("Status", "Yes, twice"),
}
_FALLBACK_FREE_TEXT = "Ready, packed"
ACCENTED_TEXT = "Deliver to José at Café Mondegar"  # é is 0xE9 in cp1252: invalid UTF-8
WHITESPACE_BODY = b"    \n  \n\n        \n \n   "
UTF16_BOM = b"\xff\xfe"
_PLACEHOLDER = "\x01cell\x01"  # needs no quoting, so it survives csv.writer verbatim
_PRINTABLE = bytes(0x20 + (i % 95) for i in range(256))  # every byte -> space..tilde


@dataclass(frozen=True)
class DamagedBody:
    """A served body plus where it is damaged, for tests that must tell good records from bad.

    `fault_lines`: physical lines (1 = header) where a record a CSV reader gets wrong begins.
    `damaged_records`: 0-based indices, among the records the body was built from, of those a
    CSV reader does not read back intact at their own line.
    """

    body: bytes
    fault_lines: tuple[int, ...] = ()
    damaged_records: tuple[int, ...] = ()


def _render(cells: list[str], newline: str) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator=newline, quoting=csv.QUOTE_MINIMAL).writerow(cells)
    return buf.getvalue()


def _column(header: list[str], wanted: str) -> int:
    """Index of `wanted` whatever the export's header spelling; the last column if absent."""
    norm = wanted.lower().replace(" ", "_")
    for index, name in enumerate(header):
        if name.lower().replace(" ", "_").replace("-", "_") == norm:
            return index
    return len(header) - 1


def junk_bytes(cfg: SimConfig, key: str, store_code: str, day: dt.date) -> bytes:
    """`cfg.junk_bytes` seeded random printable bytes (space to tilde), no newline at all."""
    rng = _rng("junk", cfg.seed, store_code, key, day.isoformat())
    return rng.randbytes(cfg.junk_bytes).translate(_PRINTABLE)


def _damage_record(row: list[str], col: int, key: str, faults: frozenset[str], nl: str) -> str:
    """The record faults (nul, cp1252, ragged, quote) on one rendered record; later ones win."""
    fixed = FREE_TEXT.get(key, ("", _FALLBACK_FREE_TEXT))[1]
    cells = list(row)
    raw: str | None = None
    if "nul" in faults:
        cells[col] = fixed.replace(",", "\x00")
    if "cp1252" in faults:
        cells[col] = ACCENTED_TEXT
    if "ragged" in faults:
        raw = fixed  # unquoted: its comma makes one field more than the header
    if "quote" in faults:
        raw = '"' + fixed  # opens a quoted field that this line never closes
    if raw is None:
        return _render(cells, nl)
    cells[col] = _PLACEHOLDER
    return _render(cells, nl).replace(_PLACEHOLDER, raw)


def _read_back(
    text: str, starts: list[int], expected: list[list[str]]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(fault_lines, damaged_records): parse `text` as the platform would and compare."""
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader, None)
    parsed: dict[int, list[str]] = {}
    line = reader.line_num + 1
    for record in reader:
        if record and not (len(record) == 1 and not record[0].strip()):
            parsed[line] = record
        line = reader.line_num + 1
    damaged = [
        i for i, (s, row) in enumerate(zip(starts, expected, strict=True)) if parsed.get(s) != row
    ]
    good = {starts[i] for i in range(len(starts))} - {starts[i] for i in damaged}
    lines = {starts[i] for i in damaged} | {s for s in parsed if s not in good}
    return tuple(sorted(lines)), tuple(damaged)


def damaged_body(
    cfg: SimConfig,
    key: str,
    store_code: str,
    day: dt.date,
    mode: str | None,
    faults: frozenset[str],
    other_store: str,
) -> DamagedBody:
    """The body served with `faults` (body tokens) in effect; see SimConfig for each one."""
    if "whitespace" in faults:
        return DamagedBody(WHITESPACE_BODY)
    if "junk" in faults:
        return DamagedBody(junk_bytes(cfg, key, store_code, day))
    source = other_store if "otherstore" in faults else store_code
    source_mode = None if source != store_code else mode
    header, rows = report_table(cfg, key, source, day, source_mode)
    nl = store_profile(cfg.seed, source).newline
    if source_mode == "sentinel" or (not rows and source_mode != "empty"):
        return DamagedBody(_encode(SENTINEL, faults))
    if "paddedstore" in faults:
        sc_col = _column(header, "store_code")
        rows = [[*r[:sc_col], f" {r[sc_col].lower()} ", *r[sc_col + 1 :]] for r in rows]
    records = [_render(r, nl) for r in rows]
    if rows and faults & {"nul", "cp1252", "ragged", "quote"}:
        target = len(rows) // 2
        col = _column(header, FREE_TEXT.get(key, ("status", ""))[0])
        records[target] = _damage_record(rows[target], col, key, faults, nl)
    starts, line = [], 2
    for record in records:
        starts.append(line)
        line += record.count("\n")
    text = _render(header, nl) + "".join(records)
    if "footer" in faults and rows:
        width = 2 if key == "repeat_customers" else max(2, len(header))
        text += _render(["Total", str(len(rows)), *[""] * (width - 2)], nl)
    fault_lines, damaged = _read_back(text, starts, rows)
    return DamagedBody(_encode(text, faults), fault_lines, damaged)


def _encode(text: str, faults: frozenset[str]) -> bytes:
    if "utf16" in faults:
        return UTF16_BOM + text.encode("utf-16-le")
    if "cp1252" in faults:
        return text.encode("cp1252")
    return text.encode("utf-8")
