"""The downloader against the simulator over real loopback HTTP (no mocks)."""

import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from app.config import BUCKETS, FILE_SPECS
from app.csv_io import SENTINEL, count_records, is_empty_report, looks_like_html, open_records
from app.downloader import (
    DownloadReport,
    LoginError,
    PortalCredentials,
    PortalUnavailableError,
    download_reports,
    download_reports_sync,
)
from app.portal_sim import PortalSimulator
from app.portal_sim.config import PLAINTEXT_BODY
from app.rejects import FileProblem
from tests.fixtures_portal import portal_creds

FAST = {"progress": False, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "rate_per_s": 0}
REPORT_OF = {"missed_leads": "missed_leads", "undelivered_all": "undelivered_all"}
REPORT_OF["repeat_customers"] = "repeat_customers"


async def run(
    sim: PortalSimulator,
    data_dir: Path,
    stores: list[str] | None = None,
    creds: PortalCredentials | None = None,
    **kwargs: Any,
) -> DownloadReport:
    options = {**FAST, "concurrency": 4, **kwargs}
    return await download_reports(
        creds or portal_creds(sim),
        store_codes=sim.store_codes if stores is None else stores,
        buckets=options.pop("buckets", list(BUCKETS)),
        run_date=sim.today,
        data_dir=data_dir,
        **options,
    )


def assert_files_match(
    sim: PortalSimulator, report: DownloadReport, stores: list[str], *, exact: bool = True
) -> None:
    """Every store's file is byte-equal to what the simulator served, and counted exactly."""
    for bucket, result in report.buckets.items():
        key = REPORT_OF[bucket]
        if exact:
            assert sorted(result.files) == sorted(stores), bucket
        for sc in stores:
            path = result.files[sc]
            assert path.name == FILE_SPECS[key]["out_name_template"].format(sc=sc)
            assert path.read_bytes() == sim.served_bytes(key, sc), (bucket, sc)
            assert result.rows_by_store[sc] == len(sim.served_rows(key, sc)) == count_records(path)


def assert_no_bad_files(data_dir: Path) -> None:
    """No partial or HTML body is ever left under a final name (or at all)."""
    for path in data_dir.rglob("*"):
        if path.is_dir():
            continue
        assert not path.name.endswith(".part"), path
        body = path.read_bytes()
        assert not looks_like_html(body[:4096]), path
        assert body == SENTINEL.encode() or body.endswith(b"\n"), path


async def test_downloads_every_store_byte_equal(
    portal_sim: PortalSimulator, data_dir: Path
) -> None:
    report = await run(portal_sim, data_dir)
    assert report.ok and report.failed_stores == {}
    assert_files_match(portal_sim, report, portal_sim.store_codes)
    assert report.login_count == portal_sim.login_count == 1
    for sc in portal_sim.store_codes:
        assert portal_sim.dashboard_visits(sc) == 1
    day_dir = data_dir / portal_sim.today.isoformat()
    assert len(list(day_dir.iterdir())) == 3 * len(portal_sim.store_codes)
    for result in report.buckets.values():
        assert result.download_total == sum(result.rows_by_store.values()) > 0
        assert result.bytes_total == sum(p.stat().st_size for p in result.files.values())
        assert result.retries == 0
    assert_no_bad_files(data_dir)


async def test_sentinel_and_empty_stores_are_empty_reports(
    make_portal_sim: Callable[..., PortalSimulator], data_dir: Path
) -> None:
    sim = make_portal_sim(
        store_codes=["A1", "S1", "E1"], store_behaviour={"S1": "sentinel", "E1": "empty"}
    )
    report = await run(sim, data_dir)
    assert report.ok
    assert_files_match(sim, report, sim.store_codes)
    for result in report.buckets.values():
        assert result.rows_by_store["S1"] == result.rows_by_store["E1"] == 0
        assert result.files["S1"].read_bytes() == b"No data available to export."
        assert is_empty_report(result.files["S1"])
        assert result.empty_stores == ["S1"]
        assert result.rows_by_store["A1"] > 0


