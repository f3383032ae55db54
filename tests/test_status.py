"""`python -m app status`, `python -m app rejects` and the end-of-run summary, as an operator
sees them: the real CLI in a subprocess against the suite's real PostgreSQL."""

import asyncio
import csv
import datetime as dt
import io
import json
import os
import pty
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import update
from sqlalchemy.engine import URL

from app import status
from app.audit import AuditRecord, save_audit
from app.config import BUCKETS, merged_name
from app.db.engine import create_engine
from app.db.models import PipelineAudit
from app.db.urls import render
from app.reject_store import replace_rejects
from app.rejects import Reject
from app.run_summary import render as render_summary
from app.runner import BucketSummary, RunOutcome
from app.settings import load_settings
from app.settings_dates import today
from tests.fixtures_portal import sim_store_codes
from tests.test_cli_errors import cli

DAY = dt.date(2026, 11, 20)


@pytest.fixture
def env(database_url: URL, tmp_path: Path) -> dict[str, str]:
    return {"DATABASE_URL": render(database_url), "DATA_DIR": str(tmp_path / "data")}


def _json_lines(text: str) -> list[dict[str, Any]]:
    """The command's own rows (log events, e.g. the embedded server's, left out)."""
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [r for r in rows if "phase" not in r]


# ---- a date seeded by hand: audits, rejects and files of several runs ------------------------


_COUNTS = (
    "download_total",
    "merged_rows",
    "expected_unique",
    "ingested_rows",
    "inserted",
    "updated",
    "kept_newer",
    "rejected",
)


def _audit(run_id: str, bucket: str, verdict: str, **fields: Any) -> AuditRecord:
    values: dict[str, Any] = {
        **dict.fromkeys(_COUNTS),
        "reason": None,
        "download_rows_by_store": {},
        "failed_stores": {},
        **fields,
    }
    return AuditRecord(
        id=None, run_id=run_id, bucket=bucket, run_date=DAY, status=verdict, **values
    )


def _reject(line: int, code: str, blocking: bool, store: str = "A1") -> Reject:
    return Reject(
        store_code=store,
        file=f"/data/{DAY}/run/{store}-missed-leads.csv",
        line_number=line,
        record_no=line - 1,
        code=code,
        reason=f"{code} on line {line}",
        raw_row={"Store Code": store, "note": "[not markup]"},
        blocking=blocking,
    )


