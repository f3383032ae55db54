"""Coercion rules for portal CSV values: one place, used by the merger, the ingester and row models.

The rules follow what the portal really emits (see PORTAL.md). A value that cannot be coerced
raises `CoercionError` with a reason; the ingester turns that into a row in `ingest_rejects`
rather than guessing. Dates are day-first wherever the portal writes them day-first; a form that
is not in `DATE_FORMATS` is rejected, never guessed.

One bad value must reject its row, never fail the bucket, so every limit of the database is
checked here, before a value reaches it:
- a NUL character (PostgreSQL text cannot hold one; in a bool cell it means a damaged file);
- an integer outside signed 64 bits (the `int` columns are BIGINT);
- an amount that NUMERIC(`AMOUNT_PRECISION`, `AMOUNT_SCALE`) cannot hold exactly: more
  significant decimals than the scale (`1345.005` would be rounded silently) or an absolute
  value of 10^(precision - scale) or more;
- an amount with an ambiguous decimal comma (`1,50`: one and a half, or a mistyped 150?).
  Thousands grouping is accepted in the Western (`1,200.00`) and Indian (`1,00,000.50`) forms.
"""

import datetime as dt
import functools
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from app.config import CoerceKind

# The DB type of `float` columns (the ORM builds Numeric(AMOUNT_PRECISION, AMOUNT_SCALE)).
AMOUNT_PRECISION = 14
AMOUNT_SCALE = 2
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

NULL_TOKENS = frozenset({"", "na", "n/a", "null", "none", "-", "nan"})

# Every form seen in portal exports. Order matters only for speed; no two forms overlap.
DATE_FORMATS: tuple[str, ...] = (
    "%Y-%m-%d",  # 2026-03-07
    "%Y-%m-%d %H:%M:%S",  # 2026-03-03 18:05:38
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M:%S",
    "%d-%m-%Y",  # 07-03-2026 (day first)
    "%d/%m/%Y",  # 07/03/2026 (day first)
    "%d-%m-%Y %H:%M:%S",
    "%d/%m/%Y %H:%M:%S",
    "%d %b %Y",  # 26 Nov 2025
    "%d %b %Y %I:%M:%S %p",  # 21 Apr 2026 3:03:39 PM
    "%d %b %Y %I:%M %p",
    "%d %B %Y",
)
_ISO_DATE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
# Forms that rarely repeat (a timestamp per row), so memoising cannot save their strptime loop.
_ISO_DT_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2}) (\d{1,2}):(\d{1,2}):(\d{1,2})$")
_DMY_RE = re.compile(r"^(\d{2})([-/])(\d{2})\2(\d{4})$")
_DMY_TEXT_TIME_RE = re.compile(
    r"^(\d{1,2}) ([A-Za-z]{3}) (\d{4}) (\d{1,2}):(\d{2}):(\d{2}) ([AaPp][Mm])$"
)
_MONTH_ABBR = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
_INT_RE = re.compile(r"^[+-]?\d+(\.0+)?$")
# sign, integer part (plain, Western 1,234,567 or Indian 12,34,567 grouping), decimals.
_AMOUNT_RE = re.compile(r"^([+-]?)(\d+|\d{1,3}(?:,\d{3})+|\d{1,2}(?:,\d{2})+,\d{3})(?:\.(\d+))?$")
# A comma followed by one or two final digits: a decimal comma, or a mistyped grouping.
_DECIMAL_COMMA_RE = re.compile(r"^[+-]?[\d.,]*\d,\d{1,2}$")
_MOBILE_DIGITS_RE = re.compile(r"\D")
_HEADER_SEP_RE = re.compile(r"[\s_\-]+")


class CoercionError(ValueError):
    """A value that does not fit its column; the message is the reject reason."""


def is_null(raw: str | None) -> bool:
    return raw is None or raw.strip().lower() in NULL_TOKENS


