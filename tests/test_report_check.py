"""The strict report reader (`app.report_check`) and the merger on damaged portal files.

Every test writes a real file the way the portal (or a broken download) would, and checks one
rule: what is rejected, with which code, line and reason, and that everything else still merges
unshifted. Each of them failed on the reader that trusted `csv.reader` alone.
"""

import csv
import datetime as dt
import io
import tracemalloc
from pathlib import Path

import pytest

from app.csv_io import SENTINEL, count_records
from app.merger import merge_bucket
from app.portal_sim import data as portal_data
from app.portal_sim.config import SimConfig
from app.rejects import (
    BAD_VALUE,
    FOOTER,
    MISSING_KEY,
    RAGGED,
    RUNAWAY_QUOTE,
    UNTERMINATED_QUOTE,
    Reject,
)
from app.report_check import (
    MAX_LINE_CHARS,
    ReportRecord,
    check_file,
    first_invalid_utf8,
    read_report,
)
from tests.portal_files import (
    MISSED_HEADER,
    REPEAT_HEADER,
    UNDELIVERED_HEADER,
    missed_row,
    render_csv,
    repeat_row,
    store_file,
    undelivered_row,
    write_csv,
)

D = dt.date(2026, 3, 7)


def lines_of(header: list[str], rows: list[dict[str, object]]) -> list[str]:
    """The rendered CSV as a list of physical lines (with their `\\n`)."""
    return render_csv(header, rows).decode().splitlines(keepends=True)


def read_all(bucket: str, store: str, path: Path) -> list[ReportRecord]:
    with read_report(bucket, store, path) as report:
        return list(report.records)


def rejects_of(records: list[ReportRecord]) -> list[Reject]:
    return [r.reject for r in records if r.reject is not None]


