"""The audit's measures in processes of their own, beside the merge and the load.

Why processes and not threads: the merger and the load's validation are pure Python and hold
the GIL. A measuring coroutine on a thread of the same process needs the GIL at every socket
event of every COPY, waits for it each time, and makes the busy thread give it up every few
milliseconds. Measured (docs/benchmarks.md, "Measuring during the merge and the load"): the raw
measure on a thread finished staging 102 files only as the merge ended, 2.3 s in, for 0.4 s of
work; the merged file's measure on a thread beside a 1M-row load cost 9.3 CPU-s, in a process
2.7. A process has its own interpreter and its own GIL.

- `RawMeasureWorker`, during the merge: fed each store file as the merger finishes reading it
  (`ScanListener`), it COPYs the file while the merger reads the next, and counts the keys
  while the merger writes the merged file.
- `MergedMeasureWorker`, during the load: stages the merged file at once, then waits to hear
  that the load committed before it reads the table back.

Start: `forkserver`, never `fork` (the parent has threads and a running event loop, and a
forked copy of them is a deadlock waiting to happen). Spawning a fresh interpreter per bucket
cost ~0.6 s of imports, longer than a day's merge of 500 small files takes, so the run starts
the fork server early (`warm_up`, from the download step): it imports `app.measure_preload`
once, and each measuring process is then a fork of that clean, single-threaded server.

Protocol: the parent puts items on the inbox (raw: `(store, path, ordinals)` per file, then
`None`; merged: `"committed"`, or `None` when the load failed); the child answers once on the
outbox with `("ok", value)` or `("error", text)`. The child checks every second that its parent
is still there, so a parent killed with SIGKILL leaves no measuring process (and no session)
behind.
"""

import asyncio
import contextlib
import dataclasses
import datetime as dt
import multiprocessing
import multiprocessing.forkserver
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Coroutine
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from app.measure import LoadMeasure, RawMeasure, measure_raw_streamed, staged_merged

_POLL_S = 1.0
COMMITTED = "committed"
Job = Callable[..., Coroutine[Any, Any, Any]]  # the child's work, run in its own event loop
_START = multiprocessing.get_context("forkserver")
_START.set_forkserver_preload([__name__, "app.measure_preload"])


def warm_up() -> None:
    """Start the fork server now (it imports in the background), so the merge steps' measuring
    processes start at once. Idempotent; a failure only means a slower start later."""
    with contextlib.suppress(Exception):
        multiprocessing.forkserver.ensure_running()


class MeasureWorkerError(RuntimeError):
    """The measuring process failed or went away; the audit measures the raw files itself."""


class _ParentGone(Exception):
    pass


def _arrived(inbox: Any) -> list[Any]:
    """Every item waiting (at least one): one thread hop per batch, not per item."""
    parent = multiprocessing.parent_process()  # the step's process, not the fork server
    while True:
        try:
            items = [inbox.get(timeout=_POLL_S)]
            break
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                raise _ParentGone from None
    with contextlib.suppress(queue.Empty):
        while items[-1] is not None:
            items.append(inbox.get_nowait())
    return items


async def _measure_raw(
    url: URL, bucket: str, inbox: Any
) -> tuple[RawMeasure, dict[str, list[int]]]:
    from app.db.engine import create_engine

    async def files() -> AsyncIterator[tuple[str, Path, Collection[int]]]:
        while True:
            for item in await asyncio.to_thread(_arrived, inbox):
                if item is None:
                    return
                store, path, ordinals = item
                yield store, Path(path), frozenset(ordinals)

    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return await measure_raw_streamed(conn, bucket, files())
    finally:
        await engine.dispose()


async def _measure_merged(
    url: URL, bucket: str, path: str, run_id: str, run_date: dt.date, inbox: Any
) -> LoadMeasure | None:
    """Staged now; the read-back only once the load has committed (None if it failed)."""
    from app.db.engine import create_engine

    engine = create_engine(url, pool_size=1)
    try:
        started = time.perf_counter()
        async with (
            engine.connect() as conn,
            staged_merged(conn, bucket, Path(path), materialize=True) as staged,
        ):
            staged_ms = (time.perf_counter() - started) * 1000
            if (await asyncio.to_thread(_arrived, inbox))[0] != COMMITTED:
                return None
            read = time.perf_counter()
            measure = await staged.read_back(run_id=run_id, run_date=run_date)
        # the server's work only: staging, then the read-back (not the wait for the commit)
        spent = staged_ms + (time.perf_counter() - read) * 1000
        return dataclasses.replace(measure, duration_ms=spent)
    finally:
        await engine.dispose()