async def _seed(url: URL, data_dir: Path) -> None:
    day_dir = data_dir / DAY.isoformat()
    failed_file = day_dir / "r2" / "A1-missed-leads.csv"
    pending = day_dir / "r3" / "A1-repeat-customers.csv"
    stray = day_dir / "r3" / "B2-repeat-customers.csv"
    for path, body in (
        (failed_file, "a,b\n1,2\n"),
        (pending, "x\n"),
        (stray, "y\n"),
        (day_dir / "r4" / merged_name("undelivered_all", DAY), "merged\n"),
        (day_dir / "B9-missed-leads.csv", "dropped by hand\n"),
        (day_dir / "notes.txt", "?\n"),
        (day_dir / "r2" / ".steps" / "missed_leads.raw_csvs.json", "{}"),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    engine = create_engine(url)
    try:
        await save_audit(engine, _audit("r1", "missed_leads", "failed", reason="older run"))
        await replace_rejects(engine, "r1", "missed_leads", DAY, [_reject(9, "ragged", True)])
        await asyncio.sleep(0.01)
        await save_audit(
            engine,
            _audit(
                "r2",
                "missed_leads",
                "failed",
                reason="blocking rejects=1 [line 3]",
                quarantined=1,
                blocking=1,
                manifest=[{"path": str(failed_file.resolve())}],
            ),
        )
        await replace_rejects(
            engine,
            "r2",
            "missed_leads",
            DAY,
            [_reject(3, "bad_value", True), _reject(5, "missing_key", False, "A2")],
        )
        passed = await save_audit(engine, _audit("r5", "undelivered_all", "passed"))
        await save_audit(
            engine,
            _audit("r3", "repeat_customers", "passed", manifest=[{"path": str(pending.resolve())}]),
        )
        table = PipelineAudit.__table__
        async with engine.begin() as conn:
            await conn.execute(
                update(table).where(table.c.id == passed.id).values(cleanup_status="deleted")
            )
    finally:
        await engine.dispose()


@pytest.fixture
def seeded(env, database_url: URL) -> dict[str, str]:
    asyncio.run(_seed(database_url, Path(env["DATA_DIR"])))
    return env


def _by_bucket(rows: list[dict[str, Any]]) -> dict[str | None, dict[str, Any]]:
    return {r["bucket"]: r for r in rows if r["kind"] == "bucket"}


def test_status_reports_each_bucket_and_why_files_are_kept(seeded) -> None:
    done = cli(["status", "--date", DAY.isoformat()], seeded)
    assert done.returncode == 0, done.stderr
    rows = _json_lines(done.stdout)
    buckets = _by_bucket(rows)
    assert set(buckets) == {*BUCKETS, None}
    ml = buckets["missed_leads"]
    assert (ml["run_id"], ml["verdict"], ml["quarantined"], ml["blocking"]) == (
        "r2",
        "failed",
        1,
        1,
    )
    assert ml["reason"] == "blocking rejects=1 [line 3]" and ml["run_at"]
    why = {Path(f["path"]).name: f["why"] for f in ml["kept_files"]}
    assert why == {
        "A1-missed-leads.csv": "audit failed: blocking rejects=1 [line 3]",
        "B9-missed-leads.csv": "operator-dropped (the next run of the date takes it)",
    }
    assert all(f["size"] > 0 for f in ml["kept_files"]) and ml["kept_bytes"] > 0
    ud = buckets["undelivered_all"]
    assert (ud["verdict"], ud["cleanup"]) == ("passed", "deleted")
    assert [f["why"] for f in ud["kept_files"]] == [
        "not audited (the run stopped before its audit)"
    ]
    rc = {Path(f["path"]).name: f["why"] for f in buckets["repeat_customers"]["kept_files"]}
    assert rc == {
        "A1-repeat-customers.csv": "audit passed, cleanup pending",
        "B2-repeat-customers.csv": "not in the audit's manifest (its store failed)",
    }
    assert [f["why"] for f in buckets[None]["kept_files"]] == ["not a report of any bucket"]
    disk = [r for r in rows if r["kind"] == "disk"]
    assert len(disk) == 1 and disk[0]["total"] > 0 and disk[0]["by_part"]["dates"] > 0


def test_status_over_several_days_and_an_empty_day(seeded) -> None:
    done = cli(["status", "--date", DAY.isoformat(), "--days", "3"], seeded)
    assert done.returncode == 0, done.stderr
    rows = [r for r in _json_lines(done.stdout) if r["kind"] == "bucket"]
    assert sorted({r["run_date"] for r in rows}) == ["2026-11-18", "2026-11-19", "2026-11-20"]
    # a past day with no run and nothing kept: the portal can no longer serve it
    empty = [r for r in rows if r["run_date"] == "2026-11-19"]
    assert [(r["verdict"], r["run_id"], r["kept_files"]) for r in empty] == [
        ("not servable", None, [])
    ] * len(BUCKETS)
    assert all("only serves current data" in r["reason"] for r in empty)
    assert "DATA_DIR/2026-11-19/" in empty[0]["reason"]
    # today has not run yet: that is a gap to fill, not an impossible date
    today = [r for r in _json_lines(cli(["status"], seeded).stdout) if r["kind"] == "bucket"]
    assert {r["verdict"] for r in today} == {"no run"}
    bad = cli(["status", "--days", "0"], seeded)
    assert bad.returncode == 2 and "--days" in bad.stderr and "Traceback" not in bad.stderr


def test_status_table_at_a_terminal_does_not_take_markup_from_data(seeded) -> None:
    console = Console(width=100, record=True, force_terminal=True)
    report = status.build_report(
        Path(seeded["DATA_DIR"]),
        [DAY],
        asyncio.run(_audits(seeded)),
        run_info=lambda ids: {"r2": status.RunInfo(source="schedule")},
        running=lambda day: None,
    )
    status.render_status(report, console)
    text = console.export_text()
    assert "CRM status 2026-11-20" in text and "r2 schedule" in text
    assert "blocking rejects=1 [line 3]" in text  # brackets printed, not eaten as markup
    assert "operator-dropped" in text and "disk used under" in text


async def _audits(env: dict[str, str]) -> list[AuditRecord]:
    engine = create_engine(env["DATABASE_URL"])
    try:
        return await status.audits_of(engine, [DAY])
    finally:
        await engine.dispose()


def test_rejects_of_the_latest_run_as_json_and_csv(seeded) -> None:
    done = cli(["rejects", "--date", DAY.isoformat()], seeded)
    assert done.returncode == 0, done.stderr
    rows = _json_lines(done.stdout)
    assert [
        (r["run_id"], r["store_code"], r["line_number"], r["code"], r["blocking"]) for r in rows
    ] == [
        ("r2", "A1", 3, "bad_value", True),
        ("r2", "A2", 5, "missing_key", False),
    ]  # run r1's reject is an older run's
    assert rows[0]["raw_row"] == {"Store Code": "A1", "note": "[not markup]"}
    done = cli(["rejects", "--date", DAY.isoformat(), "--bucket", "missed_leads", "--csv"], seeded)
    assert done.returncode == 0, done.stderr
    table = list(csv.DictReader(io.StringIO(done.stdout)))
    assert list(table[0]) == list(status.REJECT_COLUMNS)
    assert [(r["store_code"], r["line_number"], r["blocking"]) for r in table] == [
        ("A1", "3", "True"),
        ("A2", "5", "False"),
    ]
    assert json.loads(table[0]["raw_row"])["note"] == "[not markup]"
    assert table[0]["reason"] == "bad_value on line 3"
    none = cli(["rejects", "--date", DAY.isoformat(), "--bucket", "repeat_customers"], seeded)
    assert none.returncode == 0 and _json_lines(none.stdout) == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["rejects", "--date", "2026-11-20", "--bucket", "laundry"], "unknown bucket 'laundry'"),
        (["rejects", "--date", "20261120"], "write it as YYYY-MM-DD"),
        (["rejects"], "--date"),
        (["rejects", "--date", "2026-11-20", "--csv", "--json"], "not allowed with"),
    ],
)
def test_rejects_refuses_a_bad_date_or_bucket(env, args: list[str], needle: str) -> None:
    done = cli(args, env)
    assert done.returncode == 2 and needle in done.stderr
    assert "Traceback" not in done.stderr


