"""Download every enabled report of every store: bounded concurrency, one login, exact counters.

Per store: one dashboard visit, then each `FILE_SPECS` entry of the requested buckets, in order.
A store's failure is recorded with its reason and never stops the other stores; only a failed
first login stops the run (`LoginError`, which the CLI maps to exit code 2), because without a
session no store can succeed and retrying a wrong password only locks the account.

Two guards keep a bad file from being saved as a report: an optional `verify` hook judges each
complete body before it gets its final name (one retry of the kind it asks for, then the store
fails for that bucket), and the portal-day guard fails the rest of the run when the portal's
day turns over mid-run (its month-to-date exports would hold the next day's data).
"""

import asyncio
import datetime as dt
import functools
import sys
import time
import zoneinfo
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from app.config import BUCKETS, FILE_SPECS, FileSpec, file_specs_for_bucket, validate_store_code
from app.downloader.client import (
    BadFile,
    FetchError,
    FetchResult,
    FileCheck,
    LoginError,
    PortalClient,
    PortalCredentials,
    PortalError,
    SessionLost,
)
from app.json_logger import get_logger, log_event
from app.rejects import FileProblem

PHASE = "download"
# A store step may follow at most this many session replacements (its own re-login plus ones
# other workers did while it was in flight) before it gives up; it bounds a pathological portal.
_MAX_SESSION_HOPS = 4
FRANCHISE_TZ = zoneinfo.ZoneInfo("Asia/Kolkata")
# verify(bucket, store_code, part_path): None for a usable report, else why it is not one.
Verify = Callable[[str, str, Path], FileProblem | None]
Clock = Callable[[], dt.date]  # the current date in the franchise's timezone


def franchise_today() -> dt.date:
    """Today where the stores are: the portal's day turns over at midnight Asia/Kolkata."""
    return dt.datetime.now(FRANCHISE_TZ).date()


@dataclass
class BucketDownload:
    """One bucket's result; `rows_by_store` counts data records (the sentinel counts 0)."""

    bucket: str
    files: dict[str, Path] = field(default_factory=dict)
    rows_by_store: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    bytes_total: int = 0
    retries: int = 0  # HTTP-level retries (429, 5xx, resets, timeouts, plain-text messages)
    verify_retries: int = 0  # second downloads because the verify hook rejected a file
    empty_stores: list[str] = field(default_factory=list)

    @property
    def download_total(self) -> int:
        return sum(self.rows_by_store.values())


@dataclass
class DownloadReport:
    run_date: dt.date
    buckets: dict[str, BucketDownload]
    failed_stores: dict[str, str] = field(default_factory=dict)
    duration_ms: float = 0.0
    login_count: int = 0
    dashboard_retries: int = 0

    @property
    def verify_retries(self) -> int:
        return sum(b.verify_retries for b in self.buckets.values())

    @property
    def retries(self) -> int:
        """Every retry of the run: dashboards, HTTP-level ones and verify-hook second tries."""
        http = sum(b.retries for b in self.buckets.values())
        return self.dashboard_retries + http + self.verify_retries

    @property
    def ok(self) -> bool:
        return not self.failed_stores


@dataclass(frozen=True)
class _Job:
    bucket: str
    key: str
    spec: FileSpec


class _StoreFailed(Exception):
    """The store cannot be downloaded further in this run (session refused after re-login)."""


@dataclass
class _StoreState:
    code: str
    generation: int = -1  # session generation its dashboard was visited in
    relogin_budget: int = 1


class _DayChanged(_StoreFailed):
    """The portal's day moved past the run's day: its files would hold another day's data."""


@dataclass(frozen=True)
class _RunOptions:
    verify: Verify | None = None
    portal_day: dt.date | None = None
    clock: Clock = field(default_factory=lambda: franchise_today)
    refetch_backoff_s: float = 0.5


