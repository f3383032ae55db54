"""The simulator speaks PORTAL.md over real HTTP, and its data looks like the real exports."""

import csv
import datetime as dt
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from app.coercion import CoercionError, coerce_value, normalize_header
from app.config import MERGE_BUCKET_DB_SPECS
from app.csv_io import SENTINEL, count_records_in_bytes
from app.portal_sim import PortalSimulator, SimConfig
from app.portal_sim.data import MISSED_LEADS_HEADER, UNDELIVERED_HEADER
from tests.fixtures_portal import SIM_DEFAULTS, SIM_TODAY

BUCKET_REPORTS = ("missed_leads", "undelivered_all", "repeat_customers")
PATHS = {
    "missed_leads": "/mis/download_csv?store_code={sc}",
    "undelivered_all": "/mis/download_undelivered_csv?type=a&store_code={sc}",
    "repeat_customers": "/mis/download_repeat_csv?store_code={sc}",
    "undelivered_last10": "/mis/download_undelivered_csv?type=u10&store_code={sc}",
    "nonpackage_u": "/mis/download_nonpackageorder_csv?type=u&store_code={sc}",
}


def login(sim: PortalSimulator, client: httpx.Client) -> None:
    resp = client.post(
        f"{sim.web_url}/home/login", data={"user_name": sim.username, "password": sim.password}
    )
    assert resp.status_code == 302 and resp.headers["location"] == "/home"
    home = client.get(f"{sim.web_url}/home")
    link = re.search(r'Daily Operations Tracker</h5>.*?href="([^"]+)"', home.text, re.S)
    assert link, home.text
    landing = client.get(link[1], follow_redirects=True)
    assert landing.url.path == "/client/tickets"


def fetch(sim: PortalSimulator, client: httpx.Client, key: str, sc: str) -> httpx.Response:
    return client.get(sim.base_url + PATHS[key].format(sc=sc))


def select(sim: PortalSimulator, client: httpx.Client, sc: str) -> None:
    resp = client.get(f"{sim.base_url}/mis/partner_dashboard?store_code={sc}")
    assert resp.status_code == 200 and sc in resp.text


def test_login_flow_and_sign_on_hop(portal_sim: PortalSimulator) -> None:
    sim = portal_sim
    assert sim.web_url != sim.base_url  # two sites, two cookie domains
    with httpx.Client() as client:
        first = client.get(f"{sim.web_url}/home")
        assert first.status_code == 302 and first.headers["location"] == "/home/login"
        form = client.get(f"{sim.web_url}/home/login").text
        assert 'name="user_name"' in form and 'name="password"' in form
        bad = client.post(
            f"{sim.web_url}/home/login", data={"user_name": sim.username, "password": "nope"}
        )
        assert bad.status_code == 200 and "Invalid username/password" in bad.text
        assert sim.failed_login_count == 1 and sim.login_count == 0
        login(sim, client)
        assert sim.login_count == 1
        domains = {c.domain for c in client.cookies.jar}
        assert len(domains) == 2  # main-site cookie and reports-site cookie are separate
        tickets = client.get(f"{sim.base_url}/client/tickets")
        assert "Ticket Managment" in tickets.text
        assert "You need to be logged in" not in tickets.text


def test_reports_site_without_session_answers_200_html(portal_sim: PortalSimulator) -> None:
    sc = portal_sim.store_codes[0]
    with httpx.Client() as client:
        for key in BUCKET_REPORTS:
            resp = fetch(portal_sim, client, key, sc)
            assert resp.status_code == 200
            assert "<title>Ticket Managment</title>" in resp.text
            assert "You need to be logged in to view this page!" in resp.text
        dash = client.get(f"{portal_sim.base_url}/mis/partner_dashboard?store_code={sc}")
        assert dash.status_code == 200 and "You need to be logged in" in dash.text


def test_csv_needs_the_store_selected_in_this_session(portal_sim: PortalSimulator) -> None:
    sc = portal_sim.store_codes[0]
    with httpx.Client() as client:
        login(portal_sim, client)
        assert "<html" in fetch(portal_sim, client, "missed_leads", sc).text
        select(portal_sim, client, sc)
        assert fetch(portal_sim, client, "missed_leads", sc).text.startswith(("id,", "ID,", "Id,"))


