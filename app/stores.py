"""Store scope and `store_master` management.

ETL scope = active stores with `etl_flag`; report scope = active stores with `report_flag`.
An empty ETL scope, or a report store outside the ETL scope, is a configuration error (exit 2):
running with nothing to ingest, or reporting on stores that are never loaded, is never what the
operator meant.
"""

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import validate_store_code as _validate_code
from app.db.models import StoreMaster
from app.settings import ConfigError

NO_ETL_STORES = "no store has store_master.etl_flag = TRUE"


def validate_store_code(code: str) -> str:
    """A store code fit for paths and URLs, or a ConfigError (exit 2) that names it."""
    try:
        return _validate_code(code)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True)
class Store:
    store_code: str
    store_name: str | None
    etl_flag: bool
    report_flag: bool
    is_active: bool


async def list_stores(engine: AsyncEngine) -> list[Store]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(
                StoreMaster.store_code,
                StoreMaster.store_name,
                StoreMaster.etl_flag,
                StoreMaster.report_flag,
                StoreMaster.is_active,
            ).order_by(StoreMaster.store_code)
        )
        return [Store(*row) for row in rows]


async def etl_scope(engine: AsyncEngine, only: Sequence[str] | None = None) -> list[str]:
    """Store codes to download and ingest; raises ConfigError when there are none.

    `only` narrows the scope (the CLI's `--stores`); a requested store outside the scope is an
    error that names it rather than a silent no-op.
    """
    async with engine.connect() as conn:
        codes = list(
            (
                await conn.execute(
                    select(StoreMaster.store_code)
                    .where(StoreMaster.etl_flag.is_(True), StoreMaster.is_active.is_(True))
                    .order_by(StoreMaster.store_code)
                )
            ).scalars()
        )
    if not codes:
        raise ConfigError(NO_ETL_STORES)
    if only:
        wanted = [validate_store_code(c) for c in only]
        outside = sorted(set(wanted) - set(codes))
        if outside:
            raise ConfigError(
                f"stores not in the ETL scope (active and etl_flag = TRUE): {', '.join(outside)}"
            )
        return sorted(set(wanted))
    return codes


async def report_scope(engine: AsyncEngine) -> list[str]:
    """Store codes for reporting; every one of them must also be in the ETL scope."""
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(StoreMaster.store_code, StoreMaster.etl_flag)
                .where(StoreMaster.report_flag.is_(True), StoreMaster.is_active.is_(True))
                .order_by(StoreMaster.store_code)
            )
        ).all()
    outside = [code for code, etl in rows if not etl]
    if outside:
        raise ConfigError(
            "report_flag stores are not in the ETL scope (etl_flag = FALSE): " + ", ".join(outside)
        )
    return [code for code, _ in rows]


async def upsert_stores(
    engine: AsyncEngine,
    stores: Iterable[dict[str, object]],
) -> int:
    """Insert or update stores by code; only the given fields change. Idempotent."""
    count = 0
    async with engine.begin() as conn:
        for raw in stores:
            values = {k: v for k, v in raw.items() if v is not None}
            values["store_code"] = validate_store_code(str(values["store_code"]))
            stmt = insert(StoreMaster).values(**values)
            changes: dict[str, Any] = {k: stmt.excluded[k] for k in values if k != "store_code"}
            changes["updated_at"] = func.now()
            await conn.execute(
                stmt.on_conflict_do_update(index_elements=["store_code"], set_=changes)
            )
            count += 1
    return count


async def set_flags(
    engine: AsyncEngine,
    codes: Sequence[str],
    *,
    etl_flag: bool | None = None,
    report_flag: bool | None = None,
    is_active: bool | None = None,
) -> int:
    changes: dict[str, object] = {
        k: v
        for k, v in {
            "etl_flag": etl_flag,
            "report_flag": report_flag,
            "is_active": is_active,
        }.items()
        if v is not None
    }
    if not changes:
        raise ConfigError("nothing to set: give --etl, --report or --active")
    wanted = [validate_store_code(c) for c in codes]
    async with engine.begin() as conn:
        result = await conn.execute(
            update(StoreMaster)
            .where(StoreMaster.store_code.in_(wanted))
            .values(**changes, updated_at=func.now())
        )
        found = result.rowcount
    if found != len(set(wanted)):
        async with engine.connect() as conn:
            known = set(
                (
                    await conn.execute(
                        select(StoreMaster.store_code).where(StoreMaster.store_code.in_(wanted))
                    )
                ).scalars()
            )
        raise ConfigError(f"unknown stores: {', '.join(sorted(set(wanted) - known))}")
    return found


# ---- stores import -------------------------------------------------------------------------
# A store list comes from a spreadsheet: every row is checked before anything is written, and a
# file with one bad row imports nothing (a half-applied scope is worse than none).

FLAG_WORDS: dict[str, bool] = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}
FLAG_HELP = "1/0, true/false, yes/no or on/off"
FLAG_COLUMNS = ("etl_flag", "report_flag", "is_active")
IMPORT_COLUMNS = ("store_code", "store_name", *FLAG_COLUMNS)
_MAX_PROBLEMS = 10


def parse_flag(value: str) -> bool:
    """One fixed vocabulary for flags (CSV and CLI alike); anything else is a ValueError,
    never a silent False: `maybe` must not take a store out of scope."""
    try:
        return FLAG_WORDS[value.strip().lower()]
    except KeyError:
        raise ValueError(f"{value!r} is not one of {FLAG_HELP}") from None


@dataclass(frozen=True)
class StoreRow:
    """One validated row of a store list, with the line it came from (for later checks)."""

    line: int
    values: dict[str, object]

    @property
    def code(self) -> str:
        return str(self.values["store_code"])


