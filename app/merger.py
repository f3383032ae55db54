"""Merge one bucket's store files for one run date into `DATA_DIR/<date>/<merged name>`.

Why it is shaped like this (PORTAL.md, "What the files really look like"):

- Every store file is read through the strict reader (`app.report_check.read_report`), the one
  place that decides what a raw record is. A file with a file-level problem (undecodable, HTML,
  blank, not a report of this bucket, another store's records) fails *its own store only*: it is
  not merged, contributes nothing and is listed in `failed_stores`; the other stores merge.
- A record the reader rejects (ragged, unterminated or runaway quote, footer, missing key, a value
  the row model cannot coerce) never reaches the merged file; it is returned in `rejects` with
  its file, line, raw text and reason, and counts as quarantined or blocking per the bucket's
  `quarantine` rule. The merged file therefore holds only rows the ingester can load.
- Headers differ between exports in case, BOM and space / underscore / hyphen, and the
  undelivered export says `order_no` where the spec says `order_id`. Every file's header is
  resolved by name (`map_header`) to the spec's CSV names; columns are never aligned by position.
  The merged file is always headed by the spec's `column_map` keys, in spec order, so the
  ingester reads every merged file with one mapping. Columns a file lacks are written empty;
  columns the spec does not know are reported (one warning each) and not written.
- The `No data available to export.` sentinel and zero-byte files are empty reports: zero rows
  and no header. Quoted newlines are one field and are written back quoted.
- Key cells are written trimmed and the store code as the canonical code of the store asked
  for, so ` a668 ` and `A668` are one store, in the file as in the table.
- Keys repeat inside a store file. Dedupe is on the *database* value of the bucket's
  `dedupe_keys` (the row model's coerced values: trimmed, mobile numbers normalised), so the
  merger and the ingester agree on what "the same key" is.

Which duplicate wins (one deterministic rule, generic over buckets): the spec's `dedupe_prefer`
list of `(column, "asc" | "desc")`, compared column by column on coerced values (bool, date,
decimal, int, text; a `*_time` text column compares as a clock time so `3:03:39 PM` beats
`11:00:00 AM`). A missing value never wins against a present one, whatever the direction. A
complete tie goes to the *last* occurrence in reading order: store files sorted by store code,
then line order. Buckets with an empty list (repeat customers) therefore keep the last
occurrence. Today's rules: missed leads prefer `is_order_placed`, then the latest
`pickup_created_date`, then the latest `pickup_created_time`; undelivered orders prefer the row
with the latest `actual_deliver_on` (a delivered copy beats a pending one).

Memory: two streaming passes. Pass 1 reads each store file and keeps, per distinct key, only the
winner's position (file index, record number) and its preference values; a store's keys join the
bucket's only once its whole file read cleanly (a problem on its last line still fails the store
cleanly). Pass 2 re-reads the merged stores and writes the records at the winning positions.
Memory grows with the number of unique keys, never with the size of the files or their fields.

Counts: `download_rows_by_store` are the records of each merged store file as the strict reader
counts them (rejects included; failed files excluded). `expected_unique` is the number of
distinct keys among valid records, from pass 1; `merged_rows` is counted by re-reading the
merged file after it is written (not by trusting the writer), so the audit compares two
independent numbers. `download_total == expected_unique + duplicates_dropped + len(rejects)`.
"""

import csv
import datetime as dt
import operator
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from app.coercion import normalize_header
from app.config import MERGE_BUCKET_DB_SPECS, merged_name, validate_store_code
from app.csv_io import count_records
from app.header_map import HeaderMap, header_lookup, map_header
from app.json_logger import log_event
from app.rejects import Reject, counts_by_code, split_counts
from app.report_check import CoercerPool, ReportProblem, read_report

__all__ = [
    "HeaderMap",
    "MergeError",
    "MergeResult",
    "header_lookup",
    "map_header",
    "merge_bucket",
]


class ScanListener(Protocol):
    """Told of each store file the first pass has read whole and will merge, then of the end
    of the first pass (the audit's raw measure, `app.measure_worker`)."""

    def scanned(self, store: str, path: Path, ordinals: frozenset[int]) -> None:
        """`ordinals`: the 1-based records of that file the merger rejected."""

    def all_scanned(self) -> None: ...

    def writing(self, path: Path) -> None:
        """The second pass has opened the merged file at `path` (a temporary name) and only
        ever appends to it."""

    def written(self, path: Path) -> None:
        """The merged file is complete, read back, and renamed to `path`."""


