"""The steps of one bucket and run date, as plain functions the asset graph (and the CLI) call.

The Dagster assets stay a few lines each: they resolve resources, call one function here, and
turn its result into materialization metadata. Everything that decides something (which raw
files to use for a past date, what counts as a failure) lives here, testable without Dagster.
"""

import contextlib
import dataclasses
import datetime as dt
import enum
import shutil
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from app.config import (
    FILE_SPECS,
    MERGED_NAMES,
    file_specs_for_bucket,
    merged_name,
    validate_store_code,
)
from app.csv_io import count_records
from app.downloader import DownloadReport, PortalCredentials, download_reports
from app.downloader.core import BucketDownload
from app.json_logger import log_event
from app.rejects import FileProblem
from app.run_context import RunContext
from app.settings_dates import not_servable_reason, portal_serves_date

T = TypeVar("T")


def date_dir(data_dir: Path, run_date: dt.date) -> Path:
    return data_dir / run_date.isoformat()


def raw_name(spec_key: str, store_code: str) -> str:
    return FILE_SPECS[spec_key]["out_name_template"].format(sc=validate_store_code(store_code))


def raw_path(data_dir: Path, run_date: dt.date, spec_key: str, store_code: str) -> Path:
    """Where an operator drops a report by hand: `DATA_DIR/<date>/<out_name>` (stable)."""
    return date_dir(data_dir, run_date) / raw_name(spec_key, store_code)


@dataclass(frozen=True)
class RawFiles:
    """The store files one bucket will merge for one date, all inside the run's own folder.

    `origin[store]` says where a file came from: `download` (this run fetched it), `operator`
    (dropped by hand into `DATA_DIR/<date>/`) or `kept` (left by an earlier run of the date whose
    audit did not pass); `taken_from[store]` is the path it was moved from.
    """

    bucket: str
    run_date: dt.date
    source: str  # "download" | "disk" | "mixed" | "none"
    files: dict[str, Path]
    rows_by_store: dict[str, int]
    failed: dict[str, str]
    bytes_total: int = 0
    retries: int = 0
    error: str | None = None
    origin: dict[str, str] = field(default_factory=dict)
    taken_from: dict[str, str] = field(default_factory=dict)
    not_servable: bool = False  # a past date the portal cannot serve, and nothing kept

    @property
    def download_total(self) -> int:
        return sum(self.rows_by_store.values())