def normalize_header(header: str) -> str:
    """Case-, BOM-, space-, underscore- and hyphen-insensitive form of a CSV header.

    `Mobile No.`, `mobile_no.` and ` MOBILE-NO. ` all become `mobile no.`.
    """
    cleaned = header.replace("\ufeff", "").strip().lower()
    return _HEADER_SEP_RE.sub(" ", cleaned).strip()


def to_bool(raw: str | None) -> bool:
    """The kickoff's rule, exactly: "1" is True; "0" and anything else is False."""
    return raw is not None and raw.strip() == "1"


def _show(raw: str) -> str:
    """The value as it appears in a reason, cut short: a reason must never carry a 10 MB cell."""
    return repr(raw) if len(raw) <= 60 else f"{raw[:60]!r}... ({len(raw)} characters)"


def to_int(raw: str) -> int:
    """`12345`, `12,345`, `7.0` → int; anything outside BIGINT is rejected, not overflowed."""
    if raw.isascii() and raw.isdigit() and len(raw) < 19:  # the common case, same result
        return int(raw)
    text = raw.strip().replace(",", "")
    if not _INT_RE.fullmatch(text):
        raise CoercionError(f"not an integer: {_show(raw)}")
    digits = text.split(".")[0]
    # Length first: int() of a 5000-digit string raises ValueError (and costs time) in 3.11+.
    value = int(digits) if len(digits.lstrip("+-").lstrip("0")) <= 19 else INT64_MAX + 1
    if not INT64_MIN <= value <= INT64_MAX:
        raise CoercionError(f"integer out of range for a 64-bit column: {_show(raw)}")
    return value


def to_amount(raw: str) -> Decimal:
    """`1345.00`, `1,200.00`, `1,00,000.50` → Decimal, exactly as NUMERIC(14, 2) will hold it."""
    text = raw.strip().replace("\u20b9", "").replace("Rs.", "").strip()
    match = _AMOUNT_RE.fullmatch(text)
    if match is None:
        if _DECIMAL_COMMA_RE.fullmatch(text):
            raise CoercionError(
                f"ambiguous decimal comma in amount {_show(raw)} "
                "(a decimal comma or a mistyped thousands separator?)"
            )
        raise CoercionError(f"not an amount: {_show(raw)}")
    sign, whole, decimals = match[1], match[2].replace(",", ""), match[3] or ""
    if len(decimals.rstrip("0")) > AMOUNT_SCALE:
        raise CoercionError(
            f"amount {_show(raw)} has more decimals than the column keeps ({AMOUNT_SCALE})"
        )
    if len(whole.lstrip("0")) > AMOUNT_PRECISION - AMOUNT_SCALE:
        raise CoercionError(
            f"amount {_show(raw)} out of range for NUMERIC({AMOUNT_PRECISION},{AMOUNT_SCALE}) "
            f"(|amount| must be below 10^{AMOUNT_PRECISION - AMOUNT_SCALE})"
        )
    decimals = decimals[:AMOUNT_SCALE] if len(decimals) > AMOUNT_SCALE else decimals
    try:
        return Decimal(f"{sign}{whole}.{decimals}" if decimals else f"{sign}{whole}")
    except InvalidOperation as exc:  # pragma: no cover - the regex already guards this
        raise CoercionError(f"not an amount: {_show(raw)}") from exc


def _fast_date(text: str) -> dt.date | None:
    """The commonest per-row forms without strptime; None leaves the decision to the loop.

    Returns only what the `DATE_FORMATS` loop would return for the same text (same fields,
    same range checks: hour < 24, 12-hour clock 1..12, minute and second < 60), so it is a pure
    speed-up; anything doubtful falls through to the loop, which decides.
    """
    try:
        if m := _ISO_DT_RE.fullmatch(text):
            if int(m[4]) < 24 and int(m[5]) < 60 and int(m[6]) < 60:
                return dt.date(int(m[1]), int(m[2]), int(m[3]))
        elif m := _DMY_RE.fullmatch(text):
            return dt.date(int(m[4]), int(m[3]), int(m[1]))
        elif m := _DMY_TEXT_TIME_RE.fullmatch(text):
            month = _MONTH_ABBR.get(m[2].lower())
            if month and 1 <= int(m[4]) <= 12 and int(m[5]) < 60 and int(m[6]) < 60:
                return dt.date(int(m[3]), month, int(m[1]))
    except ValueError:
        return None
    return None


