"""The merger on portal-shaped files: headers, sentinels, quoted newlines, winners, counts."""

import csv
import datetime as dt
from pathlib import Path

import pytest

from app.config import merged_name
from app.csv_io import count_records
from app.merger import MergeError, merge_bucket
from tests.portal_files import (
    MISSED_HEADER,
    REPEAT_HEADER,
    UNDELIVERED_HEADER,
    missed_row,
    repeat_row,
    store_file,
    undelivered_row,
    write_csv,
    write_sentinel,
)

D = dt.date(2026, 3, 7)


def read_merged(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        return header, [dict(zip(header, rec, strict=True)) for rec in reader]


def test_header_variants_aliases_and_alignment_by_name(data_dir: Path) -> None:
    # Same columns, different spellings and a different order per store; order_no is order_id.
    reordered = list(reversed(UNDELIVERED_HEADER))
    shouty = [h.upper().replace("_", " ") for h in UNDELIVERED_HEADER]
    files = {
        "A1": write_csv(
            store_file(data_dir, D, "undelivered_all", "A1"),
            UNDELIVERED_HEADER,
            [undelivered_row("A1", "O1")],
        ),
        "B2": write_csv(
            store_file(data_dir, D, "undelivered_all", "B2"),
            reordered,
            [undelivered_row("B2", "O2", status="Ready")],
            crlf=True,
        ),
        "C3": write_csv(
            store_file(data_dir, D, "undelivered_all", "C3"),
            [f"{h}-" if h == "STATUS" else h for h in shouty] + ["Extra Col"],
            [{**undelivered_row("C3", "O3"), "extra col": "zzz"}],
            bom=True,
        ),
    }
    result = merge_bucket("undelivered_all", D, files, data_dir)
    header, rows = read_merged(result.path)
    assert header[0] == "order_id" and header == result.columns
    assert [r["order_id"] for r in rows] == ["O1", "O2", "O3"]
    assert rows[1]["status"] == "Ready" and rows[1]["store_code"] == "B2"
    assert rows[2]["net_amount"] == "1345.00" and rows[2]["mobile_no"] == "+91 98765-43210"
    assert result.unknown_columns == ["Extra Col"]
    assert "Extra Col" not in header
    assert result.path == data_dir / D.isoformat() / merged_name("undelivered_all", D)


def test_missing_column_in_one_store_is_left_empty(data_dir: Path) -> None:
    short_header = [h for h in MISSED_HEADER if h not in ("customer_type", "source")]
    files = {
        "A1": write_csv(
            store_file(data_dir, D, "missed_leads", "A1"), short_header, [missed_row("A1", "P1")]
        ),
        "B1": write_csv(
            store_file(data_dir, D, "missed_leads", "B1"), MISSED_HEADER, [missed_row("B1", "P1")]
        ),
    }
    result = merge_bucket("missed_leads", D, files, data_dir)
    _, rows = read_merged(result.path)
    assert rows[0]["customer_type"] == "" and rows[1]["customer_type"] == "New"
    assert result.columns_missing_by_store == {"A1": ["source", "customer_type"]}


@pytest.mark.parametrize("sentinel_store", ["A0", "M0", "Z0"])  # first / middle / last
def test_sentinel_and_empty_files_contribute_nothing(data_dir: Path, sentinel_store: str) -> None:
    files = {
        "B1": write_csv(
            store_file(data_dir, D, "missed_leads", "B1"),
            MISSED_HEADER,
            [missed_row("B1", "P1"), missed_row("B1", "P2")],
        ),
        "N1": write_csv(
            store_file(data_dir, D, "missed_leads", "N1"), MISSED_HEADER, [missed_row("N1", "P1")]
        ),
        sentinel_store: write_sentinel(store_file(data_dir, D, "missed_leads", sentinel_store)),
        "Y0": store_file(data_dir, D, "missed_leads", "Y0"),
    }
    files["Y0"].write_bytes(b"")  # a zero-byte download
    result = merge_bucket("missed_leads", D, files, data_dir)
    text = result.path.read_text(encoding="utf-8")
    assert "No data available" not in text
    assert text.count("pickup_no") == 1  # one header, never glued to the sentinel
    assert result.merged_rows == result.expected_unique == 3
    assert result.download_rows_by_store == {"B1": 2, "N1": 1, sentinel_store: 0, "Y0": 0}
    assert result.download_total == 3


def test_only_sentinels_gives_a_header_only_file(data_dir: Path) -> None:
    files = {s: write_sentinel(store_file(data_dir, D, "missed_leads", s)) for s in ("A", "B")}
    result = merge_bucket("missed_leads", D, files, data_dir)
    assert result.merged_rows == result.expected_unique == result.download_total == 0
    assert result.path.read_text().strip() == ",".join(MISSED_HEADER)


def test_quoted_newlines_commas_and_quotes_survive(data_dir: Path) -> None:
    note = 'gate 2, "ring twice"\nleave with guard\r\nthanks'
    files = {
        "A1": write_csv(
            store_file(data_dir, D, "missed_leads", "A1"),
            MISSED_HEADER,
            [missed_row("A1", "P1", special_instruction=note), missed_row("A1", "P2")],
            crlf=True,
        )
    }
    result = merge_bucket("missed_leads", D, files, data_dir)
    _, rows = read_merged(result.path)
    assert rows[0]["special_instruction"] == note
    assert result.merged_rows == count_records(result.path) == 2


def test_missed_leads_winner_rule(data_dir: Path) -> None:
    a = [
        # P1: the converted lead wins although it is older and comes first
        missed_row("A1", "P1", is_order_placed="1", pickup_created_date="2026-03-01", id=11),
        missed_row("A1", "P1", is_order_placed="0", pickup_created_date="2026-03-05", id=12),
        # P2: neither converted -> the latest created date (day-first and ISO compare as dates)
        missed_row("A1", "P2", pickup_created_date="05-03-2026", id=21),
        missed_row("A1", "P2", pickup_created_date="2026-03-04", id=22),
        # P3: same date -> latest clock time, 12h clock understood
        missed_row("A1", "P3", pickup_created_time="3:03:39 PM", id=31),
        missed_row("A1", "P3", pickup_created_time="11:00:00 AM", id=32),
        # P4: complete tie -> the last occurrence wins
        missed_row("A1", "P4", id=41),
        missed_row("A1", "P4", id=42),
        # P5: a missing date never beats a present one
        missed_row("A1", "P5", pickup_created_date="2026-03-01", id=51),
        missed_row("A1", "P5", pickup_created_date="N/A", id=52),
    ]
    files = {"A1": write_csv(store_file(data_dir, D, "missed_leads", "A1"), MISSED_HEADER, a)}
    result = merge_bucket("missed_leads", D, files, data_dir)
    _, rows = read_merged(result.path)
    winners = {r["pickup_no"]: r["id"] for r in rows}
    assert winners == {"P1": "11", "P2": "21", "P3": "31", "P4": "42", "P5": "51"}
    assert result.duplicates_dropped == 5
    assert result.download_total == 10
    assert result.merged_rows == result.expected_unique == 5


def test_a_store_file_with_another_stores_rows_fails_only_that_store(data_dir: Path) -> None:
    # B2's download holds A1's rows (the session had A1 selected): B2 fails, A1 merges alone.
    # (Before the strict reader this merged as a cross-store duplicate of A1's P1.)
    files = {
        "B2": write_csv(
            store_file(data_dir, D, "missed_leads", "B2"),
            MISSED_HEADER,
            [missed_row("A1", "P1", id=2)],
        ),
        "A1": write_csv(
            store_file(data_dir, D, "missed_leads", "A1"),
            MISSED_HEADER,
            [missed_row("A1", "P1", id=1), missed_row("A1", "P2", id=3)],
        ),
    }
    result = merge_bucket("missed_leads", D, files, data_dir)
    _, rows = read_merged(result.path)
    assert {r["pickup_no"]: r["id"] for r in rows} == {"P1": "1", "P2": "3"}
    assert result.duplicates_dropped == 0 and result.expected_unique == 2
    assert list(result.failed_stores) == ["B2"]
    assert "other_store" in result.failed_stores["B2"] and "'A1'" in result.failed_stores["B2"]
    assert result.download_rows_by_store == {"A1": 2}  # a failed file contributes nothing
    assert result.merged_stores == {"A1": str(files["A1"])}


def test_undelivered_winner_prefers_delivered_copy(data_dir: Path) -> None:
    rows = [
        undelivered_row("A1", "O1", actual_deliver_on="06/03/2026", status="Delivered"),
        undelivered_row("A1", "O1", actual_deliver_on="N/A", status="Pending"),
    ]
    files = {
        "A1": write_csv(store_file(data_dir, D, "undelivered_all", "A1"), UNDELIVERED_HEADER, rows)
    }
    result = merge_bucket("undelivered_all", D, files, data_dir)
    _, merged = read_merged(result.path)
    assert [r["status"] for r in merged] == ["Delivered"]


def test_repeat_customers_key_is_the_db_value(data_dir: Path) -> None:
    # "+91 98765-43210" and "9876543210" are the same mobile: one row, the last occurrence.
    files = {
        "A1": write_csv(
            store_file(data_dir, D, "repeat_customers", "A1"),
            REPEAT_HEADER,
            [
                repeat_row("A1", "+91 98765-43210", "No"),
                repeat_row(" A1 ", "9876543210", "Yes"),
                repeat_row("A1", "9999999999", "No"),
            ],
        ),
        "B1": write_csv(
            store_file(data_dir, D, "repeat_customers", "B1"),
            ["store code", "MOBILE_NO.", "status"],
            [repeat_row("B1", "9876543210", "Yes")],
        ),
    }
    result = merge_bucket("repeat_customers", D, files, data_dir)
    header, merged = read_merged(result.path)
    assert header == ["Store Code", "Mobile No.", "Status"]
    assert [(r["Store Code"], r["Mobile No."], r["Status"]) for r in merged] == [
        ("A1", "9876543210", "Yes"),  # key cells are written trimmed
        ("A1", "9999999999", "No"),
        ("B1", "9876543210", "Yes"),
    ]
    assert result.expected_unique == result.merged_rows == 3
    assert result.duplicates_dropped == 1


def test_rows_without_key_are_rejected_not_merged(data_dir: Path) -> None:
    rows = [
        missed_row("A1", ""),
        missed_row("A1", "N/A"),
        missed_row("A1", "P1"),
        missed_row("A1", "P1"),
    ]
    files = {"A1": write_csv(store_file(data_dir, D, "missed_leads", "A1"), MISSED_HEADER, rows)}
    result = merge_bucket("missed_leads", D, files, data_dir)
    assert [(r.code, r.line_number, r.record_no) for r in result.rejects] == [
        ("missing_key", 2, 1),
        ("missing_key", 3, 2),
    ]
    assert all("missing dedupe key pickup_no" in r.reason for r in result.rejects)
    assert result.quarantined == 2 and result.blocking == 0
    assert result.merged_rows == result.expected_unique == 1  # keyless rows are not written
    assert result.duplicates_dropped == 1
    assert result.download_total == 4  # rejects are records of the download
    _, merged = read_merged(result.path)
    assert [r["pickup_no"] for r in merged] == ["P1"]


def test_store_file_without_key_column_fails_only_its_store(data_dir: Path) -> None:
    header = [h for h in MISSED_HEADER if h != "pickup_no"]
    files = {
        "A1": write_csv(
            store_file(data_dir, D, "missed_leads", "A1"), header, [missed_row("A1", "")]
        ),
        "B1": write_csv(
            store_file(data_dir, D, "missed_leads", "B1"), MISSED_HEADER, [missed_row("B1", "P1")]
        ),
    }
    result = merge_bucket("missed_leads", D, files, data_dir)
    assert set(result.failed_stores) == {"A1"}
    assert result.failed_stores["A1"].startswith("not_a_report:")
    assert "pickup_no" in result.failed_stores["A1"]
    assert result.download_rows_by_store == {"B1": 1} and result.merged_rows == 1
    assert not list((data_dir / D.isoformat()).glob(".*tmp"))


def test_only_failed_stores_give_a_header_only_file(data_dir: Path) -> None:
    path = store_file(data_dir, D, "missed_leads", "A1")
    path.write_text("Service temporarily unavailable, please try again later.")
    result = merge_bucket("missed_leads", D, {"A1": path}, data_dir)
    assert result.merged_rows == result.expected_unique == result.download_total == 0
    assert result.failed_stores["A1"].startswith("not_a_report:")
    assert result.merged_stores == {} and result.rejects == []
    assert result.path.read_text().strip() == ",".join(MISSED_HEADER)


def test_out_dir_and_merged_stores(data_dir: Path, tmp_path: Path) -> None:
    files = {
        "A1": write_csv(
            store_file(data_dir, D, "missed_leads", "A1"), MISSED_HEADER, [missed_row("A1", "P1")]
        ),
        "B1": write_sentinel(store_file(data_dir, D, "missed_leads", "B1")),
    }
    out = tmp_path / "run-1"
    result = merge_bucket("missed_leads", D, files, data_dir, out_dir=out)
    assert result.path == out / merged_name("missed_leads", D) and result.path.exists()
    assert not list((data_dir / D.isoformat()).glob("merged_*"))
    assert result.merged_stores == {"A1": str(files["A1"]), "B1": str(files["B1"])}
    assert result.failed_stores == {}


def test_a_file_changed_between_the_passes_is_a_merge_error(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.merger as merger

    path = write_csv(
        store_file(data_dir, D, "missed_leads", "A1"), MISSED_HEADER, [missed_row("A1", "P1")]
    )
    real = merger.read_report
    calls: list[bool] = []

    def growing(bucket: str, store: str, file: Path, **kwargs: object) -> object:
        if calls:  # the second pass: someone appended a record meanwhile
            with file.open("a", encoding="utf-8") as fh:
                fh.write(",".join(str(v) for v in missed_row("A1", "P9").values()) + "\n")
        calls.append(True)
        return real(bucket, store, file, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(merger, "read_report", growing)
    with pytest.raises(MergeError, match="changed while merging"):
        merge_bucket("missed_leads", D, {"A1": path}, data_dir)
    assert not list((data_dir / D.isoformat()).glob("merged_*"))
    assert not list((data_dir / D.isoformat()).glob(".*tmp"))


def test_expected_unique_is_independent_of_the_merged_file(data_dir: Path) -> None:
    files = {
        s: write_csv(
            store_file(data_dir, D, "missed_leads", s),
            MISSED_HEADER,
            [missed_row(s, f"P{i % 7}") for i in range(20)],
        )
        for s in ("A1", "B1", "C1")
    }
    result = merge_bucket("missed_leads", D, files, data_dir)
    assert result.download_total == 60
    assert result.expected_unique == 21 == result.merged_rows == count_records(result.path)
    assert result.duplicates_dropped == 39
    leftovers = [p.name for p in result.path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
