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
from app.portal_sim import PortalSimulator, SimConfig, data
from app.portal_sim.config import PLAINTEXT_BODY, parse_behaviours
from app.portal_sim.data import ACCENTED_TEXT, FREE_TEXT, MISSED_LEADS_HEADER, UNDELIVERED_HEADER
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


# ----- body tokens: damaged CSV bodies over real HTTP ---------------------------------------

BODY_STORES = {
    "OS1": "otherstore",
    "PD1": "paddedstore",
    "RG1": "ragged",
    "QT1": "quote",
    "FT1": "footer",
    "WS1": "whitespace",
    "JK1": "junk",
    "CP1": "cp1252",
    "UT1": "utf16",
    "NL1": "nul",
    "TG1": "ragged@repeat_customers",
}


def _records_by_line(text: str) -> dict[int, list[str]]:
    """Records keyed by the physical line they start on (1 = header), as the platform reads."""
    reader = csv.reader(io.StringIO(text, newline=""))
    out: dict[int, list[str]] = {}
    line = 1
    for record in reader:
        out[line] = record
        line = reader.line_num + 1
    return out


def _line_of(body: bytes, offset: int) -> int:
    return body[:offset].count(b"\n") + 1


@pytest.fixture
def body_sim(make_portal_sim: Callable[..., PortalSimulator]) -> PortalSimulator:
    return make_portal_sim(
        store_codes=["A1", *BODY_STORES], store_behaviour=BODY_STORES, junk_bytes=200_000
    )


def _fetch_all(sim: PortalSimulator) -> dict[tuple[str, str], httpx.Response]:
    got = {}
    with httpx.Client() as client:
        login(sim, client)
        for sc in BODY_STORES:
            select(sim, client, sc)
            for key in BUCKET_REPORTS:
                got[(key, sc)] = fetch(sim, client, key, sc)
    return got


def _clean(sim: PortalSimulator, key: str, sc: str) -> bytes:
    return data.report_bytes(sim.config, key, sc, sim.today)


def test_body_tokens_serve_exactly_served_bytes(body_sim: PortalSimulator) -> None:
    sim = body_sim
    for (key, sc), resp in _fetch_all(sim).items():
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
        assert resp.content == sim.served_bytes(key, sc), (key, sc)
        # served_rows stay the store's own clean records, whatever the body holds.
        clean = _clean(sim, key, sc).decode()
        assert count_records_in_bytes(clean.encode()) == len(sim.served_rows(key, sc))
    assert sim.served_bytes("missed_leads", "TG1") == _clean(sim, "missed_leads", "TG1")
    assert sim.body_faults("missed_leads", "TG1") == frozenset()
    assert sim.body_faults("repeat_customers", "TG1") == {"ragged"}


def test_otherstore_serves_another_stores_report(body_sim: PortalSimulator) -> None:
    sim = body_sim
    other = sim.other_store("OS1")
    assert other != "OS1" and other in sim.store_codes
    for key in BUCKET_REPORTS:
        body = sim.served_bytes(key, "OS1")
        assert body == _clean(sim, key, other)
        header, *records = csv.reader(io.StringIO(body.decode(), newline=""))
        col = [normalize_header(h) for h in header].index("store code")
        assert {r[col] for r in records} == {other}
        assert {r[header[col]] for r in sim.served_rows(key, "OS1")} == {"OS1"}
        assert sim.fault_lines(key, "OS1") == [] and sim.damaged_records(key, "OS1") == []
    lonely = PortalSimulator(SimConfig(store_codes=["A1"], store_behaviour={"A1": "otherstore"}))
    assert lonely.other_store("A1") == "Z999"
    assert b"Z999" in lonely.served_bytes("repeat_customers", "A1")


def test_otherstore_once_then_the_right_store(
    make_portal_sim: Callable[..., PortalSimulator],
) -> None:
    sim = make_portal_sim(store_codes=["A1", "B1"], store_behaviour={"A1": "otherstore:1"})
    assert sim.served_bytes("missed_leads", "A1") == _clean(sim, "missed_leads", "A1")
    wrong = sim.served_bytes("missed_leads", "A1", all_faults=True)
    assert wrong == _clean(sim, "missed_leads", "B1")
    with httpx.Client() as client:
        login(sim, client)
        select(sim, client, "A1")
        assert fetch(sim, client, "missed_leads", "A1").content == wrong
        assert fetch(sim, client, "missed_leads", "A1").content == _clean(sim, "missed_leads", "A1")
        assert fetch(sim, client, "repeat_customers", "A1").content == _clean(
            sim, "repeat_customers", "B1"
        )  # counted per (store, report)
    assert sim.faults["otherstore"] == 2