class _Problems(list[str]):
    def add(self, line: int, text: str) -> None:
        self.append(f"line {line}: {text}")


def _problems_error(path: Path, problems: Sequence[str]) -> ConfigError:
    shown = "; ".join(problems[:_MAX_PROBLEMS])
    more = f"; and {len(problems) - _MAX_PROBLEMS} more" if len(problems) > _MAX_PROBLEMS else ""
    return ConfigError(
        f"{path}: {len(problems)} problem(s), nothing imported: {shown}{more} "
        "(fix the file and import it again)"
    )


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (give the path of a CSV file)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a CSV file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}, line "
            f'{line}): save it as "CSV UTF-8" and import again'
        ) from None


def _header(header: Sequence[str], problems: _Problems) -> list[str]:
    names = [h.strip().lower() for h in header]
    unknown = [n for n in names if n not in IMPORT_COLUMNS]
    if unknown:
        problems.add(1, f"unknown columns {unknown} (allowed: {', '.join(IMPORT_COLUMNS)})")
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        problems.add(1, f"repeated columns {dupes}")
    if "store_code" not in names:
        problems.add(1, f"no store_code column (found {names})")
    return names


def _row(line: int, names: Sequence[str], cells: Sequence[str], problems: _Problems) -> StoreRow:
    get = dict(zip(names, cells, strict=True))
    code = (get.get("store_code") or "").strip()
    try:
        _validate_code(code)
    except ValueError as exc:
        problems.add(line, str(exc))
    values: dict[str, object] = {
        "store_code": code,
        "store_name": (get.get("store_name") or "").strip() or None,
    }
    for column in FLAG_COLUMNS:
        raw = (get.get(column) or "").strip()
        try:
            values[column] = parse_flag(raw) if raw else None
        except ValueError as exc:
            problems.add(line, f"{column} {exc}")
            values[column] = None
    if values["report_flag"] is True and values["etl_flag"] is False:
        problems.add(line, f"store {code}: report_flag needs etl_flag (report scope ⊂ ETL scope)")
    return StoreRow(line, values)


def parse_store_csv(text: str, problems: _Problems) -> list[StoreRow]:
    """Rows of a store list; every problem is added with its line number (1 = header)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[StoreRow] = []
    names: list[str] | None = None
    seen: dict[str, tuple[int, str]] = {}
    start = 1
    try:
        for cells in reader:
            line, start = start, reader.line_num + 1
            if names is None:
                names = _header(cells, problems)
                continue
            if not any(c.strip() for c in cells):
                continue  # blank lines (and spreadsheet ",,,," rows) carry nothing
            if len(cells) != len(names):
                problems.add(line, f"{len(cells)} fields, the header has {len(names)}")
                continue
            row = _row(line, names, cells, problems)
            first, as_code = seen.setdefault(row.code.lower(), (line, row.code))
            if first != line:
                case = "" if as_code == row.code else f" as {as_code} (case is ignored)"
                problems.add(line, f"store {row.code} is already on line {first}{case}")
            rows.append(row)
    except csv.Error as exc:
        hint = " (a quote is opened and never closed)" if "end of data" in str(exc) else ""
        problems.add(start, f"malformed CSV: {exc}{hint}")
    if names is None:
        problems.add(1, "empty file: expected a header with store_code")
    return rows


def read_store_rows(path: Path) -> list[StoreRow]:
    """The file's rows, or a ConfigError (exit 2) naming every bad line."""
    problems = _Problems()
    rows = parse_store_csv(_read_text(path), problems)
    if problems:
        raise _problems_error(path, problems)
    return rows


def read_store_csv(path: Path) -> list[dict[str, object]]:
    """Parse a store list: `store_code` required; `store_name`, `etl_flag`, `report_flag`,
    `is_active` optional (1/0, true/false, yes/no, on/off; blank = leave as is)."""
    return [row.values for row in read_store_rows(path)]


async def _known(engine: AsyncEngine) -> dict[str, tuple[str, bool, bool]]:
    """store_master by lower-cased code: (code, etl_flag, report_flag)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(StoreMaster.store_code, StoreMaster.etl_flag, StoreMaster.report_flag)
        )
        return {code.lower(): (code, etl, report) for code, etl, report in rows}


def check_against_master(
    rows: Sequence[StoreRow], known: Mapping[str, tuple[str, bool, bool]]
) -> list[str]:
    """What the rows would make of store_master: report_flag only with etl_flag, one store per
    code whatever its case. New stores default to etl_flag and report_flag off."""
    problems = _Problems()
    for row in rows:
        existing = known.get(row.code.lower())
        if existing is not None and existing[0] != row.code:
            problems.add(row.line, f"store {row.code} differs only in case from {existing[0]}")
            continue
        etl = row.values["etl_flag"]
        report = row.values["report_flag"]
        etl = existing[1] if etl is None and existing else bool(etl)
        report = existing[2] if report is None and existing else bool(report)
        if report and not etl:
            where = "has etl_flag off in store_master" if existing else "is new (etl_flag off)"
            problems.add(
                row.line, f"store {row.code}: report_flag needs etl_flag, and the store {where}"
            )
    return problems


async def import_stores(engine: AsyncEngine, path: Path) -> int:
    """Validate the whole file (and against store_master), then upsert it in one transaction."""
    rows = read_store_rows(path)
    problems = check_against_master(rows, await _known(engine))
    if problems:
        raise _problems_error(path, problems)
    return await upsert_stores(engine, [row.values for row in rows])
