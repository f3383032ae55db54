"""app.measure on a real PostgreSQL: server-parsed counts, SQL key rules, the table read back."""

import asyncio
import datetime as dt
import random
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import measure
from app.coercion import CoercionError, key_value
from app.config import MERGE_BUCKET_DB_SPECS, CoerceKind
from app.ingest import ingest_file
from app.measure import LoadMeasure, RawMeasure, key_sql, measure_load, measure_raw
from tests.portal_files import (
    MISSED_HEADER,
    REPEAT_HEADER,
    missed_row,
    repeat_row,
    write_csv,
    write_sentinel,
)

D1 = dt.date(2026, 3, 6)
D2 = dt.date(2026, 3, 7)
MERGED_HEADER = list(MERGE_BUCKET_DB_SPECS["missed_leads"]["column_map"])


async def raw(engine: AsyncEngine, bucket: str, files: dict[str, Path], **kw: Any) -> RawMeasure:
    async with engine.connect() as conn:
        return await measure_raw(conn, bucket, files, **kw)


async def load(engine: AsyncEngine, path: Path, run_id: str, run_date: dt.date) -> LoadMeasure:
    async with engine.connect() as conn:
        return await measure_load(conn, "missed_leads", path, run_id=run_id, run_date=run_date)


def leads(path: Path, keys: list[tuple[str, str]], **kw: Any) -> Path:
    return write_csv(path, MISSED_HEADER, [missed_row(s, p) for s, p in keys], **kw)


# ------------------------------------------------------------------ the SQL key rules


TRICKY = [
    None,
    "",
    " ",
    "\t",
    "\xa0",
    "\u3000",
    "NA",
    "na",
    " n/a ",
    "N/A",
    "-",
    "NULL",
    "None",
    "nan",
    "NaN",
    "\tNA\xa0",
    "n.a",
    "--",
    "+91 98765-43210",
    "09876543210",
    "919876543210",
    "9876543210",
    " 9876543210 ",
    "98765 43210",
    "+91-98765-43210",
    "0091 98765 43210",
    "98765",
    "12345678901",
    "1234567890123",
    "\u0669\u0668\u0667\u0666\u0665\u0664\u0663\u0662\u0661\u0660",
    "+\u0669\u0661 \u0669\u0668\u0667\u0666\u0665\u0664\u0663\u0662\u0661\u0660",
    "\uff10\uff19\uff18\uff17\uff16\uff15\uff14\uff13\uff12\uff11\uff10",
    "".join(chr(0x1D7CE + d) for d in (9, 8, 7, 6, 5, 4, 3, 2, 1, 0)),
    "a668",
    " A668 ",
    "a\u0301b",
    "ß",
    "straße",
    "İ",
    "1,000",
    "+007",
    "-0",
    "5.00",
    "5.01",
    "1.\u0660",
    "\u0661\u0662",
    "  42  ",
    "4 2",
    "1e3",
    "0x1F",
    "99999999999999999999999",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "000009223372036854775807",
    "9,223,372,036,854,775,807.000",
    "emoji 🎉",
    'quote"d',
    "semi;colon",
    "back\\slash",
    "\x1f",
    "\x85x\x85",
    "P0001",
]
ALPHABET = [
    *" \t\xa0\u2003+-.,()/0123456789aAnN'\"\\",
    *"\u0660\u0669\uff10\uff19\U0001d7ce\xdf\u0130\xe9\U0001f600\x85\u200b~!\x7f\x80\x84\x1b",
    "na",
    "NULL",
    "91",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
]


