"""Counts for the audit, measured by PostgreSQL's own CSV parser and by queries, never derived.

The audit may only delete the downloaded files when numbers from *independent* sources agree
(DESIGN.md, the asset-check rule). The merger and the ingester share `app.csv_io`'s reader, so a
reader bug would fool both; this module therefore never parses a data record in Python:

- `measure_raw` COPYs every raw store file into a TEMP staging table with the server's CSV
  parser. The record count is the `COPY n` status. The staging table has one column per header
  cell (Python reads only the header line, to learn the width and where the dedupe keys are), so
  a successful COPY also proves every record has the header's column count. `expected_unique`
  is one `GROUP BY` over the staged, normalised keys of all files.
- `measure_load` COPYs the merged file the same way, then reads the bucket table back after the
  load committed: which merged keys this run wrote, which a newer snapshot holds, and an
  anti-join for keys that have no row at all.

Key normalisation is re-implemented in SQL (`key_sql`) to equal `app.coercion.key_value`; the
tests pin the two as equal over many tricky values. For `str` keys: trimmed of every character
Python's `str.strip()` removes; a null token (`NULL_TOKENS`, case-insensitive) or an SQL NULL is
no key; mobile columns (`is_mobile_column`) get `normalize_mobile` (Unicode decimal digits only;
12 digits starting `91` or 11 starting `0` give the last 10; 10 digits give the digits; anything
else the trimmed text). For `int` keys: `to_int`'s acceptance (commas removed, optional sign,
Unicode decimal digits, optional `.000`), compared as the integer's canonical text. Other kinds
(date, float, bool) raise `NotImplementedError`: no bucket has such a key, and their Python
rules (day-first dates, money formats) are not worth duplicating until one does. In
`measure_raw` only, `store_code` is also compared with ASCII case folded (`upper`), so ` a668 `
and `A668` are one store; `measure_load` compares exactly what the load writes (`key_value`).

Why it is shaped like this (the audit runs on every load; `benchmarks/bench_measure.py`):

- Non-key columns are staged as `"char"`: PostgreSQL's one-byte type, whose input function
  accepts any text. COPY still splits and validates every field (and the whole input's UTF-8),
  but stores one byte instead of the text.
- Files that share a header shape share one staging table, and a file needs no per-row file
  number unless the caller excludes some of its records; only those files go into a table with
  a `rid` identity column (see `_RawStager`). The next file is read (header, payload) in a
  worker thread while the server parses the current one.
- `measure_raw_streamed` is the same measure over files that arrive one at a time: the merge
  step feeds it each store file as the merger finishes reading it (`app.measure_worker`),
  so nearly all of its work is done by the time the merge is.
- `staged_merged` also takes a `GrowingFile`: the merged file read as the merger writes it
  (`app.measure_tail`). It is COPYed into a table whose generated columns compute the
  normalised keys as rows arrive, under a UNIQUE constraint, so nothing is left to group when
  the file is complete (`_stage_distinct`). That staging is used only if the bytes sent are the
  final file's; a repeated key or any refusal means the final file is staged the usual way.
- Failures: the first attempt COPYs every file with no savepoint (500 files would otherwise mean
  500 subtransactions and two extra round trips each). If the server refuses any file (ragged
  record, unterminated quote, invalid UTF-8, NUL), the attempt is rolled back and repeated with
  one savepoint per COPY, so the refused file is rolled back alone: its error (the server's
  message with its line number) is recorded and its records are counted again by a fallback
  COPY into a single column with a delimiter that never occurs (`\x1f`), which still honours
  quotes. If that fails too, the store's count is None (and so are `total` and
  `expected_unique`).
- `key_sql` has a fast path for cells with nothing to trim (see its docstring); the key GROUP
  BY of `measure_load` feeds its LEFT JOIN onto the bucket table in one statement.
- Work happens inside a transaction this module opens (a savepoint if the caller already has
  one), with `work_mem` raised for the hash tables and restored afterwards. Every TEMP table is
  `ON COMMIT DROP` and also dropped explicitly at the end. Names carry a random token (temp
  tables are per session anyway, and a fresh name per call keeps asyncpg's prepared-statement
  cache from ever reusing a plan of a dropped table). No header text ever reaches SQL: staging
  columns are generated (`c1`, `c2`, ...) and identifiers are quoted.

Record semantics, and where they may differ from the reader: the BOM is skipped and blank lines
at the end of a file are not sent (the reader skips them too). A blank line in the *middle* of a
file, or a file mixing `\\n` and `\\r\\n` line ends outside quotes, is rejected by PostgreSQL's
parser; it is reported as that store's error, and the fallback count leaves blank records out,
like the reader. PostgreSQL's "line N" counts records (a quoted newline does not start a line),
the header being line 1. A ragged or footer record (`Total,45`) therefore makes its whole store an
error here even where the reader rejects just that record: fine while those codes block the
cleanup anyway (the default `quarantine` is `missing_key` only); a bucket that quarantines them
would need a per-record fallback here (COPY cannot skip a ragged record, not even with
PostgreSQL 17's `ON_ERROR`).
"""

import asyncio
import contextlib
import csv
import dataclasses
import datetime as dt
import functools
import re
import secrets
import sys
import time
import unicodedata
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.coercion import INT64_MAX, INT64_MIN, NULL_TOKENS, is_mobile_column
from app.config import MERGE_BUCKET_DB_SPECS, CoerceKind
from app.csv_io import is_empty_report
from app.header_map import map_header