class _Downloader:
    def __init__(
        self,
        client: PortalClient,
        jobs: list[_Job],
        report: DownloadReport,
        day_dir: Path,
        options: _RunOptions,
        progress: Any,
    ) -> None:
        self.client = client
        self.jobs = jobs
        self.report = report
        self.day_dir = day_dir
        self.run_date = report.run_date
        self.options = options
        self.progress = progress
        self.day_changed: str | None = None  # set once; the day never changes back

    async def worker(self, queue: "asyncio.Queue[str]") -> None:
        while True:
            try:
                store_code = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                await self.store(store_code)
            except Exception as exc:  # one store's bug must not stop the others
                for job in self.jobs:
                    bucket = self.report.buckets[job.bucket]
                    if store_code not in bucket.rows_by_store and store_code not in bucket.failed:
                        self.fail(store_code, job, f"unexpected error: {type(exc).__name__}: {exc}")

    def fail(self, store_code: str, job: _Job, reason: str, duration_ms: float = 0.0) -> None:
        bucket = self.report.buckets[job.bucket]
        bucket.failed.setdefault(store_code, reason)
        self.report.failed_stores.setdefault(store_code, reason)
        log_event(
            PHASE,
            f"{job.key} for {store_code} failed: {reason}",
            status="error",
            bucket=job.bucket,
            store_code=store_code,
            date=self.run_date,
            duration_ms=duration_ms,
            extras={"report": job.key, "reason": reason},
        )
        self._advance()

    def _advance(self) -> None:
        if self.progress is not None:
            self.progress[0].advance(self.progress[1])

    def check_day(self) -> None:
        """Raise _DayChanged once the franchise's date differs from the run's portal day.

        The exports are month-to-date snapshots of the portal's *current* day, so a file fetched
        after midnight holds the next day's data; saving it under the old date would corrupt
        both days' counts.
        """
        portal_day = self.options.portal_day
        if portal_day is None:
            return
        if self.day_changed is None:
            now = self.options.clock()
            if now == portal_day:
                return
            self.day_changed = (
                f"the portal's day changed from {portal_day} to {now} during the run; "
                f"this file would hold {now}'s data: rerun for {now}"
            )
        raise _DayChanged(self.day_changed)

    async def _ensure_selected(self, state: _StoreState) -> None:
        if state.generation != self.client.generation:
            self.check_day()
            counter = [0]
            try:
                state.generation = await self.client.select_store(state.code, counter)
            finally:
                self.report.dashboard_retries += counter[0]

    async def _with_session(
        self, state: _StoreState, job: _Job | None, check: FileCheck | None = None
    ) -> Any:
        """One step (dashboard, or dashboard then a file); a lost session gets one re-login."""
        for _ in range(_MAX_SESSION_HOPS):
            try:
                await self._ensure_selected(state)
                if job is None:
                    return None
                return await self.client.fetch_csv(
                    self.url(job, state.code), self.path(job, state), check
                )
            except SessionLost as exc:
                if exc.generation != self.client.generation:
                    continue  # another worker already logged in again; re-select and retry
                if state.relogin_budget == 0:
                    raise _StoreFailed(f"{exc}, again after one re-login") from None
                state.relogin_budget -= 1
                try:
                    await self.client.relogin(exc.generation)
                except PortalError as login_exc:
                    raise _StoreFailed(f"{exc}; re-login failed: {login_exc}") from None
        raise _StoreFailed("the portal kept replacing the session; gave up")

    def _check_for(self, job: _Job, store_code: str) -> FileCheck | None:
        verify = self.options.verify
        return None if verify is None else functools.partial(verify, job.bucket, store_code)

    async def fetch_job(self, state: _StoreState, job: _Job) -> FetchResult:
        """One file; a problem the verify hook finds gets one retry of the kind it asks for."""
        check = self._check_for(job, state.code)
        try:
            return cast(FetchResult, await self._with_session(state, job, check))
        except BadFile as exc:
            problem = exc.problem
        self.report.buckets[job.bucket].verify_retries += 1
        log_event(
            PHASE,
            f"{job.key} for {state.code}: {problem.reason}; trying once more ({problem.retry})",
            status="warn",
            bucket=job.bucket,
            store_code=state.code,
            date=self.run_date,
            extras={"report": job.key, "problem": problem.kind, "retry": problem.retry},
        )
        if problem.retry == "reselect":
            state.generation = -1  # the session had another store selected: select this one
            tried = "after re-selecting the store and downloading again"
        else:
            await asyncio.sleep(self.options.refetch_backoff_s)
            tried = "after downloading again"
        try:
            return cast(FetchResult, await self._with_session(state, job, check))
        except BadFile as exc:
            raise FetchError(f"{tried}: {exc.problem.reason}") from None

    def url(self, job: _Job, store_code: str) -> str:
        validate_store_code(store_code)
        path = job.spec["url_template"].format(sc=store_code, date=self.run_date.isoformat())
        return f"{self.client.creds.base_url}{path}"

    def path(self, job: _Job, state: _StoreState) -> Path:
        return self.day_dir / job.spec["out_name_template"].format(
            sc=validate_store_code(state.code)
        )

    async def store(self, store_code: str) -> None:
        started = time.perf_counter()
        try:
            validate_store_code(store_code)
        except (ValueError, TypeError) as exc:
            for job in self.jobs:
                self.fail(store_code, job, f"invalid store code, not downloaded: {exc}")
            return
        state = _StoreState(code=store_code)
        try:
            await self._with_session(state, None)
        except _DayChanged as exc:
            for job in self.jobs:
                self.fail(store_code, job, str(exc))
            return
        except (_StoreFailed, FetchError) as exc:
            for job in self.jobs:
                self.fail(store_code, job, f"store dashboard failed: {exc}")
            return
        for index, job in enumerate(self.jobs):
            job_started = time.perf_counter()
            try:
                result = await self.fetch_job(state, job)
                self._check_day_after_save(result)
            except FetchError as exc:
                self.fail(store_code, job, str(exc), _ms(job_started))
                continue
            except _StoreFailed as exc:
                self.fail(store_code, job, str(exc), _ms(job_started))
                for rest in self.jobs[index + 1 :]:
                    self.fail(store_code, rest, f"skipped, the store failed earlier: {exc}")
                return
            self.record(store_code, job, result, _ms(job_started), _ms(started))

    def _check_day_after_save(self, result: FetchResult) -> None:
        """A file fetched after the portal's day changed holds the new day: it must not stay."""
        try:
            self.check_day()
        except _DayChanged:
            result.path.unlink(missing_ok=True)
            raise

    def record(
        self, store_code: str, job: _Job, result: FetchResult, job_ms: float, store_ms: float
    ) -> None:
        bucket = self.report.buckets[job.bucket]
        bucket.files[store_code] = result.path
        bucket.rows_by_store[store_code] = result.rows
        bucket.bytes_total += result.bytes
        bucket.retries += result.retries
        if result.empty_report:
            bucket.empty_stores.append(store_code)
        log_event(
            PHASE,
            f"{job.key} for {store_code}: {result.rows} rows"
            + (" (empty report)" if result.empty_report else ""),
            bucket=job.bucket,
            store_code=store_code,
            date=self.run_date,
            counts={"download_total": result.rows},
            duration_ms=job_ms,
            extras={
                "report": job.key,
                "file": result.path.name,
                "bytes": result.bytes,
                "retries": result.retries,
                "empty_report": result.empty_report,
                "store_ms": round(store_ms, 1),
            },
        )
        self._advance()


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def jobs_for(buckets: Sequence[str]) -> list[_Job]:
    unknown = [b for b in buckets if b not in BUCKETS]
    if unknown:
        raise ValueError(f"unknown buckets {unknown}; known: {', '.join(BUCKETS)}")
    jobs = []
    for key, spec in FILE_SPECS.items():  # FILE_SPECS order: stable file order per store
        bucket = spec["merge_bucket"]
        if bucket is not None and bucket in buckets and key in file_specs_for_bucket(bucket):
            jobs.append(_Job(bucket=bucket, key=key, spec=spec))
    return jobs