def _tricky_values(n: int) -> list[str | None]:
    rnd = random.Random(20261127)
    values: list[str | None] = list(TRICKY)
    for _ in range(n):
        values.append("".join(rnd.choice(ALPHABET) for _ in range(rnd.randint(0, 14))))
    for _ in range(n // 4):  # near-mobiles: 9-13 digits with decorations
        digits = "".join(rnd.choice("0123456789") for _ in range(rnd.randint(9, 13)))
        values.append(rnd.choice(["", " ", "+", "+91 ", "0"]) + digits + rnd.choice(["", " ", "-"]))
    return values


def _python_key(column: str, kind: CoerceKind, raw: str | None, fold: bool) -> str | None:
    try:
        value = key_value(column, kind, raw)
    except CoercionError:
        return None
    out = str(value)
    return "".join(c.upper() if "a" <= c <= "z" else c for c in out) if fold else out


@pytest.mark.parametrize(
    ("column", "kind", "fold"),
    [
        ("mobile_no", "str", False),
        ("pickup_no", "str", False),
        ("store_code", "str", True),
        ("pickup_row_id", "int", False),
    ],
)
async def test_key_sql_equals_key_value(
    engine: AsyncEngine, column: str, kind: CoerceKind, fold: bool
) -> None:
    values = _tricky_values(3000)
    sql = key_sql(column, kind, "v", fold_case=fold)
    query = text(f"SELECT {sql} FROM unnest(CAST(:v AS text[])) WITH ORDINALITY u(v, i) ORDER BY i")
    async with engine.connect() as conn:
        got = (await conn.execute(query, {"v": values})).scalars().all()
    expected = [_python_key(column, kind, v, fold) for v in values]
    diffs = [(v, e, g) for v, e, g in zip(values, expected, got, strict=True) if e != g]
    assert not diffs, diffs[:10]
    assert expected.count(None) > 20 and len(set(expected)) > 100  # the sample is not trivial


def test_unsupported_key_kind_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NotImplementedError, match="date"):
        key_sql("order_date", "date", "v")
    spec = dict(MERGE_BUCKET_DB_SPECS["undelivered_all"], dedupe_keys=["store_code", "order_date"])
    monkeypatch.setitem(MERGE_BUCKET_DB_SPECS, "by_date", spec)

    async def go() -> None:
        await measure_raw(None, "by_date", {})  # type: ignore[arg-type]  # refused before any SQL

    with pytest.raises(NotImplementedError, match="order_date"):
        asyncio.run(go())


# ------------------------------------------------------------------ measure_raw: counts


async def test_raw_counts_equal_true_records(engine: AsyncEngine, data_dir: Path) -> None:
    tricky = [
        missed_row("A1", "P1", special_instruction='two bags\nleave at "security", gate 2'),
        missed_row("A1", "P2", customer_name="Suresh, Jr.", special_instruction="\n\n"),
        missed_row("A1", "P3", special_instruction='""'),
    ]
    files = {
        "A1": write_csv(data_dir / "a1.csv", MISSED_HEADER, tricky),
        "B2": leads(data_dir / "b2.csv", [("B2", "P1"), ("B2", "P2")], crlf=True, bom=True),
        "C3": write_sentinel(data_dir / "c3.csv"),
        "D4": data_dir / "d4.csv",
        "E5": data_dir / "e5.csv",
        "F6": data_dir / "f6.csv",
    }
    files["D4"].write_bytes(b"")
    files["E5"].write_bytes(leads(data_dir / "x.csv", [("E5", "P1")]).read_bytes() + b"\n\r\n  \n")
    files["F6"].write_bytes(",".join(MISSED_HEADER).encode() + b"\n")  # header only
    m = await raw(engine, "missed_leads", files)
    assert m.errors == {}
    assert m.by_store == {"A1": 3, "B2": 2, "C3": 0, "D4": 0, "E5": 1, "F6": 0}
    assert m.total == 6 and m.expected_unique == 6
    assert (m.keyless_rows, m.excluded_rows) == (0, 0) and m.duration_ms > 0