def read_merged(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def missed_file(data_dir: Path, store: str, text: str | bytes) -> Path:
    path = store_file(data_dir, D, "missed_leads", store)
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


# ----------------------------------------------------------------------------- record rules


def test_ragged_row_is_rejected_with_its_line_and_the_others_merge_unshifted(
    data_dir: Path,
) -> None:
    lines = lines_of(
        MISSED_HEADER,
        [missed_row("A1", f"P{i}", special_instruction="call first") for i in range(1, 4)],
    )
    lines[2] = lines[2].replace("call first", "Gate 2, ring twice")  # unquoted comma in P2
    path = missed_file(data_dir, "A1", "".join(lines))
    result = merge_bucket("missed_leads", D, {"A1": path}, data_dir)
    [reject] = result.rejects
    assert (reject.code, reject.line_number, reject.record_no) == (RAGGED, 3, 2)
    assert "16 fields where the header has 15" in reject.reason
    assert reject.raw_row == {"_raw": lines[2]} and reject.blocking
    assert reject.store_code == "A1" and reject.file == str(path)
    merged = read_merged(result.path)
    assert [r["pickup_no"] for r in merged] == ["P1", "P3"]
    assert all(r["source"] == "App" and r["special_instruction"] == "call first" for r in merged)
    assert result.download_total == 3 and result.blocking == 1 and result.quarantined == 0
    assert result.merged_rows == result.expected_unique == 2


def test_unbalanced_quote_to_end_of_file_rejects_the_rest(data_dir: Path) -> None:
    lines = lines_of(MISSED_HEADER, [missed_row("A1", f"P{i}") for i in range(1, 5)])
    lines[2] = lines[2].replace("Ravi Kumar,,App", 'Ravi Kumar,"Gate 2,App')  # never closed
    path = missed_file(data_dir, "A1", "".join(lines))
    records = read_all("missed_leads", "A1", path)
    [reject] = rejects_of(records)
    assert (reject.code, reject.line_number, reject.record_no) == (UNTERMINATED_QUOTE, 3, 2)
    assert "never closed" in reject.reason and "lines 3-5" in reject.reason
    assert reject.raw_row == {"_raw": "".join(lines[2:])}
    assert [r.cells[2] for r in records if r.cells] == ["P1"]
    assert check_file("missed_leads", "A1", path) is None  # a record problem, not a file one
    result = merge_bucket("missed_leads", D, {"A1": path}, data_dir)
    assert result.merged_rows == 1 and result.download_total == 2 and result.blocking == 1


def test_runaway_quote_that_swallows_records_is_rejected(data_dir: Path) -> None:
    rows = [
        missed_row("A1", "P1"),
        missed_row("A1", "P2"),
        missed_row("A1", "P3", special_instruction='Use "eco" wash'),
        missed_row("A1", "P4"),
    ]
    lines = lines_of(MISSED_HEADER, rows)
    lines[1] = lines[1].replace("Ravi Kumar,,App", 'Ravi Kumar,"Gate 2,App')  # P1 opens a quote
    path = missed_file(data_dir, "A1", "".join(lines))
    records = read_all("missed_leads", "A1", path)
    # A plain csv reader returns P1 with P2's whole line and half of P3 inside one field.
    plain = list(csv.reader(io.StringIO("".join(lines), newline="")))
    assert len(plain) == 3 and "P2" in plain[1][10]
    rejects = rejects_of(records)
    assert rejects[0].code == RUNAWAY_QUOTE and rejects[0].line_number == 2
    assert "swallows line 3" in rejects[0].reason
    assert "P2" in rejects[0].raw_row["_raw"]
    assert [r.cells[2] for r in records if r.cells] == ["P4"]  # nothing shifted gets through
    result = merge_bucket("missed_leads", D, {"A1": path}, data_dir)
    assert [r["pickup_no"] for r in read_merged(result.path)] == ["P4"]
    assert result.blocking == len(rejects) >= 1


def test_legit_multiline_quoted_text_is_kept(data_dir: Path) -> None:
    notes = [
        "Leave with security\nPay on delivery",
        'Use "eco" wash, no bleach,\nfold shirts',
        "line one\r\nline two\r\nA1, the store, 2 bags",
    ]
    rows = [missed_row("A1", f"P{i}", special_instruction=n) for i, n in enumerate(notes)]
    path = write_csv(store_file(data_dir, D, "missed_leads", "A1"), MISSED_HEADER, rows, crlf=True)
    records = read_all("missed_leads", "A1", path)
    assert rejects_of(records) == []
    assert [r.line_number for r in records] == [2, 4, 6]
    assert [r.record_no for r in records] == [1, 2, 3]
    assert [r.cells[10] for r in records if r.cells] == notes
    result = merge_bucket("missed_leads", D, {"A1": path}, data_dir)
    assert [r["special_instruction"] for r in read_merged(result.path)] == notes


@pytest.mark.parametrize("bucket", ["missed_leads", "undelivered_all", "repeat_customers"])
def test_simulator_reports_read_clean(data_dir: Path, bucket: str) -> None:
    cfg = SimConfig(store_codes=["A668"], rows_per_day=(3, 6), today=dt.date(2026, 3, 28))
    body = portal_data.report_bytes(cfg, bucket, "A668", dt.date(2026, 3, 28))
    path = store_file(data_dir, D, bucket, "A668")
    path.write_bytes(body)
    records = read_all(bucket, "A668", path)
    # Only blank repeat-customer mobiles may be rejected (quarantined); no quote is suspect.
    assert {r.code for r in rejects_of(records)} <= {MISSING_KEY}
    assert len(records) == count_records(path)


def test_footer_line_is_rejected_not_loaded_as_a_customer(data_dir: Path) -> None:
    rows = [repeat_row("A1", "9876543210"), repeat_row("A1", "9876543211")]
    path = store_file(data_dir, D, "repeat_customers", "A1")
    path.write_bytes(render_csv(REPEAT_HEADER, rows) + b"Total,2,\n")
    records = read_all("repeat_customers", "A1", path)
    [reject] = rejects_of(records)
    assert (reject.code, reject.line_number) == (FOOTER, 4) and reject.blocking
    assert reject.raw_row == {"Store Code": "Total", "Mobile No.": "2", "Status": ""}
    assert check_file("repeat_customers", "A1", path) is None  # "Total" is not another store
    result = merge_bucket("repeat_customers", D, {"A1": path}, data_dir)
    assert result.merged_rows == 2 and [r.code for r in result.rejects] == [FOOTER]


def test_nul_character_rejects_one_row_not_the_bucket(data_dir: Path) -> None:
    rows = [missed_row("A1", "P1"), missed_row("A1", "P2", customer_name="Ra\x00vi")]
    path = write_csv(store_file(data_dir, D, "missed_leads", "A1"), MISSED_HEADER, rows)
    result = merge_bucket("missed_leads", D, {"A1": path}, data_dir)
    [reject] = result.rejects
    assert (reject.code, reject.line_number) == (BAD_VALUE, 3)
    assert "NUL character in customer_name" in reject.reason
    assert "\x00" not in str(reject.raw_row)  # storable in PostgreSQL JSON
    assert reject.raw_row["customer_name"] == "Ra\u2400vi"
    assert "\x00" not in result.path.read_text()
    assert result.merged_rows == 1


@pytest.mark.parametrize(
    ("bucket", "row", "reason"),
    [
        (
            "missed_leads",
            missed_row("A1", "P2", id="9223372036854775808"),
            "out of range for a 64-bit column",
        ),
        (
            "undelivered_all",
            undelivered_row("A1", "O2", net_amount="1000000000000.00"),
            "out of range for NUMERIC(14,2)",
        ),
        (
            "undelivered_all",
            undelivered_row("A1", "O2", net_amount="1345.005"),
            "more decimals than the column keeps (2)",
        ),
        (
            "undelivered_all",
            undelivered_row("A1", "O2", taxable_amount="1,50"),
            "ambiguous decimal comma",
        ),
        (
            "missed_leads",
            missed_row("A1", "P2", pickup_date="31/31/2026"),
            "pickup_date: unrecognised date format",
        ),
    ],
)
def test_a_value_the_column_cannot_hold_rejects_its_row(
    data_dir: Path, bucket: str, row: dict[str, object], reason: str
) -> None:
    header = MISSED_HEADER if bucket == "missed_leads" else UNDELIVERED_HEADER
    first = missed_row("A1", "P1") if bucket == "missed_leads" else undelivered_row("A1", "O1")
    path = write_csv(store_file(data_dir, D, bucket, "A1"), header, [first, row])
    result = merge_bucket(bucket, D, {"A1": path}, data_dir)
    [reject] = result.rejects
    assert (reject.code, reject.line_number, reject.record_no) == (BAD_VALUE, 3, 2)
    assert reason in reject.reason and reject.blocking
    assert result.merged_rows == 1 and result.blocking == 1 and not result.failed_stores


def test_blank_repeat_mobile_is_quarantined_a_bad_date_blocks(data_dir: Path) -> None:
    repeat = write_csv(
        store_file(data_dir, D, "repeat_customers", "A1"),
        REPEAT_HEADER,
        [repeat_row("A1", ""), repeat_row("A1", "9876543210")],
    )
    result = merge_bucket("repeat_customers", D, {"A1": repeat}, data_dir)
    [reject] = result.rejects
    assert reject.code == MISSING_KEY and reject.blocking is False
    assert "missing dedupe key mobile_no" in reject.reason
    assert (result.quarantined, result.blocking, result.merged_rows) == (1, 0, 1)

    leads = write_csv(
        store_file(data_dir, D, "missed_leads", "A1"),
        MISSED_HEADER,
        [missed_row("A1", "P1", pickup_date="2026-13-45"), missed_row("A1", "", pickup_date="x")],
    )
    result = merge_bucket("missed_leads", D, {"A1": leads}, data_dir)
    # A missing key with another bad value is not "only" a missing key: it blocks too.
    assert [(r.code, r.blocking) for r in result.rejects] == [(BAD_VALUE, True), (BAD_VALUE, True)]
    assert "missing dedupe key pickup_no" in result.rejects[1].reason
    assert "pickup_date" in result.rejects[1].reason
    assert (result.quarantined, result.blocking) == (0, 2)


def test_key_cells_are_trimmed_and_the_store_code_canonical(data_dir: Path) -> None:
    rows = [
        missed_row(" a668 ", " P1 ", id=1),
        missed_row("A668", "P1", id=2),
        missed_row("a668", "P2", id=3),
    ]
    path = write_csv(store_file(data_dir, D, "missed_leads", "A668"), MISSED_HEADER, rows)
    records = read_all("missed_leads", "A668", path)
    assert [(r.cells[5], r.cells[2]) for r in records if r.cells] == [
        ("A668", "P1"),
        ("A668", "P1"),
        ("A668", "P2"),
    ]
    assert [r.values[5] for r in records if r.values] == ["A668"] * 3
    result = merge_bucket("missed_leads", D, {"A668": path}, data_dir)
    merged = read_merged(result.path)
    assert [(r["store_code"], r["pickup_no"], r["id"]) for r in merged] == [
        ("A668", "P1", "2"),
        ("A668", "P2", "3"),
    ]
    assert result.duplicates_dropped == 1 and result.expected_unique == result.merged_rows == 2


def test_record_numbers_count_like_a_csv_parser(data_dir: Path) -> None:
    rows = [
        missed_row("A1", "P1", special_instruction="a\nb\nc"),
        missed_row("A1", "P2"),
        missed_row("A1", "P3", special_instruction="x\r\ny"),
    ]
    first, second = rows[:1], rows[1:]
    text = render_csv(MISSED_HEADER, first, crlf=True).decode() + "\r\n   \r\n"  # blank lines
    text += render_csv(
        None, [[row[h] for h in MISSED_HEADER] for row in second], crlf=True
    ).decode()
    path = missed_file(data_dir, "A1", text)
    records = read_all("missed_leads", "A1", path)
    assert [(r.line_number, r.record_no) for r in records] == [(2, 1), (7, 2), (8, 3)]
    assert len(records) == count_records(path)


def test_a_line_longer_than_the_cap_is_rejected_unread(data_dir: Path) -> None:
    lines = lines_of(MISSED_HEADER, [missed_row("A1", "P1"), missed_row("A1", "P2")])
    huge = "x" * (MAX_LINE_CHARS + 10) + "\n"
    path = missed_file(data_dir, "A1", lines[0] + lines[1] + huge + lines[2])
    records = read_all("missed_leads", "A1", path)
    assert [r.reject.code if r.reject else r.cells[2] for r in records] == ["P1", BAD_VALUE, "P2"]
    assert records[1].reject is not None and "longer than" in records[1].reject.reason
    assert len(records[1].reject.raw_row["_raw"]) < 100_000


# ----------------------------------------------------------------------------- file rules


def test_cp1252_file_fails_only_its_store_naming_file_and_byte_offset(data_dir: Path) -> None:
    good = write_csv(
        store_file(data_dir, D, "missed_leads", "A1"), MISSED_HEADER, [missed_row("A1", "P1")]
    )
    rows = [missed_row("B1", "P1"), missed_row("B1", "P2", customer_name="José")]
    body = render_csv(MISSED_HEADER, rows).decode().encode("cp1252")
    bad = missed_file(data_dir, "B1", body)
    offset = body.index(b"\xe9")
    problem = check_file("missed_leads", "B1", bad)
    assert problem is not None and problem.kind == "undecodable" and problem.retry == "refetch"
    assert bad.name in problem.reason and f"byte offset {offset} (line 3)" in problem.reason
    assert "Windows-1252" in problem.reason
    result = merge_bucket("missed_leads", D, {"A1": good, "B1": bad}, data_dir)
    assert (
        set(result.failed_stores) == {"B1"}
        and f"byte offset {offset}" in (result.failed_stores["B1"])
    )
    assert result.download_rows_by_store == {"A1": 1} and result.merged_rows == 1
    assert result.merged_stores == {"A1": str(good)}


def test_first_invalid_byte_is_found_across_chunk_boundaries(tmp_path: Path) -> None:
    # A valid 2-byte character split by the 1 MiB chunk boundary, then a bad byte further on.
    body = b"a" * ((1 << 20) - 1) + "é".encode() + b"b" * 10 + b"\n\xff"
    path = tmp_path / "x.csv"
    path.write_bytes(body)
    assert first_invalid_utf8(path) == (len(body) - 1, 2, b"\xff")
    path.write_bytes(body[:-1] + "é".encode()[:1])  # truncated at the very end
    assert first_invalid_utf8(path) == (len(body) - 1, 2, b"\xc3")


@pytest.mark.parametrize(
    ("body", "looks_like", "offset"),
    [
        (b"\xff\xfe" + ",".join(MISSED_HEADER).encode("utf-16-le"), "UTF-16", "offset 0"),
        ("\n".join(MISSED_HEADER).encode("utf-16-le"), "NUL bytes", ""),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "PDF", "offset 10"),
        (b"PK\x03\x04\x14\x00\x06\x00" + bytes(200) + b"\x9c", "ZIP", "offset 208"),
    ],
)
def test_binary_files_are_undecodable_and_say_what_they_look_like(
    data_dir: Path, body: bytes, looks_like: str, offset: str
) -> None:
    path = missed_file(data_dir, "A1", body)
    problem = check_file("missed_leads", "A1", path)
    assert problem is not None and problem.kind == "undecodable"
    assert looks_like in problem.reason and path.name in problem.reason
    assert offset in problem.reason