def test_served_bodies_match_rows_and_headers(
    make_portal_sim: Callable[..., PortalSimulator],
) -> None:
    sim = make_portal_sim(store_count=8)
    canon = {
        "missed_leads": [normalize_header(h) for h in MISSED_LEADS_HEADER],
        "undelivered_all": [normalize_header(h) for h in UNDELIVERED_HEADER],
        "repeat_customers": ["store code", "mobile no.", "status"],
    }
    header_spellings: set[str] = set()
    with httpx.Client() as client:
        login(sim, client)
        for sc in sim.store_codes:
            select(sim, client, sc)
            for key in (*BUCKET_REPORTS, "undelivered_last10", "nonpackage_u"):
                resp = fetch(sim, client, key, sc)
                assert resp.status_code == 200
                assert resp.headers["content-type"].startswith("text/csv")
                assert resp.content == sim.served_bytes(key, sc)
                if key not in BUCKET_REPORTS:
                    continue
                reader = csv.reader(io.StringIO(resp.content.decode(), newline=""))
                header = next(reader)
                records = [dict(zip(header, r, strict=True)) for r in reader]
                assert records == sim.served_rows(key, sc)
                assert [normalize_header(h) for h in header] == canon[key]
                assert count_records_in_bytes(resp.content) == len(records)
                if key == "undelivered_all":
                    assert header[0] == "order_no"
                if key == "repeat_customers":
                    assert {r[header[2]] for r in records} <= {"Yes", "No"}
                if key == "missed_leads":
                    header_spellings.add(header[2])
    assert len(header_spellings) >= 2, header_spellings  # headers vary between stores


def test_sentinel_and_empty_stores(make_portal_sim: Callable[..., PortalSimulator]) -> None:
    sim = make_portal_sim(
        store_codes=["S1", "E1", "P1"],
        store_behaviour={"S1": "sentinel", "E1": "empty", "P1": "sentinel@repeat_customers"},
    )
    with httpx.Client() as client:
        login(sim, client)
        for sc in sim.store_codes:
            select(sim, client, sc)
        for key in BUCKET_REPORTS:
            body = fetch(sim, client, key, "S1").content
            assert body == SENTINEL.encode() == b"No data available to export."
            assert sim.served_rows(key, "S1") == []
            empty = fetch(sim, client, key, "E1").content
            assert empty.count(b"\n") == 1 and not empty.startswith(b"No data")
            assert sim.served_rows(key, "E1") == []
        assert fetch(sim, client, "repeat_customers", "P1").content == SENTINEL.encode()
        assert fetch(sim, client, "missed_leads", "P1").content != SENTINEL.encode()


KEY_COLUMN = {"missed_leads": 2, "undelivered_all": 0, "repeat_customers": 1}


def _keys(sim: PortalSimulator, key: str, sc: str, day: dt.date) -> list[str]:
    return [list(r.values())[KEY_COLUMN[key]] for r in sim.served_rows(key, sc, day)]


