"""The audit's raw measure in a process of its own, fed each store file as the merger ends it.

Why a process and not a thread: the merger is pure Python and holds the GIL. A measuring
coroutine on a thread of the same process needs the GIL at every socket event of every COPY
(about five round trips per file), waits for it each time, and so fell behind the merger: on
100,000 rows over 102 files it finished staging only as the merge ended, 2.3 s in, for work that
takes 0.4 s alone (docs/benchmarks.md, "Measuring during the merge and the load"). A process
has its own interpreter and its own GIL, on the core the merger leaves idle.

Start: `forkserver`, never `fork` (the parent has threads and a running event loop, and a
forked copy of them is a deadlock waiting to happen). Spawning a fresh interpreter per bucket
cost ~0.6 s of imports, longer than a day's merge of 500 small files takes, so the run starts
the fork server early (`warm_up`, from the download step): it imports this module once, and
each measuring process is then a fork of that clean, single-threaded server, ready at once.

Protocol: the parent puts `(store, path, ordinals)` per scanned file and then `None` on the
inbox; the child answers once on the outbox with `("ok", (RawMeasure, exclusion used))` or
`("error", text)`. The child checks every second that its parent is still there, so a parent
killed with SIGKILL leaves no measuring process (and no session) behind.
"""

import asyncio
import contextlib
import multiprocessing
import multiprocessing.forkserver
import queue
import threading
import time
from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from app.measure import RawMeasure, measure_raw_streamed

_POLL_S = 1.0
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


def _arrived(inbox: Any) -> list[tuple[str, Path, Collection[int]] | None]:
    """Every item waiting (at least one): one thread hop per batch, not per file."""
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
    return [None if i is None else (i[0], Path(i[1]), frozenset(i[2])) for i in items]


async def _measure(url: URL, bucket: str, inbox: Any) -> tuple[RawMeasure, dict[str, list[int]]]:
    from app.db.engine import create_engine

    async def files() -> AsyncIterator[tuple[str, Path, Collection[int]]]:
        while True:
            for item in await asyncio.to_thread(_arrived, inbox):
                if item is None:
                    return
                yield item

    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return await measure_raw_streamed(conn, bucket, files())
    finally:
        await engine.dispose()


def _serve(url: URL, bucket: str, inbox: Any, outbox: Any) -> None:
    try:
        outbox.put(("ok", asyncio.run(_measure(url, bucket, inbox))))
    except _ParentGone:
        return
    except BaseException as exc:  # reported to the parent, which falls back
        outbox.put(("error", f"{type(exc).__name__}: {exc}"))


class RawMeasureWorker:
    """One bucket's raw measure in a process of its own (see the module docstring).

    The process is started on a thread, so the merge never waits for it (a cold fork server
    takes ~0.6 s to answer); the files the merger hands on meanwhile wait in the queue."""

    def __init__(self, url: URL, bucket: str) -> None:
        self._inbox: Any = _START.Queue()
        self._outbox: Any = _START.Queue()
        self._process = _START.Process(
            target=_serve,
            args=(url, bucket, self._inbox, self._outbox),
            name=f"crm-measure-{bucket}",
            daemon=True,
        )
        self._ended = self._answered = False
        self._start_error: BaseException | None = None
        self._starter = threading.Thread(target=self._start, name="crm-measure-start", daemon=True)
        self._starter.start()

    def _start(self) -> None:
        try:
            self._process.start()
        except BaseException as exc:  # no process: the answer is an error, the merge goes on
            self._start_error = exc

    def scanned(self, store: str, path: Path, ordinals: frozenset[int]) -> None:
        """A merger's `ScanListener`: never blocks the merger (the queue has a feeder thread)."""
        self._inbox.put((store, str(path), sorted(ordinals)))

    def all_scanned(self) -> None:
        """No file follows: the child counts the keys while the merger writes (its pass 2)."""
        if not self._ended:
            self._ended = True
            self._inbox.put(None)

    async def result(self) -> tuple[RawMeasure, dict[str, list[int]]]:
        """The measure, once the child has it (raises MeasureWorkerError)."""
        self.all_scanned()
        return await asyncio.to_thread(self._wait)

    def _started(self) -> bool:
        self._starter.join()
        return self._start_error is None

    def _wait(self) -> tuple[RawMeasure, dict[str, list[int]]]:
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
                raw, used = value
                return raw, used
            raise MeasureWorkerError(value)

    def stop(self) -> None:
        """End the process. After its answer it is already on its way out (its session closed
        before it answered), so it is not waited for; without an answer (a failed merge, a lost
        measure) it is terminated, with its session."""
        if self._started() and not self._answered and self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)
        for q in (self._inbox, self._outbox):
            q.close()
            q.cancel_join_thread()
