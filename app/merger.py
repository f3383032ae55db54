"""Merge one bucket's store files for one run date into `DATA_DIR/<date>/<merged name>`.

Why it is shaped like this (PORTAL.md, "What the files really look like"):

- Headers differ between exports in case, BOM and space / underscore / hyphen, and the
  undelivered export says `order_no` where the spec says `order_id`. Every file's header is
  resolved by name (`map_header`) to the spec's CSV names; columns are never aligned by position.
  The merged file is always headed by the spec's `column_map` keys, in spec order, so the
  ingester reads every merged file with one mapping. Columns a file lacks are written empty;
  columns the spec does not know are reported (one warning each) and not written.
- The `No data available to export.` sentinel and empty files are empty reports: zero rows and
  no header (`app.csv_io.open_records`). Quoted newlines are one field and are written back quoted.
- Keys repeat inside a store file and across stores. Dedupe is on the *database* value of the
  bucket's `dedupe_keys` (`app.coercion.key_value`: trimmed, mobile numbers normalised), so the
  merger and the ingester agree on what "the same key" is.

Which duplicate wins (one deterministic rule, generic over buckets): the spec's `dedupe_prefer`
list of `(column, "asc" | "desc")`, compared column by column on coerced values (bool, date,
decimal, int, text; a `*_time` text column compares as a clock time so `3:03:39 PM` beats
`11:00:00 AM`). A missing or uncoercible value never wins against a present one, whatever the
direction. A complete tie goes to the *last* occurrence in reading order: store files sorted by
store code, then line order. Buckets with an empty list (repeat customers) therefore keep the last
occurrence. Today's rules: missed leads prefer `is_order_placed`, then the latest
`pickup_created_date`, then the latest `pickup_created_time`; undelivered orders prefer the row
with the latest `actual_deliver_on` (a delivered copy beats a pending one).

A row whose key cannot be coerced (a blank `pickup_no`, say) is not a duplicate of anything and
must not vanish: it is written to the merged file unchanged, so the ingester rejects it with its
line and reason and the audit fails loudly. Such a row counts once in `merged_rows` and once in
`expected_unique` (each is its own "unique" row), and is reported as `rows_without_key`.

Memory: two streaming passes. Pass 1 reads the raw files and keeps, per distinct key, only the
winner's position (file index, record index) and its raw preference values; pass 2 re-reads the
raw files and writes the records at the winning positions. Memory therefore grows with the number
of unique keys, never with the size of the files or of their free-text fields.

Counts: `download_rows_by_store` comes from pass 1 (records, not lines). `expected_unique` is the
number of distinct keys seen in pass 1 plus the rows without a key, computed from the raw files;
`merged_rows` is counted by re-reading the merged file after it is written (not by trusting the
writer), so the audit compares two independent numbers.
"""

import csv
import datetime as dt
import os
import re
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.coercion import CoercionError, coerce_value, key_value, normalize_header
from app.config import MERGE_BUCKET_DB_SPECS, CoerceKind, merged_name, validate_store_code
from app.csv_io import count_records, open_records
from app.json_logger import log_event


class MergeError(Exception):
    """The bucket cannot be merged correctly (e.g. a store file lacks a dedupe-key column)."""


@dataclass(frozen=True)
class HeaderMap:
    """How one file's header maps onto the spec's CSV column names."""

    positions: dict[str, int]  # spec CSV name (column_map key) -> index in the record
    mapping: dict[str, str]  # header as written in the file -> spec CSV name
    unknown: list[str]  # headers the spec does not know (skipped)
    duplicated: list[str]  # headers that name an already-mapped column (first one wins)
    width: int  # number of header cells; a record of another length is "ragged"


@dataclass(frozen=True)
class MergeResult:
    bucket: str
    run_date: dt.date
    path: Path
    merged_rows: int
    expected_unique: int
    download_rows_by_store: dict[str, int]
    download_total: int
    columns: list[str]
    unknown_columns: list[str]
    duplicates_dropped: int
    duration_ms: float
    rows_without_key: int = 0
    ragged_rows: int = 0
    columns_missing_by_store: dict[str, list[str]] = field(default_factory=dict)


def header_lookup(bucket: str) -> dict[str, str]:
    """Normalised header -> spec CSV name: the `column_map` keys, the aliases, the DB names.

    DB column names are accepted too so that a file written with them (e.g. `pickup_row_id`)
    reads the same; a CSV name always wins over another column's DB name.
    """
    spec = MERGE_BUCKET_DB_SPECS[bucket]
    lookup: dict[str, str] = {}
    for csv_name, db_name in spec["column_map"].items():
        lookup.setdefault(normalize_header(db_name), csv_name)
    for alias, csv_name in spec.get("header_aliases", {}).items():
        lookup[normalize_header(alias)] = csv_name
    for csv_name in spec["column_map"]:
        lookup[normalize_header(csv_name)] = csv_name
    return lookup


