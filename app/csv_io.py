"""Reading portal CSV files as they really are (see PORTAL.md, "What the files really look like").

Shared by the downloader (row counts, body checks), the merger and the ingester, so that all of
them agree on what a record is: a quoted field with a newline is one record, and the portal's
`No data available to export.` sentinel is an empty report with zero records and no header.

This is the *lenient* reader: it trusts Python's csv module, which is right for files the
platform wrote itself (the merged file) and as an independent second count. Raw portal files
are judged by the strict reader, `app.report_check` (encoding, ragged rows, runaway quotes,
footers, other stores); in a well-formed file both count exactly the same records.
"""

import csv
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SENTINEL = "No data available to export."
_SENTINEL_BYTES = SENTINEL.encode()
# Quoted free text can be long; the stdlib default (128 KiB) is too small for some exports.
csv.field_size_limit(16 * 1024 * 1024)


def is_sentinel_bytes(body: bytes) -> bool:
    """True for the portal's empty-report body (with or without BOM / trailing whitespace)."""
    return body.lstrip(b"\xef\xbb\xbf").strip() == _SENTINEL_BYTES


def is_empty_report(path: Path) -> bool:
    """A zero-byte file or the sentinel: the store had nothing to report."""
    size = path.stat().st_size
    if size == 0:
        return True
    if size > len(_SENTINEL_BYTES) + 16:
        return False
    return is_sentinel_bytes(path.read_bytes())


def looks_like_html(head: bytes) -> bool:
    """A login page or error page where a CSV should be; decided from content, not status."""
    text = head.lstrip(b"\xef\xbb\xbf").lstrip().lower()
    return text.startswith((b"<!doctype", b"<html", b"<head", b"<body", b"<?xml")) or (
        b"<html" in text[:2048] or b"you need to be logged in" in text[:4096]
    )


@contextmanager
def open_records(path: Path) -> Iterator[tuple[list[str], Iterator[tuple[int, list[str]]]]]:
    """Open a portal CSV: yields (header, iterator of (line_number, record)).

    Empty reports yield an empty header and no records. `line_number` is the physical line the
    record starts on (1 = header), which is what a person opening the file sees.
    """
    if is_empty_report(path):
        yield [], iter(())
        return
    with path.open("r", encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            yield [], iter(())
            return

        def records() -> Iterator[tuple[int, list[str]]]:
            line = reader.line_num + 1
            for record in reader:
                if record and not (len(record) == 1 and not record[0].strip()):
                    yield line, record
                line = reader.line_num + 1

        yield header, records()


def count_records(path: Path) -> int:
    """Data records in a portal CSV (not lines); the sentinel and empty files count 0."""
    with open_records(path) as (_header, records):
        return sum(1 for _ in records)


def count_records_in_bytes(body: bytes) -> int:
    if not body or is_sentinel_bytes(body):
        return 0
    reader = csv.reader(io.StringIO(body.decode("utf-8-sig"), newline=""))
    next(reader, None)
    return sum(1 for rec in reader if rec and not (len(rec) == 1 and not rec[0].strip()))