# ---- the end-of-run summary fits 80 columns --------------------------------------------------


def _outcome(buckets: list[str], **fields: Any) -> RunOutcome:
    summaries = {
        b: BucketSummary(
            b,
            download_total=1_234_567,
            merged_rows=1_234_000,
            ingested_rows=1_234_000,
            quarantined=12_345,
            blocking=0,
            audit="passed",
            cleanup="already_clean",
            **fields,
        )
        for b in buckets
    }
    return RunOutcome("0123456789abcdef", DAY, False, summaries)


def _rendered(outcome: RunOutcome, width: int) -> str:
    console = Console(width=width, record=True, force_terminal=True)
    render_summary(outcome, console)
    return console.export_text()


@pytest.mark.parametrize("count", [1, 3, 5])
def test_run_summary_fits_80_columns_without_cutting(count: int) -> None:
    names = [*BUCKETS, "a_much_longer_bucket_name", "another_long_bucket_x"][:count]
    outcome = _outcome(names, failed_stores={"A668": "HTTP 503 " + "x" * 120})
    outcome.buckets[names[0]].audit = "failed"
    outcome.buckets[names[0]].reason = "blocking rejects=3 [line 7 of A668-missed-leads.csv]"
    text = _rendered(outcome, 80)
    assert "…" not in text
    assert all(len(line) <= 80 for line in text.splitlines())
    for name in names:
        assert name in text
    assert "already_clean" in text and "1,234,567" in text and "12,345" in text
    assert "[line 7 of A668-missed-leads.csv]" in text  # the reason is printed whole
    assert "x" * 60 in text.replace("\n", "").replace(" ", "")