def _progress_context(enabled: bool, total: int) -> AbstractContextManager[Any]:
    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console()
    progress = Progress(
        TextColumn("[bold]download"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )

    class _Ctx:
        def __enter__(self) -> tuple[Any, Any]:
            progress.start()
            task = progress.add_task("files", total=total)
            get_logger().set_echo(
                lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True)
            )
            return progress, task

        def __exit__(self, *exc: object) -> None:
            get_logger().set_echo(None)
            progress.stop()

    return _Ctx()


async def download_reports(
    creds: PortalCredentials,
    *,
    store_codes: Sequence[str],
    buckets: Sequence[str],
    run_date: dt.date,
    data_dir: Path,
    concurrency: int = 8,
    rate_per_s: float = 20.0,
    timeout_s: float = 60.0,
    max_retries: int = 4,
    progress: bool | None = None,
    backoff_base_s: float = 0.5,
    backoff_max_s: float = 30.0,
    max_retry_after_s: float = 120.0,
    verify: Verify | None = None,
    target_dir: Path | None = None,
    portal_day: dt.date | None = None,
    clock: Clock | None = None,
) -> DownloadReport:
    """Download the buckets' reports of `store_codes` into `target_dir` (default
    `data_dir/<run_date>/`).

    `verify(bucket, store_code, part_path)` judges each complete body (the sentinel included) before
    it gets its final name; a problem gets one retry of the kind it names (`reselect`: visit the
    store's dashboard again first; `refetch`: download again after a short backoff), then fails that
    store for that bucket. `portal_day`: the day the run downloads; the portal serves its current
    day, so when `clock()` (default: today in Asia/Kolkata) differs from it before a dashboard visit
    or after a file is saved, that store and every store not yet done fail (and that file is
    deleted). `rate_per_s` <= 0 disables the polite rate limit (benchmarks). `progress=None`: a rich
    progress bar only when stdout is a terminal. Raises LoginError (wrong credentials, no reports
    card) or PortalUnavailableError (portal unreachable) before any store is attempted.
    """
    started = time.perf_counter()
    jobs = jobs_for(buckets)
    report = DownloadReport(
        run_date=run_date,
        buckets={b: BucketDownload(bucket=b) for b in dict.fromkeys(j.bucket for j in jobs)},
    )
    stores, invalid = _split_store_codes(store_codes)
    day_dir = Path(target_dir) if target_dir is not None else Path(data_dir) / run_date.isoformat()
    day_dir.mkdir(parents=True, exist_ok=True)
    concurrency = max(1, int(concurrency))
    options = _RunOptions(
        verify=verify,
        portal_day=portal_day,
        clock=clock or franchise_today,
        refetch_backoff_s=backoff_base_s,
    )
    client = PortalClient(
        creds,
        timeout_s=timeout_s,
        rate_per_s=rate_per_s,
        max_retries=max_retries,
        backoff_base_s=backoff_base_s,
        backoff_max_s=backoff_max_s,
        max_retry_after_s=max_retry_after_s,
        pool_size=concurrency + 2,
    )
    show = sys.stdout.isatty() if progress is None else progress
    try:
        await _login(client, creds, run_date)
        total = (len(stores) + len(invalid)) * len(jobs)
        with _progress_context(show, total) as prog:
            runner = _Downloader(client, jobs, report, day_dir, options, prog)
            for code, reason in invalid.items():
                for job in jobs:
                    runner.fail(code, job, f"invalid store code, not downloaded: {reason}")
            queue: asyncio.Queue[str] = asyncio.Queue()
            for sc in stores:
                queue.put_nowait(sc)
            workers = [runner.worker(queue) for _ in range(min(concurrency, len(stores)) or 1)]
            await asyncio.gather(*workers)
    finally:
        report.login_count = client.login_count
        await client.aclose()
    report.duration_ms = _ms(started)
    _log_summary(report, [*stores, *invalid])
    return report