def _serve(job: Job, args: tuple[Any, ...], outbox: Any) -> None:
    try:
        outbox.put(("ok", asyncio.run(job(*args))))
    except _ParentGone:
        return
    except BaseException as exc:  # reported to the parent, which falls back
        outbox.put(("error", f"{type(exc).__name__}: {exc}"))


class _MeasureProcess:
    """A measuring process started on a thread, so the step never waits for it (a cold fork
    server takes ~0.6 s to answer); what the step sends meanwhile waits in the queue."""

    def __init__(self, name: str, job: Job, *args: Any) -> None:
        self._inbox: Any = _START.Queue()
        self._outbox: Any = _START.Queue()
        self._process = _START.Process(
            target=_serve, args=(job, (*args, self._inbox), self._outbox), name=name, daemon=True
        )
        self._ended = self._answered = False
        self._start_error: BaseException | None = None
        self._starter = threading.Thread(target=self._start, name=f"{name}-start", daemon=True)
        self._starter.start()

    def _start(self) -> None:
        try:
            self._process.start()
        except BaseException as exc:  # no process: the answer is an error, the step goes on
            self._start_error = exc

    def _send(self, item: Any) -> None:
        self._inbox.put(item)

    def _end(self, item: Any) -> None:
        if not self._ended:
            self._ended = True
            self._inbox.put(item)

    def _started(self) -> bool:
        self._starter.join()
        return self._start_error is None

    async def _answer(self) -> Any:
        return await asyncio.to_thread(self._wait)

    def _wait(self) -> Any:
        if not self._started():
            error = self._start_error
            raise MeasureWorkerError(f"no measuring process: {type(error).__name__}: {error}")
        while True:
            try:
                kind, value = self._outbox.get(timeout=_POLL_S)
            except queue.Empty:
                if self._process.is_alive():
                    continue
                time.sleep(0.1)  # its last words may still be in the pipe
                if not self._outbox.empty():
                    continue
                raise MeasureWorkerError(
                    f"the measuring process ended (exit code {self._process.exitcode})"
                ) from None
            self._answered = True
            if kind == "ok":
                return value
            raise MeasureWorkerError(value)

    def stop(self) -> None:
        """End the process. After its answer it is already on its way out (its session closed
        before it answered), so it is not waited for; without an answer (a failed merge or
        load, a lost measure) it is terminated, with its session."""
        if self._started() and not self._answered and self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)
        for q in (self._inbox, self._outbox):
            q.close()
            q.cancel_join_thread()


class RawMeasureWorker(_MeasureProcess):
    """One bucket's raw measure, fed by the merger (a `ScanListener`)."""

    def __init__(self, url: URL, bucket: str) -> None:
        super().__init__(f"crm-measure-{bucket}", _measure_raw, url, bucket)

    def scanned(self, store: str, path: Path, ordinals: frozenset[int]) -> None:
        """Never blocks the merger (the queue has a feeder thread)."""
        self._send((store, str(path), sorted(ordinals)))

    def all_scanned(self) -> None:
        """No file follows: the child counts the keys while the merger writes (its pass 2)."""
        self._end(None)

    async def result(self) -> tuple[RawMeasure, dict[str, list[int]]]:
        """The measure and the exclusion it used (raises MeasureWorkerError)."""
        self.all_scanned()
        raw, used = await self._answer()
        return raw, used


class MergedMeasureWorker(_MeasureProcess):
    """One bucket's merged-file measure, beside its load."""

    def __init__(self, url: URL, bucket: str, path: Path, run_id: str, run_date: dt.date) -> None:
        name = f"crm-measure-merged-{bucket}"
        super().__init__(name, _measure_merged, url, bucket, str(path), run_id, run_date)

    async def result(self) -> LoadMeasure | None:
        """Tell the child the load committed, then wait for the read-back (raises
        MeasureWorkerError). Only after the commit: it reads the table back at once."""
        self._end(COMMITTED)
        measure: LoadMeasure | None = await self._answer()
        return measure