SUPPORTED_KEY_KINDS: frozenset[str] = frozenset({"str", "int"})
EXAMPLES = 5
WORK_MEM = "256MB"  # per hash table of the GROUP BY / join; SET LOCAL, restored afterwards
_CHUNK = 1 << 20
_INLINE = 8 << 20  # payloads up to this size are read in one piece
_READ_INLINE = 256 << 10  # files up to this size are read on the event loop's thread
_BOM = b"\xef\xbb\xbf"
_FALLBACK_DELIMITER = "\x1f"  # the ASCII unit separator: never in a portal export
_MAX_ORDINAL = (1 << 32) - 1
_SAVEPOINT = "crm_measure_copy"
_CHAR = '"char"'
_LINE_RE = re.compile(r"line (\d+)(?:, column c\d+)?")
_COLUMN_RE = re.compile(r"\bc(\d+)\b")


@dataclass(frozen=True)
class RawMeasure:
    """Server-measured counts of one bucket's raw store files."""

    by_store: dict[str, int | None]  # records per store (None: not even the fallback parsed it)
    total: int | None  # sum of by_store; None if any store is unmeasurable
    expected_unique: int | None  # distinct keys; None if any store's keys could not be staged
    errors: dict[str, str]  # store -> why PostgreSQL refused its file (with the line)
    duration_ms: float
    keyless_rows: int | None = None  # records whose key normalises to NULL (not in expected)
    excluded_rows: int | None = None  # staged records matched by `exclude`


@dataclass(frozen=True)
class LoadMeasure:
    """The merged file as the server parses it, against the bucket table read back."""

    merged_rows: int | None  # records of the merged file (COPY n)
    written: int | None  # merged keys whose row has this run's run_id and run_date
    kept_newer: int | None  # merged keys whose row comes from a newer snapshot (backfill)
    ingested_rows: int | None  # written + kept_newer, both measured above
    missing_keys: int | None  # merged keys with no row in the table at all (anti-join)
    missing_examples: list[dict[str, Any]]  # up to EXAMPLES of them, as {key column: value}
    duplicate_keys_in_merged: int | None  # keys occurring more than once in the merged file
    error: str | None  # the server's error if the merged file would not parse
    duration_ms: float
    distinct_keys: int | None = None  # distinct non-NULL keys of the merged file
    keyless_rows: int | None = None  # merged records whose key normalises to NULL
    stale_rows: int | None = None  # key present, but from an older load: this run did not write it
    staged_during_merge: bool = False  # the merged file was parsed as the merger wrote it


@dataclass(frozen=True)
class _Key:
    csv_name: str  # the spec's CSV header (column_map key)
    db_name: str
    kind: CoerceKind


def _key_columns(bucket: str) -> list[_Key]:
    """The bucket's dedupe keys; refuses kinds whose rules are not re-implemented in SQL."""
    spec = MERGE_BUCKET_DB_SPECS[bucket]
    to_csv = {db: csv_name for csv_name, db in spec["column_map"].items()}
    keys = [_Key(to_csv[db], db, spec["coerce"][db]) for db in spec["dedupe_keys"]]
    if bad := [k.db_name for k in keys if k.kind not in SUPPORTED_KEY_KINDS]:
        raise NotImplementedError(
            f"{bucket}: dedupe key(s) {bad} have kinds that app.measure cannot normalise in SQL "
            f"(supported: {sorted(SUPPORTED_KEY_KINDS)}); see the app.measure docstring"
        )
    return keys


# ------------------------------------------------------------------ key normalisation in SQL


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    """A standard SQL string literal (standard_conforming_strings is on since PostgreSQL 9.1)."""
    if "\x00" in value:
        raise ValueError("NUL cannot be part of a PostgreSQL string")
    return "'" + value.replace("'", "''") + "'"