async def test_transient_faults_are_retried(
    make_portal_sim: Callable[..., PortalSimulator], data_dir: Path
) -> None:
    sim = make_portal_sim(
        store_codes=["Q1", "F1", "D1", "R1", "T1", "OK1"],
        store_behaviour={
            "Q1": "429:2",
            "F1": "500,502@repeat_customers",
            "D1": "503:2@dashboard",
            "R1": "reset",
            "T1": "truncate",
        },
    )
    report = await run(sim, data_dir, max_retries=3)
    assert report.failed_stores == {}
    assert_files_match(sim, report, sim.store_codes)
    assert sim.faults["429"] == 6 and sim.faults["503"] == 2
    assert sim.faults["reset"] == 3 and sim.faults["truncate"] == 3
    assert report.dashboard_retries == 2
    assert sum(b.retries for b in report.buckets.values()) == 6 + 4 + 3 + 3
    assert report.login_count == 1
    assert_no_bad_files(data_dir)


async def test_retry_after_is_honoured(
    make_portal_sim: Callable[..., PortalSimulator], data_dir: Path
) -> None:
    sim = make_portal_sim(
        store_codes=["Q1"], retry_after_s=1, store_behaviour={"Q1": "429@missed_leads"}
    )
    started = time.perf_counter()
    report = await run(sim, data_dir, buckets=["missed_leads"])
    assert report.ok
    assert time.perf_counter() - started >= 1.0  # waited Retry-After, not the 10 ms backoff


async def test_random_faults_at_a_rate_are_survived(
    make_portal_sim: Callable[..., PortalSimulator], data_dir: Path
) -> None:
    sim = make_portal_sim(
        store_count=10, rate_429=0.1, rate_5xx=0.1, rate_reset=0.05, rate_truncate=0.05
    )
    report = await run(sim, data_dir, max_retries=8)
    assert report.ok, report.failed_stores
    assert_files_match(sim, report, sim.store_codes)
    assert report.retries == sum(sim.faults.values()) > 0
    assert_no_bad_files(data_dir)


async def test_one_store_failing_does_not_stop_the_others(
    make_portal_sim: Callable[..., PortalSimulator], data_dir: Path
) -> None:
    sim = make_portal_sim(
        store_codes=["A1", "B1", "C1", "D1"],
        store_behaviour={"B1": "500:*@missed_leads", "C1": "reset:*", "D1": "500:*@dashboard"},
    )
    report = await run(sim, data_dir, max_retries=2)
    ml, ud, rc = (report.buckets[b] for b in BUCKETS)
    assert "HTTP 500 after 2 retries" in ml.failed["B1"]
    assert "B1" in ud.files and "B1" in rc.files  # its other reports still came down
    for bucket in report.buckets.values():
        assert "connection dropped" in bucket.failed["C1"]
        assert bucket.failed["D1"].startswith("store dashboard failed: dashboard: HTTP 500")
        assert "A1" in bucket.files
    assert set(report.failed_stores) == {"B1", "C1", "D1"}
    assert not (data_dir / sim.today.isoformat() / "B1-missed-leads.csv").exists()
    assert not list((data_dir / sim.today.isoformat()).glob("C1-*"))
    assert_no_bad_files(data_dir)


async def test_html_instead_of_csv_relogs_in_once_then_fails_the_store(
    make_portal_sim: Callable[..., PortalSimulator], data_dir: Path
) -> None:
    sim = make_portal_sim(store_codes=["A1", "H1", "B1"], store_behaviour={"H1": "html"})
    report = await run(sim, data_dir, concurrency=1)
    assert sim.login_count == report.login_count == 2
    assert set(report.failed_stores) == {"H1"}
    reason = report.buckets["missed_leads"].failed["H1"]
    assert "login page instead of a CSV" in reason and "after one re-login" in reason
    assert report.buckets["repeat_customers"].failed["H1"].startswith("skipped")
    assert sim.requests_for("H1").count("/mis/download_csv?store_code=H1") == 2
    assert not list((data_dir / sim.today.isoformat()).glob("H1-*"))
    assert_files_match(sim, report, ["A1", "B1"], exact=False)
    assert_no_bad_files(data_dir)


async def test_one_html_page_is_cured_by_a_relogin(
    make_portal_sim: Callable[..., PortalSimulator], data_dir: Path
) -> None:
    sim = make_portal_sim(
        store_codes=["A1", "H1"], store_behaviour={"H1": "html:1@undelivered_all"}
    )
    report = await run(sim, data_dir, concurrency=1)
    assert report.ok and report.login_count == sim.login_count == 2
    assert_files_match(sim, report, ["A1", "H1"])
    assert sim.dashboard_visits("H1") == 2  # the new session needs the store selected again


