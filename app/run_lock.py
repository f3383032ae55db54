"""One run per date, end to end: a PostgreSQL session advisory lock from download to cleanup.

Why a Postgres advisory lock (and not a Dagster concurrency pool or a lock file):
- It covers every way a run starts. The CLI (`python -m app run`, which bypasses Dagster's run
  queue), the schedule, the UI and backfills all reach the same database, and the daemon's
  queue limits (`dagster/partition` in dagster.yaml) know nothing of the CLI.
- It cannot go stale. The lock belongs to one database session; a run killed with `kill -9`
  closes its socket and the server releases the lock at once. A lock table or lock file would
  need leases, heartbeats and a recovery rule, each a way to delete files another run uses.
- A waiter can name the holder: the holder's session carries `application_name =
  "crm-run <run id> <source>"`, which `pg_stat_activity` shows next to the lock in `pg_locks`.

The lock is two int4 keys: a namespace and the date as YYYYMMDD, so it reads well in `pg_locks`
(`classid = 1129467204`, `objid = 20261127`). It is re-entrant within one process for the same
run id: `python -m app run` takes it before it executes the graph in-process and keeps it through
its inline cleanup, and the graph's own lock resource then finds it already held by its caller.
"""

import asyncio
import contextlib
import datetime as dt
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg2
from sqlalchemy.engine import URL, make_url

from app.db.urls import render

NAMESPACE = 0x43524D44  # "CRMD"
DEFAULT_WAIT_S = 600.0
_POLL_S = 0.5
_HELD: dict[dt.date, "_Held"] = {}
_HELD_LOCK = threading.Lock()


class RunDateBusy(Exception):
    """Another run holds the date; the message names it. A second run of the date fails with it."""


@dataclass
class _Held:
    run_id: str
    conn: Any
    depth: int = 1


@dataclass(frozen=True)
class Holder:
    run_id: str | None
    source: str | None
    pid: int
    since: dt.datetime | None

    def describe(self) -> str:
        since = f", since {self.since:%Y-%m-%d %H:%M:%S %Z}" if self.since else ""
        source = self.source or "unknown source"
        return f"run {self.run_id or '?'} ({source}, db pid {self.pid}{since})"


def date_key(run_date: dt.date) -> int:
    return int(run_date.strftime("%Y%m%d"))


def _dsn(url: URL | str) -> str:
    parsed = make_url(url) if isinstance(url, str) else url
    return render(parsed.set(drivername="postgresql"))


def _connect(url: URL | str, application_name: str) -> Any:
    conn = psycopg2.connect(_dsn(url), application_name=application_name[:63])
    conn.autocommit = True
    return conn


def _probe(url: URL | str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """One read of the server's lock and session views, on a short-lived session of its own."""
    conn = _connect(url, "crm-lock-probe")
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())
    finally:
        conn.close()


def holder_of(url: URL | str, run_date: dt.date) -> Holder | None:
    """Who holds the date now (None when nobody does)."""
    rows = _probe(
        url,
        "SELECT a.application_name, a.pid, a.backend_start FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
        "AND l.classid = %s AND l.objid = %s AND l.objsubid = 2 AND l.granted",
        (NAMESPACE, date_key(run_date)),
    )
    if not rows:
        return None
    row = rows[0]
    parts = (row[0] or "").split()
    run_id = parts[1] if len(parts) > 1 and parts[0] == "crm-run" else None
    source = parts[2] if len(parts) > 2 and parts[0] == "crm-run" else None
    return Holder(run_id=run_id, source=source, pid=row[1], since=row[2])


def live_run_ids(url: URL | str) -> set[str]:
    """Run ids with a session open now: holding a date, or waiting for one.

    A run's lock session lives exactly as long as its process (kill -9, OOM or a container
    restart closes the socket), so a run that is STARTED in Dagster but absent here is dead."""
    rows = _probe(
        url,
        "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE 'crm-run %%'",
    )
    names = [row[0] or "" for row in rows]
    return {parts[1] for parts in (name.split() for name in names) if len(parts) > 1}


def is_held(url: URL | str, run_date: dt.date) -> bool:
    return holder_of(url, run_date) is not None


def held_here(run_date: dt.date) -> str | None:
    """The run id for which this process holds the date, if it does."""
    with _HELD_LOCK:
        held = _HELD.get(run_date)
        return held.run_id if held else None


def _try_lock(conn: Any, run_date: dt.date) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s, %s)", (NAMESPACE, date_key(run_date)))
        return bool(cur.fetchone()[0])


def _acquire(url: URL | str, run_date: dt.date, run_id: str, source: str, wait_s: float) -> Any:
    conn = _connect(url, f"crm-run {run_id} {source}")
    deadline = time.monotonic() + max(0.0, wait_s)
    try:
        while not _try_lock(conn, run_date):
            if time.monotonic() >= deadline:
                holder = holder_of(url, run_date)
                who = holder.describe() if holder else "another run (it has just finished?)"
                raise RunDateBusy(
                    f"run date {run_date.isoformat()} is held by {who}; waited {wait_s:g} s. "
                    "One run per date at a time: let it finish, or stop it, then run again"
                )
            time.sleep(min(_POLL_S, max(0.01, deadline - time.monotonic())))
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def hold_run_date(
    url: URL | str,
    run_date: dt.date,
    run_id: str,
    *,
    source: str,
    wait_s: float = DEFAULT_WAIT_S,
) -> Iterator[None]:
    """Hold `run_date` for `run_id` (waiting at most `wait_s`), re-entrant for the same run id."""
    with _HELD_LOCK:
        held = _HELD.get(run_date)
        if held is not None and held.run_id == run_id:
            held.depth += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _HELD_LOCK:
                _HELD[run_date].depth -= 1
        return
    conn = _acquire(url, run_date, run_id, source, wait_s)
    with _HELD_LOCK:
        _HELD[run_date] = _Held(run_id=run_id, conn=conn)
    try:
        yield
    finally:
        with _HELD_LOCK:
            _HELD.pop(run_date, None)
        with contextlib.suppress(Exception):
            conn.close()  # closing the session releases the lock


@contextlib.asynccontextmanager
async def hold_run_date_async(
    url: URL | str,
    run_date: dt.date,
    run_id: str,
    *,
    source: str,
    wait_s: float = DEFAULT_WAIT_S,
) -> AsyncIterator[None]:
    """`hold_run_date` for async code: the waiting happens in a thread, not on the event loop."""
    held = hold_run_date(url, run_date, run_id, source=source, wait_s=wait_s)
    await asyncio.to_thread(held.__enter__)
    try:
        yield
    except BaseException as exc:
        if not held.__exit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        held.__exit__(None, None, None)
