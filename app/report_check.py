"""The strict report reader: the ONE place that decides what a raw portal record is.

The audit exists to stop the deletion of data that did not arrive, so a file may only be read
in ways that cannot lose or shift data silently. Every rule below closes a way that happened
(see PORTAL.md, "What the files really look like" and "Misbehaviour to survive").

File level (`check_file`, `FileProblem`; the store fails for this bucket, its file is kept and
contributes nothing):
- `undecodable`: the portal sends UTF-8 (a BOM is fine). Anything else (a cp1252 export, UTF-16,
  a PDF, a ZIP / .xlsx, NUL-heavy binary) would raise UnicodeDecodeError deep inside a parser and
  stop every store, naming none; here it names the file, the byte offset and line of the first
  invalid byte and what the file looks like.
- `html`: a login or error page served with HTTP 200 in place of the CSV.
- `blank`: only whitespace. A zero-byte file and the `No data available to export.` sentinel are
  the portal's *valid* empty report (no problem, no records); whitespace is neither.
- `not_a_report`: the first line must name every dedupe-key column of the bucket (resolved by
  `map_header`, case / separator / alias insensitive). A plain sentence ("Service temporarily
  unavailable, please try again later.") or a 10 MB junk line (the first line is capped at
  `MAX_LINE_CHARS` and never held in several copies) would otherwise count as a report with zero
  records.
- `other_store`: the session had another store selected, so the file holds another store's
  records. Any well-formed, non-footer record whose trimmed `store_code` cell is non-blank (and
  not a null token such as `N/A`, which is a missing key) and differs case-insensitively from
  the store asked for fails the whole file (the downloader reselects the store and fetches
  again). Ragged / runaway records are not consulted: their cells are shifted, so their
  "store" proves nothing (they are rejected anyway).

Record level (`Reject`, one per record; `blocking = is_blocking(bucket, code)`):
- `ragged`: a field count that differs from the header's. An unquoted comma in free text shifts
  every later column; aligning such a record by position would load wrong values, so it is never
  loaded (not padded, not truncated).
- `unterminated_quote`: a quote that runs to the end of the file. A standard parser silently
  returns the rest of the file as one field; here it is one reject carrying the raw text from
  the record's first line, so nothing is loaded that was not delimited.
- `runaway_quote`: a quoted field spanning lines, one of which parses on its own as a complete
  record of this store (full width, same store code): the quote swallowed real records. Quoted
  newlines in free text (the simulator's "Leave with security\\nPay on delivery") are legitimate
  and kept: their continuation lines are not full-width records.
- `footer`: a totals line ("Total,45") is not a customer (`app.rejects.is_footer_record`).
- `missing_key`: a blank or null-token dedupe key, when it is the record's only problem (a
  repeat customer without a mobile number is normal on the real portal: quarantined by default).
- `bad_value`: any column the row model cannot coerce (bad date, amount beyond NUMERIC(14,2) or
  with more decimals than it keeps, ambiguous decimal comma, integer beyond BIGINT, a NUL
  character, a line longer than `MAX_LINE_CHARS`), with the Pydantic row model's full reason.

Canonical cells: key cells are trimmed (` a668 ` is not a second store next to `A668`) and the
`store_code` cell, equal case-insensitively to the store asked for, is reported as exactly that
code; the merged file is written from these cells.

Counting: `record_no` counts records exactly as Python's csv module (and PostgreSQL's COPY CSV)
counts them in a well-formed file: header excluded, blank lines skipped as `app.csv_io` does.
Rejects are records too, so `download_rows_by_store` includes them.

Memory: the file is streamed line by line; a physical line is never read beyond
`MAX_LINE_CHARS` (a longer one is skipped in pieces and rejected) and a reject keeps at most
`RAW_TEXT_LIMIT` characters of raw text.
"""

import codecs
import csv
import io
import operator
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, NamedTuple

from app.coercion import CoercionError, coerce_value, is_null
from app.config import MERGE_BUCKET_DB_SPECS, validate_store_code
from app.csv_io import is_sentinel_bytes, looks_like_html
from app.header_map import HeaderMap, map_header
from app.rejects import (
    BAD_VALUE,
    FOOTER,
    MISSING_KEY,
    RAGGED,
    RUNAWAY_QUOTE,
    UNTERMINATED_QUOTE,
    FileProblem,
    FileProblemKind,
    Reject,
    is_blocking,
    is_footer_record,
)
from app.row_check import RowCoercer, Validation