def test_whitespace_only_is_blank_but_empty_and_sentinel_are_valid_empty(data_dir: Path) -> None:
    blank = missed_file(data_dir, "A1", b"    \n  \n\n        \n \n   ")
    problem = check_file("missed_leads", "A1", blank)
    assert problem is not None and problem.kind == "blank"
    for body in (b"", SENTINEL.encode(), b"\xef\xbb\xbf" + SENTINEL.encode() + b"\r\n"):
        path = missed_file(data_dir, "B1", body)
        assert check_file("missed_leads", "B1", path) is None
        with read_report("missed_leads", "B1", path) as report:
            assert report.empty and list(report.records) == []
    result = merge_bucket("missed_leads", D, {"A1": blank, "B1": path}, data_dir)
    assert set(result.failed_stores) == {"A1"} and result.download_rows_by_store == {"B1": 0}


def test_ten_megabyte_junk_line_is_not_a_report_in_bounded_memory(data_dir: Path) -> None:
    junk = bytes(0x20 + (i * 7919) % 95 for i in range(10 * 1024 * 1024))
    path = missed_file(data_dir, "A1", junk)
    tracemalloc.start()
    try:
        problem = check_file("missed_leads", "A1", path)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert problem is not None and problem.kind == "not_a_report"
    assert "longer than" in problem.reason
    assert peak < 6 * 1024 * 1024  # never the whole 10 MB line, let alone several copies


