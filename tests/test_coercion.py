"""Table-driven tests of the coercion rules (`app.coercion`) and the row models, on real values.

Every value here is one the portal really emits (PORTAL.md). The ingester's compiled hot path
must agree with the Pydantic row model on every one of them (last test).
"""

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from app.coercion import CoercionError, coerce_value, key_value, normalize_header
from app.ingest import _plan, _RowCoercer
from app.row_models import validate_row

BOOL_CASES = [
    ("1", True),
    ("0", False),
    ("", False),
    ("true", False),  # only "1" is True: the kickoff's rule, exactly
    ("True", False),
    ("yes", False),
    ("2", False),
    ("-1", False),
    ("1.0", False),
    ("N/A", False),
    (None, False),
    (" 1 ", True),  # as implemented: surrounding whitespace is trimmed before the rule
    ("\t1\n", True),
]


@pytest.mark.parametrize(("raw", "expected"), BOOL_CASES)
def test_bool_rule(raw: str | None, expected: bool) -> None:
    assert coerce_value("is_order_placed", "bool", raw) is expected


DATE_CASES = [
    ("2026-03-07", dt.date(2026, 3, 7)),
    ("2026-03-03 18:05:38", dt.date(2026, 3, 3)),
    ("07-03-2026", dt.date(2026, 3, 7)),  # day first
    ("07/03/2026", dt.date(2026, 3, 7)),  # day first
    ("26 Nov 2025", dt.date(2025, 11, 26)),
    ("21 Apr 2026 3:03:39 PM", dt.date(2026, 4, 21)),
    (" 2026-03-07 ", dt.date(2026, 3, 7)),
    ("13-01-2026", dt.date(2026, 1, 13)),  # would be month 13 if read month-first
]


@pytest.mark.parametrize(("raw", "expected"), DATE_CASES)
def test_date_forms(raw: str, expected: dt.date) -> None:
    assert coerce_value("order_date", "date", raw) == expected


@pytest.mark.parametrize("raw", ["2026-02-30", "03/13/2026", "yesterday", "2026/03/07", "7.3.26"])
def test_bad_dates_are_rejected_not_guessed(raw: str) -> None:
    with pytest.raises(CoercionError, match="date"):
        coerce_value("order_date", "date", raw)


@pytest.mark.parametrize("raw", ["", "  ", "NA", "N/A", "n/a", "null", "NULL", "-", "None", "nan"])
@pytest.mark.parametrize(
    ("column", "kind"),
    [("order_date", "date"), ("net_amount", "float"), ("pickup_row_id", "int"), ("status", "str")],
)
def test_null_tokens_become_null(raw: str, column: str, kind: Any) -> None:
    assert coerce_value(column, kind, raw) is None


AMOUNT_CASES = [
    ("1345.00", Decimal("1345.00")),
    ("1,200.00", Decimal("1200.00")),
    ("12,34,567.50", Decimal("1234567.50")),  # Indian grouping
    ("0", Decimal("0")),
    ("-15.5", Decimal("-15.5")),
]


@pytest.mark.parametrize(("raw", "expected"), AMOUNT_CASES)
def test_amounts(raw: str, expected: Decimal) -> None:
    assert coerce_value("net_amount", "float", raw) == expected


@pytest.mark.parametrize("raw", ["12a", "1.2.3", "Rs"])
def test_bad_amounts_rejected(raw: str) -> None:
    with pytest.raises(CoercionError, match="amount"):
        coerce_value("net_amount", "float", raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("12345", 12345), ("12,345", 12345), ("7.0", 7), (" 42 ", 42)],
)
def test_ints(raw: str, expected: int) -> None:
    assert coerce_value("pickup_row_id", "int", raw) == expected


def test_bad_int_rejected() -> None:
    with pytest.raises(CoercionError, match="integer"):
        coerce_value("pickup_row_id", "int", "12.5")


MOBILE_CASES = [
    ("+91 98765-43210", "9876543210"),
    ("9876543210", "9876543210"),
    ("09876543210", "9876543210"),
    ("919876543210", "9876543210"),
    (" 98765 43210 ", "9876543210"),
    ("12345", "12345"),  # not normalisable: kept as written (trimmed), never mangled
    ("+1 (555) 010-9999", "+1 (555) 010-9999"),
]


@pytest.mark.parametrize(("raw", "expected"), MOBILE_CASES)
def test_mobile_numbers(raw: str, expected: str) -> None:
    assert coerce_value("mobile_no", "str", raw) == expected
    assert coerce_value("mobile_number", "str", raw) == expected


def test_blank_mobile_is_null_unless_key() -> None:
    assert coerce_value("mobile_number", "str", "") is None
    with pytest.raises(CoercionError, match="missing dedupe key mobile_no"):
        key_value("mobile_no", "str", "  ")


