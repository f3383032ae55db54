"""Coercion rules for portal CSV values: one place, used by the merger, the ingester and row models.

The rules follow what the portal really emits (see PORTAL.md). A value that cannot be coerced
raises `CoercionError` with a reason; the ingester turns that into a row in `ingest_rejects`
rather than guessing. Dates are day-first wherever the portal writes them day-first; a form that
is not in `DATE_FORMATS` is rejected, never guessed.
"""

import datetime as dt
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from app.config import CoerceKind

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
_INT_RE = re.compile(r"^[+-]?\d+(\.0+)?$")
_AMOUNT_RE = re.compile(r"^[+-]?(\d{1,3}(,\d{2,3})*|\d+)(\.\d+)?$")
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


def to_int(raw: str) -> int:
    text = raw.strip().replace(",", "")
    if not _INT_RE.fullmatch(text):
        raise CoercionError(f"not an integer: {raw!r}")
    return int(text.split(".")[0])


def to_amount(raw: str) -> Decimal:
    """`1345.00`, `1,200.00` → Decimal; exact, because these are money."""
    text = raw.strip().replace("\u20b9", "").replace("Rs.", "").strip()
    if not _AMOUNT_RE.fullmatch(text):
        raise CoercionError(f"not an amount: {raw!r}")
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation as exc:  # pragma: no cover - the regex already guards this
        raise CoercionError(f"not an amount: {raw!r}") from exc


def to_date(raw: str) -> dt.date:
    text = " ".join(raw.strip().split())
    if m := _ISO_DATE_RE.fullmatch(text):  # fast path for the common form
        try:
            return dt.date(int(m[1]), int(m[2]), int(m[3]))
        except ValueError as exc:
            raise CoercionError(f"not a date: {raw!r}") from exc
    for fmt in DATE_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise CoercionError(f"unrecognised date format: {raw!r}")


def normalize_mobile(raw: str) -> str:
    """10-digit Indian mobile from `+91 98765-43210`, `09876543210`, ...; else the original text."""
    text = raw.strip()
    digits = _MOBILE_DIGITS_RE.sub("", text)
    if len(digits) == 12 and digits.startswith("91"):
        digits = digits[2:]
    elif len(digits) == 11 and digits.startswith("0"):
        digits = digits[1:]
    return digits if len(digits) == 10 else text


def is_mobile_column(column: str) -> bool:
    """Columns that hold a phone number get `normalize_mobile` (no spec change needed)."""
    return "mobile" in column


def coerce_value(column: str, kind: CoerceKind, raw: str | None, *, is_key: bool = False) -> Any:
    """Coerce one raw CSV value for a DB column; raise CoercionError with the reason."""
    if kind == "bool":
        return to_bool(raw)
    if raw is None or is_null(raw):
        if is_key:
            raise CoercionError(f"missing dedupe key {column}")
        return None
    if kind == "str":
        text = raw.strip()
        return normalize_mobile(text) if is_mobile_column(column) else text
    if kind == "int":
        return to_int(raw)
    if kind == "float":
        return to_amount(raw)
    if kind == "date":
        return to_date(raw)
    raise CoercionError(f"unknown coerce kind {kind!r} for {column}")  # pragma: no cover


def key_value(column: str, kind: CoerceKind, raw: str | None) -> Any:
    """The value a dedupe key column has in the database; the merger dedupes on exactly this."""
    return coerce_value(column, kind, raw, is_key=True)