def map_header(bucket: str, header: Sequence[str]) -> HeaderMap:
    """Resolve a file's header by name, never by position (shared with the ingester)."""
    lookup = header_lookup(bucket)
    positions: dict[str, int] = {}
    mapping: dict[str, str] = {}
    unknown: list[str] = []
    duplicated: list[str] = []
    for index, name in enumerate(header):
        csv_name = lookup.get(normalize_header(name))
        if csv_name is None:
            if normalize_header(name):  # a trailing empty header cell is not a column
                unknown.append(name.replace("\ufeff", "").strip())
        elif csv_name in positions:
            duplicated.append(name)
        else:
            positions[csv_name] = index
            mapping[name.replace("\ufeff", "").strip()] = csv_name
    return HeaderMap(positions, mapping, unknown, duplicated, len(header))


_TIME_RE = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?\s*([AaPp][Mm])?$")


def _clock(raw: str) -> tuple[int, int, int] | None:
    m = _TIME_RE.fullmatch(raw.strip())
    if not m:
        return None
    hour, minute, second = int(m[1]), int(m[2]), int(m[3] or 0)
    if m[4]:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if m[4].lower() == "pm" else 0)
    return (hour, minute, second) if hour < 24 and minute < 60 and second < 60 else None


@dataclass(frozen=True)
class _Preference:
    """The bucket's winner rule, compiled: columns, kinds and directions."""

    columns: tuple[str, ...]  # spec CSV names
    db_columns: tuple[str, ...]
    kinds: tuple[CoerceKind, ...]
    descending: tuple[bool, ...]

    @classmethod
    def for_bucket(cls, bucket: str) -> "_Preference":
        spec = MERGE_BUCKET_DB_SPECS[bucket]
        to_csv = {db: csv_name for csv_name, db in spec["column_map"].items()}
        prefer = list(spec.get("dedupe_prefer", []))
        return cls(
            columns=tuple(to_csv[col] for col, _ in prefer),
            db_columns=tuple(col for col, _ in prefer),
            kinds=tuple(spec["coerce"][col] for col, _ in prefer),
            descending=tuple(direction == "desc" for _, direction in prefer),
        )

    def sort_values(self, raw: tuple[str | None, ...]) -> list[Any]:
        values: list[Any] = []
        for column, kind, text in zip(self.db_columns, self.kinds, raw, strict=True):
            if kind == "str" and column.endswith("_time"):
                values.append(_clock(text) if text else None)
                continue
            try:
                values.append(coerce_value(column, kind, text))
            except CoercionError:
                values.append(None)
        return values

    def later_wins(self, later: tuple[str | None, ...], earlier: tuple[str | None, ...]) -> bool:
        """True if the later occurrence beats the earlier one (ties go to the later one)."""
        if not self.columns:
            return True
        new, old = self.sort_values(later), self.sort_values(earlier)
        for a, b, desc in zip(new, old, self.descending, strict=True):
            if a == b:
                continue
            if a is None:
                return False
            if b is None:
                return True
            return bool(a > b) if desc else bool(a < b)
        return True


def _key_columns(bucket: str) -> list[tuple[str, str, CoerceKind]]:
    """(spec CSV name, DB name, kind) of each dedupe key, in dedupe_keys order."""
    spec = MERGE_BUCKET_DB_SPECS[bucket]
    to_csv = {db: csv_name for csv_name, db in spec["column_map"].items()}
    return [(to_csv[db], db, spec["coerce"][db]) for db in spec["dedupe_keys"]]


def _cell(record: Sequence[str], index: int | None) -> str | None:
    return record[index] if index is not None and index < len(record) else None


@dataclass
class _Source:
    store_code: str
    path: Path
    header: HeaderMap | None = None
    rows: int = 0


def _read(source: _Source, bucket: str) -> Iterator[tuple[int, list[str], HeaderMap]]:
    with open_records(source.path) as (header, records):
        if not header:
            return
        hmap = map_header(bucket, header)
        source.header = hmap
        for _line, record in records:
            yield _line, record, hmap


def merge_bucket(
    bucket: str,
    run_date: dt.date,
    store_files: Mapping[str, Path],
    data_dir: Path,
) -> MergeResult:
    """Stream-merge and dedupe one bucket's store files for one run date (see module docstring).

    Raises MergeError when a store file with rows lacks a dedupe-key column: its rows could not
    be deduplicated, and silently merging them keyless would hide a broken export. Any failure
    is logged (phase=merge, status=error) and leaves no merged file behind.
    """
    try:
        return _merge(bucket, run_date, store_files, data_dir)
    except Exception as exc:
        log_event(
            "merge",
            f"merge failed: {type(exc).__name__}: {exc}",
            status="error",
            bucket=bucket,
            date=run_date,
            extras={"stores": sorted(store_files)},
        )
        raise