SNIFF_BYTES: Final = 64 * 1024  # what is read up front to tell a CSV from HTML / binary / blank
MAX_LINE_CHARS: Final = 1024 * 1024  # the header cap; also the cap of any physical line
RAW_TEXT_LIMIT: Final = 64 * 1024  # raw text kept per reject
_NUL_VISIBLE: Final = "\u2400"  # NUL in a reject's raw text (PostgreSQL JSON cannot hold \0)

# ----------------------------------------------------------------------------- public types

# (bucket, positions, width, validation) -> the RowCoercer for files of that header layout.
CoercerPool = dict[tuple[str, tuple[int | None, ...], int, str], RowCoercer]


class ReportProblem(Exception):
    """A file-level problem found while reading; the whole file is unusable for its store."""

    def __init__(self, problem: FileProblem) -> None:
        super().__init__(f"{problem.kind}: {problem.reason}")
        self.problem = problem


class ReportRecord(NamedTuple):
    """One data record: either `cells` (canonical, header width) or a `reject`, never both.

    `values` are the coerced DB values in `coerce` order (None when read with
    `check_values=False`).
    """

    line_number: int  # physical line the record starts on (1 = header)
    record_no: int  # 1-based ordinal among data records, as a standard CSV parser counts
    cells: list[str] | None
    reject: Reject | None
    values: tuple[Any, ...] | None = None


# tuple.__new__ skips NamedTuple's Python-level argument handling: one per record adds up.
_new_record = tuple.__new__


@dataclass
class Report:
    """An open report: its header mapping and a one-shot iterator of its records.

    `header` is None for the portal's empty report (zero bytes or the sentinel). The iterator
    raises `ReportProblem` when a file-level problem shows up mid-file (an undecodable byte, a
    record of another store): records already yielded must then be discarded. Call
    `check_file` first when a verdict is needed before acting on any record.
    """

    bucket: str
    store_code: str
    path: Path
    header: HeaderMap | None
    header_cells: list[str] = field(default_factory=list)
    records: Iterator[ReportRecord] = field(default_factory=lambda: iter(()))

    @property
    def empty(self) -> bool:
        return self.header is None


# ----------------------------------------------------------------------------- file sniffing


def _problem(kind: FileProblemKind, reason: str) -> ReportProblem:
    return ReportProblem(FileProblem(kind, reason))


_MAGIC: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\xff\xfe\x00\x00", "UTF-32 text (byte-order mark FF FE 00 00)"),
    (b"\x00\x00\xfe\xff", "UTF-32 text (byte-order mark 00 00 FE FF)"),
    (b"\xff\xfe", "UTF-16 text (byte-order mark FF FE)"),
    (b"\xfe\xff", "UTF-16 text (byte-order mark FE FF)"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (an .xlsx workbook is one)"),
    (b"PK\x05\x06", "an empty ZIP archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an OLE2 file (a legacy .xls workbook)"),
    (b"\x1f\x8b", "gzip-compressed data"),
)


def _binary_kind(head: bytes) -> str | None:
    """What a non-text file looks like, from its first bytes; None for anything text-like."""
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    nuls = head.count(b"\x00")
    if head and nuls * 10 > len(head):
        share = 100 * nuls // len(head)
        return f"binary data ({share}% NUL bytes; UTF-16 without a byte-order mark?)"
    return None


def _all_whitespace(fh: IO[bytes], head: bytes) -> bool:
    """True if the whole file (not just its head) holds nothing but whitespace."""
    if head.lstrip(b"\xef\xbb\xbf").strip():
        return False
    while chunk := fh.read(1 << 20):
        if chunk.strip():
            return False
    return True


