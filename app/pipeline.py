"""The steps of one bucket and run date, as plain functions the asset graph (and the CLI) call.

The Dagster assets stay a few lines each: they resolve resources, call one function here, and
turn its result into materialization metadata. Everything that decides something (which raw
files to use for a past date, what counts as a failure) lives here, testable without Dagster.
"""

import dataclasses
import datetime as dt
import enum
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from app.config import FILE_SPECS, file_specs_for_bucket, validate_store_code
from app.csv_io import count_records, looks_like_html
from app.downloader import DownloadReport, PortalCredentials, download_reports

T = TypeVar("T")


def date_dir(data_dir: Path, run_date: dt.date) -> Path:
    return data_dir / run_date.isoformat()


def raw_path(data_dir: Path, run_date: dt.date, spec_key: str, store_code: str) -> Path:
    name = FILE_SPECS[spec_key]["out_name_template"].format(sc=validate_store_code(store_code))
    return date_dir(data_dir, run_date) / name


def portal_serves_date(bucket: str, run_date: dt.date, today: dt.date) -> bool:
    """The portal serves current data only, unless a report's URL takes a `{date}`."""
    if run_date == today:
        return True
    return all("{date}" in spec["url_template"] for spec in file_specs_for_bucket(bucket).values())


@dataclasses.dataclass(frozen=True)
class RawFiles:
    """The store files one bucket will merge for one date, and where they came from."""

    bucket: str
    run_date: dt.date
    source: str  # "download" | "disk"
    files: dict[str, Path]
    rows_by_store: dict[str, int]
    failed: dict[str, str]
    bytes_total: int = 0
    retries: int = 0
    error: str | None = None

    @property
    def download_total(self) -> int:
        return sum(self.rows_by_store.values())


def kept_raw_files(
    bucket: str, run_date: dt.date, stores: Sequence[str], data_dir: Path
) -> tuple[dict[str, Path], dict[str, str]]:
    """Raw files still on disk for a date (kept by a failed audit), per store; and the missing."""
    files: dict[str, Path] = {}
    missing: dict[str, str] = {}
    for store in stores:
        found = [
            path
            for key in file_specs_for_bucket(bucket)
            if (path := raw_path(data_dir, run_date, key, store)).is_file()
        ]
        if not found:
            missing[store] = f"no raw file kept on disk for {run_date.isoformat()}"
            continue
        with found[0].open("rb") as fh:
            if looks_like_html(fh.read(4096)):
                missing[store] = f"kept file {found[0].name} is an HTML page, not a report"
                continue
        files[store] = found[0]
    return files, missing


async def acquire_raw_files(
    creds_factory: typing.Callable[[], PortalCredentials],
    *,
    buckets: Sequence[str],
    stores: Sequence[str],
    run_date: dt.date,
    today: dt.date,
    data_dir: Path,
    limits: Mapping[str, float],
    progress: bool | None = None,
) -> dict[str, RawFiles]:
    """Per bucket: download today's reports, reuse a past date's kept files, or say why not.

    A past date is reprocessed from the raw files a failed audit kept, without downloading. If
    none are kept and the portal cannot serve that date, the bucket gets an `error` saying so.
    `creds_factory` is only called when something must be downloaded, so a reprocess of kept
    files works without portal credentials.
    """
    result: dict[str, RawFiles] = {}
    to_download: list[str] = []
    for bucket in buckets:
        kept, missing = kept_raw_files(bucket, run_date, stores, data_dir)
        if run_date != today and kept:
            result[bucket] = RawFiles(
                bucket=bucket,
                run_date=run_date,
                source="disk",
                files=kept,
                rows_by_store={s: count_records(p) for s, p in kept.items()},
                failed=missing,
                bytes_total=sum(p.stat().st_size for p in kept.values()),
            )
        elif portal_serves_date(bucket, run_date, today):
            to_download.append(bucket)
        else:
            result[bucket] = RawFiles(
                bucket=bucket,
                run_date=run_date,
                source="none",
                files={},
                rows_by_store={},
                failed={},
                error=(
                    f"the portal only serves current data (today is {today.isoformat()}) and no "
                    f"raw {bucket} files for {run_date.isoformat()} are kept under "
                    f"{date_dir(data_dir, run_date)}; nothing to reprocess"
                ),
            )
    if to_download:
        report: DownloadReport = await download_reports(
            creds_factory(),
            store_codes=stores,
            buckets=to_download,
            run_date=run_date,
            data_dir=data_dir,
            concurrency=int(limits.get("concurrency", 8)),
            rate_per_s=float(limits.get("rate_per_s", 20.0)),
            timeout_s=float(limits.get("timeout_s", 60.0)),
            progress=progress,
        )
        for bucket in to_download:
            got = report.buckets[bucket]
            result[bucket] = RawFiles(
                bucket=bucket,
                run_date=run_date,
                source="download",
                files=dict(got.files),
                rows_by_store=dict(got.rows_by_store),
                failed=dict(got.failed),
                bytes_total=got.bytes_total,
                retries=got.retries,
            )
    return {bucket: result[bucket] for bucket in buckets}


# --- results <-> JSON, so step results travel as materialization metadata (never pickles) ---


def to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "as_tuple"):  # Decimal
        return str(value)
    return value


def _from_json(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _from_json(args[0], value) if len(args) == 1 else value
    if tp is Path:
        return Path(value)
    if tp is dt.date:
        return dt.date.fromisoformat(value)
    if tp is dt.datetime:
        return dt.datetime.fromisoformat(value)
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return from_jsonable(tp, value)  # type: ignore[arg-type]
    if origin in (dict, Mapping) or tp in (dict,):
        kv = typing.get_args(tp)
        vt = kv[1] if len(kv) == 2 else Any
        return {k: _from_json(vt, v) for k, v in value.items()}
    if origin in (list, Sequence, tuple) or tp in (list,):
        items = typing.get_args(tp)
        et = items[0] if items else Any
        return [_from_json(et, v) for v in value]
    return value


def from_jsonable(cls: type[T], data: Mapping[str, Any]) -> T:
    """Rebuild a result dataclass from `to_jsonable` output (paths and dates restored)."""
    hints = typing.get_type_hints(cls)
    kwargs = {
        f.name: _from_json(hints.get(f.name, Any), data[f.name])
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.init and f.name in data
    }
    return cls(**kwargs)