def _merge(
    bucket: str,
    run_date: dt.date,
    store_files: Mapping[str, Path],
    data_dir: Path,
) -> MergeResult:
    started = time.perf_counter()
    spec = MERGE_BUCKET_DB_SPECS[bucket]
    columns = list(spec["column_map"])
    keys = _key_columns(bucket)
    prefer = _Preference.for_bucket(bucket)
    sources = [
        _Source(validate_store_code(code), Path(path))
        for code, path in sorted(store_files.items(), key=lambda item: item[0])
    ]

    # Pass 1: per distinct key, the winner's position and raw preference values.
    winners: dict[tuple[Any, ...], tuple[int, int, tuple[str | None, ...]]] = {}
    keyless: list[tuple[int, int]] = []
    valid_rows = 0
    unknown: dict[str, str] = {}
    missing_by_store: dict[str, list[str]] = {}
    for file_index, source in enumerate(sources):
        key_idx: list[int | None] = []
        prefer_idx: list[int | None] = []
        record_index = -1
        for record_index, (_line, record, hmap) in enumerate(_read(source, bucket)):
            if record_index == 0:
                key_idx = [hmap.positions.get(csv_name) for csv_name, _, _ in keys]
                prefer_idx = [hmap.positions.get(csv_name) for csv_name in prefer.columns]
                if lost := [k[0] for k, i in zip(keys, key_idx, strict=True) if i is None]:
                    raise MergeError(
                        f"{bucket}: store {source.store_code} file {source.path.name} has no "
                        f"dedupe-key column {', '.join(lost)} (header: {list(hmap.mapping)})"
                    )
            try:
                key = tuple(
                    key_value(db, kind, _cell(record, idx))
                    for (_, db, kind), idx in zip(keys, key_idx, strict=True)
                )
            except CoercionError:
                keyless.append((file_index, record_index))
                continue
            valid_rows += 1
            pref = tuple(_cell(record, idx) for idx in prefer_idx)
            previous = winners.get(key)
            if previous is None or prefer.later_wins(pref, previous[2]):
                winners[key] = (file_index, record_index, pref)
        source.rows = record_index + 1
        if source.header is not None:
            for name in source.header.unknown:
                unknown.setdefault(normalize_header(name), name)
            if source.rows and (
                lacking := [c for c in columns if c not in source.header.positions]
            ):
                missing_by_store[source.store_code] = lacking

    expected_unique = len(winners) + len(keyless)
    duplicates_dropped = valid_rows - len(winners)
    keep: list[set[int]] = [set() for _ in sources]
    for file_index, record_index, _ in winners.values():
        keep[file_index].add(record_index)
    for file_index, record_index in keyless:
        keep[file_index].add(record_index)
    del winners

    # Pass 2: write the winners (and keyless rows) in reading order, aligned by name.
    out_dir = data_dir / run_date.isoformat()
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / merged_name(bucket, run_date)
    tmp = out_dir / f".{final.name}.{secrets.token_hex(4)}.tmp"
    written = 0
    ragged = 0
    try:
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(columns)
            for file_index, source in enumerate(sources):
                wanted = keep[file_index]
                seen = 0
                for record_index, (_line, record, hmap) in enumerate(_read(source, bucket)):
                    seen += 1
                    if record_index not in wanted:
                        continue
                    if len(record) != hmap.width:
                        ragged += 1  # padded / truncated by name; reported, not fatal
                    writer.writerow([_cell(record, hmap.positions.get(c)) or "" for c in columns])
                    written += 1
                if seen != source.rows:
                    raise MergeError(
                        f"{bucket}: {source.path.name} changed while merging "
                        f"({source.rows} records, then {seen})"
                    )
            fh.flush()
            os.fsync(fh.fileno())
        merged_rows = count_records(tmp)
        if merged_rows != written:
            raise MergeError(
                f"{bucket}: wrote {written} rows but the merged file reads back {merged_rows}"
            )
        tmp.replace(final)
    finally:
        tmp.unlink(missing_ok=True)

    by_store = {s.store_code: s.rows for s in sources}
    result = MergeResult(
        bucket=bucket,
        run_date=run_date,
        path=final,
        merged_rows=merged_rows,
        expected_unique=expected_unique,
        download_rows_by_store=by_store,
        download_total=sum(by_store.values()),
        columns=columns,
        unknown_columns=sorted(unknown.values()),
        duplicates_dropped=duplicates_dropped,
        duration_ms=(time.perf_counter() - started) * 1000,
        rows_without_key=len(keyless),
        ragged_rows=ragged,
        columns_missing_by_store=missing_by_store,
    )
    for name in result.unknown_columns:
        log_event(
            "merge",
            f"unknown column {name!r} skipped",
            status="warn",
            bucket=bucket,
            date=run_date,
            merged_file=final,
            extras={"column": name},
        )
    log_event(
        "merge",
        "merged",
        status="warn" if keyless or ragged else "ok",
        bucket=bucket,
        date=run_date,
        merged_file=final,
        duration_ms=result.duration_ms,
        counts={
            "download_total": result.download_total,
            "merged_rows": merged_rows,
            "expected_unique": expected_unique,
            "duplicates_dropped": duplicates_dropped,
            "rows_without_key": len(keyless),
        },
        extras={
            "download_rows_by_store": by_store,
            "stores": len(sources),
            "unknown_columns": result.unknown_columns,
            "columns_missing_by_store": missing_by_store,
            "ragged_rows": ragged,
        },
    )
    return result