def first_invalid_utf8(path: Path) -> tuple[int, int, bytes] | None:
    """(byte offset, line, bad bytes) of the first byte that is not UTF-8, or None.

    Streams in 1 MiB chunks; only called once a decoder has already failed, so its cost is
    paid on broken files only.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    base = newlines = 0
    with path.open("rb") as fh:
        while True:
            chunk = fh.read(1 << 20)
            pending = decoder.getstate()[0]
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                data = pending + chunk
                line = newlines + data[: exc.start].count(b"\n") + 1
                return base - len(pending) + exc.start, line, data[exc.start : exc.end]
            if not chunk:
                return None
            newlines += chunk.count(b"\n")
            base += len(chunk)


def undecodable_problem(path: Path) -> FileProblem:
    """The `undecodable` verdict, naming the file, the offset and line and a likely encoding."""
    found = first_invalid_utf8(path)
    if found is None:  # pragma: no cover - only called after a decode error
        return FileProblem("undecodable", f"{path.name} could not be decoded as UTF-8")
    offset, line, bad = found
    hint = ""
    if bad and bad[0] >= 0x80:
        try:
            hint = (
                f"; as Windows-1252 it reads {bad[:1].decode('cp1252')!r}: the file looks like "
                "a Windows-1252 / Latin-1 export, not the portal's UTF-8"
            )
        except UnicodeDecodeError:
            hint = ""
    return FileProblem(
        "undecodable",
        f"{path.name} is not UTF-8: byte 0x{bad[0]:02x} at byte offset {offset} "
        f"(line {line}) is invalid{hint}",
    )


def _html(path: Path) -> ReportProblem:
    return _problem("html", f"{path.name} is an HTML page (a login or error page), not a CSV")


def _sniff(path: Path, fh: IO[bytes], size: int) -> tuple[bool, bool]:
    """Decide what the first bytes can: (empty report, may be HTML); raise on a problem.

    A body that starts with markup is HTML. One that merely mentions `<html` or "logged in"
    early on may still be a CSV whose free text does: the header decides (`_read_header`).
    """
    if size == 0:
        return True, False
    head = fh.read(SNIFF_BYTES)
    if size <= SNIFF_BYTES and is_sentinel_bytes(head):
        return True, False
    if what := _binary_kind(head):
        found = first_invalid_utf8(path)
        where = f"; first invalid byte at byte offset {found[0]}" if found else ""
        raise _problem(
            "undecodable", f"{path.name} is not a UTF-8 CSV: it looks like {what}{where}"
        )
    html = looks_like_html(head)
    if html and head.lstrip(b"\xef\xbb\xbf").lstrip().startswith(b"<"):
        raise _html(path)
    if _all_whitespace(fh, head):
        raise _problem("blank", f"{path.name} holds only whitespace ({size} bytes), no report")
    return False, html


# ----------------------------------------------------------------------------- line source


class _LineTooLong(Exception):
    """A physical line longer than `MAX_LINE_CHARS`; its text was skipped, not kept."""


class _LineSource:
    """Physical lines for `csv.reader`, remembering the lines of the current record.

    `eof` turns True when the reader asked past the last line: a record completed by the end of
    the file (not by a line end) is one whose quote never closed.
    """

    __slots__ = ("_readline", "consumed", "eof", "lines")

    def __init__(self, readline: Callable[[int], str]) -> None:
        self._readline = readline
        self.lines: list[str] = []
        self.consumed = 0  # physical lines read so far
        self.eof = False

    def __iter__(self) -> "_LineSource":
        return self

    def __next__(self) -> str:
        line = self._readline(MAX_LINE_CHARS)
        if not line:
            self.eof = True
            raise StopIteration
        self.consumed += 1
        if len(line) >= MAX_LINE_CHARS and line[-1] not in "\r\n":
            while (piece := self._readline(MAX_LINE_CHARS)) and piece[-1] not in "\r\n":
                pass  # skip the rest of the line in bounded pieces
            raise _LineTooLong
        self.lines.append(line)
        return line

    def drain(self) -> None:
        """Read to the end of the file without keeping anything."""
        while self._readline(MAX_LINE_CHARS):
            self.consumed += 1


def parse_line(line: str) -> tuple[list[str], bool]:
    """One physical line parsed on its own: (cells, True if it ends inside an open quote)."""
    source = _LineSource(io.StringIO(line).readline)
    cells = next(csv.reader(source), [])
    return cells, source.eof


def raw_text(lines: Sequence[str]) -> str:
    """The record's lines as written, cut at `RAW_TEXT_LIMIT`, NUL made visible."""
    parts: list[str] = []
    size = 0
    total = 0
    for line in lines:
        total += len(line)
        if size < RAW_TEXT_LIMIT:
            parts.append(line[: RAW_TEXT_LIMIT - size])
            size += len(parts[-1])
    text = "".join(parts).replace("\x00", _NUL_VISIBLE)
    return text if total <= RAW_TEXT_LIMIT else f"{text}... [{total - size} more characters]"