@pytest.mark.parametrize(
    "body",
    [
        "Service temporarily unavailable, please try again later.",
        "Service temporarily unavailable, please try again later.\n",
        "order_no,order_date,store_code\nO1,2026-03-01,A1\n",  # another bucket's header
    ],
)
def test_a_plain_sentence_is_not_a_report(data_dir: Path, body: str) -> None:
    path = missed_file(data_dir, "A1", body)
    problem = check_file("missed_leads", "A1", path)
    assert problem is not None and problem.kind == "not_a_report"
    assert "pickup_no" in problem.reason and path.name in problem.reason


def test_login_page_is_html(data_dir: Path) -> None:
    page = "<!DOCTYPE html><html><head><title>Ticket Managment</title></head>"
    path = missed_file(data_dir, "A1", page + "<body>You need to be logged in</body></html>")
    problem = check_file("missed_leads", "A1", path)
    assert problem is not None and problem.kind == "html" and problem.retry == "refetch"
    path = missed_file(data_dir, "A1", "\n  You need to be logged in to view this page!\n")
    problem = check_file("missed_leads", "A1", path)
    assert problem is not None and problem.kind == "html"


def test_a_csv_whose_free_text_mentions_html_is_still_a_csv(data_dir: Path) -> None:
    rows = [missed_row("A1", "P1", special_instruction="pasted <html> from the app")]
    path = write_csv(store_file(data_dir, D, "missed_leads", "A1"), MISSED_HEADER, rows)
    assert check_file("missed_leads", "A1", path) is None
    assert rejects_of(read_all("missed_leads", "A1", path)) == []


