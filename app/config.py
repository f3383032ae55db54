"""The platform's specs: which reports exist, how merged files are named, how buckets map to tables.

`FILE_SPECS`, `MERGED_NAMES` and `MERGE_BUCKET_DB_SPECS` are the kickoff's contract. Everything
downstream (downloader, merger, ingester, ORM and row models, the Dagster factory) is generated
from these three dicts, so adding a bucket is a change here plus an Alembic revision.

Three additions the real portal files need, all optional per bucket so the seed's keys stay intact:
- `header_aliases`: other headers the portal uses for a mapped CSV column (the undelivered
  export heads its first column `order_no`, which the spec calls `order_id`).
- `dedupe_prefer`: which row wins when a dedupe key repeats (see `app.merger`).
- `quarantine`: reject codes (`app.rejects`) that do not block the cleanup because the raw row
  is kept in `ingest_rejects`; default `["missing_key"]`.
"""

import datetime as dt
import re
from typing import Any, Final, Literal, TypedDict

CoerceKind = Literal["int", "str", "date", "float", "bool"]


class FileSpec(TypedDict):
    """One report the portal serves; `{sc}` is the store code, `{date}` (optional) the run date."""

    url_template: str
    out_name_template: str
    download: bool
    merge_bucket: str | None


# The seven reports of PORTAL.md. Only the three with `download=True` feed a merge bucket.
FILE_SPECS: Final[dict[str, FileSpec]] = {
    "missed_leads": {
        "url_template": "/mis/download_csv?store_code={sc}",
        "out_name_template": "{sc}-missed-leads.csv",
        "download": True,
        "merge_bucket": "missed_leads",
    },
    "undelivered_last10": {
        "url_template": "/mis/download_undelivered_csv?type=u10&store_code={sc}",
        "out_name_template": "{sc}-undelivered-last10.csv",
        "download": False,
        "merge_bucket": None,
    },
    "undelivered_u": {
        "url_template": "/mis/download_undelivered_csv?type=u&store_code={sc}",
        "out_name_template": "{sc}-undelivered-u.csv",
        "download": False,
        "merge_bucket": None,
    },
    "undelivered_all": {
        "url_template": "/mis/download_undelivered_csv?type=a&store_code={sc}",
        "out_name_template": "{sc}-undelivered-all.csv",
        "download": True,
        "merge_bucket": "undelivered_all",
    },
    "repeat_customers": {
        "url_template": "/mis/download_repeat_csv?store_code={sc}",
        "out_name_template": "{sc}-repeat-customers.csv",
        "download": True,
        "merge_bucket": "repeat_customers",
    },
    "nonpackage_all": {
        "url_template": "/mis/download_nonpackageorder_csv?type=all&store_code={sc}",
        "out_name_template": "{sc}-non-package-all.csv",
        "download": False,
        "merge_bucket": None,
    },
    "nonpackage_u": {
        "url_template": "/mis/download_nonpackageorder_csv?type=u&store_code={sc}",
        "out_name_template": "{sc}-non-package-u.csv",
        "download": False,
        "merge_bucket": None,
    },
}

# Output names for merged buckets. `{YMD_TODAY}` is filled with the *run date* (the partition),
# never the wall clock at import: a backfill of 2026-11-20 writes merged_*_20261120.csv.
MERGED_NAMES: Final[dict[str, str]] = {
    "missed_leads": "merged_missed_leads_{YMD_TODAY}.csv",
    "undelivered_all": "merged_undelivered_all_{YMD_TODAY}.csv",
    "repeat_customers": "merged_repeat_customers_{YMD_TODAY}.csv",
}

