"""A file's header resolved by name onto the spec's CSV column names (never by position).

Its own small module because the audit's measuring process (`app.measure_worker`) needs it
and nothing else of the reader: importing `app.report_check` would cost that process's start
~0.2 s of validation models it never uses.
"""

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from app.coercion import normalize_header
from app.config import MERGE_BUCKET_DB_SPECS


@dataclass(frozen=True)
class HeaderMap:
    """How one file's header maps onto the spec's CSV column names."""

    positions: dict[str, int]  # spec CSV name (column_map key) -> index in the record
    mapping: dict[str, str]  # header as written in the file -> spec CSV name
    unknown: list[str]  # headers the spec does not know (skipped)
    duplicated: list[str]  # headers that name an already-mapped column (first one wins)
    width: int  # number of header cells; a record of another length is "ragged"


def header_lookup(bucket: str) -> dict[str, str]:
    """Normalised header -> spec CSV name: the `column_map` keys, the aliases, the DB names.

    DB column names are accepted too so that a file written with them (e.g. `pickup_row_id`)
    reads the same; a CSV name always wins over another column's DB name.
    """
    return dict(_header_lookup(bucket))


@functools.cache
def _header_lookup(bucket: str) -> dict[str, str]:
    """`header_lookup`, built once per bucket (hundreds of store files share it); read-only."""
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
    lookup = _header_lookup(bucket)
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
