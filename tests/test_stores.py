"""Store scope from store_master, and the `stores` CLI."""

import json
import os
import subprocess
import sys

import pytest

from app import stores
from app.db.urls import render
from app.settings import ConfigError


async def test_empty_etl_scope_is_a_config_error(engine) -> None:
    with pytest.raises(ConfigError, match=r"no store has store_master.etl_flag = TRUE"):
        await stores.etl_scope(engine)


async def test_scope_uses_active_and_flags(engine) -> None:
    await stores.upsert_stores(
        engine,
        [
            {"store_code": "A1", "etl_flag": True, "report_flag": True},
            {"store_code": "A2", "etl_flag": True, "is_active": False},
            {"store_code": "A3", "etl_flag": False},
            {"store_code": "A4", "etl_flag": True},
        ],
    )
    assert await stores.etl_scope(engine) == ["A1", "A4"]
    assert await stores.report_scope(engine) == ["A1"]
    assert await stores.etl_scope(engine, ["A4"]) == ["A4"]
    with pytest.raises(ConfigError, match="A3"):
        await stores.etl_scope(engine, ["A3"])


async def test_report_store_outside_etl_scope_names_it(engine) -> None:
    await stores.upsert_stores(
        engine,
        [
            {"store_code": "A1", "etl_flag": True},
            {"store_code": "B7", "report_flag": True, "etl_flag": False},
        ],
    )
    with pytest.raises(ConfigError, match="B7"):
        await stores.report_scope(engine)


async def test_set_flags_and_unknown_store(engine) -> None:
    await stores.upsert_stores(engine, [{"store_code": "A1", "store_name": "Andheri"}])
    assert await stores.set_flags(engine, ["A1"], etl_flag=True) == 1
    listed = await stores.list_stores(engine)
    assert listed[0].etl_flag and listed[0].store_name == "Andheri" and listed[0].is_active
    with pytest.raises(ConfigError, match="ZZ9"):
        await stores.set_flags(engine, ["A1", "ZZ9"], etl_flag=False)


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_stores_cli_import_is_idempotent_and_scope_errors_exit_2(database_url, tmp_path) -> None:
    env = {"DATABASE_URL": render(database_url), "DATA_DIR": str(tmp_path / "data")}
    scope = _cli(["stores", "scope"], env)
    assert scope.returncode == 2
    assert "no store has store_master.etl_flag = TRUE" in scope.stderr
    csv_file = tmp_path / "stores.csv"
    csv_file.write_text(
        "store_code,store_name,etl_flag,report_flag\nA668,Andheri,1,1\nB101,Bandra,true,no\n"
    )
    for _ in range(2):
        done = _cli(["stores", "import", str(csv_file)], env)
        assert done.returncode == 0, done.stderr
    listed = _cli(["stores", "list", "--json"], env)
    rows = [
        json.loads(line)
        for line in listed.stdout.splitlines()
        if '"store_code"' in line and '"phase"' not in line
    ]
    assert [(r["store_code"], r["etl_flag"], r["report_flag"]) for r in rows] == [
        ("A668", True, True),
        ("B101", True, False),
    ]
    assert _cli(["stores", "set", "A668", "--etl", "off"], env).returncode == 0
    bad = _cli(["stores", "scope"], env)
    assert bad.returncode == 2 and "A668" in bad.stderr
    refused = _cli(["stores", "add", "../x", "--etl", "on"], env)
    assert refused.returncode == 2 and "invalid store code" in refused.stderr