def test_month_to_date_snapshots_change_and_reset() -> None:
    sim = PortalSimulator(SimConfig(**SIM_DEFAULTS))
    other_seed = PortalSimulator(SimConfig(**{**SIM_DEFAULTS, "seed": 8}))
    other_data = PortalSimulator(
        SimConfig(**{**SIM_DEFAULTS, "seed": 8, "store_codes": sim.store_codes})
    )
    same_seed = PortalSimulator(SimConfig(**SIM_DEFAULTS))
    changed = 0
    for sc in sim.store_codes:
        for key in ("missed_leads", "undelivered_all"):
            previous: list[dict[str, str]] = []
            for day in range(1, 29):
                date = dt.date(2026, 3, day)
                rows = sim.served_rows(key, sc, date)
                keys_now = {list(r.values())[KEY_COLUMN[key]] for r in rows}
                prev_keys = {list(r.values())[KEY_COLUMN[key]] for r in previous}
                assert prev_keys <= keys_now  # rows accumulate through the month
                assert len(rows) >= len(previous)
                if previous:
                    changed += sum(1 for a, b in zip(previous, rows, strict=False) if a != b)
                previous = rows
            april_first = sim.served_rows(key, sc, dt.date(2026, 4, 1))
            assert len(april_first) < len(previous)  # totals reset with the month
        assert sim.served_bytes("repeat_customers", sc, dt.date(2026, 3, 2)) == sim.served_bytes(
            "repeat_customers", sc, dt.date(2026, 3, 28)
        )
        assert sim.served_bytes("missed_leads", sc) == same_seed.served_bytes("missed_leads", sc)
    assert changed > 0  # statuses change from day to day
    assert sim.store_codes != other_seed.store_codes
    sc = sim.store_codes[0]
    assert sim.served_bytes("missed_leads", sc) != other_data.served_bytes("missed_leads", sc)


def _coerce_all(sim: PortalSimulator, key: str, sc: str, day: dt.date) -> list[str]:
    """Coerce every value the way the ingester will; returns the errors."""
    spec = MERGE_BUCKET_DB_SPECS[key]
    aliases = {normalize_header(a): c for a, c in spec.get("header_aliases", {}).items()}
    by_norm = {normalize_header(h): target for h, target in spec["column_map"].items()}
    errors = []
    for row in sim.served_rows(key, sc, day):
        for header, raw in row.items():
            norm = normalize_header(header)
            column = by_norm.get(norm) or spec["column_map"].get(aliases.get(norm, ""))
            assert column, f"unmapped header {header!r}"
            try:
                coerce_value(
                    column,
                    spec["coerce"][column],
                    raw,
                    is_key=column in spec["dedupe_keys"],
                )
            except CoercionError as exc:
                errors.append(str(exc))
    return errors


def test_generated_values_are_realistic_and_coercible() -> None:
    sim = PortalSimulator(SimConfig(**{**SIM_DEFAULTS, "store_count": 12}))
    text_parts: list[str] = []
    duplicates = {k: 0 for k in BUCKET_REPORTS}
    for sc in sim.store_codes:
        for key in BUCKET_REPORTS:
            for day in (SIM_TODAY, dt.date(2026, 2, 28)):
                assert _coerce_all(sim, key, sc, day) == []
            text_parts.append(sim.served_bytes(key, sc).decode())
            keys = _keys(sim, key, sc, SIM_TODAY)
            duplicates[key] += len(keys) - len(set(keys))
            rows = sim.served_rows(key, sc)
            assert 5 <= len(rows) <= 80
    blob = "\n".join(text_parts)
    assert re.search(r'"[^"]*\n[^"]*"', blob)  # a quoted field with a newline
    assert '""' in blob  # an escaped quote
    assert re.search(r'"[^"\n]*, [^"\n]*"', blob)  # a quoted field with a comma
    assert re.search(r"\+91 \d{5}-\d{5}", blob)
    assert re.search(r'"\d,\d{3}\.\d{2}"', blob)
    for pattern in (
        r"\b\d{4}-\d{2}-\d{2}\b",
        r"\b\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\b",
        r"\b\d{2}-\d{2}-\d{4}\b",
        r"\b\d{2}/\d{2}/\d{4}\b",
        r"\b\d{2} [A-Z][a-z]{2} \d{4}\b",
        r"\b\d{2} [A-Z][a-z]{2} \d{4} \d{1,2}:\d{2}:\d{2} [AP]M\b",
        r",N/A,",
    ):
        assert re.search(pattern, blob), pattern
    assert all(n > 0 for n in duplicates.values()), duplicates
    assert "\r\n" in blob and re.search(r"[^\r]\n", blob)


def test_bad_rows_knob_produces_uncoercible_rows() -> None:
    sim = PortalSimulator(SimConfig(**{**SIM_DEFAULTS, "bad_rows_per_store": 2}))
    sc = sim.store_codes[0]
    assert any("31/31/2026" in e for e in _coerce_all(sim, "undelivered_all", sc, SIM_TODAY))
    assert any("31/31/2026" in e for e in _coerce_all(sim, "missed_leads", sc, SIM_TODAY))
    assert any(
        "missing dedupe key" in e for e in _coerce_all(sim, "repeat_customers", sc, SIM_TODAY)
    )


