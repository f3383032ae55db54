"""The audit's measures in processes of their own, beside the merge and the load.

Why processes and not threads: the merger and the load's validation are pure Python and hold
the GIL. A measuring coroutine on a thread of the same process needs the GIL at every socket
event of every COPY, waits for it each time, and makes the busy thread give it up every few
milliseconds. Measured (docs/benchmarks.md, "Measuring during the merge and the load"): the raw
measure on a thread finished staging 102 files only as the merge ended, 2.3 s in, for 0.4 s of
work; the merged file's measure on a thread beside a 1M-row load cost 9.3 CPU-s, in a process
2.7. A process has its own interpreter and its own GIL.

- `MergeStepWorker`, during the merge (a `ScanListener`): fed each store file as the merger
  finishes reading it, it COPYs the file while the merger reads the next, and counts the keys
  while the merger writes the merged file (the "raw" part). Given the run, it also reads the
  merged file as the merger writes it (`app.measure_tail`) and stages it on a second session
  (the "merged" part); the merge step then keeps the process for the table step of its run
  (`keep_for_load` / `take_for_load`), which only has to say that the load committed before
  the table is read back. Why: the merge keeps one core busy, the load both; staged during
  the load, the merged file cost 19-22% of the load at a million rows (docs/benchmarks.md).
- `LoadStepWorker`, during the load, when no merge step's process was kept (the merge and the
  load in different runs or processes, or the kept process died): it stages the merged file
  at once, then waits to hear that the load committed before it reads the table back.

Start: `forkserver`, never `fork` (the parent has threads and a running event loop, and a
forked copy of them is a deadlock waiting to happen). Spawning a fresh interpreter per bucket
cost ~0.6 s of imports, longer than a day's merge of 500 small files takes, so the run starts
the fork server early (`warm_up`, from the download step): it imports `app.measure_preload`
once, and each measuring process is then a fork of that clean, single-threaded server.

Protocol: the parent puts words on the inbox, tuples named by their first item, in this order:
`("file", store, path, ordinals)` per store file, `("scanned",)`, then for the merged part
`("writing", temporary path)`, `("written", final path)` and `("committed",)`. The child
routes them to its parts and answers each part once on the outbox: `(part, "ok", value)` or
`(part, "error", text)`. A merge or load that fails does not tell the child: it terminates it.
The child checks every second that its parent is still there, so a parent killed with SIGKILL
leaves no measuring process (and no session) behind; a kept staging whose load never says
"committed" gives up after `_COMMIT_WAIT_S`, and the parent stops every kept process at exit.
"""

import asyncio
import atexit
import contextlib
import dataclasses
import datetime as dt
import multiprocessing
import multiprocessing.forkserver
import queue
import threading
import time
from collections.abc import AsyncIterator, Collection, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from app.measure import LoadMeasure, RawMeasure, measure_raw_streamed, staged_merged
from app.measure_tail import MergedTail

_POLL_S = 1.0
_COMMIT_WAIT_S = 3600.0  # a kept staging waits this long for its load, then gives up
RAW, MERGED = "raw", "merged"
# The parent's words, each a tuple whose first item says what it is:
FILE, SCANNED, WRITING, WRITTEN, COMMITTED = "file", "scanned", "writing", "written", "committed"
_START = multiprocessing.get_context("forkserver")
_START.set_forkserver_preload([__name__, "app.measure_preload"])


def warm_up() -> None:
    """Start the fork server now (it imports in the background), so the merge steps' measuring
    processes start at once. Idempotent; a failure only means a slower start later."""
    with contextlib.suppress(Exception):
        multiprocessing.forkserver.ensure_running()


class MeasureWorkerError(RuntimeError):
    """The measuring process failed or went away; the audit measures itself."""


class _ParentGone(Exception):
    pass


@dataclass(frozen=True)
class _MergedJob:
    """What the merged file's measure needs: the file (None: the one the merger is about to
    write, read as it grows) and what to read back once the load committed."""

    path: str | None
    run_id: str
    run_date: dt.date