# ----------------------------------------------------------------------------- the reader


class _Reader:
    """Classifies the records of one open report (see the module docstring for the rules)."""

    def __init__(
        self,
        report: Report,
        source: _LineSource,
        reader: Any,
        check_values: bool,
        validation: Validation | str,
        coercers: CoercerPool | None,
    ) -> None:
        spec = MERGE_BUCKET_DB_SPECS[report.bucket]
        assert report.header is not None
        hmap = report.header
        to_csv = {db: csv_name for csv_name, db in spec["column_map"].items()}
        self.report, self.source, self.reader = report, source, reader
        self.name = report.path.name
        self.file = str(report.path)
        self.width = hmap.width
        self.key_pos = [hmap.positions[to_csv[k]] for k in spec["dedupe_keys"]]
        self.key_get: Callable[[Sequence[str]], tuple[str, ...]] = (
            operator.itemgetter(*self.key_pos)
            if len(self.key_pos) > 1
            else lambda cells: tuple(cells[i] for i in self.key_pos)
        )
        self.store = report.store_code
        store_csv = to_csv.get("store_code")
        self.store_pos = hmap.positions.get(store_csv) if store_csv else None
        self.store_cf = report.store_code.casefold()
        self.coerce: RowCoercer | None = None
        if check_values:
            positions = tuple(hmap.positions.get(to_csv[c]) for c in spec["coerce"])
            shape = (report.bucket, positions, hmap.width, validation)
            if (coerce := coercers.get(shape) if coercers is not None else None) is None:
                coerce = RowCoercer(report.bucket, positions, hmap.width, validation)
                if coercers is not None:
                    coercers[shape] = coerce
            coerce.tune()  # a shared coercer learns across files, not only every 5000 records
            self.coerce = coerce
        self.blocking = {code: is_blocking(report.bucket, code) for code in _CODES}

    def records(self) -> Iterator[ReportRecord]:
        """Every data record in file order; a plain one-line record takes the fast path."""
        source, reader, lines, checked = self.source, self.reader, self.source.lines, self._checked
        fast_width = self.width if self.width > 1 else -1  # a 1-cell record may be a blank line
        tune = self.coerce.tune if self.coerce is not None else None
        record_no = 0
        while True:
            lines.clear()
            start = source.consumed + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError:
                raise ReportProblem(undecodable_problem(self.report.path)) from None
            except _LineTooLong:
                record_no += 1
                yield self._too_long(start, record_no)
                continue
            except csv.Error as exc:  # a quoted field beyond csv.field_size_limit()
                record_no += 1
                yield self._endless_field(start, record_no, exc)
                continue
            if (
                len(cells) == fast_width
                and len(lines) == 1
                and not source.eof
                and (first := cells[0][:1]) not in _MAYBE_FOOTER  # "" is "in" any string
                and not first.isspace()
            ):
                record_no += 1
                if tune is not None and record_no % 5000 == 0:
                    tune()
                yield checked(start, record_no, cells)
                continue
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue  # a blank line, skipped as app.csv_io does
            record_no += 1
            yield self._classify(start, record_no, cells, lines)

    def _reject(
        self, line: int, record_no: int, code: str, reason: str, raw: dict[str, Any]
    ) -> ReportRecord:
        reject = Reject(
            store_code=self.report.store_code,
            file=self.file,
            line_number=line,
            record_no=record_no,
            code=code,
            reason=reason,
            raw_row=raw,
            blocking=self.blocking[code],
        )
        return ReportRecord(line, record_no, None, reject)

    def _too_long(self, start: int, record_no: int) -> ReportRecord:
        line = self.source.consumed
        reason = (
            f"{self.name} line {line} is longer than {MAX_LINE_CHARS} characters: not a portal "
            "record (skipped unread)"
        )
        text = raw_text([*self.source.lines, f"[line {line}: over {MAX_LINE_CHARS} chars]"])
        return self._reject(start, record_no, BAD_VALUE, reason, {"_raw": text})

    def _endless_field(self, start: int, record_no: int, exc: csv.Error) -> ReportRecord:
        text = raw_text(self.source.lines)
        try:
            self.source.drain()
        except UnicodeDecodeError:
            raise ReportProblem(undecodable_problem(self.report.path)) from None
        reason = (
            f"a quoted field opened in the record on line {start} never closes within "
            f"{csv.field_size_limit()} characters ({exc}); the rest of {self.name} "
            f"(lines {start}-{self.source.consumed}) is rejected"
        )
        return self._reject(start, record_no, UNTERMINATED_QUOTE, reason, {"_raw": text})

    def _classify(
        self, start: int, record_no: int, cells: list[str], lines: list[str]
    ) -> ReportRecord:
        end = start + len(lines) - 1
        if self.source.eof:
            reason = (
                f"a quote opened in the record on line {start} is never closed: {self.name} "
                f"ends inside it, so lines {start}-{end} are rejected"
            )
            return self._reject(start, record_no, UNTERMINATED_QUOTE, reason, self._text(lines))
        if len(lines) > 1 and (swallowed := self._swallowed(start, lines)):
            reason = (
                f"a quoted field opened on line {start} runs to line {end} and swallows line "
                f"{swallowed}, which starts a record of store {self.report.store_code}"
            )
            return self._reject(start, record_no, RUNAWAY_QUOTE, reason, self._text(lines))
        if is_footer_record(cells):
            reason = f"a totals / footer line, not a record: {raw_text(lines).strip()[:80]!r}"
            return self._reject(start, record_no, FOOTER, reason, self._cells(cells))
        if len(cells) != self.width:
            reason = (
                f"{len(cells)} fields where the header has {self.width} (an unquoted comma or a "
                "lost field shifts the columns): not loaded"
            )
            return self._reject(start, record_no, RAGGED, reason, self._text(lines))
        return self._checked(start, record_no, cells)

    def _checked(self, start: int, record_no: int, cells: list[str]) -> ReportRecord:
        """A well-formed record: canonical key cells, the store check, then the row model."""
        original = self.key_get(cells)
        for i in self.key_pos:
            cells[i] = cells[i].strip()
        if (pos := self.store_pos) is not None and (found := cells[pos]) != self.store:
            if found and found.casefold() != self.store_cf and not is_null(found):
                raise _problem(
                    "other_store",
                    f"{self.name} line {start} holds a record of store {found!r}, not of store "
                    f"{self.store!r} that was asked for",
                )
            if found.casefold() == self.store_cf:
                cells[pos] = self.store
        if self.coerce is None:
            return _new_record(ReportRecord, (start, record_no, cells, None, None))
        try:
            values = self.coerce(cells)
        except CoercionError as exc:
            for i, value in zip(self.key_pos, original, strict=True):
                cells[i] = value
            code = MISSING_KEY if self._only_keys_missing(cells) else BAD_VALUE
            return self._reject(start, record_no, code, str(exc), self._cells(cells))
        return _new_record(ReportRecord, (start, record_no, cells, None, values))

    def _only_keys_missing(self, cells: list[str]) -> bool:
        """A blank key is quarantinable only when it is the record's one problem."""
        assert self.coerce is not None
        if not any(is_null(cells[i]) for i in self.key_pos):
            return False
        for column, kind, pos, is_key in self.coerce.fields:
            if pos is None or (is_key and is_null(cells[pos])):
                continue
            try:
                coerce_value(column, kind, cells[pos], is_key=is_key)
            except CoercionError:
                return False
        return True

    def _swallowed(self, start: int, lines: list[str]) -> int | None:
        """The first continuation line that on its own starts a record of this store.

        It does if it parses to a full-width record, or opens a quoted field of its own within
        the header's width, with this store's code in the store cell. Free text continued on
        a new line ("Pay on delivery",App,...) has too few cells before its closing quote.
        """
        for offset, line in enumerate(lines[1:], start=1):
            if line.count(",") < min(self.width - 1, (self.store_pos or 0)):
                continue
            cells, opened = parse_line(line)
            if not (len(cells) == self.width or (opened and len(cells) <= self.width)):
                continue
            if self.store_pos is None:
                if not opened:
                    return start + offset
            elif self.store_pos < len(cells) - opened and (
                cells[self.store_pos].strip().casefold() == self.store_cf
            ):
                return start + offset
        return None

    def _text(self, lines: Sequence[str]) -> dict[str, Any]:
        return {"_raw": raw_text(lines)}

    def _cells(self, cells: Sequence[str]) -> dict[str, Any]:
        header = self.report.header_cells
        raw: dict[str, Any] = {}
        for index, value in enumerate(cells):
            name = header[index] if index < len(header) else f"_extra_{index}"
            raw[name or f"_column_{index}"] = value.replace("\x00", _NUL_VISIBLE)
        return raw