# DB spec per merge bucket (case-insensitive CSV header mapping). The seed's dict, plus the two
# optional keys described in the module docstring.
MERGE_BUCKET_DB_SPECS: Final[dict[str, dict[str, Any]]] = {
    "missed_leads": {
        "table_name": "missed_leads",
        "dedupe_keys": ["store_code", "pickup_no"],
        "column_map": {
            "id": "pickup_row_id",
            "mobile_number": "mobile_number",
            "pickup_no": "pickup_no",
            "pickup_created_date": "pickup_created_date",
            "pickup_created_time": "pickup_created_time",
            "store_code": "store_code",
            "store_name": "store_name",
            "pickup_date": "pickup_date",
            "pickup_time": "pickup_time",
            "customer_name": "customer_name",
            "special_instruction": "special_instruction",
            "source": "source",
            "final_source": "final_source",
            "customer_type": "customer_type",
            "is_order_placed": "is_order_placed",
        },
        "coerce": {
            "pickup_row_id": "int",
            "mobile_number": "str",
            "pickup_no": "str",
            "pickup_created_date": "date",
            "pickup_created_time": "str",
            "store_code": "str",
            "store_name": "str",
            "pickup_date": "date",
            "pickup_time": "str",
            "customer_name": "str",
            "special_instruction": "str",
            "source": "str",
            "final_source": "str",
            "customer_type": "str",
            "is_order_placed": "bool",  # 1=True; 0/other=False
        },
        "header_aliases": {},
        "quarantine": ["missing_key"],
        # A lead that converted beats one that did not; then the most recently created one.
        "dedupe_prefer": [
            ("is_order_placed", "desc"),
            ("pickup_created_date", "desc"),
            ("pickup_created_time", "desc"),
        ],
    },
    "undelivered_all": {
        "table_name": "undelivered_orders",
        "dedupe_keys": ["store_code", "order_id"],
        "column_map": {
            "order_id": "order_id",
            "order_date": "order_date",
            "store_code": "store_code",
            "store_name": "store_name",
            "taxable_amount": "taxable_amount",
            "net_amount": "net_amount",
            "service_code": "service_code",
            "mobile_no": "mobile_no",
            "status": "status",
            "customer_id": "customer_id",
            "expected_deliver_on": "expected_deliver_on",
            "actual_deliver_on": "actual_deliver_on",
        },
        "coerce": {
            "order_id": "str",
            "order_date": "date",
            "store_code": "str",
            "store_name": "str",
            "taxable_amount": "float",
            "net_amount": "float",
            "service_code": "str",
            "mobile_no": "str",
            "status": "str",
            "customer_id": "str",
            "expected_deliver_on": "date",
            "actual_deliver_on": "date",
        },
        "header_aliases": {"order_no": "order_id"},
        "quarantine": ["missing_key"],
        # A delivered order (it has an actual delivery date) beats a pending copy of itself.
        "dedupe_prefer": [("actual_deliver_on", "desc")],
    },
    "repeat_customers": {
        "table_name": "repeat_customers",
        "dedupe_keys": ["store_code", "mobile_no"],
        "column_map": {
            "Store Code": "store_code",
            "Mobile No.": "mobile_no",
            "Status": "status",
        },
        "coerce": {
            "store_code": "str",
            "mobile_no": "str",
            "status": "str",
        },
        "header_aliases": {},
        # A blank `Mobile No.` is normal on the real portal: such a row is kept in
        # ingest_rejects (quarantined), so it never blocks the day's cleanup.
        "quarantine": ["missing_key"],
        "dedupe_prefer": [],
    },
}

BUCKETS: Final[tuple[str, ...]] = tuple(MERGE_BUCKET_DB_SPECS)

# A store code becomes part of URLs and file paths; anything else is refused before it gets there.
STORE_CODE_RE: Final[re.Pattern[str]] = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def merged_name(bucket: str, run_date: dt.date) -> str:
    """The merged file's name for a bucket and run date (the partition, not today)."""
    return MERGED_NAMES[bucket].format(YMD_TODAY=run_date.strftime("%Y%m%d"))


def merged_names(run_date: dt.date) -> dict[str, str]:
    return {bucket: merged_name(bucket, run_date) for bucket in MERGED_NAMES}


def file_specs_for_bucket(bucket: str) -> dict[str, FileSpec]:
    """The downloaded reports that feed one merge bucket (normally exactly one)."""
    return {
        key: spec
        for key, spec in FILE_SPECS.items()
        if spec["download"] and spec["merge_bucket"] == bucket
    }


def validate_store_code(store_code: str) -> str:
    """Return the code unchanged, or raise ValueError: it will be used in a path and a URL."""
    if not isinstance(store_code, str) or not STORE_CODE_RE.fullmatch(store_code):
        raise ValueError(f"invalid store code {store_code!r}: must match {STORE_CODE_RE.pattern}")
    return store_code


def validate_specs() -> None:
    """Fail at import if the specs contradict each other; a typo here would corrupt every run."""
    kinds = {"int", "str", "date", "float", "bool"}
    for bucket, spec in MERGE_BUCKET_DB_SPECS.items():
        targets = set(spec["column_map"].values())
        coerce = spec["coerce"]
        if targets != set(coerce):
            raise ValueError(f"{bucket}: column_map targets and coerce keys differ")
        if bad := {k for k, v in coerce.items() if v not in kinds}:
            raise ValueError(f"{bucket}: unknown coerce kinds for {sorted(bad)}")
        if missing := set(spec["dedupe_keys"]) - targets:
            raise ValueError(f"{bucket}: dedupe keys {sorted(missing)} are not mapped columns")
        for alias, canonical in spec.get("header_aliases", {}).items():
            if canonical not in spec["column_map"]:
                raise ValueError(f"{bucket}: alias {alias!r} points at unknown {canonical!r}")
        for column, direction in spec.get("dedupe_prefer", []):
            if column not in targets or direction not in ("asc", "desc"):
                raise ValueError(f"{bucket}: bad dedupe_prefer entry {(column, direction)!r}")
        quarantine = spec.get("quarantine", [])
        if not isinstance(quarantine, list) or not all(isinstance(c, str) for c in quarantine):
            raise ValueError(f"{bucket}: quarantine must be a list of reject codes")
        if bucket not in MERGED_NAMES:
            raise ValueError(f"{bucket}: no MERGED_NAMES entry")
        if not file_specs_for_bucket(bucket):
            raise ValueError(f"{bucket}: no downloaded FILE_SPECS entry feeds it")


validate_specs()