# ------------------------------------------------------------------ the child


def _arrived(inbox: Any, stopping: threading.Event) -> list[Any]:
    """Every item waiting (at least one): one thread hop per batch, not per item; [] once
    `stopping` is set."""
    parent = multiprocessing.parent_process()  # the step's process, not the fork server
    while True:
        try:
            items = [inbox.get(timeout=_POLL_S)]
            break
        except queue.Empty:
            if stopping.is_set():
                return []
            if parent is not None and not parent.is_alive():
                raise _ParentGone from None
    with contextlib.suppress(queue.Empty):
        while True:
            items.append(inbox.get_nowait())
    return items


async def _route(inbox: Any, raw: asyncio.Queue[Any], merged: asyncio.Queue[Any]) -> None:
    """The parent's words to the part they are for, until the parts are done (cancelled)."""
    stopping = threading.Event()
    try:
        while True:
            for item in await asyncio.to_thread(_arrived, inbox, stopping):
                (raw if item[0] in (FILE, SCANNED) else merged).put_nowait(item)
    finally:
        stopping.set()  # the thread still waiting on the inbox ends within _POLL_S


@contextlib.asynccontextmanager
async def _session(url: URL) -> AsyncIterator[Any]:
    """One part's own session, closed when the part is done (a kept process holds only the
    staging's session while it waits for its load)."""
    from app.db.engine import create_engine

    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            yield conn
    finally:
        await engine.dispose()


async def _raw_part(url: URL, bucket: str, words: asyncio.Queue[Any]) -> Any:
    async def files() -> AsyncIterator[tuple[str, Path, Collection[int]]]:
        while (item := await words.get())[0] == FILE:
            _, store, path, ordinals = item
            yield store, Path(path), frozenset(ordinals)

    async with _session(url) as conn:
        return await measure_raw_streamed(conn, bucket, files())


async def _merged_part(
    url: URL, bucket: str, job: _MergedJob, words: asyncio.Queue[Any]
) -> LoadMeasure | None:
    """Staged now (or as the merger writes it); the read-back only once the load has committed
    (None if it failed)."""
    tail = None
    if job.path is None:
        word = await words.get()
        if word[0] != WRITING:
            return None
        try:
            tail = MergedTail(Path(word[1]))
        except FileNotFoundError:  # already renamed: the merge ended before this process began
            word = await words.get()
            job = dataclasses.replace(job, path=word[1])
    try:
        async with _session(url) as conn:
            return await _stage_then_read_back(conn, bucket, job, tail, words)
    finally:
        if tail is not None:
            tail.close()


async def _stage_then_read_back(
    conn: Any, bucket: str, job: _MergedJob, tail: MergedTail | None, words: asyncio.Queue[Any]
) -> LoadMeasure | None:
    async def completed() -> None:
        """Tells the tail where the finished file is. The merger's next word after "writing"
        is "written"; a failed merge does not answer: its step terminates this process."""
        if tail is not None:
            word = await words.get()
            if word[0] == WRITTEN:
                tail.complete(Path(word[1]))

    merged: Path | MergedTail = tail if tail is not None else Path(str(job.path))
    started = time.perf_counter()
    listening = asyncio.ensure_future(completed())
    try:
        async with staged_merged(conn, bucket, merged, materialize=True) as s:
            staged_ms = (time.perf_counter() - started) * 1000
            grown = s.grown
            await listening
            word = await asyncio.wait_for(words.get(), _COMMIT_WAIT_S)
            if word[0] != COMMITTED:
                return None
            read = time.perf_counter()
            measure = await s.read_back(run_id=job.run_id, run_date=job.run_date)
    finally:
        listening.cancel()
    # the server's work only: staging, then the read-back (not the wait for the commit)
    spent = staged_ms + (time.perf_counter() - read) * 1000
    return dataclasses.replace(measure, duration_ms=spent, staged_during_merge=grown)