# First characters a footer's first cell can start with (`is_footer_record`'s pattern); a record
# whose first cell starts with anything else (and not whitespace) cannot be a footer.
_MAYBE_FOOTER: Final = "gGsStT"
_CODES: Final = (BAD_VALUE, FOOTER, MISSING_KEY, RAGGED, RUNAWAY_QUOTE, UNTERMINATED_QUOTE)


def _not_a_report(path: Path, reason: str, html: bool) -> ReportProblem:
    """Not a report: an HTML page if the head mentioned markup, else `not_a_report`."""
    return _html(path) if html else _problem("not_a_report", f"{path.name}: {reason}")


def _read_header(
    bucket: str, path: Path, source: _LineSource, reader: Any, html: bool
) -> tuple[list[str], HeaderMap]:
    """The first record, which must be a header naming every dedupe key of the bucket."""
    try:
        header: list[str] = next(reader)
    except UnicodeDecodeError:
        raise ReportProblem(undecodable_problem(path)) from None
    except (_LineTooLong, csv.Error, StopIteration):
        raise _not_a_report(
            path,
            f"the first line is longer than {MAX_LINE_CHARS} characters, not a report header",
            html,
        ) from None
    first = raw_text(source.lines).strip()[:120]
    spec = MERGE_BUCKET_DB_SPECS[bucket]
    to_csv = {db: csv_name for csv_name, db in spec["column_map"].items()}
    hmap = map_header(bucket, header)
    positions = hmap.positions
    if lost := [to_csv[k] for k in spec["dedupe_keys"] if to_csv[k] not in positions]:
        raise _not_a_report(
            path,
            f"the first line does not name the {bucket} key column(s) {', '.join(lost)}, "
            f"so it is not a {bucket} report (first line: {first!r})",
            html,
        )
    if source.eof:
        raise _problem("not_a_report", f"{path.name}: a quote in the header never closes")
    return header, hmap


