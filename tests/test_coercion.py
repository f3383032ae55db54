"""Table-driven tests of the coercion rules (`app.coercion`) and the row models, on real values.

Every value here is one the portal really emits (PORTAL.md). The ingester's compiled hot path
must agree with the Pydantic row model on every one of them (last test).
"""

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from app.coercion import (
    AMOUNT_PRECISION,
    AMOUNT_SCALE,
    DATE_FORMATS,
    CoercionError,
    coerce_value,
    key_value,
    normalize_header,
    to_date,
)
from app.config import MERGE_BUCKET_DB_SPECS
from app.row_check import RowCoercer
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
    ("1,00,000.50", Decimal("100000.50")),  # Indian grouping, lakh
    ("1,234,567.50", Decimal("1234567.50")),  # Western grouping
    ("1,234", Decimal("1234")),  # three digits after the comma: grouping, not decimals
    ("0", Decimal("0")),
    ("-15.5", Decimal("-15.5")),
    ("1345.000", Decimal("1345.00")),  # the extra decimal is a zero: nothing is rounded
    ("999999999999.99", Decimal("999999999999.99")),  # the largest NUMERIC(14,2)
    ("-999999999999.99", Decimal("-999999999999.99")),
    ("\u20b91,200.00", Decimal("1200.00")),
]


@pytest.mark.parametrize(("raw", "expected"), AMOUNT_CASES)
def test_amounts(raw: str, expected: Decimal) -> None:
    value = coerce_value("net_amount", "float", raw)
    assert value == expected
    assert -value.as_tuple().exponent <= AMOUNT_SCALE  # type: ignore[operator]


@pytest.mark.parametrize("raw", ["12a", "1.2.3", "Rs", "1,2345.00", "12,34,5678", "1,000,00"])
def test_bad_amounts_rejected(raw: str) -> None:
    with pytest.raises(CoercionError, match="amount"):
        coerce_value("net_amount", "float", raw)


@pytest.mark.parametrize("raw", ["1345.005", "0.001", "1,200.0001", "-3.14159"])
def test_amount_with_more_decimals_than_the_column_is_rejected_not_rounded(raw: str) -> None:
    with pytest.raises(CoercionError, match=r"more decimals than the column keeps \(2\)"):
        coerce_value("net_amount", "float", raw)


@pytest.mark.parametrize(
    "raw", ["1000000000000", "1000000000000.00", "-1000000000000", "99999999999999.99"]
)
def test_amount_beyond_numeric_14_2_is_rejected(raw: str) -> None:
    assert (AMOUNT_PRECISION, AMOUNT_SCALE) == (14, 2)
    with pytest.raises(CoercionError, match=r"out of range for NUMERIC\(14,2\)"):
        coerce_value("net_amount", "float", raw)


@pytest.mark.parametrize("raw", ["1,50", "1,5", "-1,50", "1.234,50", "12,5"])
def test_ambiguous_decimal_comma_is_rejected(raw: str) -> None:
    with pytest.raises(CoercionError, match="ambiguous decimal comma"):
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


@pytest.mark.parametrize(
    "raw", ["9223372036854775807", "-9223372036854775808", "0000000000000000000042"]
)
def test_ints_at_the_bigint_limits(raw: str) -> None:
    assert coerce_value("pickup_row_id", "int", raw) == int(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "9223372036854775808",
        "-9223372036854775809",
        "9" * 30,
        "1" * 5000,
        "9,223,372,036,854,775,808",
    ],
)
def test_int_beyond_bigint_is_rejected(raw: str) -> None:
    with pytest.raises(CoercionError, match="out of range for a 64-bit column"):
        coerce_value("pickup_row_id", "int", raw)


@pytest.mark.parametrize(
    ("column", "kind"),
    [
        ("status", "str"),
        ("mobile_no", "str"),
        ("order_date", "date"),
        ("net_amount", "float"),
        ("pickup_row_id", "int"),
        ("is_order_placed", "bool"),
    ],
)
@pytest.mark.parametrize("raw", ["a\x00b", "\x00", "1\x00", " \x00 "])
def test_nul_character_is_rejected_for_every_kind(column: str, kind: Any, raw: str) -> None:
    with pytest.raises(CoercionError, match="NUL character"):
        coerce_value(column, kind, raw)
    with pytest.raises(CoercionError, match="NUL character"):
        coerce_value(column, kind, raw, is_key=True)


def _loop_date(raw: str) -> dt.date | None:
    """The DATE_FORMATS loop alone (what `to_date` did before its fast paths)."""
    text = " ".join(raw.strip().split())
    for fmt in DATE_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