async def test_expired_session_mid_run_relogs_in_once(
    make_portal_sim: Callable[..., PortalSimulator], data_dir: Path
) -> None:
    # 4 stores x 4 requests = 16; the first session dies at its 13th request (the sign-on
    # landing page is its first), the second one has room for the rest.
    sim = make_portal_sim(session_expires_after=12)
    report = await run(sim, data_dir, concurrency=4)
    assert report.ok, report.failed_stores
    assert sim.faults["expired"] >= 1
    assert sim.login_count == report.login_count == 2
    assert_files_match(sim, report, sim.store_codes)
    assert_no_bad_files(data_dir)


async def test_wrong_credentials_fail_fast_with_a_login_message(
    portal_sim: PortalSimulator, data_dir: Path
) -> None:
    creds = portal_creds(portal_sim, password="wrong-secret")
    started = time.perf_counter()
    with pytest.raises(LoginError) as info:
        await run(portal_sim, data_dir, creds=creds, backoff_base_s=1.0)
    assert time.perf_counter() - started < 1.0
    message = str(info.value)
    assert message == (
        f"portal login failed for user 'demo' at {portal_sim.web_url}/home/login: "
        "Invalid username/password"
    )
    assert "wrong-secret" not in message and "wrong-secret" not in repr(creds)
    assert portal_sim.failed_login_count == 1  # no retry storm against the login form
    assert portal_sim.requests["/mis/partner_dashboard"] == 0


async def test_missing_reports_card_is_a_login_error(
    make_portal_sim: Callable[..., PortalSimulator], data_dir: Path
) -> None:
    sim = make_portal_sim(hide_reports_card=True)
    with pytest.raises(LoginError, match="no 'Daily Operations Tracker' card"):
        await run(sim, data_dir)


async def test_invalid_store_codes_never_reach_a_url_or_path(
    portal_sim: PortalSimulator, data_dir: Path
) -> None:
    bad = ["../etc", "A 1", "x" * 33, "A1;rm"]
    good = portal_sim.store_codes[:1]
    report = await run(portal_sim, data_dir, stores=[*bad, *good])
    assert set(report.failed_stores) == set(bad)
    assert all("invalid store code" in r for r in report.failed_stores.values())
    for code in bad:
        assert portal_sim.requests_for(code) == []
    names = sorted(p.name for p in (data_dir / portal_sim.today.isoformat()).iterdir())
    assert names == sorted(FILE_SPECS[k]["out_name_template"].format(sc=good[0]) for k in REPORT_OF)


async def test_timeouts_are_retried_then_reported(
    make_portal_sim: Callable[..., PortalSimulator], data_dir: Path
) -> None:
    sim = make_portal_sim(
        store_codes=["A1", "S1"],
        slow_latency_s=2.0,
        store_behaviour={"S1": "slow@repeat_customers"},
    )
    started = time.perf_counter()
    report = await run(sim, data_dir, timeout_s=0.5, max_retries=1)
    assert time.perf_counter() - started < 4  # two 0.5 s attempts, not two 2 s waits
    assert set(report.failed_stores) == {"S1"}
    assert report.buckets["repeat_customers"].failed["S1"].startswith("timed out")
    assert "S1" in report.buckets["missed_leads"].files
    assert_no_bad_files(data_dir)


async def test_buckets_subset_fetches_only_their_reports(
    portal_sim: PortalSimulator, data_dir: Path
) -> None:
    report = await run(portal_sim, data_dir, buckets=["repeat_customers"])
    assert list(report.buckets) == ["repeat_customers"]
    assert portal_sim.requests["/mis/download_repeat_csv"] == len(portal_sim.store_codes)
    assert portal_sim.requests["/mis/download_csv"] == 0
    with pytest.raises(ValueError, match="unknown buckets"):
        await run(portal_sim, data_dir, buckets=["nope"])