@contextmanager
def read_report(
    bucket: str,
    store_code: str,
    path: Path,
    *,
    check_values: bool = True,
    validation: Validation | str = "compiled",
    coercers: CoercerPool | None = None,
) -> Iterator[Report]:
    """Open one store's report for strict reading (see the module docstring for every rule).

    Raises `ReportProblem` on entry for a problem visible before the records (undecodable head,
    HTML, blank, not a report) and from the iterator for one found later. `check_values=False`
    skips the row model (structure, canonical keys and the store check still apply): for a
    second pass over a file already checked, or for `check_file`. `coercers` (a dict the caller
    keeps, e.g. one per merge) shares one `RowCoercer` between files of the same header layout,
    so its memo stays warm across hundreds of small store files.
    """
    validate_store_code(store_code)
    path = Path(path)
    with path.open("rb") as fh:
        empty, html = _sniff(path, fh, path.stat().st_size)
        if empty:
            yield Report(bucket, store_code, path, None)
            return
        fh.seek(0)
        text = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="strict", newline="")
        source = _LineSource(text.readline)
        reader = csv.reader(source)
        header, hmap = _read_header(bucket, path, source, reader, html)
        cells = [h.replace("\ufeff", "").strip() for h in header]
        report = Report(bucket, store_code, path, hmap, cells)
        report.records = _Reader(
            report, source, reader, check_values, validation, coercers
        ).records()
        try:
            yield report
        finally:
            text.detach()


def check_file(bucket: str, store_code: str, path: Path) -> FileProblem | None:
    """The file-level verdict on one store's report: None when it is a usable report.

    Streams the whole file once (bounded memory): an undecodable byte or another store's
    record can sit on any line. Record-level problems are not file problems (see `read_report`).
    """
    try:
        with read_report(bucket, store_code, path, check_values=False) as report:
            for _record in report.records:
                pass
    except ReportProblem as exc:
        return exc.problem
    return None
