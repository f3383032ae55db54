"""What can be wrong with a raw report: one code per way a record fails, and per file.

Shared by the strict report reader (`app.report_check`), the merger, the downloader's file check
and the audit, so that every stage names a problem the same way and the audit can tell a
quarantined reject (kept in `ingest_rejects`, deleting the file loses nothing) from a blocking
one (the files must stay).

Quarantine is a per-bucket rule in `MERGE_BUCKET_DB_SPECS[bucket]["quarantine"]`: the list of
record codes that do not block the cleanup. Default: only `missing_key` (a row without all of
its dedupe keys, e.g. a repeat customer with a blank mobile number, normal on the real portal).
"""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from app.config import MERGE_BUCKET_DB_SPECS

# ---- record-level codes (one reject row each) ---------------------------------------------
MISSING_KEY = "missing_key"  # a dedupe key is blank / a null token
RAGGED = "ragged"  # the record's field count differs from the header's
UNTERMINATED_QUOTE = "unterminated_quote"  # a quote opened and the file ended inside it
RUNAWAY_QUOTE = "runaway_quote"  # a quoted field swallowed what look like further records
FOOTER = "footer"  # a totals / footer line ("Total,45")
BAD_VALUE = "bad_value"  # a value its column cannot hold (date, amount, NUL, overflow, ...)
RECORD_CODES = frozenset(
    {MISSING_KEY, RAGGED, UNTERMINATED_QUOTE, RUNAWAY_QUOTE, FOOTER, BAD_VALUE}
)
DEFAULT_QUARANTINE: tuple[str, ...] = (MISSING_KEY,)

# ---- file-level problems (the store fails for that bucket; the file is not merged) ---------
FileProblemKind = Literal["not_a_report", "undecodable", "other_store", "html", "blank"]


@dataclass(frozen=True)
class FileProblem:
    """Why a whole file is not a usable report of the store it was asked for.

    `retry` says what the downloader does once before giving up on the store: `reselect` visits
    the store's dashboard again (the session had another store selected), `refetch` downloads
    the file again (a transient error page or a damaged body).
    """

    kind: FileProblemKind
    reason: str

    @property
    def retry(self) -> Literal["reselect", "refetch"]:
        return "reselect" if self.kind == "other_store" else "refetch"


@dataclass(frozen=True)
class Reject:
    """One raw record that is not loaded, with everything needed to find and judge it."""

    store_code: str | None
    file: str
    line_number: int  # physical line the record starts on (1 = header)
    record_no: int  # 1-based data record ordinal in the file (what a CSV parser counts)
    code: str
    reason: str
    raw_row: dict[str, Any] = field(default_factory=dict)  # header -> raw cell, or {"_raw": text}
    blocking: bool = True

    def as_row(self) -> dict[str, Any]:
        return {
            "store_code": self.store_code,
            "file": self.file,
            "line_number": self.line_number,
            "record_no": self.record_no,
            "code": self.code,
            "error": self.reason,
            "raw_row": self.raw_row,
            "blocking": self.blocking,
        }


def quarantined_codes(bucket: str) -> frozenset[str]:
    """The record codes of this bucket that are quarantined rather than blocking."""
    return frozenset(MERGE_BUCKET_DB_SPECS[bucket].get("quarantine", DEFAULT_QUARANTINE))


def is_blocking(bucket: str, code: str) -> bool:
    return code not in quarantined_codes(bucket)


def split_counts(rejects: Sequence[Reject]) -> tuple[int, int]:
    """(quarantined, blocking) among `rejects`."""
    blocking = sum(1 for r in rejects if r.blocking)
    return len(rejects) - blocking, blocking


_FOOTER_RE = re.compile(r"^\s*(grand\s*)?(sub\s*)?totals?\s*[:.]?\s*$", re.IGNORECASE)


def is_footer_record(record: Sequence[str]) -> bool:
    """A totals line the portal may append ("Total,45", "Grand Total: ,1,200.00")."""
    first = next((cell for cell in record if cell.strip()), "")
    return bool(_FOOTER_RE.match(first))


def counts_by_code(rejects: Sequence[Reject]) -> Mapping[str, int]:
    out: dict[str, int] = {}
    for r in rejects:
        out[r.code] = out.get(r.code, 0) + 1
    return out


def _validate_quarantine() -> None:
    for bucket in MERGE_BUCKET_DB_SPECS:
        if unknown := quarantined_codes(bucket) - RECORD_CODES:
            raise ValueError(f"{bucket}: unknown quarantine codes {sorted(unknown)}")


_validate_quarantine()