async def test_large_files_are_streamed_in_chunks(
    engine: AsyncEngine, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Payloads above _INLINE go in chunks; BOM and trailing blank lines handled the same way."""
    monkeypatch.setattr(measure, "_INLINE", 10)
    monkeypatch.setattr(measure, "_CHUNK", 7)  # chunk borders inside quotes and CRLFs
    rows = [missed_row("A1", f"P{i}", special_instruction="a,\r\nb") for i in range(40)]
    path = write_csv(data_dir / "a1.csv", MISSED_HEADER, rows, crlf=True, bom=True)
    path.write_bytes(path.read_bytes() + b"\r\n\r\n")
    m = await raw(engine, "missed_leads", {"A1": path})
    assert (m.errors, m.by_store, m.expected_unique) == ({}, {"A1": 40}, 40)


async def test_exclude_ordinals_are_validated(engine: AsyncEngine, data_dir: Path) -> None:
    path = leads(data_dir / "a.csv", [("A1", "P1")])
    with pytest.raises(ValueError, match="1-based"):
        await raw(engine, "missed_leads", {"A1": path}, exclude={"A1": [0]})


async def test_raw_ragged_record_reports_line_and_fallback_count(
    engine: AsyncEngine, data_dir: Path
) -> None:
    path = leads(data_dir / "a1.csv", [("A1", "P1"), ("A1", "P2"), ("A1", "P3")])
    lines = path.read_bytes().split(b"\n")
    lines[2] += b',extra,"quoted, cell"'  # record 2 (line 3) has two cells too many
    path.write_bytes(b"\n".join(lines))
    ok = leads(data_dir / "b2.csv", [("B2", "P1")])
    m = await raw(engine, "missed_leads", {"A1": path, "B2": ok})
    assert "extra data after last expected column" in m.errors["A1"]
    assert "line 3" in m.errors["A1"]
    assert m.by_store == {"A1": 3, "B2": 1} and m.total == 4
    assert m.expected_unique is None  # A1's keys could not be staged


async def test_raw_short_record_names_the_column(engine: AsyncEngine, data_dir: Path) -> None:
    path = data_dir / "a1.csv"
    path.write_bytes(b"store_code,pickup_no,id\nA1,P1,1\nA1,P2\n")
    m = await raw(engine, "missed_leads", {"A1": path})
    assert "missing data for column" in m.errors["A1"] and "'id'" in m.errors["A1"]
    assert m.by_store == {"A1": 2}


async def test_raw_unparseable_files_have_no_count(engine: AsyncEngine, data_dir: Path) -> None:
    good = leads(data_dir / "ok.csv", [("A1", "P1")]).read_bytes()
    bad = {
        "Q1": good + b'A1,"P2,never closed\n',
        "U2": good.replace(b"Ravi", b"R\xffvi"),
        "N3": good.replace(b"Ravi", b"R\x00vi"),
    }
    files = {}
    for store, body in bad.items():
        files[store] = data_dir / f"{store}.csv"
        files[store].write_bytes(body)
    files["M4"] = data_dir / "vanished.csv"
    m = await raw(engine, "missed_leads", files)
    assert "unterminated CSV quoted field" in m.errors["Q1"]
    assert "FileNotFoundError" in m.errors["M4"]
    assert "invalid byte sequence" in m.errors["U2"] and "line 2" in m.errors["U2"]
    assert "0x00" in m.errors["N3"]
    assert m.by_store == {"Q1": None, "U2": None, "N3": None, "M4": None}
    assert m.total is None and m.expected_unique is None


async def test_raw_missing_key_column_is_an_error(engine: AsyncEngine, data_dir: Path) -> None:
    path = write_csv(data_dir / "a1.csv", ["store_code", "customer_name"], [["A1", "x"]])
    m = await raw(engine, "missed_leads", {"A1": path})
    assert "pickup_no" in m.errors["A1"] and m.by_store == {"A1": 1}
    assert m.expected_unique is None


# ------------------------------------------------------------------ measure_raw: expected_unique


async def test_expected_unique_dedupes_normalises_and_excludes(
    engine: AsyncEngine, data_dir: Path
) -> None:
    a = leads(
        data_dir / "a.csv",
        [("A668", "P1"), ("A668", " P1 "), ("A668", "P2"), ("A668", ""), ("A668", "NA")],
    )
    b = leads(data_dir / "b.csv", [(" a668 ", "P2"), ("a668", "P3"), ("B1", "P1"), ("B1", "-")])
    shuffled = [MISSED_HEADER[2], *MISSED_HEADER[:2], *MISSED_HEADER[3:]]  # pickup_no first
    c = write_csv(
        data_dir / "c.csv",
        [h.upper() for h in shuffled],
        [missed_row("C1", "P9"), missed_row("B1", "P1")],
    )
    m = await raw(engine, "missed_leads", {"A668": a, "B1": b, "C1": c})
    assert m.by_store == {"A668": 5, "B1": 4, "C1": 2} and m.errors == {}
    # keys: A668/P1, A668/P2, A668/P3, B1/P1, C1/P9; blank, NA and - are no key
    assert (m.expected_unique, m.keyless_rows, m.excluded_rows) == (5, 3, 0)

    excluded = await raw(
        engine,
        "missed_leads",
        {"A668": a, "B1": b, "C1": c},
        exclude={
            "B1": [2, 4, 99],  # a668/P3 (its only copy) and the keyless B1/-; 99 matches nothing
            "C1": {1},  # C1/P9
            "A668": [],
        },
    )
    assert excluded.by_store == m.by_store  # exclusions never change the record counts
    assert (excluded.expected_unique, excluded.keyless_rows, excluded.excluded_rows) == (3, 2, 3)


async def test_expected_unique_mobile_keys(engine: AsyncEngine, data_dir: Path) -> None:
    rows = [
        repeat_row("A1", "+91 98765-43210"),
        repeat_row("A1", "09876543210"),
        repeat_row("A1", "9876543210 "),
        repeat_row("A1", "98765"),
        repeat_row("A1", "N/A"),
    ]
    a = write_csv(data_dir / "a.csv", REPEAT_HEADER, rows, crlf=True)
    b = write_csv(data_dir / "b.csv", ["mobile_no", "STORE CODE"], [["919876543210", "a1 "]])
    m = await raw(engine, "repeat_customers", {"A1": a, "B1": b})
    assert m.by_store == {"A1": 5, "B1": 1}
    assert (m.expected_unique, m.keyless_rows) == (2, 1)  # 9876543210 and 98765


async def test_raw_in_caller_transaction_leaves_no_trace(
    engine: AsyncEngine, data_dir: Path
) -> None:
    path = leads(data_dir / "a.csv", [("A1", "P1")])
    async with engine.connect() as conn:
        await conn.execute(text("SET LOCAL work_mem = '5MB'"))  # the caller's own transaction
        m = await measure_raw(conn, "missed_leads", {"A1": path})
        assert m.expected_unique == 1
        assert (await conn.execute(text("SHOW work_mem"))).scalar_one() == "5MB"
        temp = "SELECT count(*) FROM pg_class WHERE relname LIKE 'crm\\_measure\\_%'"
        assert (await conn.execute(text(temp))).scalar_one() == 0
        assert conn.in_transaction()
        await conn.rollback()


async def test_concurrent_callers_do_not_collide(engine: AsyncEngine, data_dir: Path) -> None:
    files = {
        f"S{i}": leads(data_dir / f"s{i}.csv", [(f"S{i}", f"P{j}") for j in range(i + 1)])
        for i in range(6)
    }
    results = await asyncio.gather(*(raw(engine, "missed_leads", files) for _ in range(3)))
    assert {r.expected_unique for r in results} == {21}


# ------------------------------------------------------------------ measure_load


async def _insert(engine: AsyncEngine, rows: list[tuple[str, str, dt.date, str]]) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO missed_leads (store_code, pickup_no, run_date, run_id) "
                "VALUES (:s, :p, :d, :r)"
            ),
            [{"s": s, "p": p, "d": d, "r": r} for s, p, d, r in rows],
        )


async def test_load_written_kept_newer_stale_missing(engine: AsyncEngine, data_dir: Path) -> None:
    await _insert(
        engine,
        [
            ("A1", "P1", D1, "run-1"),  # this run wrote it
            ("A1", "P2", D2, "run-later"),  # a newer snapshot holds it
            ("A1", "P3", D1, "run-0"),  # same date, another run: this run did not write it
            ("A1", "P4", dt.date(2026, 3, 1), "run-old"),  # older snapshot, not rewritten
            ("Z9", "P1", D1, "run-1"),  # not in the merged file
        ],
    )
    merged = write_csv(
        data_dir / "merged.csv",
        MERGED_HEADER,
        [
            missed_row("A1", "P1"),
            missed_row("A1", " P1 "),  # the same key again
            missed_row("A1", "P2"),
            missed_row("A1", "P3"),
            missed_row("A1", "P4"),
            missed_row("A1", "P5"),  # never loaded
            missed_row("B2", "P7", special_instruction="line\nbreak"),  # never loaded
            missed_row("B2", ""),  # keyless: rejected by the load, not "missing"
        ],
    )
    m = await load(engine, merged, "run-1", D1)
    assert m.error is None
    assert (m.merged_rows, m.distinct_keys, m.keyless_rows) == (8, 6, 1)
    assert (m.written, m.kept_newer, m.stale_rows, m.missing_keys) == (1, 1, 2, 2)
    assert m.ingested_rows == 2 and m.duplicate_keys_in_merged == 1
    assert m.missing_examples == [
        {"store_code": "A1", "pickup_no": "P5"},
        {"store_code": "B2", "pickup_no": "P7"},
    ]


async def test_load_after_real_ingest_and_backfill(engine: AsyncEngine, data_dir: Path) -> None:
    keys = [(f"S{i % 3}", f"P{i}") for i in range(50)]
    merged = write_csv(data_dir / "merged.csv", MERGED_HEADER, [missed_row(s, p) for s, p in keys])
    await ingest_file(engine, "missed_leads", D2, merged, run_id="new", batch_size=7)
    m = await load(engine, merged, "new", D2)
    assert (m.merged_rows, m.written, m.kept_newer, m.missing_keys) == (50, 50, 0, 0)
    assert m.ingested_rows == 50 and m.missing_examples == []

    await ingest_file(engine, "missed_leads", D1, merged, run_id="backfill")  # older date
    m = await load(engine, merged, "backfill", D1)
    assert (m.written, m.kept_newer, m.stale_rows, m.ingested_rows) == (0, 50, 0, 50)


async def test_load_catches_rows_a_trigger_swallowed(engine: AsyncEngine, data_dir: Path) -> None:
    """The adversarial case: the load "succeeds", but the table never got one store's rows."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE FUNCTION drop_b2() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.store_code = 'B2' THEN RETURN NULL; END IF; RETURN NEW; END $$"
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER drop_b2 BEFORE INSERT ON missed_leads "
                "FOR EACH ROW EXECUTE FUNCTION drop_b2()"
            )
        )
    keys = [("A1", f"P{i}") for i in range(20)] + [("B2", f"P{i}") for i in range(5)]
    merged = write_csv(data_dir / "merged.csv", MERGED_HEADER, [missed_row(s, p) for s, p in keys])
    await ingest_file(engine, "missed_leads", D1, merged, run_id="r1")
    m = await load(engine, merged, "r1", D1)
    assert m.merged_rows == 25 and m.written == 20 and m.ingested_rows == 20
    assert m.missing_keys == 5 and m.written < m.merged_rows
    assert m.missing_examples == [{"store_code": "B2", "pickup_no": f"P{i}"} for i in range(5)]