def test_faults_over_http(make_portal_sim: Callable[..., PortalSimulator]) -> None:
    sim = make_portal_sim(
        store_codes=["R1", "T1", "Q1", "F1", "H1"],
        retry_after_s=3,
        store_behaviour={
            "R1": "reset",
            "T1": "truncate",
            "Q1": "429:2@repeat_customers",
            "F1": "503:*",
            "H1": "html:1",
        },
    )
    with httpx.Client() as client:
        login(sim, client)
        for sc in sim.store_codes:
            select(sim, client, sc)
        with pytest.raises(httpx.RemoteProtocolError):
            fetch(sim, client, "missed_leads", "R1")
        assert fetch(sim, client, "missed_leads", "R1").content == sim.served_bytes(
            "missed_leads", "R1"
        )
        with pytest.raises(httpx.RemoteProtocolError, match=r"incomplete|expected"):
            fetch(sim, client, "missed_leads", "T1")
        for _ in range(2):
            limited = fetch(sim, client, "repeat_customers", "Q1")
            assert limited.status_code == 429 and limited.headers["retry-after"] == "3"
        assert fetch(sim, client, "repeat_customers", "Q1").status_code == 200
        assert [fetch(sim, client, "missed_leads", "F1").status_code for _ in range(3)] == [503] * 3
        assert "You need to be logged in" in fetch(sim, client, "missed_leads", "H1").text
        assert fetch(sim, client, "missed_leads", "H1").content == sim.served_bytes(
            "missed_leads", "H1"
        )
    assert sim.faults["reset"] == 1 and sim.faults["truncate"] == 1 and sim.faults["429"] == 2


def test_session_expires_after_n_requests(make_portal_sim: Callable[..., PortalSimulator]) -> None:
    sim = make_portal_sim(session_expires_after=3, split_origins=False)
    assert sim.web_url == sim.base_url
    sc = sim.store_codes[0]
    with httpx.Client() as client:
        login(sim, client)  # the tickets landing page is request 1
        select(sim, client, sc)
        assert fetch(sim, client, "missed_leads", sc).status_code == 200
        assert "You need to be logged in" in fetch(sim, client, "missed_leads", sc).text
        login(sim, client)
        select(sim, client, sc)
        assert fetch(sim, client, "missed_leads", sc).content == sim.served_bytes(
            "missed_leads", sc
        )
    assert sim.faults["expired"] == 1


def test_latency_is_concurrent(make_portal_sim: Callable[..., PortalSimulator]) -> None:
    """The benchmark relies on latency overlapping across connections (asyncio.sleep)."""
    import concurrent.futures

    sim = make_portal_sim(dashboard_latency_s=0.3)
    sc = sim.store_codes[0]
    with httpx.Client() as client:
        login(sim, client)

        def visit(_: int) -> int:
            return client.get(f"{sim.base_url}/mis/partner_dashboard?store_code={sc}").status_code

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            assert list(pool.map(visit, range(6))) == [200] * 6
        assert time.perf_counter() - started < 1.2  # 6 x 0.3 s sequentially would be 1.8 s


def test_stores_listing_seeds_store_master(portal_sim: PortalSimulator) -> None:
    stores = portal_sim.stores()
    assert [s["store_code"] for s in stores] == portal_sim.store_codes
    assert all(s["store_name"] for s in stores)
    assert len(set(portal_sim.store_codes)) == 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cli_portal_sim_serves_until_interrupted(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "portal-sim", "--port", str(port), "--stores", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert f"http://127.0.0.1:{port}" in line and '"stores"' in line
        resp = httpx.get(f"http://127.0.0.1:{port}/home/login", timeout=5)
        assert resp.status_code == 200 and 'name="user_name"' in resp.text
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "TMS_USERNAME=demo" in err