async def _answering(outbox: Any, part: str, work: Coroutine[Any, Any, Any]) -> None:
    try:
        outbox.put((part, "ok", await work))
    except _ParentGone:
        raise
    except Exception as exc:  # reported to the parent, which falls back
        outbox.put((part, "error", f"{type(exc).__name__}: {exc}"))


async def _measure(
    url: URL, bucket: str, raw: bool, merged: _MergedJob | None, inbox: Any, outbox: Any
) -> None:
    """The child's work: the parts asked for, each answered on its own."""
    words: dict[str, asyncio.Queue[Any]] = {RAW: asyncio.Queue(), MERGED: asyncio.Queue()}
    router = asyncio.ensure_future(_route(inbox, words[RAW], words[MERGED]))
    parts: list[Coroutine[Any, Any, None]] = []
    if raw:
        parts.append(_answering(outbox, RAW, _raw_part(url, bucket, words[RAW])))
    if merged is not None:
        work = _merged_part(url, bucket, merged, words[MERGED])
        parts.append(_answering(outbox, MERGED, work))
    try:
        done: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*parts))
        await asyncio.wait([router, done], return_when=asyncio.FIRST_COMPLETED)
        if router.done():  # the parent went away (or the router failed): the parts stop
            done.cancel()
            router.result()
        await done
    finally:
        router.cancel()
        with contextlib.suppress(asyncio.CancelledError, _ParentGone):
            await router


def _serve(args: tuple[URL, str, bool, _MergedJob | None], inbox: Any, outbox: Any) -> None:
    with contextlib.suppress(_ParentGone, asyncio.CancelledError):
        asyncio.run(_measure(*args, inbox, outbox))


# ------------------------------------------------------------------ the parent


class _MeasureProcess:
    """A measuring process started on a thread, so the step never waits for it (a cold fork
    server takes ~0.6 s to answer); what the step sends meanwhile waits in the queue."""

    def __init__(
        self, name: str, url: URL, bucket: str, raw: bool, merged: _MergedJob | None
    ) -> None:
        self._inbox: Any = _START.Queue()
        self._outbox: Any = _START.Queue()
        self._process = _START.Process(
            target=_serve,
            args=((url, bucket, raw, merged), self._inbox, self._outbox),
            name=name,
            daemon=True,
        )
        self._waiting = {RAW} if raw else set()
        if merged is not None:
            self._waiting.add(MERGED)
        self._answers: dict[str, tuple[str, Any]] = {}
        self._ended: set[str] = set()
        self._start_error: BaseException | None = None
        self._starter = threading.Thread(target=self._start, name=f"{name}-start", daemon=True)
        self._starter.start()

    def _start(self) -> None:
        try:
            self._process.start()
        except BaseException as exc:  # no process: the answer is an error, the step goes on
            self._start_error = exc

    def _send(self, *item: Any) -> None:
        self._inbox.put(item)

    def _end(self, item: tuple[Any, ...]) -> None:
        """The step's last word to one part (sent once)."""
        if item[0] not in self._ended:
            self._ended.add(item[0])
            self._inbox.put(item)

    def _started(self) -> bool:
        self._starter.join()
        return self._start_error is None

    def alive(self) -> bool:
        return self._started() and self._process.is_alive()

    async def _answer(self, part: str) -> Any:
        return await asyncio.to_thread(self._wait, part)

    def _wait(self, part: str) -> Any:
        if not self._started():
            error = self._start_error
            raise MeasureWorkerError(f"no measuring process: {type(error).__name__}: {error}")
        while part not in self._answers:
            try:
                answered, kind, value = self._outbox.get(timeout=_POLL_S)
            except queue.Empty:
                if self._process.is_alive():
                    continue
                time.sleep(0.1)  # its last words may still be in the pipe
                if not self._outbox.empty():
                    continue
                raise MeasureWorkerError(
                    f"the measuring process ended (exit code {self._process.exitcode})"
                ) from None
            self._answers[answered] = (kind, value)
            self._waiting.discard(answered)
        kind, value = self._answers.pop(part)
        if kind == "ok":
            return value
        raise MeasureWorkerError(value)

    async def merged_result(self) -> LoadMeasure | None:
        """Tell the child the load committed, then wait for the read-back (raises
        MeasureWorkerError). Only after the commit: it reads the table back at once."""
        self._end((COMMITTED,))
        measure: LoadMeasure | None = await self._answer(MERGED)
        return measure

    def stop(self) -> None:
        """End the process. After its answers it is already on its way out (its session closed
        before it answered), so it is not waited for; while an answer is still owed (a failed
        merge or load, a lost measure, a staging whose load never came) it is terminated, with
        its session."""
        if self._started() and self._waiting and self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)
        for q in (self._inbox, self._outbox):
            q.close()
            q.cancel_join_thread()


