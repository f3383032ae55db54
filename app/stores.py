"""Store scope and `store_master` management.

ETL scope = active stores with `etl_flag`; report scope = active stores with `report_flag`.
An empty ETL scope, or a report store outside the ETL scope, is a configuration error (exit 2):
running with nothing to ingest, or reporting on stores that are never loaded, is never what the
operator meant.
"""

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from app.coercion import to_bool
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


def _flag(value: str | None) -> bool | None:
    if value is None or not value.strip():
        return None
    text = value.strip().lower()
    if text in ("true", "t", "yes", "y"):
        return True
    if text in ("false", "f", "no", "n"):
        return False
    return to_bool(text)


def read_store_csv(path: Path) -> list[dict[str, object]]:
    """Parse a store list: `store_code` required; `store_name`, `etl_flag`, `report_flag`,
    `is_active` optional (1/0, true/false, yes/no)."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
        if "store_code" not in fields:
            raise ConfigError(f"{path}: no store_code column (found {sorted(fields)})")
        stores: list[dict[str, object]] = []
        for line, row in enumerate(reader, start=2):
            get = {k: row.get(orig) for k, orig in fields.items()}
            code = (get.get("store_code") or "").strip()
            try:
                _validate_code(code)
            except ValueError as exc:
                raise ConfigError(f"{path}:{line}: {exc}") from None
            stores.append(
                {
                    "store_code": code,
                    "store_name": (get.get("store_name") or "").strip() or None,
                    "etl_flag": _flag(get.get("etl_flag")),
                    "report_flag": _flag(get.get("report_flag")),
                    "is_active": _flag(get.get("is_active")),
                }
            )
    return stores