def to_date(raw: str) -> dt.date:
    text = " ".join(raw.strip().split())
    if (fast := _fast_date(text)) is not None:
        return fast
    if m := _ISO_DATE_RE.fullmatch(text):  # fast path for the common form
        try:
            return dt.date(int(m[1]), int(m[2]), int(m[3]))
        except ValueError as exc:
            raise CoercionError(f"not a date: {_show(raw)}") from exc
    for fmt in DATE_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise CoercionError(f"unrecognised date format: {_show(raw)}")


def normalize_mobile(raw: str) -> str:
    """10-digit Indian mobile from `+91 98765-43210`, `09876543210`, ...; else the original text."""
    text = raw.strip()
    if len(text) == 10 and text.isascii() and text.isdigit():  # the common case, same result
        return text
    digits = _MOBILE_DIGITS_RE.sub("", text)
    if len(digits) == 12 and digits.startswith("91"):
        digits = digits[2:]
    elif len(digits) == 11 and digits.startswith("0"):
        digits = digits[1:]
    return digits if len(digits) == 10 else text


def is_mobile_column(column: str) -> bool:
    """Columns that hold a phone number get `normalize_mobile` (no spec change needed)."""
    return "mobile" in column


ValueCoercer = Callable[[str | None], Any]


def _nul(column: str, raw: str) -> CoercionError:
    return CoercionError(f"NUL character in {column}: {_show(raw)}")


@functools.cache
def value_coercer(column: str, kind: CoerceKind, is_key: bool = False) -> ValueCoercer:
    """`coerce_value` for one column, with the column's decisions taken once.

    `coerce_value` *is* this function applied, so the row models (which call `coerce_value`)
    and the hot loops (which call the returned function directly) cannot disagree.

    A NUL character rejects the value whatever the kind (bool included): PostgreSQL text cannot
    store it, and in any cell it means the file is damaged, which no rule should paper over.
    """
    if kind == "bool":

        def coerce_bool(raw: str | None) -> bool:
            if raw is not None and "\x00" in raw:
                raise _nul(column, raw)
            return to_bool(raw)

        return coerce_bool
    parsers: dict[str, Callable[[str], Any]] = {"int": to_int, "float": to_amount, "date": to_date}
    parse = parsers.get(kind)
    if parse is None and kind != "str":  # pragma: no cover - validate_specs forbids it
        raise CoercionError(f"unknown coerce kind {kind!r} for {column}")
    mobile = kind == "str" and is_mobile_column(column)
    missing = f"missing dedupe key {column}"

    def coerce(raw: str | None) -> Any:
        if raw is None:
            if is_key:
                raise CoercionError(missing)
            return None
        text = raw.strip()
        if text.lower() in NULL_TOKENS:  # is_null(raw); no null token holds a NUL
            if is_key:
                raise CoercionError(missing)
            return None
        if "\x00" in text:  # strip() never removes a NUL
            raise _nul(column, raw)
        if parse is not None:
            return parse(raw)
        return normalize_mobile(text) if mobile else text

    return coerce


def coerce_value(column: str, kind: CoerceKind, raw: str | None, *, is_key: bool = False) -> Any:
    """Coerce one raw CSV value for a DB column; raise CoercionError with the reason.

    Empty and null tokens are NULL (a missing dedupe key when `is_key`), `bool` is the kickoff's
    rule, the other kinds are `to_int`, `to_amount`, `to_date` and trimmed text (mobile numbers
    normalised); a NUL character is an error for every kind (see `value_coercer`).
    """
    return value_coercer(column, kind, is_key)(raw)


def key_value(column: str, kind: CoerceKind, raw: str | None) -> Any:
    """The value a dedupe key column has in the database; the merger dedupes on exactly this."""
    return coerce_value(column, kind, raw, is_key=True)
