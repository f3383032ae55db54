"""Write CSV files shaped like the portal's real exports (PORTAL.md), for the merge/ingest tests.

Real shapes: UTF-8 (sometimes with a BOM), `\\n` or `\\r\\n`, quoting only where needed, free text
with commas / quotes / newlines, header spellings that vary in case and separators, the
undelivered export's `order_no`, repeat customers' `Store Code,Mobile No.,Status`, and the
`No data available to export.` sentinel with no trailing newline.
"""

import csv
import datetime as dt
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from app.coercion import normalize_header
from app.config import FILE_SPECS, file_specs_for_bucket
from app.csv_io import SENTINEL
from app.portal_sim import data as portal_data

# The headers exactly as the portal writes them (the simulator is the model of the portal);
# the undelivered export heads its first column `order_no`, not the spec's `order_id`.
MISSED_HEADER = portal_data.MISSED_LEADS_HEADER
UNDELIVERED_HEADER = portal_data.UNDELIVERED_HEADER
REPEAT_HEADER = portal_data.REPEAT_HEADER


def store_file(data_dir: Path, run_date: dt.date, bucket: str, store: str) -> Path:
    """Where the downloader saves a store's report: DATA_DIR/<date>/<out_name_template>."""
    (key,) = file_specs_for_bucket(bucket)
    folder = data_dir / run_date.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    return folder / FILE_SPECS[key]["out_name_template"].format(sc=store)


def render_csv(
    header: Sequence[str] | None,
    rows: Iterable[Sequence[object] | Mapping[str, object]],
    *,
    crlf: bool = False,
    bom: bool = False,
) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n" if crlf else "\n")
    if header is not None:
        writer.writerow(header)
    for row in rows:
        if isinstance(row, Mapping):
            assert header is not None  # values follow the header by name, however it is spelt
            by_name = {normalize_header(k): v for k, v in row.items()}
            row = [by_name.get(normalize_header(h), "") for h in header]
        writer.writerow(["" if v is None else v for v in row])
    data = buf.getvalue().encode("utf-8")
    return (b"\xef\xbb\xbf" + data) if bom else data


def write_csv(
    path: Path,
    header: Sequence[str] | None,
    rows: Iterable[Sequence[object] | Mapping[str, object]],
    *,
    crlf: bool = False,
    bom: bool = False,
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(render_csv(header, rows, crlf=crlf, bom=bom))
    return path


def write_sentinel(path: Path) -> Path:
    """The portal's empty report: one line, no header, no trailing newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(SENTINEL.encode())
    return path


def missed_row(store: str, pickup_no: str, **values: object) -> dict[str, object]:
    """A missed-leads row keyed by the spec's CSV names; override any column by keyword."""
    row: dict[str, object] = {
        "id": abs(hash((store, pickup_no))) % 10_000_000,
        "mobile_number": "9876543210",
        "pickup_no": pickup_no,
        "pickup_created_date": "2026-03-03",
        "pickup_created_time": "10:05:38",
        "store_code": store,
        "store_name": f"Store {store}",
        "pickup_date": "07-03-2026",
        "pickup_time": "11:00 AM",
        "customer_name": "Ravi Kumar",
        "special_instruction": "",
        "source": "App",
        "final_source": "App",
        "customer_type": "New",
        "is_order_placed": "0",
    }
    row.update(values)
    return row


def undelivered_row(store: str, order_no: str, **values: object) -> dict[str, object]:
    row: dict[str, object] = {
        "order_no": order_no,
        "order_date": "26 Nov 2025",
        "store_code": store,
        "store_name": f"Store {store}",
        "taxable_amount": "1,200.00",
        "net_amount": "1345.00",
        "service_code": "DC",
        "mobile_no": "+91 98765-43210",
        "status": "Pending",
        "customer_id": "C1",
        "expected_deliver_on": "07/03/2026",
        "actual_deliver_on": "N/A",
    }
    row.update(values)
    return row


def repeat_row(store: str, mobile: str, status: str = "Yes") -> dict[str, object]:
    return {"Store Code": store, "Mobile No.": mobile, "Status": status}