def test_ragged_nul_and_cp1252_damage_one_record(body_sim: PortalSimulator) -> None:
    sim = body_sim
    for key in BUCKET_REPORTS:
        rows = sim.served_rows(key, "RG1")
        middle = len(rows) // 2
        for sc in ("RG1", "NL1", "CP1"):
            assert sim.damaged_records(key, sc) == [len(sim.served_rows(key, sc)) // 2]
        # ragged: one field more than the header, on the reported line only
        parsed = _records_by_line(sim.served_bytes(key, "RG1").decode())
        width = len(parsed[1])
        (line,) = sim.fault_lines(key, "RG1")
        assert len(parsed[line]) == width + 1
        assert FREE_TEXT[key][1] in sim.served_bytes(key, "RG1").decode()
        assert [n for n, r in parsed.items() if len(r) != width] == [line]
        good = [
            dict(zip(parsed[1], r, strict=True)) for n, r in parsed.items() if n not in (1, line)
        ]
        assert good == [r for i, r in enumerate(rows) if i != middle]
        # nul: a NUL byte in that record's free-text cell
        nul_body = sim.served_bytes(key, "NL1")
        assert nul_body.count(b"\x00") == 1
        assert [_line_of(nul_body, nul_body.index(b"\x00"))] == sim.fault_lines(key, "NL1")
        # cp1252: strict UTF-8 fails at the first 0xE9, inside the damaged record
        cp_body = sim.served_bytes(key, "CP1")
        with pytest.raises(UnicodeDecodeError) as info:
            cp_body.decode("utf-8")
        assert info.value.start == cp_body.index(b"\xe9")
        assert [_line_of(cp_body, info.value.start)] == sim.fault_lines(key, "CP1")
        assert ACCENTED_TEXT in cp_body.decode("cp1252")
    assert (
        sim.body_faults("repeat_customers", "TG1") and sim.fault_lines("missed_leads", "TG1") == []
    )


def test_quote_swallows_the_next_record_or_the_rest_of_the_file(
    body_sim: PortalSimulator,
) -> None:
    sim = body_sim
    for key in BUCKET_REPORTS:
        body = sim.served_bytes(key, "QT1").decode()
        rows = sim.served_rows(key, "QT1")
        middle = len(rows) // 2
        lines = sim.fault_lines(key, "QT1")
        physical = body.split("\n")
        opened = physical[lines[0] - 1]
        assert f'"{FREE_TEXT[key][1]}' in opened and opened.count('"') % 2 == 1
        parsed = _records_by_line(body)
        if key == "repeat_customers":  # no quote anywhere else: swallowed to end of file
            assert sim.damaged_records(key, "QT1") == list(range(middle, len(rows)))
            assert max(parsed) == lines[0] and len(parsed) == middle + 2
        else:  # the next record's quoted store name closes it: two records become one
            assert sim.damaged_records(key, "QT1") == [middle, middle + 1]
            assert len(parsed) == len(rows)  # header + one record fewer
        assert lines[0] in parsed and all(n not in parsed for n in lines[1:])


def test_footer_whitespace_junk_utf16_and_padded_store(body_sim: PortalSimulator) -> None:
    sim = body_sim
    for key in BUCKET_REPORTS:
        n = len(sim.served_rows(key, "FT1"))
        footer = sim.served_bytes(key, "FT1").decode()
        last = footer.rstrip("\r\n").rsplit("\n", 1)[-1]
        width = len(sim.served_header(key, "FT1"))
        expected = f"Total,{n}" if key == "repeat_customers" else f"Total,{n}" + "," * (width - 2)
        assert last == expected
        assert sim.fault_lines(key, "FT1") == [footer.rstrip("\r\n").count("\n") + 1]
        assert sim.damaged_records(key, "FT1") == []
        blank = sim.served_bytes(key, "WS1")
        assert blank.strip() == b"" and set(blank) == {ord(" "), ord("\n")}
        junk = sim.served_bytes(key, "JK1")
        assert len(junk) == 200_000 and b"\n" not in junk and b"\r" not in junk
        assert min(junk) >= 0x20 and max(junk) <= 0x7E
        utf16 = sim.served_bytes(key, "UT1")
        assert utf16.startswith(b"\xff\xfe")
        assert utf16.decode("utf-16") == _clean(sim, key, "UT1").decode()
        padded = sim.served_bytes(key, "PD1").decode()
        header, *records = csv.reader(io.StringIO(padded, newline=""))
        col = [normalize_header(h) for h in header].index("store code")
        assert {r[col] for r in records} == {" pd1 "}
        for sc in ("WS1", "JK1", "UT1", "PD1"):
            assert sim.fault_lines(key, sc) == []


def test_junk_can_be_ten_megabytes(make_portal_sim: Callable[..., PortalSimulator]) -> None:
    sim = make_portal_sim(
        store_codes=["J1"], store_behaviour={"J1": "junk@repeat_customers"}, junk_bytes=10_000_000
    )
    with httpx.Client() as client:
        login(sim, client)
        select(sim, client, "J1")
        body = fetch(sim, client, "repeat_customers", "J1").content
    assert len(body) == 10_000_000 and b"\n" not in body
    assert body == sim.served_bytes("repeat_customers", "J1")


def test_plaintext_message_with_http_200(make_portal_sim: Callable[..., PortalSimulator]) -> None:
    sim = make_portal_sim(
        store_codes=["P1", "P2"],
        store_behaviour={"P1": "plaintext", "P2": "plaintext:*@repeat_customers"},
    )
    with httpx.Client() as client:
        login(sim, client)
        for sc in sim.store_codes:
            select(sim, client, sc)
        first = fetch(sim, client, "missed_leads", "P1")
        assert first.status_code == 200
        assert first.headers["content-type"].startswith("text/plain")
        assert first.text == PLAINTEXT_BODY
        assert fetch(sim, client, "missed_leads", "P1").content == sim.served_bytes(
            "missed_leads", "P1"
        )
        for _ in range(3):
            assert fetch(sim, client, "repeat_customers", "P2").text == PLAINTEXT_BODY
        assert (
            fetch(sim, client, "missed_leads", "P2").headers["content-type"].startswith("text/csv")
        )
    assert sim.faults["plaintext"] == 4


def test_body_token_parsing() -> None:
    parsed = parse_behaviours("otherstore:1@missed_leads, quote, plaintext")
    assert [(b.name, b.times, b.target) for b in parsed] == [
        ("otherstore", 1, "missed_leads"),
        ("quote", None, None),
        ("plaintext", 1, None),
    ]
    with pytest.raises(ValueError, match="cannot target the dashboard"):
        parse_behaviours("junk@dashboard")
    with pytest.raises(ValueError, match="unknown simulator behaviour"):
        parse_behaviours("junky")