def test_run_summary_notes_say_why_once() -> None:
    outcome = _outcome(["missed_leads"], reason="merged_rows=3 != ingested_rows=2")
    outcome.buckets["missed_leads"].audit = "failed"
    outcome.buckets["missed_leads"].error = "DagsterAssetCheckFailedError: 1 check\n\nfailed"
    text = _rendered(outcome, 80)
    assert "missed_leads: merged_rows=3 != ingested_rows=2" in text
    assert "AssetCheckFailed" not in text
    outcome.buckets["missed_leads"].error = "OSError: disk full"  # a different failure: shown
    assert "missed_leads: OSError: disk full" in _rendered(outcome, 80)


def test_run_summary_uses_one_row_per_bucket_when_wide() -> None:
    text = _rendered(_outcome(list(BUCKETS)), 160)
    header = next(line for line in text.splitlines() if "bucket" in line)
    assert "quarantined" in header and "cleanup" in header


# ---- end to end: a real run with a blocking reject, then status and rejects ------------------


def _in_terminal(args: list[str], env: dict[str, str], columns: int = 80) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pseudo-terminal `columns` wide."""
    import fcntl
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TMS_", "DAGSTER_HOME"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", *args],
        env={**base, "COLUMNS": str(columns), "TERM": "xterm", **env},
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    code = proc.wait(timeout=300)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r", "", b"".join(chunks).decode())
    return code, text


def test_a_real_run_then_status_and_rejects(env, make_portal_sim) -> None:
    ragged = sim_store_codes(store_count=3, seed=5)[1]
    sim = make_portal_sim(store_count=3, seed=5, store_behaviour={ragged: "ragged@missed_leads"})
    for code in sim.store_codes:
        assert cli(["stores", "add", code, "--etl", "on"], env).returncode == 0
    portal = {
        "TMS_WEB": sim.web_url,
        "TMS_BASE": sim.base_url,
        "TMS_USERNAME": sim.username,
        "TMS_PASSWORD": sim.password,
    }
    code, screen = _in_terminal(["run"], {**env, **portal})
    assert code == 1, screen[-3000:]  # missed_leads failed its audit; the others passed
    summary = screen[screen.index("CRM run ") :]
    assert "…" not in summary and "Traceback" not in screen
    assert "AssetCheckFailed" not in summary  # the audit's own reason explains the failure
    for bucket in BUCKETS:
        assert bucket in summary
    assert all(len(line) <= 80 for line in summary.splitlines() if "│" in line or "┃" in line)

    day = today(load_settings())
    done = cli(["status"], env)
    assert done.returncode == 0, done.stderr
    buckets = _by_bucket(_json_lines(done.stdout))
    ml = buckets["missed_leads"]
    assert (ml["verdict"], ml["cleanup"], ml["source"]) == ("failed", "kept", "cli")
    assert ml["blocking"] >= 1 and ml["reason"]
    assert ml["kept_files"] and all(f["why"].startswith("audit failed") for f in ml["kept_files"])
    assert {Path(f["path"]).parts[0] for f in ml["kept_files"]} == {day.isoformat()}
    for bucket in ("undelivered_all", "repeat_customers"):
        assert (buckets[bucket]["verdict"], buckets[bucket]["cleanup"]) == ("passed", "deleted")
        assert buckets[bucket]["kept_files"] == []
        assert buckets[bucket]["run_id"] == ml["run_id"]

    done = cli(["rejects", "--date", day.isoformat(), "--csv"], env)
    assert done.returncode == 0, done.stderr
    rejects = list(csv.DictReader(io.StringIO(done.stdout)))
    ragged_rows = [r for r in rejects if r["code"] == "ragged"]
    assert ragged_rows and {r["store_code"] for r in ragged_rows} == {ragged}
    expected_lines = {str(n) for n in sim.fault_lines("missed_leads", ragged)}
    assert {r["line_number"] for r in ragged_rows} <= expected_lines
    assert all(r["blocking"] == "True" and r["run_id"] == ml["run_id"] for r in ragged_rows)

    dry = cli(["run", "--dry_run", "--buckets", "repeat_customers"], {**env, **portal})
    assert dry.returncode == 0, dry.stderr[-2000:]
    done = cli(["status", "--json"], env)
    rc = _by_bucket(_json_lines(done.stdout))["repeat_customers"]
    assert rc["kept_files"] and {f["why"] for f in rc["kept_files"]} == {"dry run"}