@pytest.mark.parametrize("raw", [None, "", " ", "N/A", "null", "-"])
def test_missing_keys_rejected(raw: str | None) -> None:
    with pytest.raises(CoercionError, match="missing dedupe key pickup_no"):
        key_value("pickup_no", "str", raw)


def test_key_values_are_trimmed_and_normalised() -> None:
    assert key_value("store_code", "str", " A668 ") == "A668"
    assert key_value("mobile_no", "str", "+91 98765-43210") == key_value(
        "mobile_no", "str", "9876543210"
    )


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("\ufeffStore Code", "store code"),
        ("STORE_CODE", "store code"),
        (" store-code ", "store code"),
        ("Mobile No.", "mobile no."),
        ("mobile__no.", "mobile no."),
    ],
)
def test_header_normalisation(header: str, expected: str) -> None:
    assert normalize_header(header) == expected


# ----------------------------------------------------------------------------- row models

MISSED_OK = {
    "pickup_row_id": "101",
    "mobile_number": "+91 98765-43210",
    "pickup_no": " P-1 ",
    "pickup_created_date": "2026-03-03 18:05:38",
    "pickup_created_time": "18:05:38",
    "store_code": "A668",
    "store_name": "Store, with comma",
    "pickup_date": "07/03/2026",
    "pickup_time": "11:00 AM",
    "customer_name": "N/A",
    "special_instruction": "line one\nline two",
    "source": "App",
    "final_source": "",
    "customer_type": "New",
    "is_order_placed": "1",
}


def test_row_model_coerces_a_real_row() -> None:
    row = validate_row("missed_leads", MISSED_OK)
    assert row["pickup_row_id"] == 101
    assert row["mobile_number"] == "9876543210"
    assert row["pickup_no"] == "P-1"
    assert row["pickup_created_date"] == dt.date(2026, 3, 3)
    assert row["pickup_date"] == dt.date(2026, 3, 7)
    assert row["customer_name"] is None
    assert row["final_source"] is None
    assert row["special_instruction"] == "line one\nline two"
    assert row["is_order_placed"] is True


def test_row_model_undelivered_amounts_and_dates() -> None:
    row = validate_row(
        "undelivered_all",
        {
            "order_id": "O1",
            "store_code": "A668",
            "order_date": "26 Nov 2025",
            "taxable_amount": "1,200.00",
            "net_amount": "1345.00",
            "expected_deliver_on": "21 Apr 2026 3:03:39 PM",
            "actual_deliver_on": "N/A",
        },
    )
    assert row["taxable_amount"] == Decimal("1200.00")
    assert row["net_amount"] == Decimal("1345.00")
    assert row["order_date"] == dt.date(2025, 11, 26)
    assert row["expected_deliver_on"] == dt.date(2026, 4, 21)
    assert row["actual_deliver_on"] is None


def test_row_model_reports_every_reason() -> None:
    bad = {**MISSED_OK, "pickup_no": "", "pickup_date": "31/31/2026", "pickup_row_id": "x1"}
    with pytest.raises(CoercionError) as info:
        validate_row("missed_leads", bad)
    message = str(info.value)
    assert "missing dedupe key pickup_no" in message
    assert "pickup_date" in message
    assert "pickup_row_id" in message


def test_row_model_missing_key_column_rejected() -> None:
    with pytest.raises(CoercionError, match="store_code"):
        validate_row("repeat_customers", {"mobile_no": "9876543210", "status": "Yes"})


# Every value above, as a full row, through the ingester's compiled path and the Pydantic model.
EQUIVALENCE_ROWS: list[dict[str, str | None]] = (
    [{**MISSED_OK, "is_order_placed": raw} for raw, _ in BOOL_CASES if raw is not None]
    + [{**MISSED_OK, "pickup_date": raw} for raw, _ in DATE_CASES]
    + [{**MISSED_OK, "pickup_date": "2026-02-30"}, {**MISSED_OK, "pickup_no": "N/A"}]
    + [{**MISSED_OK, "mobile_number": raw} for raw, _ in MOBILE_CASES]
    + [{**MISSED_OK, "pickup_row_id": raw} for raw in ("12,345", "7.0", "x", "", "NA")]
    + [{**MISSED_OK, "customer_name": raw} for raw in ("", "-", "null", " Ravi ")]
)


def test_compiled_path_equals_row_model() -> None:
    header = list(MISSED_OK)
    plan = _plan("missed_leads", __import__("pathlib").Path("x.csv"), header)
    compiled = _RowCoercer("missed_leads", plan, "compiled")
    for _ in range(2):  # the second round is served from the memo
        for raw in EQUIVALENCE_ROWS:
            record: list[str | None] = [raw[h] for h in header]
            try:
                expected: Any = tuple(validate_row("missed_leads", raw).values())
            except CoercionError as exc:
                expected = ("rejected", str(exc))
            try:
                got: Any = compiled(record)
            except CoercionError as exc:
                got = ("rejected", str(exc))
            assert got == expected, raw