def _split_store_codes(store_codes: Sequence[Any]) -> tuple[list[str], dict[str, str]]:
    """(valid codes in order, without repeats; invalid code -> reason).

    Anything that is not a valid code (wrong characters, not a string, unhashable) becomes a
    per-store failure instead of an exception, so the other stores are still downloaded. A
    non-string is keyed by its repr.
    """
    valid: dict[str, None] = {}
    invalid: dict[str, str] = {}
    for code in store_codes:
        key = code if isinstance(code, str) else repr(code)
        try:
            valid[validate_store_code(code)] = None
        except (ValueError, TypeError) as exc:
            invalid.setdefault(key, str(exc))
    return list(valid), invalid


async def _login(client: PortalClient, creds: PortalCredentials, run_date: dt.date) -> None:
    login_started = time.perf_counter()
    try:
        await client.login()
    except PortalError as exc:
        log_event(
            PHASE,
            str(exc),
            status="error",
            date=run_date,
            duration_ms=_ms(login_started),
            extras={"user": creds.username, "web_url": creds.web_url},
        )
        raise
    log_event(
        PHASE,
        f"logged in to the portal as {creds.username!r}",
        date=run_date,
        duration_ms=_ms(login_started),
        extras={"web_url": creds.web_url, "base_url": creds.base_url},
    )


def _log_summary(report: DownloadReport, stores: list[str]) -> None:
    for bucket in report.buckets.values():
        log_event(
            PHASE,
            f"{bucket.bucket}: {len(bucket.files)}/{len(stores)} stores downloaded, "
            f"{bucket.download_total} rows",
            status="error" if bucket.failed else "ok",
            bucket=bucket.bucket,
            date=report.run_date,
            counts={"download_total": bucket.download_total},
            extras={
                "download_rows_by_store": dict(bucket.rows_by_store),
                "bytes": bucket.bytes_total,
                "retries": bucket.retries,
                "verify_retries": bucket.verify_retries,
                "failed_stores": dict(bucket.failed),
                "empty_stores": list(bucket.empty_stores),
            },
        )
    log_event(
        PHASE,
        f"download finished: {len(stores) - len(report.failed_stores)}/{len(stores)} stores ok",
        status="error" if report.failed_stores else "ok",
        date=report.run_date,
        counts={"download_total": sum(b.download_total for b in report.buckets.values())},
        duration_ms=report.duration_ms,
        extras={
            "stores": len(stores),
            "failed_stores": dict(report.failed_stores),
            "login_count": report.login_count,
            "retries": report.retries,
            "bytes": sum(b.bytes_total for b in report.buckets.values()),
        },
    )


def download_reports_sync(
    creds: PortalCredentials,
    *,
    store_codes: Sequence[str],
    buckets: Sequence[str],
    run_date: dt.date,
    data_dir: Path,
    **kwargs: Any,
) -> DownloadReport:
    """For sync callers (Dagster asset bodies); must not be called from a running event loop."""
    return asyncio.run(
        download_reports(
            creds,
            store_codes=store_codes,
            buckets=buckets,
            run_date=run_date,
            data_dir=data_dir,
            **kwargs,
        )
    )


__all__ = [
    "BucketDownload",
    "Clock",
    "DownloadReport",
    "LoginError",
    "PortalCredentials",
    "Verify",
    "download_reports",
    "download_reports_sync",
    "franchise_today",
]