@pytest.mark.parametrize(
    "raw",
    [
        "2026-03-03 18:05:38",
        "2026-03-03 8:05:03",
        "2026-03-03 8:5:3",
        "2026-03-03 08:5:60",
        "2026-03-03 23:59:59",
        "2026-03-03 24:00:00",
        "2026-03-03 18:60:00",
        "2026-03-03 18:05:60",
        "2026-02-29 10:00:00",
        "2024-02-29 10:00:00",
        "07-03-2026",
        "31-04-2026",
        "00-03-2026",
        "07/13/2026",
        "07-03/2026",
        "21 Apr 2026 3:03:39 PM",
        "21 apr 2026 12:00:00 am",
        "21 APR 2026 03:03:39 PM",
        "21 Apr 2026 0:03:39 PM",
        "21 Apr 2026 13:03:39 PM",
        "31 Feb 2026 3:03:39 PM",
        "21 Abc 2026 3:03:39 PM",
        "1 Jan 2026 1:00:00 AM",
    ],
)
def test_date_fast_paths_agree_with_the_format_loop(raw: str) -> None:
    expected = _loop_date(raw)
    if expected is None:
        with pytest.raises(CoercionError):
            to_date(raw)
    else:
        assert to_date(raw) == expected


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


# Every value above, as a full row, through the compiled path and the Pydantic model.
EQUIVALENCE_ROWS: list[dict[str, str | None]] = (
    [{**MISSED_OK, "is_order_placed": raw} for raw, _ in BOOL_CASES if raw is not None]
    + [{**MISSED_OK, "pickup_date": raw} for raw, _ in DATE_CASES]
    + [{**MISSED_OK, "pickup_date": "2026-02-30"}, {**MISSED_OK, "pickup_no": "N/A"}]
    + [{**MISSED_OK, "mobile_number": raw} for raw, _ in MOBILE_CASES]
    + [{**MISSED_OK, "pickup_row_id": raw} for raw in ("12,345", "7.0", "x", "", "NA")]
    + [{**MISSED_OK, "pickup_row_id": raw} for raw in ("9223372036854775807", "9" * 25)]
    + [{**MISSED_OK, "customer_name": raw} for raw in ("", "-", "null", " Ravi ")]
    + [{**MISSED_OK, column: "x\x00y"} for column in ("customer_name", "is_order_placed")]
    + [{**MISSED_OK, "pickup_no": "\x00"}, {**MISSED_OK, "pickup_no": "", "pickup_date": "x"}]
)
UNDELIVERED_OK: dict[str, str | None] = {
    "order_id": "O1",
    "order_date": "26 Nov 2025",
    "store_code": "A668",
    "store_name": "Store",
    "taxable_amount": "1,200.00",
    "net_amount": "1345.00",
    "service_code": "DC",
    "mobile_no": "+91 98765-43210",
    "status": "Pending",
    "customer_id": "C1",
    "expected_deliver_on": "21 Apr 2026 3:03:39 PM",
    "actual_deliver_on": "N/A",
}
UNDELIVERED_ROWS: list[dict[str, str | None]] = [
    {**UNDELIVERED_OK, "net_amount": raw}
    for raw in [r for r, _ in AMOUNT_CASES]
    + ["1345.005", "1,50", "1000000000000", "12a", "", "N/A", "a\x00"]
] + [{**UNDELIVERED_OK, "order_date": raw} for raw in ("2026-03-03 18:05:38", "31-04-2026")]


def _outcome(call: Any) -> Any:
    try:
        return call()
    except CoercionError as exc:
        return ("rejected", str(exc))


@pytest.mark.parametrize(
    ("bucket", "rows"),
    [("missed_leads", EQUIVALENCE_ROWS), ("undelivered_all", UNDELIVERED_ROWS)],
)
@pytest.mark.parametrize("shuffled", [False, True])
def test_compiled_path_equals_row_model(
    bucket: str, rows: list[dict[str, str | None]], shuffled: bool
) -> None:
    columns = list(MERGE_BUCKET_DB_SPECS[bucket]["coerce"])
    header = list(reversed(columns)) if shuffled else columns  # positions are honoured
    compiled = RowCoercer(bucket, [header.index(c) for c in columns], len(header))
    model = RowCoercer(bucket, [header.index(c) for c in columns], len(header), "model")
    for _ in range(2):  # the second round is served from the memo
        for raw in rows:
            record: list[str | None] = [raw.get(h) for h in header]
            expected = _outcome(lambda raw=raw: tuple(validate_row(bucket, raw).values()))
            assert _outcome(lambda record=record: compiled(record)) == expected, raw
            assert _outcome(lambda record=record: model(record)) == expected, raw
        compiled.rows = 10_000
        compiled.tune()  # the un-memoised path must agree as well


def test_row_coercer_missing_column_reads_null() -> None:
    columns = list(MERGE_BUCKET_DB_SPECS["undelivered_all"]["coerce"])
    present = [c for c in columns if c != "status"]
    coercer = RowCoercer(
        "undelivered_all", [present.index(c) if c in present else None for c in columns], 11
    )
    values = dict(zip(columns, coercer([UNDELIVERED_OK[c] for c in present]), strict=True))
    assert values["status"] is None and values["net_amount"] == Decimal("1345.00")