class MergeError(Exception):
    """The bucket cannot be merged correctly (e.g. a store file changed while being merged)."""


@dataclass(frozen=True)
class MergeResult:
    bucket: str
    run_date: dt.date
    path: Path  # the merged file
    merged_rows: int  # records in the merged file, counted by re-reading it
    expected_unique: int  # distinct keys among valid records (pass 1)
    download_rows_by_store: dict[str, int]  # records per merged store file, rejects included
    download_total: int
    columns: list[str]
    unknown_columns: list[str]
    duplicates_dropped: int  # valid records whose key repeated
    duration_ms: float
    columns_missing_by_store: dict[str, list[str]] = field(default_factory=dict)
    rejects: list[Reject] = field(default_factory=list)  # every record not merged
    quarantined: int = 0
    blocking: int = 0
    failed_stores: dict[str, str] = field(default_factory=dict)  # store -> file problem
    merged_stores: dict[str, str] = field(default_factory=dict)  # store -> merged file path


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
    """The bucket's winner rule, compiled: slots in the coerced values, clocks, directions.

    A winner keeps its raw preference values (`pick`, cheap); they are made comparable
    (`comparable`: clock times parsed) only when its key repeats.
    """

    slots: tuple[int, ...]  # index of each preference column in `coerce` order
    clock: tuple[bool, ...]  # a `*_time` text column, compared as a clock time
    descending: tuple[bool, ...]

    @classmethod
    def for_bucket(cls, bucket: str) -> "_Preference":
        spec = MERGE_BUCKET_DB_SPECS[bucket]
        order = list(spec["coerce"])
        prefer = list(spec.get("dedupe_prefer", []))
        return cls(
            slots=tuple(order.index(col) for col, _ in prefer),
            clock=tuple(
                spec["coerce"][col] == "str" and col.endswith("_time") for col, _ in prefer
            ),
            descending=tuple(direction == "desc" for _, direction in prefer),
        )

    def picker(self) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
        """The raw preference values of a record's coerced values."""
        slots = self.slots
        if len(slots) > 1:
            return operator.itemgetter(*slots)
        return lambda values: tuple(values[s] for s in slots)

    def comparable(self, raw: tuple[Any, ...]) -> list[Any]:
        return [
            (_clock(value) if value else None) if clock else value
            for value, clock in zip(raw, self.clock, strict=True)
        ]

    def later_wins(self, later: tuple[Any, ...], earlier: tuple[Any, ...]) -> bool:
        """True if the later occurrence beats the earlier one (ties go to the later one)."""
        for a, b, desc in zip(
            self.comparable(later), self.comparable(earlier), self.descending, strict=True
        ):
            if a == b:
                continue
            if a is None:
                return False
            if b is None:
                return True
            return bool(a > b) if desc else bool(a < b)
        return True


_Winner = tuple[int, int, tuple[Any, ...]]  # (file index, record_no, preference values)


@dataclass
class _Source:
    index: int
    store_code: str
    path: Path
    header: HeaderMap | None = None
    rows: int = 0
    valid: int = 0
    rejects: list[Reject] = field(default_factory=list)


def _key_getter(bucket: str) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """The dedupe key (coerced values of `dedupe_keys`) of a record's coerced values."""
    spec = MERGE_BUCKET_DB_SPECS[bucket]
    order = list(spec["coerce"])
    slots = [order.index(k) for k in spec["dedupe_keys"]]
    if len(slots) == 1:
        return lambda values: (values[slots[0]],)
    return operator.itemgetter(*slots)


def _scan(
    bucket: str,
    source: _Source,
    key_of: Callable[[Sequence[Any]], tuple[Any, ...]],
    prefer: _Preference,
    coercers: CoercerPool,
) -> dict[tuple[Any, ...], _Winner]:
    """Pass 1 over one store file: its winners per key (raises ReportProblem / OSError)."""
    winners: dict[tuple[Any, ...], _Winner] = {}
    pick, later_wins, index = prefer.picker(), prefer.later_wins, source.index
    rows = valid = 0
    with read_report(bucket, source.store_code, source.path, coercers=coercers) as report:
        source.header = report.header
        for _line, record_no, _cells, reject, values in report.records:
            rows += 1
            if values is None:
                assert reject is not None
                source.rejects.append(reject)
                continue
            valid += 1
            key = key_of(values)
            previous = winners.get(key)
            if previous is None:
                winners[key] = (index, record_no, pick(values))
            elif later_wins(pref := pick(values), previous[2]):
                winners[key] = (index, record_no, pref)
    source.rows, source.valid = rows, valid
    return winners