def test_another_stores_rows_fail_the_file(data_dir: Path) -> None:
    rows = [missed_row("A1", "P1"), missed_row("B7", "P2")]
    path = write_csv(store_file(data_dir, D, "missed_leads", "A1"), MISSED_HEADER, rows)
    problem = check_file("missed_leads", "A1", path)
    assert problem is not None and problem.kind == "other_store" and problem.retry == "reselect"
    assert "'B7'" in problem.reason and "'A1'" in problem.reason and "line 3" in problem.reason
    # a blank (or null-token) store cell is a missing key of that record, not another store
    rows = [missed_row("A1", "P1"), missed_row("", "P2"), missed_row("N/A", "P3")]
    path = write_csv(store_file(data_dir, D, "missed_leads", "A1"), MISSED_HEADER, rows)
    assert check_file("missed_leads", "A1", path) is None
    assert [r.code for r in rejects_of(read_all("missed_leads", "A1", path))] == [MISSING_KEY] * 2


def test_check_file_agrees_with_the_simulators_damaged_bodies(data_dir: Path) -> None:
    cfg = SimConfig(store_codes=["A668", "B123"], rows_per_day=(2, 4), today=D)
    expected = {
        "otherstore": "other_store",
        "cp1252": "undecodable",
        "whitespace": "blank",
        "junk": "not_a_report",
        "utf16": "undecodable",
    }
    for fault in ("", "paddedstore", "nul", "ragged", "quote", "footer", *expected):
        body = portal_data.damaged_body(
            cfg, "missed_leads", "A668", D, None, frozenset({fault} - {""}), "B123"
        )
        path = missed_file(data_dir, "A668", body.body)
        problem = check_file("missed_leads", "A668", path)
        assert (problem.kind if problem else None) == expected.get(fault), fault
        if problem is None:
            starts = {r.line_number for r in rejects_of(read_all("missed_leads", "A668", path))}
            assert starts == set(body.fault_lines[:1]) | (
                set(body.fault_lines) if fault == "footer" else set()
            ), fault
