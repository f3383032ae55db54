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


# ---- stores import: the whole file is validated before anything is written -------------------


def _env(database_url, tmp_path) -> dict[str, str]:
    return {"DATABASE_URL": render(database_url), "DATA_DIR": str(tmp_path / "data")}


def _listed(env: dict[str, str]) -> list[dict]:
    done = _cli(["stores", "list", "--json"], env)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if '"phase"' not in line]


def _import(tmp_path, env, text: str) -> subprocess.CompletedProcess:
    path = tmp_path / "stores.csv"
    path.write_text(text, encoding="utf-8")
    return _cli(["stores", "import", str(path)], env)


def _error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "nothing imported" in lines[0], done.stderr
    return lines[0]


def test_import_names_every_bad_line_and_imports_nothing(database_url, tmp_path) -> None:
    env = _env(database_url, tmp_path)
    line = _error(
        _import(
            tmp_path,
            env,
            "store_code,store_name,etl_flag,report_flag\n"
            "A1,Andheri,1,1\n"  # 2: fine
            "B2,Bandra,maybe,0\n"  # 3: not a flag
            "C3,Colaba,0,1\n"  # 4: report without etl
            "a1,Again,1,1\n"  # 5: duplicate of line 2 (codes compare case-insensitively)
            "bad code,Nope,1,1\n"  # 6: invalid store code
            "D4,Dadar\n"  # 7: ragged
            "E5,Extra,1,1,1\n",  # 8: ragged
        )
    )
    for expected in (
        "6 problem(s)",
        "line 3: etl_flag 'maybe' is not one of 1/0, true/false, yes/no or on/off",
        "line 4: store C3: report_flag needs etl_flag",
        "line 5: store a1 is already on line 2",
        "line 6: invalid store code 'bad code'",
        "line 7: 2 fields, the header has 4",
        "line 8: 5 fields, the header has 4",
    ):
        assert expected in line, line
    assert "line 2" not in line.replace("on line 2", "")
    assert _listed(env) == []  # not even the good row


def test_import_refuses_an_unterminated_quote(database_url, tmp_path) -> None:
    env = _env(database_url, tmp_path)
    line = _error(_import(tmp_path, env, 'store_code,store_name\nA1,Andheri\nB2,"Bandra\nC3,x\n'))
    assert "line 3: malformed CSV" in line and "quote" in line
    assert _listed(env) == []


def test_import_refuses_unknown_and_repeated_columns(database_url, tmp_path) -> None:
    env = _env(database_url, tmp_path)
    assert "unknown columns ['etl']" in _error(_import(tmp_path, env, "store_code,etl\nA1,1\n"))
    line = _error(_import(tmp_path, env, "store_code,etl_flag,ETL_FLAG\nA1,1,0\n"))
    assert "line 1: repeated columns ['etl_flag']" in line
    assert "no store_code column" in _error(_import(tmp_path, env, "code,etl_flag\nA1,1\n"))
    assert "empty file" in _error(_import(tmp_path, env, ""))


def test_import_accepts_the_whole_flag_vocabulary(database_url, tmp_path) -> None:
    env = _env(database_url, tmp_path)
    done = _import(
        tmp_path,
        env,
        "\ufeffStore_Code , etl_flag, report_flag ,is_active\n"
        "A1,ON,Yes,TRUE\n"
        "A2,1,0,no\n"
        "A3,true,false,\n"
        "\n"
        ",,,\n"  # a blank spreadsheet row carries nothing
        "A4,off,Off,1\n",
    )
    assert done.returncode == 0, done.stderr
    assert [
        (r["store_code"], r["etl_flag"], r["report_flag"], r["is_active"]) for r in _listed(env)
    ] == [
        ("A1", True, True, True),
        ("A2", True, False, False),
        ("A3", True, False, True),
        ("A4", False, False, True),
    ]


def test_import_checks_report_flag_against_store_master(database_url, tmp_path) -> None:
    env = _env(database_url, tmp_path)
    assert _cli(["stores", "add", "A1", "--etl", "off"], env).returncode == 0
    # report on for an existing store whose etl_flag is off, and for a new store without etl
    line = _error(_import(tmp_path, env, "store_code,report_flag\nA1,1\nN1,yes\n"))
    assert "line 2: store A1: report_flag needs etl_flag" in line and "store_master" in line
    assert "line 3: store N1: report_flag needs etl_flag" in line and "new" in line
    # switching etl off for a store that reports is refused too
    assert _cli(["stores", "add", "B1", "--etl", "on", "--report", "on"], env).returncode == 0
    assert "line 2: store B1" in _error(_import(tmp_path, env, "store_code,etl_flag\nB1,0\n"))
    # a store differing only in case from a known one would be a second copy of it
    assert "differs only in case from A1" in _error(
        _import(tmp_path, env, "store_code,etl_flag\na1,1\n")
    )
    assert _cli(["stores", "set", "A1", "--etl", "on"], env).returncode == 0
    done = _import(tmp_path, env, "store_code,report_flag\nA1,1\n")
    assert done.returncode == 0, done.stderr
    assert {r["store_code"]: r["report_flag"] for r in _listed(env)} == {"A1": True, "B1": True}


def test_stores_add_refuses_a_flag_outside_the_vocabulary(database_url, tmp_path) -> None:
    done = _cli(["stores", "add", "A1", "--etl", "maybe"], _env(database_url, tmp_path))
    assert done.returncode == 2
    assert "argument --etl: 'maybe' is not one of" in done.stderr
    assert "Traceback" not in done.stderr


def test_parse_flag_vocabulary() -> None:
    assert [stores.parse_flag(v) for v in ("1", "TRUE", " yes ", "On")] == [True] * 4
    assert [stores.parse_flag(v) for v in ("0", "False", "NO", "off")] == [False] * 4
    for bad in ("maybe", "", "t", "2"):
        with pytest.raises(ValueError, match="is not one of"):
            stores.parse_flag(bad)
