"""Store reports on a real PostgreSQL: every figure against an independent query, the files in a
real browser and a real PDF rasteriser, delivery to a loopback SMTP server.

Fixture rows go straight into the three tables, `pipeline_audit` and the change tables with SQL
(not through the pipeline), so each expected number is known by construction, and each is also
re-counted by a query written here independently of `app.reports`.
"""

# ruff: noqa: E501 - the fixture tables and their independent queries read best one per line

import argparse
import asyncio
import datetime as dt
import shutil
import struct
import subprocess
import zlib
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_engine
from app.db.urls import render
from app.report_cli import add_report_commands
from app.reports import ReportSet, build_reports
from app.reports.deliver import add_recipient, deliver_reports, import_recipients
from app.reports.kpis import HISTORY_NOTE
from app.settings import Settings, load_settings
from tests.smtp_server import Mailbox

T = TypeVar("T")
D = dt.date(2026, 11, 20)
MONTH_START = dt.date(2026, 11, 1)
HOSTILE = '<script>alert("x")</script>'
HOSTILE_STORE = "<script>alert(1)</script>"
BUCKETS = ("missed_leads", "undelivered_all", "repeat_customers")


def run(database_url: URL, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    async def go() -> T:
        engine = create_engine(database_url)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(go())


async def sql(engine: AsyncEngine, statement: str, **params: Any) -> list[Any]:
    async with engine.begin() as conn:
        result = await conn.execute(text(statement), params)
        return list(result) if result.returns_rows else []


def day(text_: str) -> dt.date:
    return dt.date.fromisoformat(text_)


# ------------------------------------------------------------------------------- fixture data

STORES = [("A1", "Alpha <b>wash</b>", True), ("B2", HOSTILE_STORE, True), ("C3", "Gamma", False)]
# store, pickup_no, name, mobile, created, pickup, source, final_source, type, converted, run_date
LEADS = [
    ("A1", "L1", "Asha", "9000000001", "2026-11-02", "2026-11-03", "walkin", "walkin", "New", True, D),
    ("A1", "L2", HOSTILE, "9000000002", "2026-11-05", "2026-11-06", "app", None, "Existing", False, D),
    ("A1", "L3", "Ravi", "9000000003", "2026-11-10", "2026-11-10", "app", "app", "New", False, D),
    ("A1", "L4", None, None, "2026-11-20", None, None, None, None, False, D),
    ("A1", "L5", "Meena", "9000000005", "2026-11-15", "2026-11-16", "x", "call", "Existing", True, D),
    ("A1", "L6", "Old", "9000000006", "2026-10-30", "2026-10-31", "app", "app", "New", False, D),
    ("A1", "L7", "Gone", "9000000007", "2026-11-03", "2026-11-04", "app", "app", "New", False, day("2026-11-19")),
    ("A1", "L8", "Later", "9000000008", "2026-11-21", "2026-11-22", "app", "app", "New", False, day("2026-11-21")),
    ("B2", "M1", "Bee", "9100000001", "2026-11-12", "2026-11-13", "app", "app", "New", False, D),
]  # fmt: skip
# store, order_id, customer_id, mobile, order_date, expected, actual, net_amount, run_date
ORDERS = [
    ("A1", "O1", "C1", "9200000001", "2026-11-15", "2026-11-19", None, "100.50", D),
    ("A1", "O2", "C2", "9200000002", "2026-11-10", "2026-11-14", None, "200.00", D),
    ("A1", "O3", "C3", "9200000003", "2026-11-08", "2026-11-11", None, "50.25", D),
    ("A1", "O4", HOSTILE, "9200000004", "2026-10-28", "2026-11-01", None, "10.00", D),
    ("A1", "O5", "C5", "9200000005", "2026-11-19", "2026-11-25", None, "30.00", D),
    ("A1", "O6", "C6", None, "2026-11-18", None, None, "5.00", D),
    ("A1", "O7", "C7", "9200000007", "2026-11-10", "2026-11-12", "2026-11-18", "70.00", D),
    ("A1", "O8", "C8", "9200000008", "2026-11-17", "2026-11-20", "2026-11-22", "7.00", day("2026-11-22")),
    ("A1", "O9", "C9", "9200000009", "2026-11-02", "2026-11-05", None, "9.00", day("2026-11-19")),
    ("A1", "O10", "C10", "9200000010", "2026-11-21", "2026-11-24", None, "11.00", day("2026-11-21")),
    ("B2", "P1", "D1", "9300000001", "2026-11-18", "2026-11-19", None, "42.00", D),
]  # fmt: skip
REPEAT = [
    ("A1", "9400000001", "Yes", D),
    ("A1", "9400000002", " yes ", D),
    ("A1", "9400000003", "No", D),
    ("A1", "9400000004", "Maybe", D),
    ("A1", "9400000005", "Yes", day("2026-11-19")),
    ("B2", "9500000001", "No", D),
]
# table, key column, store, key, change, column, old, new, run_date
CHANGES = [
    ("missed_leads", "pickup_no", "A1", "L4", "new", None, None, None, D),
    ("missed_leads", "pickup_no", "A1", "L5", "changed", "is_order_placed", "false", "true", D),
    ("missed_leads", "pickup_no", "A1", "L1", "changed", "is_order_placed", "false", "true", day("2026-11-19")),
    ("undelivered_orders", "order_id", "A1", "O1", "new", None, None, None, D),
    ("undelivered_orders", "order_id", "A1", "O7", "new", None, None, None, D),
    ("undelivered_orders", "order_id", "A1", "O7", "changed", "actual_deliver_on", None, "2026-11-18", D),
    ("repeat_customers", "mobile_no", "A1", "9400000003", "changed", "status", "Yes", "No", D),
    ("repeat_customers", "mobile_no", "A1", "9400000004", "new", None, None, None, D),
]  # fmt: skip


async def seed(engine: AsyncEngine, audits: dict[str, tuple[str, str | None, str]]) -> None:
    """The stores, rows and one audit per bucket: {bucket: (status, reason, failed_stores json)}."""
    for code, name, report in STORES:
        await sql(
            engine,
            "INSERT INTO store_master (store_code, store_name, etl_flag, report_flag)"
            " VALUES (:c, :n, true, :r)",
            c=code,
            n=name,
            r=report,
        )
    for s, no, name, mob, created, pickup, src, final, kind, conv, rd in LEADS:
        await sql(
            engine,
            "INSERT INTO missed_leads (store_code, pickup_no, customer_name, mobile_number,"
            " pickup_created_date, pickup_date, source, final_source, customer_type,"
            " is_order_placed, run_date, run_id) VALUES (:s, :no, :name, :mob, :created,"
            " :pickup, :src, :final, :kind, :conv, :rd, 'fixture')",
            s=s, no=no, name=name, mob=mob, created=day(created),
            pickup=day(pickup) if pickup else None, src=src, final=final, kind=kind, conv=conv,
            rd=rd,
        )  # fmt: skip
    for s, oid, cust, mob, odate, exp, act, amount, rd in ORDERS:
        await sql(
            engine,
            "INSERT INTO undelivered_orders (store_code, order_id, customer_id, mobile_no,"
            " order_date, expected_deliver_on, actual_deliver_on, net_amount, run_date, run_id)"
            " VALUES (:s, :oid, :cust, :mob, :odate, :exp, :act, :amount, :rd, 'fixture')",
            s=s, oid=oid, cust=cust, mob=mob, odate=day(odate),
            exp=day(exp) if exp else None, act=day(act) if act else None,
            amount=Decimal(amount), rd=rd,
        )  # fmt: skip
    for s, mobile, status, rd in REPEAT:
        await sql(
            engine,
            "INSERT INTO repeat_customers (store_code, mobile_no, status, run_date, run_id)"
            " VALUES (:s, :m, :st, :rd, 'fixture')",
            s=s, m=mobile, st=status, rd=rd,
        )  # fmt: skip
    for table, keycol, s, k, change, col, old, new, rd in CHANGES:
        await sql(
            engine,
            f"INSERT INTO {table}_changes (run_date, run_id, store_code, {keycol}, change,"
            " column_name, old_value, new_value) VALUES (:rd, 'fixture', :s, :k, :ch, :col,"
            " :old, :new)",
            rd=rd, s=s, k=k, ch=change, col=col, old=old, new=new,
        )  # fmt: skip
    for bucket, (status, reason, failed) in audits.items():
        await sql(
            engine,
            "INSERT INTO pipeline_audit (run_id, bucket, run_date, download_total,"
            " download_rows_by_store, failed_stores, status, reason, manifest)"
            " VALUES ('fixture-run', :b, :d, 0, '{}', CAST(:failed AS jsonb), :st, :reason, '[]')",
            b=bucket, d=D, failed=failed, st=status, reason=reason,
        )  # fmt: skip


PASSED_ALL = {b: ("passed", None, "{}") for b in BUCKETS}
B2_NOT_DOWNLOADED = {**PASSED_ALL, "missed_leads": ("passed", None, '{"B2": "login timed out"}')}


def build(database_url: URL, data_dir: Path, audits: dict[str, Any]) -> ReportSet:
    async def work(engine: AsyncEngine) -> ReportSet:
        await seed(engine, audits)
        return await build_reports(engine, data_dir, D)

    return run(database_url, work)


@pytest.fixture
def built(database_url: URL, data_dir: Path) -> ReportSet:
    return build(database_url, data_dir, B2_NOT_DOWNLOADED)


# ------------------------------------------------------------------- figures vs independent SQL

# Written independently of app.reports: Python-computed bounds, plain predicates.
IN_MONTH = (
    "store_code = :s AND run_date >= :d"
    " AND (pickup_created_date IS NULL OR pickup_created_date BETWEEN :m AND :d)"
)
OPEN = (
    "store_code = :s AND run_date >= :d AND (order_date IS NULL OR order_date <= :d)"
    " AND NOT COALESCE(actual_deliver_on <= :d, false)"
)


async def independent(engine: AsyncEngine, store: str) -> dict[str, Any]:
    p = {"s": store, "d": D, "m": MONTH_START}

    async def one(statement: str, **extra: Any) -> Any:
        return (await sql(engine, statement, **p, **extra))[0][0]

    out: dict[str, Any] = {
        "total": await one(f"SELECT count(*) FROM missed_leads WHERE {IN_MONTH}"),
        "converted": await one(
            f"SELECT count(*) FROM missed_leads WHERE {IN_MONTH} AND is_order_placed = true"
        ),
        "orders": await one(f"SELECT count(*) FROM undelivered_orders WHERE {OPEN}"),
        "amount": await one(f"SELECT coalesce(sum(net_amount), 0) FROM undelivered_orders WHERE {OPEN}"),
        "yes": await one("SELECT count(*) FROM repeat_customers WHERE store_code = :s AND run_date >= :d AND upper(btrim(status)) = 'YES'"),
        "no": await one("SELECT count(*) FROM repeat_customers WHERE store_code = :s AND run_date >= :d AND upper(btrim(status)) = 'NO'"),
    }  # fmt: skip
    late = "(CAST(:d AS date) - expected_deliver_on)"
    for band, (lo, hi) in {
        "0-3": (0, 3),
        "4-7": (4, 7),
        "8-10": (8, 10),
        ">10": (11, 10**6),
    }.items():
        out[band] = await one(
            f"SELECT count(*) FROM undelivered_orders WHERE {OPEN}"
            f" AND {late} BETWEEN :lo AND :hi", lo=lo, hi=hi,
        )  # fmt: skip
    out["types"] = await sql(
        engine,
        f"SELECT coalesce(customer_type, '(blank)'), count(*),"
        f" sum(CASE WHEN is_order_placed THEN 1 ELSE 0 END) FROM missed_leads WHERE {IN_MONTH}"
        " GROUP BY 1",
        **p,
    )
    out["sources"] = await sql(
        engine,
        f"SELECT CASE WHEN final_source IS NOT NULL THEN final_source"
        f" WHEN source IS NOT NULL THEN source ELSE '(blank)' END, count(*),"
        f" sum(CASE WHEN is_order_placed THEN 1 ELSE 0 END) FROM missed_leads WHERE {IN_MONTH}"
        " GROUP BY 1",
        **p,
    )
    out["to_call"] = [
        r[0]
        for r in await sql(
            engine,
            f"SELECT pickup_no FROM missed_leads WHERE {IN_MONTH} AND is_order_placed = false"
            " ORDER BY pickup_date IS NULL, pickup_date, pickup_created_date, pickup_no",
            **p,
        )
    ]
    out["to_deliver"] = [
        (r[0], r[1])
        for r in await sql(
            engine,
            f"SELECT order_id, CASE WHEN expected_deliver_on <= :d THEN {late} END"
            f" FROM undelivered_orders WHERE {OPEN}"
            " ORDER BY expected_deliver_on IS NULL, expected_deliver_on, order_date, order_id",
            **p,
        )
    ]
    return out


def test_every_kpi_and_action_list_figure_equals_an_independent_query(
    built: ReportSet, database_url: URL
) -> None:
    (a1,) = [r for r in built.reports if r.store_code == "A1"]
    q = run(database_url, lambda engine: independent(engine, "A1"))
    leads, orders, repeat = a1.kpis.leads, a1.kpis.orders, a1.kpis.repeat
    assert leads is not None and orders is not None and repeat is not None
    # Known by construction (guards against the report and the query being wrong alike) ...
    assert (leads.total, leads.converted, leads.conversion_pct) == (5, 2, 40.0)
    assert (orders.count, orders.net_amount) == (7, Decimal("402.75"))
    assert (repeat.yes, repeat.no, repeat.other) == (2, 1, 1)
    # ... and equal to the independent queries.
    assert (leads.total, leads.converted) == (q["total"], q["converted"])
    assert leads.conversion_pct == round(100 * q["converted"] / q["total"], 1)
    assert sorted(leads.by_customer_type) == sorted((t, n, int(c)) for t, n, c in q["types"])
    assert sorted(leads.by_source) == sorted((s, n, int(c)) for s, n, c in q["sources"])
    assert (orders.count, orders.net_amount) == (q["orders"], q["amount"])
    assert (
        {b: orders.ageing[b] for b in ("0-3", "4-7", "8-10", ">10")}
        == {b: q[b] for b in ("0-3", "4-7", "8-10", ">10")}
        == {"0-3": 2, "4-7": 1, "8-10": 1, ">10": 1}
    )
    assert (orders.ageing["not due"], orders.ageing["no expected date"]) == (1, 1)
    assert (repeat.yes, repeat.no) == (q["yes"], q["no"])
    assert [x.pickup_no for x in a1.leads_to_call] == q["to_call"] == ["L2", "L3", "L4"]
    assert [(o.order_id, o.days_late) for o in a1.orders_to_deliver] == q["to_deliver"]
    assert [o.order_id for o in a1.orders_to_deliver] == ["O4", "O3", "O2", "O1", "O8", "O5", "O6"]


def test_trend_and_since_yesterday_equal_independent_queries(
    built: ReportSet, database_url: URL
) -> None:
    (a1,) = [r for r in built.reports if r.store_code == "A1"]

    async def per_day(engine: AsyncEngine) -> list[tuple[dt.date, int, int, int]]:
        out = []
        for n in range((D - MONTH_START).days + 1):
            d = MONTH_START + dt.timedelta(days=n)
            leads = await sql(
                engine,
                f"SELECT count(*), count(*) FILTER (WHERE is_order_placed) FROM missed_leads"
                f" WHERE {IN_MONTH} AND pickup_created_date = :day",
                s="A1", d=D, m=MONTH_START, day=d,
            )  # fmt: skip
            open_ = await sql(
                engine,
                "SELECT count(*) FROM undelivered_orders WHERE store_code = 'A1'"
                " AND run_date >= :d AND order_date <= :day"
                " AND (actual_deliver_on IS NULL OR actual_deliver_on > :day)",
                d=D, day=d,
            )  # fmt: skip
            out.append((d, leads[0][0], leads[0][1], open_[0][0]))
        return out

    expected = run(database_url, per_day)
    assert [(p.day, p.leads, p.converted, p.undelivered) for p in a1.kpis.trend] == expected
    assert sum(p.leads for p in a1.kpis.trend) == 5

    async def changes(engine: AsyncEngine) -> dict[str, int]:
        def count(where: str) -> Awaitable[list[Any]]:
            return sql(
                engine, f"SELECT count(*) FROM {where} AND store_code = 'A1' AND run_date = :d", d=D
            )

        return {
            "converted": (await count("missed_leads_changes WHERE change = 'changed' AND column_name = 'is_order_placed' AND new_value = 'true'"))[0][0],
            "new_leads": (await count("missed_leads_changes WHERE change = 'new'"))[0][0],
            "delivered": (await count("undelivered_orders_changes WHERE change = 'changed' AND column_name = 'actual_deliver_on' AND old_value IS NULL AND new_value IS NOT NULL"))[0][0],
            "repeat": (await count("repeat_customers_changes WHERE change = 'changed' AND column_name = 'status'"))[0][0],
        }  # fmt: skip

    c = run(database_url, changes)
    since = a1.kpis.since
    assert since.note is None
    assert (since.leads_converted, since.new_leads) == (c["converted"], c["new_leads"]) == (1, 1)
    assert since.orders_delivered == c["delivered"] == 1
    assert since.new_undelivered == 1  # O1 is new and open; O7 is new but delivered
    assert since.repeat_status_changes == c["repeat"] == 1


def test_since_yesterday_is_none_with_a_note_without_change_history(
    database_url: URL, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.reports.kpis as kpis

    async def off(engine: AsyncEngine) -> bool:
        return False

    monkeypatch.setattr(kpis, "_history_available", off)
    (a1, *_) = build(database_url, data_dir, PASSED_ALL).reports
    assert a1.kpis.since.note == HISTORY_NOTE
    assert a1.kpis.since.new_leads is None and a1.kpis.since.orders_delivered is None
    assert HISTORY_NOTE in a1.html_path.read_text()  # type: ignore[union-attr]


def test_report_scope_only_and_a_store_outside_it_is_refused(
    built: ReportSet, database_url: URL, data_dir: Path
) -> None:
    assert [r.store_code for r in built.reports] == ["A1", "B2"]  # C3 has report_flag off
    with pytest.raises(ValueError, match="C3"):
        run(database_url, lambda engine: build_reports(engine, data_dir, D, ["C3"]))


# ---------------------------------------------------------------------- not reconciled


def test_a_store_whose_bucket_failed_its_audit_says_which_and_why(
    database_url: URL, data_dir: Path
) -> None:
    reason = "merged_rows=10 != ingested_rows=9 (written=9, kept_newer=0)"
    audits = {**PASSED_ALL, "undelivered_all": ("failed", reason, "{}")}
    reports = build(database_url, data_dir, audits)
    for r in reports.reports:
        assert [s.bucket for s in r.not_reconciled] == ["undelivered_all"]
        assert r.kpis.orders is None and r.orders_to_deliver == []
        assert r.kpis.leads is not None  # the reconciled buckets are still reported
        page = r.html_path.read_text()  # type: ignore[union-attr]
        assert "undelivered_all</b> is not reconciled" in page and reason in page
    index = reports.index_path.read_text()  # type: ignore[union-attr]
    assert index.count("undelivered_all") == 2


def test_a_store_missing_from_a_passed_audit_is_not_reconciled_for_that_bucket(
    built: ReportSet,
) -> None:
    a1, b2 = built.reports
    assert a1.not_reconciled == []
    (status,) = b2.not_reconciled
    assert status.bucket == "missed_leads" and "login timed out" in (status.reason or "")
    assert b2.kpis.leads is None and b2.leads_to_call == []
    assert b2.kpis.orders is not None and [o.order_id for o in b2.orders_to_deliver] == ["P1"]


def test_no_audit_at_all_says_so(database_url: URL, data_dir: Path) -> None:
    reports = build(database_url, data_dir, {})
    reasons = [s.reason for s in reports.reports[0].not_reconciled]
    assert reasons == [f"no audit of {b} for {D.isoformat()}" for b in BUCKETS]


# ------------------------------------------------------------------ HTML in a real browser

CHROMIUM = "/usr/bin/chromium"


def _tool(path_or_name: str, install: str) -> str:
    found = shutil.which(path_or_name)
    if not found:
        pytest.fail(f"{path_or_name} is not installed: {install}")
    return found


def png_ink(png: bytes) -> tuple[int, int, int]:
    """(width, height, non-white pixels) of an 8-bit RGB/RGBA PNG, decoded with zlib only."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    assert depth == 8, f"unexpected bit depth {depth}"
    raw, stride, bpp = zlib.decompress(idat), width * channels, channels
    prev, ink, pos = bytearray(stride), 0, 0
    for _ in range(height):
        kind, line = raw[pos], bytearray(raw[pos + 1 : pos + 1 + stride])
        pos += 1 + stride
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        for x in range(0, stride, channels):
            if min(line[x : x + min(channels, 3)]) < 200:
                ink += 1
        prev = line
    return width, height, ink


def test_the_html_renders_in_headless_chromium_with_the_action_lists(
    built: ReportSet, tmp_path: Path
) -> None:
    chromium = _tool(CHROMIUM, "apt-get install -y chromium")
    a1 = built.reports[0]
    assert a1.html_path is not None
    page = a1.html_path.read_text()
    for lead in a1.leads_to_call:
        assert f"<td>{lead.pickup_no}</td>" in page
    for order in a1.orders_to_deliver:
        assert f"<td>{order.order_id}</td>" in page
    assert "<svg" in page and "<polyline" in page and "<link" not in page  # self-contained
    # Hostile portal text is shown as text, never as markup.
    assert "<script" not in page and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "<b>wash</b>" not in page and "&lt;b&gt;wash&lt;/b&gt;" in page
    index = built.index_path.read_text()  # type: ignore[union-attr]
    assert "<script" not in index and 'href="A1.html"' in index and 'href="B2.pdf"' in index
    shot = tmp_path / "a1.png"
    subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
         "--window-size=420,2000", "--hide-scrollbars", a1.html_path.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    width, height, ink = png_ink(shot.read_bytes())
    assert (width, height) == (420, 2000)
    assert ink > 0.02 * width * height, f"screenshot looks blank ({ink} non-white pixels)"


def test_the_pdf_rasterises_to_a_non_blank_page(built: ReportSet, tmp_path: Path) -> None:
    pdftoppm = _tool(
        "pdftoppm", "apt-get install -y poppler-utils (add it to the Makefile / Dockerfile)"
    )
    a1 = built.reports[0]
    assert a1.pdf_path is not None and a1.pdf_path.read_bytes()[:5] == b"%PDF-"
    subprocess.run(
        [pdftoppm, "-png", "-r", "40", "-f", "1", "-l", "1", "-singlefile", str(a1.pdf_path),
         str(tmp_path / "page")],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    width, height, ink = png_ink((tmp_path / "page.png").read_bytes())
    assert ink > 0.01 * width * height, f"PDF page looks blank ({ink} non-white pixels)"
    text_out = subprocess.run(
        [_tool("pdftotext", "apt-get install -y poppler-utils"), str(a1.pdf_path), "-"],
        check=True, capture_output=True, timeout=120, text=True,
    ).stdout  # fmt: skip
    assert "O4" in text_out and "L2" in text_out and HOSTILE in text_out


# ----------------------------------------------------------------------------- delivery


def smtp_settings(port: int | None) -> Settings:
    if port is None:
        return Settings(_env_file=None, smtp_host=None)  # type: ignore[call-arg]
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_starttls=False,
        smtp_from="reports@example.com",
    )


def add_recipients(database_url: URL, pairs: list[tuple[str, str]]) -> None:
    async def work(engine: AsyncEngine) -> None:
        for store, address in pairs:
            await add_recipient(engine, store, address)

    run(database_url, work)


def deliver(database_url: URL, built: ReportSet, settings: Settings) -> dict[str, str]:
    async def work(engine: AsyncEngine) -> dict[str, str]:
        return {d.store_code: d.status for d in await deliver_reports(engine, settings, built)}

    return run(database_url, work)


def deliveries(database_url: URL) -> list[tuple[str, str, str]]:
    rows = run(
        database_url,
        lambda engine: sql(
            engine,
            "SELECT store_code, recipient, status FROM report_deliveries"
            " WHERE run_date = :d ORDER BY 1, 2",
            d=D,
        ),
    )
    return [tuple(r) for r in rows]


def test_the_report_mail_reaches_smtp_with_the_pdf_and_a_resend_sends_nothing_twice(
    built: ReportSet, database_url: URL, mailbox: Mailbox
) -> None:
    add_recipients(database_url, [("A1", "m1@example.com"), ("A1", "M2@example.com")])
    settings = smtp_settings(mailbox.port)
    assert deliver(database_url, built, settings) == {"A1": "sent", "B2": "no recipients"}
    (msg,) = mailbox.messages
    assert mailbox.envelopes == [("reports@example.com", ["m1@example.com", "m2@example.com"])]
    assert msg["Subject"] == f"[CRM] Store report A1 {D.isoformat()}"
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None
    assert "Leads to call: 3" in body.get_content()
    assert "Orders to deliver: 7" in body.get_content()
    (pdf,) = list(msg.iter_attachments())
    assert pdf.get_content_type() == "application/pdf"
    assert pdf.get_filename() == f"A1-{D.isoformat()}.pdf"
    assert pdf.get_content() == built.reports[0].pdf_path.read_bytes()  # type: ignore[union-attr]
    assert deliveries(database_url) == [
        ("A1", "m1@example.com", "sent"),
        ("A1", "m2@example.com", "sent"),
    ]
    # A resend is idempotent; a recipient added later gets only their own copy.
    assert deliver(database_url, built, settings)["A1"] == "already sent"
    assert len(mailbox.messages) == 1
    add_recipients(database_url, [("A1", "m3@example.com")])
    assert deliver(database_url, built, settings)["A1"] == "sent"
    assert mailbox.envelopes[1] == ("reports@example.com", ["m3@example.com"])
    assert len(deliveries(database_url)) == 3


def test_without_smtp_settings_no_message_is_sent(
    built: ReportSet, database_url: URL, mailbox: Mailbox
) -> None:
    add_recipients(database_url, [("A1", "m1@example.com")])
    assert deliver(database_url, built, smtp_settings(None))["A1"] == "skipped"
    assert mailbox.messages == []
    assert deliveries(database_url) == []


def test_an_smtp_failure_is_recorded_and_retried_by_the_next_send(
    built: ReportSet, database_url: URL, mailbox: Mailbox
) -> None:
    add_recipients(database_url, [("A1", "m1@example.com")])
    dead = smtp_settings(mailbox.port + 1 if mailbox.port < 65535 else 1)
    assert deliver(database_url, built, dead)["A1"] == "failed"
    assert deliveries(database_url) == [("A1", "m1@example.com", "failed")]
    assert deliver(database_url, built, smtp_settings(mailbox.port))["A1"] == "sent"
    assert deliveries(database_url) == [("A1", "m1@example.com", "sent")]


def test_recipients_import_refuses_a_bad_file_whole(database_url: URL, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("store_code,email\nA1,a@example.com\nA1,not-an-address\n")
    with pytest.raises(ValueError, match="line 3"):
        run(database_url, lambda engine: import_recipients(engine, bad))
    good = tmp_path / "good.csv"
    good.write_text("Store_Code,Email\nA1,a@example.com\nA1,a@example.com\n")

    async def work(engine: AsyncEngine) -> int:
        await seed(engine, PASSED_ALL)
        return await import_recipients(engine, good)

    assert run(database_url, work) == 1


# -------------------------------------------------------------------- CLI and Dagster


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app")
    sub = parser.add_subparsers(dest="command")
    stores = sub.add_parser("stores")
    stores.add_subparsers(dest="stores_command")
    add_report_commands(sub)
    return parser


def test_cli_report_builds_the_same_files_and_manages_recipients(
    app_env: dict[str, str],
    database_url: URL,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run(database_url, lambda engine: seed(engine, PASSED_ALL))
    settings = load_settings()
    args = _parser().parse_args(["stores", "recipients", "add", "A1", "x@example.com"])
    assert args._handler(args, settings) == 0
    args = _parser().parse_args(["stores", "recipients", "list"])
    assert args._handler(args, settings) == 0
    assert '"email": "x@example.com"' in capsys.readouterr().out
    args = _parser().parse_args(["report", "--date", D.isoformat(), "--stores", "A1", "--send"])
    assert args._handler(args, settings) == 0  # SMTP unset: built, nothing sent
    out = capsys.readouterr().out
    assert '"mail": "skipped"' in out and '"leads_to_call": 3' in out
    assert (data_dir / "reports" / D.isoformat() / "A1.pdf").is_file()
    assert not (data_dir / "reports" / D.isoformat() / "B2.html").exists()


def test_the_dagster_asset_materializes_with_headline_metadata(
    app_env: dict[str, str], database_url: URL, data_dir: Path
) -> None:
    from crm_assets.reports import store_reports
    from crm_resources import DatabaseResource, DataDirResource, RunDateLockResource

    run(database_url, lambda engine: seed(engine, B2_NOT_DOWNLOADED))
    result = dg.materialize(
        [store_reports],
        partition_key=D.isoformat(),
        resources={
            "db": DatabaseResource(database_url=render(database_url)),
            "data_dir": DataDirResource(path=str(data_dir)),
            "run_lock": RunDateLockResource(),
        },
    )
    assert result.success
    (mat,) = result.asset_materializations_for_node("reports__store_reports")
    meta = mat.metadata
    assert meta["stores"].value == 2
    assert meta["by_store"].value["A1"]["leads_to_call"] == 3  # type: ignore[index]
    assert meta["by_store"].value["A1"]["pdf"].endswith("A1.pdf")  # type: ignore[index]
    index = meta["index"].value
    assert "| A1 | 5 | 2 | 40\\.0 | 7 | 402\\.75 | 3 | 7 | \\- |" in index
    assert "<script" not in index


def test_a_section_heading_never_ends_a_page_alone(tmp_path: Path) -> None:
    """A heading that still fits at the foot of a page moves with its table to the next one."""
    from reportlab.lib.pagesizes import A4
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer

    from app.reports.pdf import H2, _table

    path = tmp_path / "heading.pdf"
    doc = SimpleDocTemplate(str(path), pagesize=A4)
    rows = [[f"L{i}", "Ravi", "9000000000"] for i in range(8)]
    doc.build(
        [
            Spacer(1, doc.height - 55),
            Paragraph("Leads to call (8)", H2),
            _table(["a", "b", "c"], rows),
        ]
    )
    pdftotext = _tool("pdftotext", "apt-get install -y poppler-utils")

    def page(n: int) -> str:
        return subprocess.run(
            [pdftotext, "-f", str(n), "-l", str(n), str(path), "-"],
            check=True, capture_output=True, timeout=60, text=True,
        ).stdout  # fmt: skip

    assert "Leads to call" not in page(1)
    assert "Leads to call" in page(2) and "L0" in page(2)