def _fold(
    winners: dict[tuple[Any, ...], _Winner],
    store_winners: dict[tuple[Any, ...], _Winner],
    prefer: _Preference,
) -> dict[tuple[Any, ...], _Winner]:
    """Add one store's winners to the bucket's, in reading order (the tie rule holds)."""
    if not winners:
        return store_winners
    for key, entry in store_winners.items():
        previous = winners.get(key)
        if previous is None or prefer.later_wins(entry[2], previous[2]):
            winners[key] = entry
    return winners


def _write_store(bucket: str, source: _Source, wanted: set[int], writer: Any) -> int:
    """Write one store's kept records (canonical cells, aligned by name); rows written."""
    written = seen = 0
    columns = list(MERGE_BUCKET_DB_SPECS[bucket]["column_map"])
    with read_report(bucket, source.store_code, source.path, check_values=False) as report:
        hmap = report.header
        if hmap is None:
            raise MergeError("it is now an empty report")
        # A column the file lacks reads the "" appended after the record's last cell.
        pick = operator.itemgetter(*[hmap.positions.get(c, hmap.width) for c in columns])
        for _line, record_no, cells, _reject, _values in report.records:
            seen += 1
            if record_no not in wanted:
                continue
            if cells is None:
                raise MergeError(f"record {record_no} is no longer valid")
            cells.append("")
            writer.writerow(pick(cells))
            written += 1
    if seen != source.rows:
        raise MergeError(f"{source.rows} records, then {seen}")
    return written


def _write(
    bucket: str,
    sources: Sequence[_Source],
    keep: Sequence[set[int]],
    columns: list[str],
    tmp: Path,
    listener: ScanListener | None = None,
) -> int:
    """Pass 2: write the kept records of the merged stores; rows written."""
    written = 0
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        if listener is not None:
            listener.writing(tmp)
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        for source in sources:
            if not source.rows:
                continue  # an empty report or a header without records: nothing to write
            try:
                written += _write_store(bucket, source, keep[source.index], writer)
            except (ReportProblem, MergeError, OSError) as exc:
                raise MergeError(
                    f"{bucket}: {source.path.name} changed while merging: {exc}"
                ) from exc
        fh.flush()
        os.fsync(fh.fileno())
    return written


def merge_bucket(
    bucket: str,
    run_date: dt.date,
    store_files: Mapping[str, Path],
    data_dir: Path,
    *,
    out_dir: Path | None = None,
    listener: ScanListener | None = None,
) -> MergeResult:
    """Stream-merge and dedupe one bucket's store files for one run date (see module docstring).

    `out_dir` is where the merged file goes (default `data_dir/<run date>/`). `listener`
    hears of each store file as soon as the first pass has read it whole and it will be merged,
    in merging order, and of the first pass's end (the audit's raw measure starts on each file
    then: `app.reconcile.merge_and_measure`); then of the merged file's temporary path when the
    second pass opens it, and of its final path once it is renamed. A store whose file
    has a file-level problem is listed in `failed_stores` and merged as if absent. Raises
    MergeError only when no correct merged file can be written (a file changed while being
    merged, the merged file does not read back); any failure is logged (phase=merge,
    status=error) and leaves no merged file behind.
    """
    try:
        folder = out_dir or data_dir / run_date.isoformat()
        return _merge(bucket, run_date, store_files, folder, listener)
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


def _pass_one(
    bucket: str, sources: list[_Source], run_date: dt.date, listener: ScanListener | None = None
) -> tuple[dict[tuple[Any, ...], _Winner], list[_Source], dict[str, str]]:
    """Scan every store; (winners, merged sources, failed store -> reason)."""
    key_of, prefer = _key_getter(bucket), _Preference.for_bucket(bucket)
    coercers: CoercerPool = {}  # one memoised coercer per header layout, shared by the stores
    winners: dict[tuple[Any, ...], _Winner] = {}
    merged: list[_Source] = []
    failed: dict[str, str] = {}
    for source in sources:
        try:
            store_winners = _scan(bucket, source, key_of, prefer, coercers)
        except (ReportProblem, OSError) as exc:
            kind: str = exc.problem.kind if isinstance(exc, ReportProblem) else "unreadable"
            reason = exc.problem.reason if isinstance(exc, ReportProblem) else f"{exc}"
            failed[source.store_code] = f"{kind}: {reason}"
            log_event(
                "merge",
                f"store file not merged: {kind}: {reason}",
                status="warn",
                bucket=bucket,
                store_code=source.store_code,
                date=run_date,
                extras={"file": str(source.path), "problem": kind},
            )
            continue
        winners = _fold(winners, store_winners, prefer)
        merged.append(source)
        if listener is not None:
            own = {r.record_no for r in source.rejects if r.store_code == source.store_code}
            listener.scanned(source.store_code, source.path, frozenset(own))
    if listener is not None:
        listener.all_scanned()
    return winners, merged, failed


