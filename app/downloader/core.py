"""Download every enabled report of every store: bounded concurrency, one login, exact counters.

Per store: one dashboard visit, then each `FILE_SPECS` entry of the requested buckets, in order.
A store's failure is recorded with its reason and never stops the other stores; only a failed
first login stops the run (`LoginError`, which the CLI maps to exit code 2), because without a
session no store can succeed and retrying a wrong password only locks the account.
"""

import asyncio
import datetime as dt
import sys
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import BUCKETS, FILE_SPECS, FileSpec, file_specs_for_bucket, validate_store_code
from app.downloader.client import (
    FetchError,
    LoginError,
    PortalClient,
    PortalCredentials,
    PortalError,
    SessionLost,
)
from app.json_logger import get_logger, log_event

PHASE = "download"
# A store step may follow at most this many session replacements (its own re-login plus ones
# other workers did while it was in flight) before it gives up; it bounds a pathological portal.
_MAX_SESSION_HOPS = 4


@dataclass
class BucketDownload:
    """One bucket's result; `rows_by_store` counts data records (the sentinel counts 0)."""

    bucket: str
    files: dict[str, Path] = field(default_factory=dict)
    rows_by_store: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    bytes_total: int = 0
    retries: int = 0
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
    def retries(self) -> int:
        return self.dashboard_retries + sum(b.retries for b in self.buckets.values())

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


class _Downloader:
    def __init__(
        self,
        client: PortalClient,
        jobs: list[_Job],
        report: DownloadReport,
        day_dir: Path,
        run_date: dt.date,
        progress: Any,
    ) -> None:
        self.client = client
        self.jobs = jobs
        self.report = report
        self.day_dir = day_dir
        self.run_date = run_date
        self.progress = progress

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

    async def _ensure_selected(self, state: _StoreState) -> None:
        if state.generation != self.client.generation:
            counter = [0]
            try:
                state.generation = await self.client.select_store(state.code, counter)
            finally:
                self.report.dashboard_retries += counter[0]

    async def _with_session(self, state: _StoreState, job: _Job | None) -> Any:
        """One step (dashboard, or dashboard then a file); a lost session gets one re-login."""
        for _ in range(_MAX_SESSION_HOPS):
            try:
                await self._ensure_selected(state)
                if job is None:
                    return None
                return await self.client.fetch_csv(self.url(job, state.code), self.path(job, state))
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

    def url(self, job: _Job, store_code: str) -> str:
        path = job.spec["url_template"].format(sc=store_code, date=self.run_date.isoformat())
        return f"{self.client.creds.base_url}{path}"

    def path(self, job: _Job, state: _StoreState) -> Path:
        return self.day_dir / job.spec["out_name_template"].format(sc=state.code)

    async def store(self, store_code: str) -> None:
        started = time.perf_counter()
        try:
            validate_store_code(store_code)
        except ValueError as exc:
            for job in self.jobs:
                self.fail(store_code, job, f"invalid store code, not downloaded: {exc}")
            return
        state = _StoreState(code=store_code)
        try:
            await self._with_session(state, None)
        except (_StoreFailed, FetchError) as exc:
            for job in self.jobs:
                self.fail(store_code, job, f"store dashboard failed: {exc}")
            return
        for index, job in enumerate(self.jobs):
            job_started = time.perf_counter()
            try:
                result = await self._with_session(state, job)
            except FetchError as exc:
                self.fail(store_code, job, str(exc), _ms(job_started))
                continue
            except _StoreFailed as exc:
                self.fail(store_code, job, str(exc), _ms(job_started))
                for rest in self.jobs[index + 1 :]:
                    self.fail(store_code, rest, f"skipped, the store failed earlier: {exc}")
                return
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
                duration_ms=_ms(job_started),
                extras={
                    "report": job.key,
                    "file": result.path.name,
                    "bytes": result.bytes,
                    "retries": result.retries,
                    "empty_report": result.empty_report,
                    "store_ms": round(_ms(started), 1),
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
) -> DownloadReport:
    """Download the buckets' reports of `store_codes` into `data_dir/<run_date>/`.

    `rate_per_s` <= 0 disables the polite rate limit (benchmarks). `progress=None`: a rich
    progress bar only when stdout is a terminal. Raises LoginError (wrong credentials, no reports
    card) or PortalUnavailableError (portal unreachable) before any store is attempted.
    """
    started = time.perf_counter()
    jobs = jobs_for(buckets)
    report = DownloadReport(
        run_date=run_date,
        buckets={b: BucketDownload(bucket=b) for b in dict.fromkeys(j.bucket for j in jobs)},
    )
    stores = list(dict.fromkeys(store_codes))
    day_dir = Path(data_dir) / run_date.isoformat()
    day_dir.mkdir(parents=True, exist_ok=True)
    concurrency = max(1, int(concurrency))
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
        queue: asyncio.Queue[str] = asyncio.Queue()
        for sc in stores:
            queue.put_nowait(sc)
        with _progress_context(show, len(stores) * len(jobs)) as prog:
            runner = _Downloader(client, jobs, report, day_dir, run_date, prog)
            workers = [runner.worker(queue) for _ in range(min(concurrency, len(stores)) or 1)]
            await asyncio.gather(*workers)
    finally:
        report.login_count = client.login_count
        await client.aclose()
    report.duration_ms = _ms(started)
    _log_summary(report, stores)
    return report


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
    "DownloadReport",
    "LoginError",
    "PortalCredentials",
    "download_reports",
    "download_reports_sync",
]
