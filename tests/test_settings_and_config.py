"""Settings validation and the specs' shape."""

import datetime as dt
import zoneinfo

import pytest

from app.config import (
    FILE_SPECS,
    MERGE_BUCKET_DB_SPECS,
    MERGED_NAMES,
    merged_name,
    validate_store_code,
)
from app.settings import ConfigError, load_settings
from app.settings_dates import first_partition


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    for var in ("INGEST_BATCH_SIZE", "DATA_DIR", "DATABASE_URL", "TIMEZONE"):
        monkeypatch.delenv(var, raising=False)
    s = load_settings()
    assert s.ingest_batch_size == 3000
    assert str(s.data_dir) == "data"
    assert s.timezone == "Asia/Kolkata"
    assert s.database_url is None
    assert set(s.missing_portal_settings()) <= {
        "TMS_WEB",
        "TMS_BASE",
        "TMS_USERNAME",
        "TMS_PASSWORD",
    }


def test_env_overrides_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("TMS_WEB=https://tms.example.com/\nINGEST_BATCH_SIZE=500\n")
    monkeypatch.setenv("INGEST_BATCH_SIZE", "1200")
    s = load_settings()
    assert s.ingest_batch_size == 1200  # the environment wins over .env
    assert s.tms_web == "https://tms.example.com"


@pytest.mark.parametrize(
    ("var", "value", "fragment"),
    [
        ("INGEST_BATCH_SIZE", "0", "INGEST_BATCH_SIZE"),
        ("INGEST_BATCH_SIZE", "lots", "INGEST_BATCH_SIZE"),
        ("DATABASE_URL", "mysql://x@y/z", "DATABASE_URL"),
        ("TMS_BASE", "ftp://portal", "TMS_BASE"),
        ("TIMEZONE", "Mars/Olympus", "TIMEZONE"),
        ("GO_LIVE_DATE", "27/11/2026", "GO_LIVE_DATE"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch, tmp_path, var, value, fragment) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=fragment):
        load_settings()


def test_first_partition_is_go_live_else_the_first_of_last_month(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GO_LIVE_DATE", "2026-02-03")
    assert first_partition(load_settings()) == dt.date(2026, 2, 3)
    monkeypatch.delenv("GO_LIVE_DATE")
    # UTC+14 and UTC-11: on different days for two hours in 24, so "this month" is the zone's
    for tz in ("Pacific/Kiritimati", "Pacific/Pago_Pago"):
        this_month = dt.datetime.now(zoneinfo.ZoneInfo(tz)).date().replace(day=1)
        expected = (this_month - dt.timedelta(days=1)).replace(day=1)
        assert first_partition(load_settings(timezone=tz)) == expected
    # on the 1st, yesterday (the previous month's last day, its files kept) is still a date
    monkeypatch.setattr("app.settings_dates.today", lambda settings: dt.date(2026, 12, 1))
    assert first_partition(load_settings()) == dt.date(2026, 11, 1)


def test_password_never_in_repr(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMS_PASSWORD", "hunter2")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:dbpass@h/d")
    s = load_settings()
    assert "hunter2" not in repr(s) and "dbpass" not in repr(s)


def test_file_specs_match_the_portal_contract() -> None:
    assert len(FILE_SPECS) == 7
    downloaded = {k: v["merge_bucket"] for k, v in FILE_SPECS.items() if v["download"]}
    assert downloaded == {
        "missed_leads": "missed_leads",
        "undelivered_all": "undelivered_all",
        "repeat_customers": "repeat_customers",
    }
    assert FILE_SPECS["undelivered_all"]["url_template"] == (
        "/mis/download_undelivered_csv?type=a&store_code={sc}"
    )
    assert FILE_SPECS["missed_leads"]["out_name_template"] == "{sc}-missed-leads.csv"


def test_merged_names_take_the_run_date() -> None:
    assert set(MERGED_NAMES) == set(MERGE_BUCKET_DB_SPECS)
    assert merged_name("missed_leads", dt.date(2026, 11, 20)) == "merged_missed_leads_20261120.csv"


def test_seed_specs_are_kept_exactly() -> None:
    ml = MERGE_BUCKET_DB_SPECS["missed_leads"]
    assert ml["table_name"] == "missed_leads"
    assert ml["dedupe_keys"] == ["store_code", "pickup_no"]
    assert ml["column_map"]["id"] == "pickup_row_id"
    assert ml["coerce"]["is_order_placed"] == "bool"
    ud = MERGE_BUCKET_DB_SPECS["undelivered_all"]
    assert ud["table_name"] == "undelivered_orders" and ud["header_aliases"] == {
        "order_no": "order_id"
    }
    rc = MERGE_BUCKET_DB_SPECS["repeat_customers"]
    assert rc["column_map"] == {
        "Store Code": "store_code",
        "Mobile No.": "mobile_no",
        "Status": "status",
    }


@pytest.mark.parametrize("code", ["A668", "store_1", "X-9"])
def test_valid_store_codes(code: str) -> None:
    assert validate_store_code(code) == code


@pytest.mark.parametrize("code", ["", "../etc", "A 1", "a/b", "x" * 33, "A668?x=1"])
def test_invalid_store_codes(code: str) -> None:
    with pytest.raises(ValueError):
        validate_store_code(code)