def split_store_codes(stores: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(valid codes, {invalid code: reason}): a bad store_master row never stops the others."""
    valid: list[str] = []
    invalid: dict[str, str] = {}
    for code in dict.fromkeys(stores):
        try:
            valid.append(validate_store_code(code))
        except ValueError as exc:
            invalid[repr(code)[1:-1][:40]] = f"skipped: {exc}"
    return valid, invalid


def remove_stale_partials(ctx: RunContext) -> list[str]:
    """Delete `.part` / `.tmp` files of killed runs of this date (the caller holds the date)."""
    removed: list[str] = []
    if not ctx.date_dir.is_dir():
        return removed
    for path in ctx.date_dir.rglob(".*"):
        if path.is_file() and path.suffix in (".part", ".tmp"):
            path.unlink(missing_ok=True)
            removed.append(str(path))
    if removed:
        log_event(
            "download",
            f"removed {len(removed)} partial files left by killed runs of this date",
            status="warn",
            date=ctx.run_date,
            extras={"removed": removed[:20]},
        )
    return removed


def _candidates(
    ctx: RunContext, bucket: str, store: str, passed_runs: Collection[str]
) -> list[tuple[str, Path]]:
    """Files this run may take for a store: the operator's first, then earlier runs' (newest)."""
    names = [raw_name(key, store) for key in file_specs_for_bucket(bucket)]
    found = [("operator", ctx.date_dir / n) for n in names if (ctx.date_dir / n).is_file()]
    if ctx.is_today:
        return found  # today's data is downloaded fresh; earlier runs' files stay as they are
    older: list[tuple[float, Path]] = []
    if ctx.date_dir.is_dir():
        for folder in ctx.date_dir.iterdir():
            if not folder.is_dir() or folder.name.startswith(".") or folder.name == ctx.run_id:
                continue
            if folder.name in passed_runs:
                continue  # reconciled: those files are the cleanup's, not to be reprocessed
            for name in names:
                if (path := folder / name).is_file():
                    older.append((path.stat().st_mtime, path))
    found += [("kept", path) for _, path in sorted(older, reverse=True)]
    own = [ctx.run_dir / n for n in names if (ctx.run_dir / n).is_file()]
    return found + [("kept", p) for p in own]


def take_kept_files(
    ctx: RunContext, bucket: str, stores: Sequence[str], passed_runs: Collection[str]
) -> tuple[dict[str, Path], dict[str, str], dict[str, str]]:
    """Move each store's best kept file into this run's folder: (files, origin, taken_from)."""
    files: dict[str, Path] = {}
    origin: dict[str, str] = {}
    taken: dict[str, str] = {}
    for store in stores:
        found = _candidates(ctx, bucket, store, passed_runs)
        if not found:
            continue
        kind, path = found[0]
        target = ctx.run_dir / path.name
        if path != target:
            ctx.run_dir.mkdir(parents=True, exist_ok=True)
            path.replace(target)  # same filesystem: atomic; the file now belongs to this run
            taken[store] = str(path)
        files[store], origin[store] = target, kind
    prune_taken_folders(ctx, {Path(p).parent for p in taken.values()})
    return files, origin, taken


def prune_taken_folders(ctx: RunContext, folders: Collection[Path]) -> None:
    """An earlier run's folder left with no raw report only holds what was derived from them
    (its merged files, its step results): remove those and the folder. The caller holds the
    date, so that run is not running."""
    raw_names = {spec["out_name_template"].split("{sc}")[-1] for spec in FILE_SPECS.values()}
    merged = {merged_name(bucket, ctx.run_date) for bucket in MERGED_NAMES}
    for folder in folders:
        if folder == ctx.date_dir or folder.parent != ctx.date_dir or not folder.is_dir():
            continue
        names = {p.name for p in folder.iterdir() if p.is_file()}
        if any(n.endswith(tuple(raw_names)) for n in names - merged):
            continue
        for name in names & merged:
            (folder / name).unlink(missing_ok=True)
        shutil.rmtree(folder / ".steps", ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.rmdir()


async def acquire_raw_files(
    creds_factory: typing.Callable[[], PortalCredentials],
    *,
    ctx: RunContext,
    buckets: Sequence[str],
    stores: Sequence[str],
    limits: Mapping[str, float],
    passed_runs: Mapping[str, Collection[str]] | None = None,
    verify: Callable[[str, str, Path], FileProblem | None] | None = None,
    progress: bool | None = None,
) -> dict[str, RawFiles]:
    """Per bucket: the store files this run will merge, all moved into or saved in its folder.

    The caller holds the run date (`app.run_lock`). Kept files (see `take_kept_files`) are used
    first; the rest is downloaded when the portal serves the date, else those stores fail with
    the reason. `creds_factory` is only called when something must be downloaded, so a
    reprocess of kept files works without portal credentials.
    """
    valid, invalid = split_store_codes(stores)
    remove_stale_partials(ctx)
    result: dict[str, RawFiles] = {}
    wanted: dict[str, list[str]] = {}
    for bucket in buckets:
        files, origin, taken = take_kept_files(
            ctx, bucket, valid, (passed_runs or {}).get(bucket, ())
        )
        missing = [s for s in valid if s not in files]
        failed = dict(invalid)
        if missing and portal_serves_date(bucket, ctx.run_date, ctx.today):
            wanted[bucket] = missing
        else:
            failed.update(
                {s: f"no raw file kept on disk for {ctx.run_date.isoformat()}" for s in missing}
            )
        result[bucket] = RawFiles(
            bucket=bucket,
            run_date=ctx.run_date,
            source="disk" if files else "none",
            files=files,
            rows_by_store={s: count_records(p) for s, p in files.items()},
            failed=failed,
            bytes_total=sum(p.stat().st_size for p in files.values()),
            origin=origin,
            taken_from=taken,
        )
    if wanted:
        report = await _download(creds_factory(), ctx, wanted, limits, verify, progress)
        for bucket, stores_wanted in wanted.items():
            result[bucket] = _with_downloads(result[bucket], report.buckets[bucket], stores_wanted)
    return {b: _with_error(result[b], ctx) for b in buckets}


async def _download(
    creds: PortalCredentials,
    ctx: RunContext,
    wanted: Mapping[str, Sequence[str]],
    limits: Mapping[str, float],
    verify: Callable[[str, str, Path], FileProblem | None] | None,
    progress: bool | None,
) -> DownloadReport:
    """One login and one dashboard visit per store for every bucket that needs downloads."""
    stores = list(dict.fromkeys(s for codes in wanted.values() for s in codes))
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    return await download_reports(
        creds,
        store_codes=stores,
        buckets=list(wanted),
        run_date=ctx.run_date,
        data_dir=ctx.data_dir,
        target_dir=ctx.run_dir,
        portal_day=ctx.today if ctx.is_today else None,
        verify=verify,
        concurrency=int(limits.get("concurrency", 8)),
        rate_per_s=float(limits.get("rate_per_s", 20.0)),
        timeout_s=float(limits.get("timeout_s", 60.0)),
        progress=progress,
    )


def _with_downloads(raw: RawFiles, got: BucketDownload, stores: Sequence[str]) -> RawFiles:
    """Merge a bucket's downloads into what it already took from disk."""
    files, rows = dict(raw.files), dict(raw.rows_by_store)
    origin, failed = dict(raw.origin), dict(raw.failed)
    for store in stores:
        if store in got.files:
            files[store], rows[store], origin[store] = (
                got.files[store],
                got.rows_by_store[store],
                "download",
            )
        else:
            failed[store] = got.failed.get(store, "not downloaded")
    return dataclasses.replace(
        raw,
        source="download" if not raw.files else "mixed",
        files=files,
        rows_by_store=rows,
        failed=failed,
        origin=origin,
        bytes_total=raw.bytes_total + got.bytes_total,
        retries=got.retries,
    )


def _with_error(raw: RawFiles, ctx: RunContext) -> RawFiles:
    """A bucket with no file at all for a date the portal cannot serve has nothing to run on."""
    if raw.files or portal_serves_date(raw.bucket, ctx.run_date, ctx.today):
        return raw
    return dataclasses.replace(
        raw,
        not_servable=True,
        error="not servable: "
        + not_servable_reason(raw.bucket, ctx.run_date, ctx.today, str(ctx.date_dir)),
    )


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