async def test_logs_one_line_per_store_and_bucket_and_no_secrets(
    make_portal_sim: Callable[..., PortalSimulator],
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim = make_portal_sim(
        password="s3cr3t-pw", store_behaviour={"A1": "html"}, store_codes=["A1", "B1"]
    )
    report = await run(sim, data_dir)
    out = capsys.readouterr().out
    events = [json.loads(line) for line in out.splitlines()]  # only JSON on a non-terminal
    assert all(e["phase"] == "download" for e in events)
    per_store = [e for e in events if e["store_code"] and e["bucket"]]
    assert sorted((e["store_code"], e["bucket"]) for e in per_store) == sorted(
        (sc, b) for sc in ("A1", "B1") for b in BUCKETS
    )
    ok_lines = [e for e in per_store if e["status"] == "ok"]
    assert all(
        e["counts"]["download_total"] == report.buckets[e["bucket"]].rows_by_store[e["store_code"]]
        for e in ok_lines
    )
    summaries = {e["bucket"]: e for e in events if e["bucket"] and not e["store_code"]}
    for bucket, result in report.buckets.items():
        assert summaries[bucket]["extras"]["download_rows_by_store"] == result.rows_by_store
        assert summaries[bucket]["counts"]["download_total"] == result.download_total
        assert summaries[bucket]["extras"]["failed_stores"] == {"A1": result.failed["A1"]}
    final = events[-1]
    assert final["bucket"] is None and final["extras"]["login_count"] == 2
    assert "s3cr3t-pw" not in out
    assert "tms_session" not in out and "tms_web" not in out


def test_sync_wrapper_and_single_origin(
    make_portal_sim: Callable[..., PortalSimulator], data_dir: Path
) -> None:
    sim = make_portal_sim(split_origins=False)
    assert sim.web_url == sim.base_url
    report = download_reports_sync(
        portal_creds(sim),
        store_codes=sim.store_codes,
        buckets=list(BUCKETS),
        run_date=sim.today,
        data_dir=data_dir,
        **FAST,
    )
    assert report.ok
    assert_files_match(sim, report, sim.store_codes)


async def test_progress_display_routes_json_through_rich(
    portal_sim: PortalSimulator, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = await run(portal_sim, data_dir, progress=True)
    assert report.ok
    out = capsys.readouterr().out
    assert out.count('"phase":"download"') == 3 * 4 + 3 + 2
    assert "12/12" in out  # the rich bar's final state


async def test_concurrency_overlaps_slow_dashboards(
    make_portal_sim: Callable[..., PortalSimulator], data_dir: Path
) -> None:
    sim = make_portal_sim(store_count=8, dashboard_latency_s=0.2)
    started = time.perf_counter()
    report = await run(sim, data_dir, concurrency=8, buckets=["repeat_customers"])
    elapsed = time.perf_counter() - started
    assert report.ok
    assert elapsed < 1.0  # sequential would be 8 x 0.2 s = 1.6 s


def test_credentials_repr_hides_the_password() -> None:
    creds = PortalCredentials("http://w/", "http://b", "u", "hunter2")
    assert "hunter2" not in repr(creds) and creds.web_url == "http://w"


async def test_single_session_portal_relogin_is_shared_by_all_workers(
    make_portal_sim: Callable[..., PortalSimulator], data_dir: Path
) -> None:
    """A login that ends every other session must not cost the other stores their re-login."""
    sim = make_portal_sim(
        single_session=True,
        csv_latency_s=0.02,
        store_behaviour={"A1": "html:1@missed_leads"},
        store_codes=["A1", "B1", "C1", "D1", "E1", "F1"],
    )
    report = await run(sim, data_dir, concurrency=6)
    assert report.ok, report.failed_stores
    assert sim.login_count == report.login_count == 2
    assert_files_match(sim, report, sim.store_codes)


async def test_unreachable_portal_is_reported_as_such(data_dir: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    creds = PortalCredentials(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}", "u", "p")
    with pytest.raises(PortalUnavailableError, match=r"login failed for user 'u'.*ConnectError"):
        await download_reports(
            creds,
            store_codes=["A1"],
            buckets=["missed_leads"],
            run_date=dt.date(2026, 3, 18),
            data_dir=data_dir,
            max_retries=1,
            **FAST,
        )


# ----- verify hook, plain-text messages, portal-day guard, target folder --------------------


def _store_column(header: list[str]) -> int | None:
    for index, name in enumerate(header):
        if name.strip().lower().replace("-", " ").replace("_", " ") == "store code":
            return index
    return None


def store_check(bucket: str, store_code: str, path: Path) -> FileProblem | None:
    """A small stand-in for the real report check: the file must hold the store's own records."""
    if is_empty_report(path):
        return None
    with open_records(path) as (header, records):
        col = _store_column(header)
        found = {r[col].strip().upper() for _, r in records if col is not None and len(r) > col}
    others = sorted(found - {store_code.upper()})
    if not others:
        return None
    return FileProblem("other_store", f"holds store {', '.join(others)}, not {store_code}")


async def test_otherstore_once_is_cured_by_reselecting_the_store(
    make_portal_sim: Callable[..., PortalSimulator], data_dir: Path
) -> None:
    sim = make_portal_sim(
        store_codes=["A1", "O1", "B1"], store_behaviour={"O1": "otherstore:1@undelivered_all"}
    )
    seen: list[tuple[str, str, str]] = []

    def verify(bucket: str, store_code: str, path: Path) -> FileProblem | None:
        seen.append((bucket, store_code, path.name))
        assert path.name.endswith(".part") and path.exists()
        return store_check(bucket, store_code, path)

    report = await run(sim, data_dir, verify=verify)
    assert report.ok, report.failed_stores
    assert_files_match(sim, report, sim.store_codes)
    assert sim.dashboard_visits("O1") == 2 and sim.dashboard_visits("A1") == 1
    assert report.buckets["undelivered_all"].verify_retries == 1 == report.verify_retries
    assert report.retries == 1
    assert len(seen) == 3 * 3 + 1
    assert_no_bad_files(data_dir)


async def test_otherstore_always_fails_only_that_store(
    make_portal_sim: Callable[..., PortalSimulator], data_dir: Path
) -> None:
    sim = make_portal_sim(store_codes=["A1", "O1", "B1"], store_behaviour={"O1": "otherstore"})
    report = await run(sim, data_dir, verify=store_check)
    assert set(report.failed_stores) == {"O1"}
    for bucket in report.buckets.values():
        assert bucket.failed["O1"] == (
            "after re-selecting the store and downloading again: holds store B1, not O1"
        )
        assert bucket.verify_retries == 1
    assert sim.dashboard_visits("O1") == 1 + 3
    assert not list((data_dir / sim.today.isoformat()).glob("O1-*"))
    assert_files_match(sim, report, ["A1", "B1"], exact=False)
    assert_no_bad_files(data_dir)


async def test_plaintext_message_once_is_retried(
    make_portal_sim: Callable[..., PortalSimulator], data_dir: Path
) -> None:
    sim = make_portal_sim(store_codes=["A1", "P1"], store_behaviour={"P1": "plaintext"})
    report = await run(sim, data_dir)
    assert report.ok, report.failed_stores
    assert_files_match(sim, report, sim.store_codes)
    assert sim.faults["plaintext"] == 3 == sum(b.retries for b in report.buckets.values())


async def test_plaintext_message_always_fails_the_store_never_an_empty_report(
    make_portal_sim: Callable[..., PortalSimulator], data_dir: Path
) -> None:
    sim = make_portal_sim(
        store_codes=["A1", "P1"], store_behaviour={"P1": "plaintext:*@missed_leads"}
    )
    for verify in (None, store_check):
        report = await run(sim, data_dir, max_retries=2, verify=verify)
        assert set(report.failed_stores) == {"P1"}
        assert report.buckets["missed_leads"].failed["P1"] == (
            "the portal sent a plain-text message instead of a CSV: "
            f"{PLAINTEXT_BODY!r} after 2 retries"
        )
        assert "P1" not in report.buckets["missed_leads"].rows_by_store
        assert "P1" in report.buckets["repeat_customers"].files
        assert not (data_dir / sim.today.isoformat() / "P1-missed-leads.csv").exists()
    assert_no_bad_files(data_dir)


async def test_verify_refetch_problem_downloads_again_once(
    make_portal_sim: Callable[..., PortalSimulator], data_dir: Path
) -> None:
    sim = make_portal_sim(store_codes=["A1", "B1"])
    calls: list[tuple[str, str]] = []

    def flaky(bucket: str, store_code: str, path: Path) -> FileProblem | None:
        calls.append((bucket, store_code))
        if (bucket, store_code) == ("repeat_customers", "B1") and calls.count(calls[-1]) == 1:
            return FileProblem("not_a_report", "looked truncated")
        return None

    report = await run(sim, data_dir, verify=flaky)
    assert report.ok, report.failed_stores
    assert_files_match(sim, report, sim.store_codes)
    assert report.buckets["repeat_customers"].verify_retries == 1 == report.verify_retries
    assert sim.requests_for("B1").count("/mis/download_repeat_csv?store_code=B1") == 2
    assert sim.dashboard_visits("B1") == 1  # a refetch does not re-select

    def always_bad(bucket: str, store_code: str, path: Path) -> FileProblem | None:
        return FileProblem("blank", "no records") if store_code == "B1" else None

    report = await run(sim, data_dir, verify=always_bad, buckets=["missed_leads"])
    assert report.failed_stores == {"B1": "after downloading again: no records"}
    assert "A1" in report.buckets["missed_leads"].files


async def test_verify_crash_fails_only_that_file(
    make_portal_sim: Callable[..., PortalSimulator], data_dir: Path
) -> None:
    sim = make_portal_sim(store_codes=["A1", "B1"])

    def broken(bucket: str, store_code: str, path: Path) -> FileProblem | None:
        if (bucket, store_code) == ("missed_leads", "B1"):
            raise RuntimeError("bug in the check")
        return None

    report = await run(sim, data_dir, verify=broken)
    assert report.failed_stores == {"B1": "the file check failed: RuntimeError: bug in the check"}
    assert "B1" in report.buckets["repeat_customers"].files
    assert_no_bad_files(data_dir)


def flipping_clock(day: dt.date, after: int) -> tuple[Callable[[], dt.date], list[int]]:
    """A clock that reads `day` for `after` calls, then the next day."""
    calls = [0]

    def clock() -> dt.date:
        calls[0] += 1
        return day if calls[0] <= after else day + dt.timedelta(days=1)

    return clock, calls


async def test_portal_day_change_mid_run_fails_the_rest(
    make_portal_sim: Callable[..., PortalSimulator], data_dir: Path, tmp_path: Path
) -> None:
    sim = make_portal_sim(store_codes=["A1", "B1", "C1"])
    day, next_day = sim.today, sim.today + dt.timedelta(days=1)
    # Calls: A1 dashboard + 3 files (1-4), B1 dashboard (5), B1 missed leads (6), then the flip.
    clock, calls = flipping_clock(day, after=6)
    target = tmp_path / "run-42"
    report = await run(sim, data_dir, concurrency=1, portal_day=day, clock=clock, target_dir=target)
    reason = (
        f"the portal's day changed from {day} to {next_day} during the run; "
        f"this file would hold {next_day}'s data: rerun for {next_day}"
    )
    assert set(report.failed_stores) == {"B1", "C1"}
    ml, ud, rc = (report.buckets[b] for b in BUCKETS)
    assert "B1" in ml.files and ud.failed["B1"] == reason
    assert rc.failed["B1"] == f"skipped, the store failed earlier: {reason}"
    assert all(b.failed["C1"] == reason for b in report.buckets.values())
    assert sim.requests_for("C1") == [] and calls[0] == 7
    assert sorted(p.name for p in target.iterdir()) == [
        "A1-missed-leads.csv",
        "A1-repeat-customers.csv",
        "A1-undelivered-all.csv",
        "B1-missed-leads.csv",
    ]
    assert not (target / "B1-undelivered-all.csv").exists()  # fetched after the flip
    assert not (data_dir / day.isoformat()).exists()
    assert_files_match(sim, report, ["A1"], exact=False)


async def test_portal_day_already_past_fails_every_store_without_requests(
    portal_sim: PortalSimulator, data_dir: Path
) -> None:
    yesterday = portal_sim.today - dt.timedelta(days=1)
    report = await run(portal_sim, data_dir, portal_day=yesterday, clock=lambda: portal_sim.today)
    assert set(report.failed_stores) == set(portal_sim.store_codes)
    assert all("rerun for" in r for r in report.failed_stores.values())
    assert portal_sim.requests["/mis/partner_dashboard"] == 0


async def test_invalid_store_codes_of_any_kind_fail_per_store(
    portal_sim: PortalSimulator, data_dir: Path
) -> None:
    good = portal_sim.store_codes[:2]
    odd = cast(list[str], [None, 12, " A1 ", "", "ok/../x"])
    report = await run(portal_sim, data_dir, stores=[good[0], *odd, good[1]])
    assert set(report.failed_stores) == {"None", "12", " A1 ", "", "ok/../x"}
    assert all("invalid store code" in r for r in report.failed_stores.values())
    assert_files_match(portal_sim, report, good)
    assert portal_sim.dashboard_visits(good[1]) == 1
