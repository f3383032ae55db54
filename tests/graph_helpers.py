"""Helpers for tests that run the asset graph: seed stores, point at the simulator, query."""

import asyncio
import contextlib
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from app.coercion import CoercionError, key_value, normalize_header
from app.config import MERGE_BUCKET_DB_SPECS
from app.db.engine import create_engine
from app.db.urls import render
from app.stores import upsert_stores

TODAY = dt.date(2026, 11, 20)
REPORT_OF_BUCKET = {
    "missed_leads": "missed_leads",
    "undelivered_all": "undelivered_all",
    "repeat_customers": "repeat_customers",
}


@pytest.fixture
def graph_env(monkeypatch: pytest.MonkeyPatch, database_url: URL, tmp_path: Path) -> Path:
    """This test's database, data folder and Dagster home; no portal settings; today fixed."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    monkeypatch.setenv("DATABASE_URL", render(database_url))
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    (tmp_path / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    for var in ("TMS_WEB", "TMS_BASE", "TMS_USERNAME", "TMS_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("app.runner._today", lambda settings: TODAY)
    # The portal's clock follows the test's "today" (the downloader stops at midnight).
    import app.runner

    monkeypatch.setattr("app.downloader.core.franchise_today", lambda: app.runner._today(None))
    return data_dir


def seed(database_url: URL, sim: Any, codes: list[str] | None = None) -> None:
    async def go() -> None:
        engine = create_engine(database_url)
        try:
            stores = [s for s in sim.stores() if codes is None or s["store_code"] in codes]
            await upsert_stores(
                engine, [{**s, "etl_flag": True, "report_flag": True} for s in stores]
            )
        finally:
            await engine.dispose()

    asyncio.run(go())


def portal_config(sim: Any) -> dict[str, str]:
    return {
        "web_url": sim.web_url,
        "base_url": sim.base_url,
        "username": sim.username,
        "password": sim.password,
    }


def query(database_url: URL, sql: str) -> list[Any]:
    async def go() -> list[Any]:
        engine = create_engine(database_url)
        try:
            async with engine.begin() as conn:
                result = await conn.execute(text(sql))
                return list(result.mappings()) if result.returns_rows else []
        finally:
            await engine.dispose()

    return asyncio.run(go())


def expected_keys_at(sim: Any, bucket: str, stores: list[str], day: dt.date) -> set[tuple]:
    """Distinct dedupe keys of what the simulator served, as the database stores them."""
    spec = MERGE_BUCKET_DB_SPECS[bucket]
    canon = {normalize_header(h): col for h, col in spec["column_map"].items()}
    for alias, target in spec.get("header_aliases", {}).items():
        canon[normalize_header(alias)] = spec["column_map"][target]
    keys = set()
    for store in stores:
        for row in sim.served_rows(REPORT_OF_BUCKET[bucket], store, day):
            mapped = {
                canon[normalize_header(h)]: v
                for h, v in row.items()
                if normalize_header(h) in canon
            }
            with contextlib.suppress(CoercionError):
                keys.add(
                    tuple(
                        key_value(c, spec["coerce"][c], mapped.get(c)) for c in spec["dedupe_keys"]
                    )
                )
    return keys