async def test_load_mobile_key_joins_normalised(engine: AsyncEngine, data_dir: Path) -> None:
    merged = write_csv(
        data_dir / "m.csv",
        list(MERGE_BUCKET_DB_SPECS["repeat_customers"]["column_map"]),
        [repeat_row("A1", "+91 98765-43210"), repeat_row("A1", "09876543211")],
    )
    await ingest_file(engine, "repeat_customers", D1, merged, run_id="r1")
    async with engine.connect() as conn:
        m = await measure_load(conn, "repeat_customers", merged, run_id="r1", run_date=D1)
        stored = (await conn.execute(text("SELECT mobile_no FROM repeat_customers"))).scalars()
        assert sorted(stored) == ["9876543210", "9876543211"]
    assert (m.merged_rows, m.written, m.missing_keys) == (2, 2, 0)


async def test_load_unparseable_merged_file(engine: AsyncEngine, data_dir: Path) -> None:
    merged = write_csv(data_dir / "m.csv", MERGED_HEADER, [missed_row("A1", "P1")])
    merged.write_bytes(merged.read_bytes() + b"A1,P2\n")
    m = await load(engine, merged, "r1", D1)
    assert m.error is not None and "missing data for column" in m.error and "line 3" in m.error
    assert m.merged_rows == 2  # the fallback parser still counts the records
    assert m.written is None and m.ingested_rows is None and m.missing_keys is None


async def test_load_empty_merged_file(engine: AsyncEngine, data_dir: Path) -> None:
    header_only = write_csv(data_dir / "m.csv", MERGED_HEADER, [])
    m = await load(engine, header_only, "r1", D1)
    assert (m.error, m.merged_rows, m.written, m.missing_keys) == (None, 0, 0, 0)
    sentinel = await load(engine, write_sentinel(data_dir / "s.csv"), "r1", D1)
    assert (sentinel.error, sentinel.merged_rows, sentinel.ingested_rows) == (None, 0, 0)