class MergeStepWorker(_MeasureProcess):
    """The merge step's measuring process (a `ScanListener`): the raw files as the merger reads
    them and, given the run (`run_id`, `run_date`), the merged file as the merger writes it,
    read back after the load (`merged_result`, from the table step: `keep_for_load`)."""

    def __init__(
        self, url: URL, bucket: str, run_id: str | None = None, run_date: dt.date | None = None
    ) -> None:
        merged = None if run_id is None or run_date is None else _MergedJob(None, run_id, run_date)
        super().__init__(f"crm-measure-{bucket}", url, bucket, True, merged)
        self.merged_path: Path | None = None

    def scanned(self, store: str, path: Path, ordinals: frozenset[int]) -> None:
        """Never blocks the merger (the queue has a feeder thread)."""
        self._send(FILE, store, str(path), sorted(ordinals))

    def all_scanned(self) -> None:
        """No file follows: the child counts the keys while the merger writes (its pass 2)."""
        self._end((SCANNED,))

    def writing(self, path: Path) -> None:
        if MERGED in self._waiting:
            self._send(WRITING, str(path))

    def written(self, path: Path) -> None:
        self.merged_path = path
        if MERGED in self._waiting:
            self._send(WRITTEN, str(path))

    async def result(self) -> tuple[RawMeasure, dict[str, list[int]]]:
        """The measure and the exclusion it used (raises MeasureWorkerError)."""
        self.all_scanned()
        raw, used = await self._answer(RAW)
        return raw, used


class LoadStepWorker(_MeasureProcess):
    """One bucket's merged-file measure, beside its load: staged at once, read back when
    `merged_result` says the load committed."""

    def __init__(self, url: URL, bucket: str, path: Path, run_id: str, run_date: dt.date) -> None:
        job = _MergedJob(str(path), run_id, run_date)
        super().__init__(f"crm-measure-merged-{bucket}", url, bucket, False, job)


# ------------------------------------------------------------------ from the merge to the load

_KEPT: dict[tuple[str, str], MergeStepWorker] = {}
_KEPT_LOCK = threading.Lock()


def keep_for_load(run_id: str, bucket: str, worker: MergeStepWorker) -> None:
    """Keep a merge step's measuring process, with the merged file staged, for the same run's
    table step (the graph runs every step of a run in one process: `crm_assets.jobs`)."""
    with _KEPT_LOCK:
        previous = _KEPT.pop((run_id, bucket), None)
        _KEPT[(run_id, bucket)] = worker
    if previous is not None and previous is not worker:
        previous.stop()


def take_for_load(run_id: str, bucket: str, path: Path) -> MergeStepWorker | None:
    """The kept measuring process of this run's merge of `path`, if it is still there."""
    with _KEPT_LOCK:
        worker = _KEPT.pop((run_id, bucket), None)
    if worker is not None and (worker.merged_path != path or not worker.alive()):
        worker.stop()
        return None
    return worker


@atexit.register
def stop_kept() -> None:
    """Stop every kept measuring process (a run that ended without its table steps)."""
    with _KEPT_LOCK:
        workers = list(_KEPT.values())
        _KEPT.clear()
    for worker in workers:
        worker.stop()