def _ranges(chars: Sequence[str]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for code in sorted(map(ord, chars)):
        if out and code == out[-1][1] + 1:
            out[-1] = (out[-1][0], code)
        else:
            out.append((code, code))
    return out


def _re_char(code: int) -> str:
    if 0x20 < code < 0x7F and chr(code).isalnum():
        return chr(code)
    return f"\\u{code:04X}" if code <= 0xFFFF else f"\\U{code:08X}"


@dataclass(frozen=True)
class _UnicodeSets:
    """Python's whitespace and decimal digits, spelt out so the SQL never depends on the server's
    locale or Unicode tables (`\\d`, `[[:space:]]` vary with the collation provider)."""

    strip_chars: str  # SQL literal: every char str.strip() removes
    non_digit_class: str  # SQL literal regex: one char that is not a Unicode decimal digit
    int_re: str  # SQL literal regex: to_int's acceptance after the commas are removed
    ascii_int_re: str
    digits_from: str  # SQL literal: every non-ASCII decimal digit ...
    digits_to: str  # ... and its ASCII value, for translate()


@functools.cache
def _unicode_sets() -> _UnicodeSets:
    all_chars = [chr(c) for c in range(sys.maxunicode + 1)]
    spaces = [c for c in all_chars if c.isspace()]
    digits = [c for c in all_chars if c.isdecimal()]
    digit_class = "".join(
        _re_char(a) if a == b else f"{_re_char(a)}-{_re_char(b)}" for a, b in _ranges(digits)
    )
    strip = "U&'" + "".join(f"\\{ord(c):04X}" for c in spaces) + "'"
    wide = [c for c in digits if not c.isascii()]
    return _UnicodeSets(
        strip_chars=strip,
        non_digit_class=_literal(f"[^{digit_class}]"),
        int_re=_literal(f"^[+-]?[{digit_class}]+(\\.0+)?$"),
        ascii_int_re=_literal("^[+-]?[0-9]+(\\.0+)?$"),
        digits_from=_literal("".join(wide)),
        digits_to=_literal("".join(str(unicodedata.decimal(c)) for c in wide)),
    )


def _mobile_sql(trimmed: str) -> str:
    """`normalize_mobile` on an already trimmed text; the bare 10-digit case skips the regex."""
    u = _unicode_sets()
    d = f"regexp_replace({trimmed}, {u.non_digit_class}, '', 'g')"
    return (
        f"CASE WHEN {trimmed} ~ '^[0-9]{{10}}$' THEN {trimmed} ELSE CASE length({d}) "
        f"WHEN 10 THEN {d} "
        f"WHEN 12 THEN CASE WHEN left({d}, 2) = '91' THEN right({d}, 10) ELSE {trimmed} END "
        f"WHEN 11 THEN CASE WHEN left({d}, 1) = '0' THEN right({d}, 10) ELSE {trimmed} END "
        f"ELSE {trimmed} END END"
    )


def _int_sql(trimmed: str) -> str:
    """`to_int` as canonical integer text (`+007` -> `7`); NULL where to_int would refuse
    (not an integer, or outside BIGINT)."""
    u = _unicode_sets()
    bare = f"replace({trimmed}, ',', '')"
    whole = f"split_part({bare}, '.', 1)"
    number = (
        f"(CASE WHEN {bare} ~ {u.ascii_int_re} THEN {whole}::numeric "
        f"WHEN {bare} ~ {u.int_re} THEN translate({whole}, {u.digits_from}, {u.digits_to})"
        f"::numeric END)"
    )
    # to_int's own length guard first: it strips sign and *ASCII* zeros only, then refuses more
    # than 19 digits, so a leading non-ASCII zero can push a value that fits out of range.
    return (
        f"CASE WHEN length(ltrim(ltrim({whole}, '+-'), '0')) <= 19 "
        f"AND {number} BETWEEN {INT64_MIN} AND {INT64_MAX} THEN {number}::text END"
    )


def _key_body(column: str, kind: CoerceKind, trimmed: str, fold_case: bool) -> str:
    """The rules after trimming: null tokens, then the kind's own normalisation."""
    tokens = ", ".join(_literal(t) for t in sorted(NULL_TOKENS))
    longest = max(len(t.encode()) for t in NULL_TOKENS)
    if kind == "int":
        value = _int_sql(trimmed)
    else:
        value = _mobile_sql(trimmed) if is_mobile_column(column) else trimmed
        if fold_case:
            value = f'upper(({value}) COLLATE "C")'
    # ascii() of a token's first character in both cases (0 for ''): cheap, tested before lower()
    firsts = {0} | {ord(c) for t in NULL_TOKENS if t for c in (t[0].lower(), t[0].upper())}
    return (
        f"CASE WHEN octet_length({trimmed}) <= {longest} "
        f"AND ascii({trimmed}) IN ({', '.join(map(str, sorted(firsts)))}) "
        f'AND lower({trimmed} COLLATE "C") IN ({tokens}) THEN NULL ELSE {value} END'
    )


def key_sql(column: str, kind: CoerceKind, cell: str, *, fold_case: bool = False) -> str:
    """SQL text of `app.coercion.key_value(column, kind, <cell>)`, NULL where it would raise.

    `cell` must be a trusted SQL expression of type text (this module passes only generated
    column names). `fold_case` additionally upper-cases ASCII letters (store codes in
    `measure_raw`). The result is text: for `int` keys the integer's canonical decimal text.

    Speed: `btrim` with a multibyte character set costs ~0.4 us per call in a UTF-8 database
    and dominated the GROUP BYs, so a cell whose first and last characters are printable ASCII
    (nothing to strip: every whitespace character is <= 32 or > 126) skips it. The test
    `(ascii(x) + 61) / 94 = 1` is `33 <= ascii(x) <= 126` written so that `x` (for the last
    character, `right(c, 1)`) is evaluated once; BETWEEN would evaluate it twice. Null tokens
    are only compared (`lower() IN ...`) when the length and the first character allow one.
    """
    if kind not in SUPPORTED_KEY_KINDS:
        raise NotImplementedError(f"key kind {kind!r} of {column} is not normalised in SQL")
    trimmed = f"btrim({cell}, {_unicode_sets().strip_chars})"
    clean = f"(ascii({cell}) + 61) / 94 = 1 AND (ascii(right({cell}, 1)) + 61) / 94 = 1"
    return (
        f"CASE WHEN {cell} IS NULL THEN NULL "
        f"WHEN {clean} THEN {_key_body(column, kind, cell, fold_case)} "
        f"ELSE {_key_body(column, kind, trimmed, fold_case)} END"
    )


# ------------------------------------------------------------------ files and COPY


@dataclass(frozen=True)
class _Source:
    """One file, prepared in a worker thread: its header (read in Python) and the bytes to send."""

    path: Path
    header: list[str]  # empty: an empty report (sentinel / 0 bytes) or no header record
    empty_report: bool
    start: int = 0  # payload: after a BOM ...
    end: int = 0  # ... and without blank lines at the very end
    body: bytes | None = None  # the payload itself when small (sent in one piece)
    error: str | None = None  # the file or its header could not be read
    stream: AsyncIterator[bytes] | None = None  # the payload as it is written (`GrowingFile`)


def _prepare(path: Path) -> _Source:
    """Read only the header record and find the payload's byte range (one thread hop per file).

    Undecodable bytes are replaced while reading the header, not refused: the server verifies
    the whole input's UTF-8 anyway and reports the line, which is the error worth recording.
    """
    try:
        if is_empty_report(path):
            return _Source(path, [], True, 0, path.stat().st_size, path.read_bytes())
        with path.open(encoding="utf-8-sig", errors="replace", newline="") as fh:
            header = next(csv.reader(fh), [])
        with path.open("rb") as fh:
            start = len(_BOM) if fh.read(len(_BOM)) == _BOM else 0
            size = fh.seek(0, 2)
            tail_start = max(start, size - 65536)
            fh.seek(tail_start)
            tail = fh.read()
            body = tail.rstrip(b" \t\r\n")
            newline = tail.find(b"\n", len(body))
            end = size if newline < 0 else tail_start + newline + 1
            fh.seek(start)
            payload = fh.read(end - start) if end - start <= _INLINE else None
        return _Source(path, header, False, start, end, payload)
    except (OSError, csv.Error) as exc:
        return _Source(path, [], False, error=f"unreadable: {type(exc).__name__}: {exc}")


async def _chunks(source: _Source) -> AsyncIterator[bytes]:
    """A large payload, read in a worker thread chunk by chunk while the server parses."""
    fh = await asyncio.to_thread(source.path.open, "rb")
    try:
        await asyncio.to_thread(fh.seek, source.start)
        left = source.end - source.start
        while left > 0:
            chunk = await asyncio.to_thread(fh.read, min(_CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    finally:
        await asyncio.to_thread(fh.close)


async def _copy(
    driver: Any,
    table: str,
    columns: list[str],
    source: _Source,
    *,
    delimiter: str | None = None,
    where: str | None = None,
) -> int:
    """COPY one file with the server's CSV parser; returns the server's row count."""
    status: str = await driver.copy_to_table(
        table,
        # a memoryview, not bytes: asyncpg would take bytes for a file name (os.fspath)
        source=(
            memoryview(source.body) if source.body is not None else source.stream or _chunks(source)
        ),
        columns=columns,
        format="csv",
        header=True,
        delimiter=delimiter,
        where=where,
    )
    return int(status.split()[-1])


async def _prefetched(paths: Sequence[Path]) -> AsyncGenerator[_Source, None]:
    """The files, prepared one ahead in a worker thread while the server parses the current one
    (so reading the next file overlaps the COPY, and only two payloads are held at a time)."""
    if not paths:
        return
    pending = asyncio.ensure_future(asyncio.to_thread(_prepare, paths[0]))
    try:
        for index in range(len(paths)):
            source = await pending
            if index + 1 < len(paths):
                pending = asyncio.ensure_future(asyncio.to_thread(_prepare, paths[index + 1]))
            yield source
    finally:
        pending.cancel()


def _describe(exc: BaseException, header: Sequence[str]) -> str:
    """The server's message plus its line (and the header name of a staging column), no data."""
    if not isinstance(exc, asyncpg.PostgresError):
        return f"{type(exc).__name__}: {exc}"
    message = str(getattr(exc, "message", None) or exc)
    line = _LINE_RE.search(str(getattr(exc, "context", None) or ""))
    column = _COLUMN_RE.search(line[0] if line else "") or _COLUMN_RE.search(message)
    where = [f"line {line[1]}"] if line else []
    if column and 0 < int(column[1]) <= len(header):
        where.append(f"column {int(column[1])} {header[int(column[1]) - 1].strip()!r}")
    return f"{message} (PostgreSQL COPY {', '.join(where)})" if where else message


class _Retry(Exception):
    """A COPY failed on the fast path (no savepoints): start over with one savepoint per file."""


@dataclass
class _Copier:
    """Runs the COPYs. `careful`: each in a savepoint, so a refused file is rolled back alone.

    Not careful (the first attempt): no savepoints at all, because a bucket's 500 files would
    otherwise open 500 subtransactions (each with an XID; beyond 64 per transaction PostgreSQL's
    snapshots overflow to pg_subtrans) and cost two extra round trips per file. The first refused
    file raises `_Retry`; the caller rolls back and measures again carefully.
    """

    driver: Any
    careful: bool
    _open: bool = False

    async def run(
        self, action: Callable[[], Awaitable[int]], before: str = ""
    ) -> tuple[int | None, BaseException | None]:
        if not self.careful:
            if before:
                await self.driver.execute(before)
            try:
                return await action(), None
            except (asyncpg.PostgresError, OSError) as exc:
                raise _Retry from exc
        release = f"RELEASE SAVEPOINT {_SAVEPOINT}; " if self._open else ""
        await self.driver.execute(f"{release}SAVEPOINT {_SAVEPOINT}; {before}")
        self._open = True
        try:
            return await action(), None
        except (asyncpg.PostgresError, OSError) as exc:
            await self.driver.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
            return None, exc

    async def close(self) -> None:
        if self._open:
            await self.driver.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
            self._open = False


# ------------------------------------------------------------------ transaction scaffolding


@contextlib.asynccontextmanager
async def _session(conn: AsyncConnection) -> AsyncIterator[Any]:
    """Our own transaction (a savepoint inside the caller's); yields the asyncpg connection.

    `work_mem` is raised with SET LOCAL for the GROUP BY and the join, and put back at the end
    so a caller's transaction continues with its own setting.
    """
    scope = conn.begin_nested() if conn.in_transaction() else conn.begin()
    async with scope:
        old = (await conn.execute(text("SELECT current_setting('work_mem')"))).scalar_one()
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        await driver.execute(f"SET LOCAL work_mem = {_literal(WORK_MEM)}")
        yield driver
        await driver.execute(f"SELECT set_config('work_mem', {_literal(old)}, true)")


@dataclass
class _Names:
    """Per-call names: a random token keeps them apart and never reuses a cached plan."""

    token: str = field(default_factory=lambda: secrets.token_hex(6))
    made: list[str] = field(default_factory=list)

    def new(self, kind: str) -> str:
        name = f"crm_measure_{self.token}_{kind}{len(self.made)}"
        self.made.append(name)
        return name

    async def drop(self, driver: Any) -> None:
        if self.made:
            await driver.execute(
                "DROP TABLE IF EXISTS " + ", ".join(_quote_ident(n) for n in self.made)
            )


def _staging_ddl(
    name: str,
    width: int,
    text_positions: Collection[int],
    ordered: bool,
    extra: Sequence[str] = (),
) -> str:
    """Key columns as text, every other column as `"char"` (see the module docstring); `extra`:
    more column and constraint definitions."""
    cols = [f"c{i + 1} {'text' if i in text_positions else _CHAR}" for i in range(width)]
    if ordered:
        cols.insert(0, "rid bigint GENERATED BY DEFAULT AS IDENTITY")
    cols += extra
    return f"CREATE TEMP TABLE {_quote_ident(name)} ({', '.join(cols)}) ON COMMIT DROP"


async def _fallback_count(copier: _Copier, names: _Names, source: _Source) -> int | None:
    """Quote-aware record count with no column split: for a file without a usable header, or
    whose staging COPY was refused. Blank records are left out, as the reader does."""
    table = names.new("line")
    await copier.driver.execute(
        f"CREATE TEMP TABLE {_quote_ident(table)} (line text) ON COMMIT DROP"
    )
    not_blank = f"line IS NOT NULL AND btrim(line, {_unicode_sets().strip_chars}) <> ''"
    count, _exc = await copier.run(
        lambda: _copy(
            copier.driver, table, ["line"], source, delimiter=_FALLBACK_DELIMITER, where=not_blank
        )
    )
    return count


# ------------------------------------------------------------------ measure_raw


@dataclass
class _Shape:
    """One staging table: files of the same width with their keys at the same positions."""

    table: str
    key_positions: tuple[int, ...]
    ordered: bool


@dataclass
class _RawStager:
    """Stages one bucket's files and measures them.

    Files with records to exclude go into an `ordered` table whose `rid` identity is set to
    `file_no << 32` before their COPY, so `rid = (file_no << 32) + ordinal`: the exclusions are
    plain rids, and files without exclusions pay nothing per row for ordinals.
    """

    copier: _Copier
    bucket: str
    keys: list[_Key]
    names: _Names
    shapes: dict[tuple[int, tuple[int, ...], bool], _Shape] = field(default_factory=dict)
    by_store: dict[str, int | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    excluded_rids: list[int] = field(default_factory=list)
    keys_complete: bool = True

    async def stage(
        self, file_no: int, store: str, source: _Source, exclude: Collection[int]
    ) -> None:
        if not source.header:
            count = await _fallback_count(self.copier, self.names, source)
            self.by_store[store] = count
            if source.error or count is None or (count and not source.empty_report):
                self.errors[store] = source.error or "the file has records but no header record"
                self.keys_complete = False
            return
        hmap = map_header(self.bucket, source.header)
        found = [hmap.positions.get(k.csv_name) for k in self.keys]
        positions = tuple(p for p in found if p is not None)
        shape = await self._shape(len(source.header), positions, bool(exclude))
        before = ""
        if shape.ordered:
            sequence = f"pg_get_serial_sequence({_literal(_quote_ident(shape.table))}, 'rid')"
            before = f"SELECT setval({sequence}, {file_no << 32})"
        columns = [f"c{i + 1}" for i in range(len(source.header))]
        driver = self.copier.driver
        count, exc = await self.copier.run(
            lambda: _copy(driver, shape.table, columns, source), before
        )
        if exc is not None:
            self.errors[store] = _describe(exc, source.header)
            self.by_store[store] = await _fallback_count(self.copier, self.names, source)
            self.keys_complete = False
            return
        self.by_store[store] = count
        if len(positions) < len(self.keys) and count:
            lost = [k.csv_name for k, p in zip(self.keys, found, strict=True) if p is None]
            self.errors[store] = f"no dedupe-key column {', '.join(lost)} in the header"
            self.keys_complete = False
        if shape.ordered:
            self.excluded_rids += [(file_no << 32) + o for o in sorted(set(exclude))]

    async def _shape(self, width: int, positions: tuple[int, ...], ordered: bool) -> _Shape:
        key = (width, positions, ordered)
        if key not in self.shapes:
            name = self.names.new("raw")
            await self.copier.driver.execute(_staging_ddl(name, width, set(positions), ordered))
            self.shapes[key] = _Shape(name, positions, ordered)
        return self.shapes[key]

    async def expected(self) -> tuple[int, int, int]:
        """(distinct keys, excluded records, keyless records) in one GROUP BY over all files.

        Without exclusions the per-row `ex` flag and its FILTERs are left out (~10% faster)."""
        names = [f"k{j}" for j in range(len(self.keys))]
        ordered = any(s.ordered for s in self.shapes.values())
        parts = []
        for shape in self.shapes.values():
            if len(shape.key_positions) < len(self.keys):
                continue  # a file without a key column; already an error if it had records
            cells = ", ".join(
                key_sql(k.db_name, k.kind, f"c{p + 1}", fold_case=k.db_name == "store_code")
                + f" AS {n}"
                for k, p, n in zip(self.keys, shape.key_positions, names, strict=True)
            )
            if ordered:
                cells += ", rid = ANY($1::bigint[]) AS ex" if shape.ordered else ", false AS ex"
            parts.append(f"SELECT {cells} FROM {_quote_ident(shape.table)}")
        if not parts:
            return 0, 0, 0
        cols = ", ".join(names)
        present = " AND ".join(f"{n} IS NOT NULL" for n in names)
        counts = (
            "count(*) FILTER (WHERE NOT ex) AS live, count(*) FILTER (WHERE ex) AS excluded"
            if ordered
            else "count(*) AS live, 0 AS excluded"
        )
        sql = (
            f"SELECT count(*) FILTER (WHERE live > 0 AND {present}), "
            f"coalesce(sum(excluded), 0), coalesce(sum(live) FILTER (WHERE NOT ({present})), 0) "
            f"FROM (SELECT {cols}, {counts} "
            f"FROM ({' UNION ALL '.join(parts)}) u GROUP BY {cols}) g"
        )
        row = await self.copier.driver.fetchrow(sql, *([self.excluded_rids] if ordered else []))
        return int(row[0]), int(row[1]), int(row[2])


def _ordinal(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_ORDINAL:
        raise ValueError(f"exclude holds {value!r}: record ordinals are 1-based ints")
    return value


async def _measure_raw_once(
    conn: AsyncConnection,
    bucket: str,
    keys: list[_Key],
    sources: AsyncIterator[tuple[str, _Source, Collection[int]]],
    *,
    careful: bool = False,
) -> tuple[_RawStager, tuple[int, int, int] | None]:
    names = _Names()
    measured: tuple[int, int, int] | None = None
    async with _session(conn) as driver:
        copier = _Copier(driver, careful)
        stager = _RawStager(copier, bucket, keys, names)
        file_no = 0
        async for store, source, exclude in sources:
            file_no += 1
            await stager.stage(file_no, store, source, exclude)
        await copier.close()
        if stager.keys_complete:
            measured = await stager.expected()
        await names.drop(driver)
    return stager, measured


async def _listed(
    stores: Sequence[tuple[str, Path]], exclude: Mapping[str, Collection[int]]
) -> AsyncIterator[tuple[str, _Source, Collection[int]]]:
    sources = _prefetched([path for _store, path in stores])
    async with contextlib.aclosing(sources):
        index = 0
        async for source in sources:
            store = stores[index][0]
            index += 1
            yield store, source, exclude.get(store, ())


def _raw_measure(
    stager: _RawStager, measured: tuple[int, int, int] | None, started: float
) -> RawMeasure:
    counts = list(stager.by_store.values())
    return RawMeasure(
        by_store=stager.by_store,
        total=None if None in counts else sum(c for c in counts if c is not None),
        expected_unique=measured[0] if measured else None,
        errors=stager.errors,
        duration_ms=(time.perf_counter() - started) * 1000,
        keyless_rows=measured[2] if measured else None,
        excluded_rows=measured[1] if measured else None,
    )


def _checked(exclude: Mapping[str, Collection[int]] | None) -> dict[str, Collection[int]]:
    for ordinals in (exclude or {}).values():
        for ordinal in ordinals:
            _ordinal(ordinal)
    return dict(exclude or {})


async def measure_raw(
    conn: AsyncConnection,
    bucket: str,
    files: Mapping[str, Path],
    exclude: Mapping[str, Collection[int]] | None = None,
) -> RawMeasure:
    """Count each store file's records and the bucket's distinct keys with the server's parser.

    `files`: store code -> raw CSV as saved. `exclude`: store code -> 1-based record ordinals
    (header not counted) that the reader already rejected; they are left out of
    `expected_unique` (and counted in `excluded_rows`), never out of the per-store counts.
    Runs in its own transaction, or in a savepoint when `conn` is already in one.
    """
    started = time.perf_counter()
    keys = _key_columns(bucket)
    excluded = _checked(exclude)
    stores = [(store, Path(path)) for store, path in sorted(files.items())]
    try:
        stager, measured = await _measure_raw_once(conn, bucket, keys, _listed(stores, excluded))
    except _Retry:  # some file was refused: again, with a savepoint per file
        stager, measured = await _measure_raw_once(
            conn, bucket, keys, _listed(stores, excluded), careful=True
        )
    return _raw_measure(stager, measured, started)


async def measure_raw_streamed(
    conn: AsyncConnection,
    bucket: str,
    files: AsyncIterator[tuple[str, Path, Collection[int]]],
) -> tuple[RawMeasure, dict[str, list[int]]]:
    """`measure_raw` over files that arrive one at a time (store, path, ordinals to exclude),
    each staged as it comes: the merge step feeds each store file as soon as its merger pass is
    done with it, so the server parses file k while the merger reads file k+1.

    Returns the measure and the exclusion it used (store -> sorted ordinals, stores without
    any left out), to compare with the rejects recorded later. A refused file costs what it
    costs `measure_raw`: the rest of the stream is collected, and everything measured again
    with a savepoint per file. The stream is always read to its end.
    """
    started = time.perf_counter()
    keys = _key_columns(bucket)
    seen: list[tuple[str, Path]] = []
    exclude: dict[str, Collection[int]] = {}

    def note(store: str, path: Path, ordinals: Collection[int]) -> None:
        exclude[store] = _checked({store: ordinals})[store]
        seen.append((store, Path(path)))

    async def take() -> tuple[str, _Source, Collection[int]] | None:
        item = await anext(files, None)
        if item is None:
            return None
        note(*item)
        store, path, ordinals = item
        # A small file is read on the loop's thread: a thread hop per file cost more than the
        # read (0.7 against 0.35 CPU-s for 510 files of a day, docs/benchmarks.md).
        small = Path(path).stat().st_size <= _READ_INLINE  # noqa: ASYNC240
        source = _prepare(Path(path)) if small else await asyncio.to_thread(_prepare, Path(path))
        return store, source, ordinals

    # The next file is taken and read while the server parses the current one. A file taken is
    # always in `seen`, so the careful attempt after a refusal measures every file.
    ahead: list[asyncio.Future[tuple[str, _Source, Collection[int]] | None]] = []

    async def arriving() -> AsyncIterator[tuple[str, _Source, Collection[int]]]:
        ahead.append(asyncio.ensure_future(take()))
        while (got := await ahead[-1]) is not None:
            ahead.append(asyncio.ensure_future(take()))
            yield got

    try:
        stager, measured = await _measure_raw_once(conn, bucket, keys, arriving())
    except _Retry:
        if ahead and await ahead[-1] is not None:
            async for item in files:  # the rest of the stream
                note(*item)
        stager, measured = await _measure_raw_once(
            conn, bucket, keys, _listed(sorted(seen), exclude), careful=True
        )
    used = {store: sorted(set(o)) for store, o in sorted(exclude.items()) if o}
    return _raw_measure(stager, measured, started), used


# ------------------------------------------------------------------ measure_load


def _load_result(merged_rows: int | None, error: str | None = None) -> LoadMeasure:
    """A result without a read-back: the merged file failed to parse, or it has no records."""
    zero = 0 if error is None else None
    return LoadMeasure(
        merged_rows=merged_rows,
        written=zero,
        kept_newer=zero,
        ingested_rows=zero,
        missing_keys=zero,
        missing_examples=[],
        duplicate_keys_in_merged=zero,
        error=error,
        duration_ms=0.0,
        distinct_keys=zero,
        keyless_rows=zero,
        stale_rows=zero,
    )


async def _stage_merged(
    driver: Any, bucket: str, keys: list[_Key], source: _Source, names: _Names
) -> tuple[str, int] | LoadMeasure:
    """COPY the merged file. Returns (SQL of its normalised keys with their multiplicity,
    merged_rows), or the final LoadMeasure when there is nothing to read back.

    The keys stay a subquery, grouped inside the read-back's own query: materialising them
    (CREATE TABLE AS + ANALYZE) for exact estimates measured ~1 s slower per million rows than
    the one hash aggregate feeding one hash join that PostgreSQL plans without them."""
    copier = _Copier(driver, careful=True)
    if not source.header:
        count = await _fallback_count(copier, names, source)
        if source.error or count is None or (count and not source.empty_report):
            return _load_result(count, source.error or "the merged file has no header record")
        return _load_result(count)
    hmap = map_header(bucket, source.header)
    found = [hmap.positions.get(k.csv_name) for k in keys]
    positions = [p for p in found if p is not None]
    if len(positions) < len(keys):
        lost = [k.csv_name for k, p in zip(keys, found, strict=True) if p is None]
        count = await _fallback_count(copier, names, source)
        return _load_result(count, f"no dedupe-key column {', '.join(lost)} in the header")
    stage = names.new("merged")
    width = len(source.header)
    await driver.execute(_staging_ddl(stage, width, set(positions), False))
    columns = [f"c{i + 1}" for i in range(width)]
    count, exc = await copier.run(lambda: _copy(driver, stage, columns, source))
    if exc is not None or count is None:
        fallback = await _fallback_count(copier, names, source)
        return _load_result(fallback, _describe(exc, source.header) if exc else "COPY failed")
    await copier.close()
    cells = ", ".join(
        key_sql(k.db_name, k.kind, f"c{p + 1}") + f" AS k{j}"
        for j, (k, p) in enumerate(zip(keys, positions, strict=True))
    )
    cols = ", ".join(f"k{j}" for j in range(len(keys)))
    grouped = (
        f"(SELECT {cols}, count(*) AS n FROM (SELECT {cells} FROM {_quote_ident(stage)}) s "
        f"GROUP BY {cols})"
    )
    return grouped, count


def _join_sql(bucket: str, keys: list[_Key]) -> tuple[str, str, str]:
    """(target table, join condition m -> t, "all key parts present") for the read-back."""
    target = _quote_ident(MERGE_BUCKET_DB_SPECS[bucket]["table_name"])
    on = " AND ".join(
        f"t.{_quote_ident(k.db_name)} = m.k{j}" + ("::numeric" if k.kind == "int" else "")
        for j, k in enumerate(keys)
    )
    present = " AND ".join(f"m.k{j} IS NOT NULL" for j in range(len(keys)))
    return target, on, present


async def _read_back(
    driver: Any, bucket: str, keys: list[_Key], merged: str, run_id: str, run_date: dt.date
) -> dict[str, Any]:
    """Every read-back count in one LEFT JOIN of the merged keys onto the bucket table."""
    target, on, present = _join_sql(bucket, keys)
    first = _quote_ident(keys[0].db_name)
    row = await driver.fetchrow(
        f"SELECT count(*) FILTER (WHERE {present}) AS distinct_keys, "
        f"count(*) FILTER (WHERE {present} AND m.n > 1) AS duplicate_keys, "
        f"coalesce(sum(m.n) FILTER (WHERE NOT ({present})), 0) AS keyless, "
        f"count(*) FILTER (WHERE t.run_id = $1 AND t.run_date = $2) AS written, "
        f"count(*) FILTER (WHERE t.run_date > $2) AS kept_newer, "
        f"count(*) FILTER (WHERE t.run_date < $2 OR (t.run_date = $2 AND t.run_id <> $1)) "
        f"AS stale, count(*) FILTER (WHERE {present} AND t.{first} IS NULL) AS missing "
        f"FROM {merged} m LEFT JOIN {target} t ON {on}",
        run_id,
        run_date,
    )
    return {name: int(value) for name, value in row.items()}


async def _missing_examples(
    driver: Any, bucket: str, keys: list[_Key], merged: str
) -> list[dict[str, Any]]:
    target, on, present = _join_sql(bucket, keys)
    cols = ", ".join(f"m.k{j}" for j in range(len(keys)))
    rows = await driver.fetch(
        f"SELECT {cols} FROM {merged} m WHERE {present} "
        f"AND NOT EXISTS (SELECT 1 FROM {target} t WHERE {on}) ORDER BY {cols} LIMIT {EXAMPLES}"
    )
    return [
        {k.db_name: int(v) if k.kind == "int" else v for k, v in zip(keys, r, strict=True)}
        for r in rows
    ]


@dataclass
class StagedMerged:
    """A merged file already parsed by the server, waiting for its load to commit.

    `read_back` runs the read-back join in the staging session; READ COMMITTED gives each of
    its statements a fresh snapshot, so it sees the load that committed after the staging.
    """

    driver: Any
    bucket: str
    keys: list[_Key]
    staged: tuple[str, int] | LoadMeasure
    grown: bool = False  # staged as the merger wrote it (`GrowingFile`)

    async def read_back(self, *, run_id: str, run_date: dt.date) -> LoadMeasure:
        if isinstance(self.staged, LoadMeasure):
            return self.staged
        merged, merged_rows = self.staged
        c = await _read_back(self.driver, self.bucket, self.keys, merged, run_id, run_date)
        examples = (
            await _missing_examples(self.driver, self.bucket, self.keys, merged)
            if c["missing"]
            else []
        )
        return LoadMeasure(
            merged_rows=merged_rows,
            written=c["written"],
            kept_newer=c["kept_newer"],
            ingested_rows=c["written"] + c["kept_newer"],
            missing_keys=c["missing"],
            missing_examples=examples,
            duplicate_keys_in_merged=c["duplicate_keys"],
            error=None,
            duration_ms=0.0,
            distinct_keys=c["distinct_keys"],
            keyless_rows=c["keyless"],
            stale_rows=c["stale"],
        )


class GrowingFile(Protocol):
    """A merged file whose bytes are read while the merger still writes them
    (`app.measure_tail.MergedTail`)."""

    path: Path

    async def header(self) -> list[str] | None:
        """The header record, once written (None: the file ended without one)."""

    def stream(self) -> AsyncIterator[bytes]:
        """The payload after the BOM, as written, without blank lines at the very end (as
        `_prepare` sends a file). Once only."""

    async def finished_at(self) -> Path:
        """Where the complete file is, once the merger has renamed it."""

    async def verified(self) -> bool:
        """Whether the bytes read as it grew are byte for byte the complete file's."""


async def _stage_distinct(
    driver: Any, bucket: str, keys: list[_Key], source: _Source, names: _Names
) -> tuple[str, int] | None:
    """A growing merged file COPYed once into a table that computes each record's normalised
    keys as it is inserted and holds them UNIQUE, so nothing is left to group once the stream
    ends (the grouping after the COPY took 1.8 s per million rows, while the load ran; this
    COPY's extra work happens while the merger writes). Keys are distinct in a correct merged
    file; a repeated one fails the COPY, as does anything else, and then (None) the final
    file is staged again the usual way, which counts the repeats."""
    hmap = map_header(bucket, source.header)
    found = [hmap.positions.get(k.csv_name) for k in keys]
    positions = [p for p in found if p is not None]
    if len(positions) < len(keys):
        return None
    stage = names.new("merged")
    width = len(source.header)
    cols = [f"k{j}" for j in range(len(keys))]
    generated = [
        f"{c} text GENERATED ALWAYS AS ({key_sql(k.db_name, k.kind, f'c{p + 1}')}) STORED"
        for c, k, p in zip(cols, keys, positions, strict=True)
    ]
    unique = f"UNIQUE ({', '.join(cols)})"
    await driver.execute(_staging_ddl(stage, width, set(positions), False, [*generated, unique]))
    copier = _Copier(driver, careful=True)
    columns = [f"c{i + 1}" for i in range(width)]
    count, exc = await copier.run(lambda: _copy(driver, stage, columns, source))
    if exc is not None or count is None:
        return None
    await copier.close()
    await driver.execute(f"ANALYZE {_quote_ident(stage)}")
    return f"(SELECT {', '.join(cols)}, 1 AS n FROM {_quote_ident(stage)})", count


async def _stage_growing(
    driver: Any, bucket: str, keys: list[_Key], growing: GrowingFile, names: _Names
) -> tuple[tuple[str, int] | None, Path]:
    """The merged file COPYed as it is written (`_stage_distinct`), and its final path. The
    staging is None when that did not work or the bytes sent are not the final file's (the
    caller then stages the final file itself)."""
    header = await growing.header()
    staged = None
    if header:
        source = _Source(growing.path, header, False, stream=growing.stream())
        staged = await _stage_distinct(driver, bucket, keys, source, names)
    verified = await growing.verified()  # waits for the file to be complete
    return (staged if verified else None), await growing.finished_at()


@contextlib.asynccontextmanager
async def staged_merged(
    conn: AsyncConnection,
    bucket: str,
    merged: Path | GrowingFile,
    *,
    materialize: bool = False,
) -> AsyncIterator[StagedMerged]:
    """The merged file COPYed (and, with `materialize`, its keys grouped into a table) in a
    session that stays open for a later `read_back`; the temp tables go when it closes.

    `merged` may be a `GrowingFile`, COPYed while the merger writes it (`_stage_distinct`). Its
    staging is used only when the bytes the server parsed are the final file's (`verified`);
    otherwise the final file is staged again, from its path, the usual way.

    Materialising costs ~1 s per million rows more than grouping inside the read-back: worth it
    only when the staging runs while another step does (`app.reconcile.load_and_measure`)."""
    keys = _key_columns(bucket)
    names = _Names()
    async with _session(conn) as driver:
        if isinstance(merged, Path):
            grown, path = None, merged
        else:
            grown, path = await _stage_growing(driver, bucket, keys, merged, names)
        staged: tuple[str, int] | LoadMeasure | None = grown
        if staged is None:
            source = await asyncio.to_thread(_prepare, path)
            staged = await _stage_merged(driver, bucket, keys, source, names)
            if materialize and not isinstance(staged, LoadMeasure):
                table = names.new("merged_keys")
                await driver.execute(
                    f"CREATE TEMP TABLE {_quote_ident(table)} AS {staged[0][1:-1]}"
                )
                await driver.execute(f"ANALYZE {_quote_ident(table)}")
                staged = (_quote_ident(table), staged[1])
        try:
            yield StagedMerged(driver, bucket, keys, staged, grown is not None)
        finally:
            await names.drop(driver)


async def measure_load(
    conn: AsyncConnection, bucket: str, merged_path: Path, *, run_id: str, run_date: dt.date
) -> LoadMeasure:
    """Read the bucket table back after the load committed, against the server-parsed merged file.

    `written`: merged keys whose row carries this `run_id` and `run_date`; `kept_newer`: merged
    keys whose row is from a later run date (a backfill leaves those alone); `stale_rows`: rows
    present but from an older or other load, which this load should have rewritten;
    `missing_keys`: merged keys with no row at all. Keys are counted once however often the
    merged file repeats them (`duplicate_keys_in_merged` says how many repeat). Runs in its own
    transaction, or in a savepoint when `conn` is already in one.
    """
    started = time.perf_counter()
    async with staged_merged(conn, bucket, merged_path) as staged:
        result = await staged.read_back(run_id=run_id, run_date=run_date)
    return dataclasses.replace(result, duration_ms=(time.perf_counter() - started) * 1000)