def _merge(
    bucket: str,
    run_date: dt.date,
    store_files: Mapping[str, Path],
    out_dir: Path,
    listener: ScanListener | None = None,
) -> MergeResult:
    started = time.perf_counter()
    columns = list(MERGE_BUCKET_DB_SPECS[bucket]["column_map"])
    sources = [
        _Source(index, validate_store_code(code), Path(path))
        for index, (code, path) in enumerate(sorted(store_files.items(), key=lambda kv: kv[0]))
    ]
    winners, merged, failed = _pass_one(bucket, sources, run_date, listener)
    expected_unique = len(winners)
    keep: list[set[int]] = [set() for _ in sources]
    for file_index, record_no, _ in winners.values():
        keep[file_index].add(record_no)
    del winners

    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / merged_name(bucket, run_date)
    tmp = out_dir / f".{final.name}.{secrets.token_hex(4)}.tmp"
    try:
        written = _write(bucket, merged, keep, columns, tmp, listener)
        merged_rows = count_records(tmp)
        if merged_rows != written:
            raise MergeError(
                f"{bucket}: wrote {written} rows but the merged file reads back {merged_rows}"
            )
        tmp.replace(final)
        if listener is not None:
            listener.written(final)
    finally:
        tmp.unlink(missing_ok=True)

    rejects = [r for s in merged for r in s.rejects]
    quarantined, blocking = split_counts(rejects)
    by_store = {s.store_code: s.rows for s in merged}
    result = MergeResult(
        bucket=bucket,
        run_date=run_date,
        path=final,
        merged_rows=merged_rows,
        expected_unique=expected_unique,
        download_rows_by_store=by_store,
        download_total=sum(by_store.values()),
        columns=columns,
        unknown_columns=_unknown(merged),
        duplicates_dropped=sum(s.valid for s in merged) - expected_unique,
        duration_ms=(time.perf_counter() - started) * 1000,
        columns_missing_by_store=_missing(merged, columns),
        rejects=rejects,
        quarantined=quarantined,
        blocking=blocking,
        failed_stores=failed,
        merged_stores={s.store_code: str(s.path) for s in merged},
    )
    _log(result)
    return result


def _unknown(sources: Sequence[_Source]) -> list[str]:
    unknown: dict[str, str] = {}
    for source in sources:
        for name in source.header.unknown if source.header else []:
            unknown.setdefault(normalize_header(name), name)
    return sorted(unknown.values())


def _missing(sources: Sequence[_Source], columns: list[str]) -> dict[str, list[str]]:
    missing: dict[str, list[str]] = {}
    for source in sources:
        positions = source.header.positions if source.header else {}
        if source.rows and (lacking := [c for c in columns if c not in positions]):
            missing[source.store_code] = lacking
    return missing


def _log(result: MergeResult) -> None:
    for name in result.unknown_columns:
        log_event(
            "merge",
            f"unknown column {name!r} skipped",
            status="warn",
            bucket=result.bucket,
            date=result.run_date,
            merged_file=result.path,
            extras={"column": name},
        )
    log_event(
        "merge",
        "merged",
        status="warn" if result.rejects or result.failed_stores else "ok",
        bucket=result.bucket,
        date=result.run_date,
        merged_file=result.path,
        duration_ms=result.duration_ms,
        counts={
            "download_total": result.download_total,
            "merged_rows": result.merged_rows,
            "expected_unique": result.expected_unique,
            "duplicates_dropped": result.duplicates_dropped,
            "rejects": len(result.rejects),
            "quarantined": result.quarantined,
            "blocking": result.blocking,
        },
        extras={
            "download_rows_by_store": result.download_rows_by_store,
            "stores": len(result.merged_stores) + len(result.failed_stores),
            "failed_stores": result.failed_stores,
            "rejects_by_code": dict(counts_by_code(result.rejects)),
            "reject_samples": [
                {
                    "store_code": r.store_code,
                    "line": r.line_number,
                    "code": r.code,
                    "error": r.reason,
                }
                for r in result.rejects[:5]
            ],
            "unknown_columns": result.unknown_columns,
            "columns_missing_by_store": result.columns_missing_by_store,
        },
    )
