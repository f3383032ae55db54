"""Ingest benchmark: validated ingest vs the in-database limit vs the naive SQLAlchemy path.

    .venv/bin/python benchmarks/bench_ingest.py [--rows 1000000] [--memory-sizes 100000,1000000]

Database: `BENCH_DATABASE_URL` or `DATABASE_URL` (a server where the benchmark may CREATE and
DROP its own `crm_bench_*` database), else the embedded PostgreSQL started under the work dir.
Data: generated missed-leads files shaped like the portal's (day-first and ISO dates, free text
with commas, quotes and newlines, `+91 ...` mobiles, blanks) with 5% repeated keys.

Every measurement runs in its own child process, so its peak RSS (VmHWM) is that path's alone.
Measured, on the same file and table states:
- validated: `app.ingest.ingest_file` (CSV parse + Pydantic validation + COPY to staging +
  INSERT ... SELECT ... ON CONFLICT per batch), into an empty table and into the full table.
- limit: the in-database limit -- COPY of the raw file into a text staging table, then ONE
  `INSERT ... SELECT DISTINCT ON ... ON CONFLICT DO UPDATE` with casts done by the server.
- naive: `insert().on_conflict_do_update()` executed with a list of dicts per batch (the
  multi-row `.values(list)` form is also tried once: it breaks on asyncpg's bind limit).
- parse_only: the Python side of the validated path without any database work.
"""

import argparse
import asyncio
import csv
import datetime as dt
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.portal_sim.data import MISSED_LEADS_HEADER  # noqa: E402 - after the path fix above

BUCKET = "missed_leads"
D1 = dt.date(2026, 3, 6)
D2 = dt.date(2026, 3, 7)

HEADER = MISSED_LEADS_HEADER  # exactly as the portal writes it
NOTES = [
    "",
    "",
    "",
    "ring the bell",
    "call before pickup, gate 2",
    'customer says "urgent"',
    "two bags\nleave at security",
]
NAMES = ["Ravi Kumar", "Anita Sharma", "Mohammed Ali", "Priya N", "Suresh, Jr."]


def lead_row(rnd: random.Random, n: int, store: str, pickup: str) -> list[object]:
    """One portal-shaped missed-leads row (ISO and day-first dates, +91 and blank mobiles)."""
    day = rnd.randint(1, 28)
    mobile = f"9{rnd.randrange(10**9):09d}"
    r = rnd.random()
    if r < 0.05:
        mobile = f"+91 {mobile[:5]}-{mobile[5:]}"
    elif r < 0.08:
        mobile = ""
    return [
        n,
        mobile,
        pickup,
        f"2026-03-{day:02d}",
        f"{rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}:{rnd.randint(0, 59):02d}",
        store,
        f"Store {store}",
        f"{day:02d}-03-2026",
        f"{rnd.randint(1, 12)}:00 {'AM' if rnd.random() < 0.5 else 'PM'}",
        NAMES[rnd.randrange(len(NAMES))],
        NOTES[rnd.randrange(len(NOTES))],
        "App",
        "Walk-in" if rnd.random() < 0.3 else "App",
        "New" if rnd.random() < 0.4 else "Repeat",
        "1" if rnd.random() < 0.3 else "0",
    ]


def generate(path: Path, rows: int, seed: int = 7, dup_rate: float = 0.05) -> None:
    """A portal-shaped missed-leads file with `dup_rate` of its rows repeating an earlier key."""
    rnd = random.Random(seed)
    stores = [f"S{n:03d}" for n in range(300)]
    keys: list[tuple[str, str]] = []
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(HEADER)
        for i in range(rows):
            if keys and rnd.random() < dup_rate:
                store, pickup = keys[rnd.randrange(len(keys))]
            else:
                store, pickup = stores[rnd.randrange(300)], f"P{i:09d}"
                if len(keys) < 2_000_000:
                    keys.append((store, pickup))
            writer.writerow(lead_row(rnd, i + 1, store, pickup))


# ---------------------------------------------------------------- children (one per measurement)


def _peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux keeps ru_maxrss across execve, so a
    child would report the parent's peak (the data generator's) instead of its own."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def child_validated(url: str, path: Path, run_date: dt.date, batch: int) -> dict[str, Any]:
    from app.db.engine import create_engine
    from app.ingest import ingest_file

    engine = create_engine(url)
    try:
        t = time.perf_counter()
        result = await ingest_file(engine, BUCKET, run_date, path, run_id="bench", batch_size=batch)
        seconds = time.perf_counter() - t
    finally:
        await engine.dispose()
    return {
        "seconds": seconds,
        "rows_read": result.rows_read,
        "inserted": result.inserted,
        "updated": result.updated,
        "kept_newer": result.kept_newer,
        "rejected": result.rejected,
        "duplicates_in_file": result.duplicates_in_file,
    }


async def child_parse_only(url: str, path: Path, run_date: dt.date, batch: int) -> dict[str, Any]:
    from app.csv_io import open_records
    from app.ingest import _batches, _plan

    with open_records(path) as (header, _):
        plan = _plan(BUCKET, path, list(header))
    t = time.perf_counter()
    rows = 0
    for b in _batches(BUCKET, path, plan, batch, 0, os.environ.get("BENCH_VALIDATION", "compiled")):
        rows += b.rows_read
    return {"seconds": time.perf_counter() - t, "rows_read": rows}


LIMIT_SQL = """
INSERT INTO missed_leads (pickup_row_id, mobile_number, pickup_no, pickup_created_date,
    pickup_created_time, store_code, store_name, pickup_date, pickup_time, customer_name,
    special_instruction, source, final_source, customer_type, is_order_placed, run_date, run_id)
SELECT DISTINCT ON (btrim(store_code), btrim(pickup_no))
    NULLIF(btrim(id), '')::bigint, NULLIF(btrim(mobile_number), ''), btrim(pickup_no),
    NULLIF(btrim(pickup_created_date), '')::date, NULLIF(btrim(pickup_created_time), ''),
    btrim(store_code), NULLIF(btrim(store_name), ''),
    to_date(NULLIF(btrim(pickup_date), ''), 'DD-MM-YYYY'), NULLIF(btrim(pickup_time), ''),
    NULLIF(btrim(customer_name), ''), NULLIF(btrim(special_instruction), ''),
    NULLIF(btrim(source), ''), NULLIF(btrim(final_source), ''), NULLIF(btrim(customer_type), ''),
    coalesce(btrim(is_order_placed) = '1', false), $1::date, 'bench-limit'
FROM bench_stage
ORDER BY btrim(store_code), btrim(pickup_no), ord DESC
ON CONFLICT (store_code, pickup_no) DO UPDATE SET
    pickup_row_id = EXCLUDED.pickup_row_id, mobile_number = EXCLUDED.mobile_number,
    pickup_created_date = EXCLUDED.pickup_created_date,
    pickup_created_time = EXCLUDED.pickup_created_time, store_name = EXCLUDED.store_name,
    pickup_date = EXCLUDED.pickup_date, pickup_time = EXCLUDED.pickup_time,
    customer_name = EXCLUDED.customer_name, special_instruction = EXCLUDED.special_instruction,
    source = EXCLUDED.source, final_source = EXCLUDED.final_source,
    customer_type = EXCLUDED.customer_type, is_order_placed = EXCLUDED.is_order_placed,
    run_date = EXCLUDED.run_date, run_id = EXCLUDED.run_id, updated_at = now()
WHERE missed_leads.run_date <= EXCLUDED.run_date
"""


async def child_limit(url: str, path: Path, run_date: dt.date, batch: int) -> dict[str, Any]:
    import asyncpg

    from app.db.urls import to_sync_url

    dsn = to_sync_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        t = time.perf_counter()
        async with conn.transaction():
            cols = ", ".join(f"{c} text" for c in HEADER)
            await conn.execute(
                f"CREATE TEMP TABLE bench_stage (ord bigint GENERATED ALWAYS AS IDENTITY, {cols})"
                " ON COMMIT DROP"
            )
            await conn.copy_to_table(
                "bench_stage", source=str(path), columns=HEADER, format="csv", header=True
            )
            copied = time.perf_counter() - t
            status = await conn.execute(LIMIT_SQL, run_date)
        seconds = time.perf_counter() - t
    finally:
        await conn.close()
    return {"seconds": seconds, "copy_seconds": copied, "status": status}


async def child_naive(url: str, path: Path, run_date: dt.date, batch: int) -> dict[str, Any]:
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    from app.config import MERGE_BUCKET_DB_SPECS
    from app.csv_io import open_records
    from app.db.engine import create_engine
    from app.db.models import bucket_table
    from app.row_models import validate_row

    spec = MERGE_BUCKET_DB_SPECS[BUCKET]
    table = bucket_table(BUCKET)
    keys = spec["dedupe_keys"]
    stmt = pg_insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=keys,
        set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
        | {"created_at": table.c.created_at},
        where=table.c.run_date <= stmt.excluded.run_date,
    )
    engine = create_engine(url)
    values_error = None
    rows = 0
    try:
        t = time.perf_counter()
        async with engine.begin() as conn:
            with open_records(path) as (header, records):
                names = [spec["column_map"][h] for h in header]
                pending: dict[tuple[str, str], dict[str, Any]] = {}

                async def flush() -> None:
                    nonlocal values_error
                    if not pending:
                        return
                    batch_rows = list(pending.values())
                    if values_error is None:  # the multi-row VALUES form, once
                        try:
                            async with conn.begin_nested():
                                multi = pg_insert(table).values(batch_rows)
                                await conn.execute(
                                    multi.on_conflict_do_nothing(index_elements=keys)
                                )
                            values_error = "worked"
                        except Exception as exc:
                            values_error = f"{type(exc).__name__}: {str(exc)[:160]}"
                    await conn.execute(stmt, batch_rows)
                    pending.clear()

                for _line, record in records:
                    rows += 1
                    try:
                        row = validate_row(BUCKET, dict(zip(names, record, strict=False)))
                    except Exception:
                        continue
                    row.update(run_date=run_date, run_id="bench-naive")
                    pending[(row["store_code"], row["pickup_no"])] = row
                    if rows % batch == 0:
                        await flush()
                await flush()
        seconds = time.perf_counter() - t
    finally:
        await engine.dispose()
    return {"seconds": seconds, "rows_read": rows, "values_form_at_batch": values_error}


CHILDREN = {
    "validated": child_validated,
    "parse_only": child_parse_only,
    "limit": child_limit,
    "naive": child_naive,
}


def run_child(mode: str, url: str, path: Path, run_date: dt.date, batch: int) -> dict[str, Any]:
    env = {**os.environ, "BENCH_CHILD_URL": url, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--file",
            str(path),
            "--date",
            run_date.isoformat(),
            "--batch-size",
            str(batch),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith('{"bench"')]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"child {mode} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1])["bench"]
    return result


# ---------------------------------------------------------------- parent


def _sql(url: str, statement: str) -> None:
    import psycopg2

    from app.db.urls import to_sync_url

    dsn = to_sync_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def setup_database(workdir: Path) -> tuple[str, Any]:
    """A fresh, migrated `crm_bench_*` database; returns (async URL, cleanup callable)."""
    from app.db import migrate
    from app.db.urls import render, to_async_url, to_sync_url, with_database

    server_url = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL")
    keepalive: Any = None
    if server_url:
        server = to_sync_url(server_url)
    else:
        from app.db.embedded import start_embedded

        keepalive = start_embedded(workdir, database=None)
        server = keepalive.server_url
    name = f"crm_bench_{uuid.uuid4().hex[:8]}"
    _sql(render(server), f'CREATE DATABASE "{name}"')
    url = with_database(server, name)
    migrate.upgrade(url)

    def drop() -> None:
        _sql(render(server), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        _ = keepalive  # the embedded server lives as long as this closure

    return render(to_async_url(url)), drop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--naive-rows", type=int, default=None, help="default: --rows")
    ap.add_argument("--memory-sizes", default="100000,1000000")
    ap.add_argument("--batch-size", type=int, default=3000)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--child", choices=sorted(CHILDREN))
    ap.add_argument("--file", type=Path)
    ap.add_argument("--date")
    args = ap.parse_args()

    if args.child:
        from app import json_logger

        json_logger.configure(stream=open(os.devnull, "w"))  # noqa: SIM115
        fn = CHILDREN[args.child]
        res = asyncio.run(
            fn(
                os.environ["BENCH_CHILD_URL"],
                args.file,
                dt.date.fromisoformat(args.date),
                args.batch_size,
            )
        )
        res["peak_rss_mb"] = round(_peak_rss_mb(), 1)
        print(json.dumps({"bench": res}, default=str))
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crm-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    url, drop = setup_database(workdir)
    batch = args.batch_size
    report: dict[str, Any] = {
        "rows": args.rows,
        "batch_size": batch,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    try:

        def data(rows: int) -> Path:
            path = workdir / f"missed_leads_{rows}.csv"
            if not path.exists():
                t = time.perf_counter()
                generate(path, rows)
                print(f"generated {rows:,} rows in {time.perf_counter() - t:.1f}s", flush=True)
            return path

        def step(label: str, mode: str, path: Path, run_date: dt.date) -> dict[str, Any]:
            res = run_child(mode, url, path, run_date, batch)
            rows = res.get("rows_read") or int(path.stem.rsplit("_", 1)[1])
            res["rows_per_s"] = round(rows / res["seconds"])
            print(f"{label:<28} {json.dumps(res, default=str)}", flush=True)
            report[label] = res
            return res

        truncate = "TRUNCATE missed_leads"
        main_file = data(args.rows)
        _sql(url, truncate)
        step("parse_only", "parse_only", main_file, D1)
        os.environ["BENCH_VALIDATION"] = "model"
        step("parse_only_pydantic_per_row", "parse_only", main_file, D1)
        os.environ.pop("BENCH_VALIDATION")
        step("validated_empty", "validated", main_file, D1)
        step("validated_full", "validated", main_file, D2)
        _sql(url, truncate)
        step("limit_empty", "limit", main_file, D1)
        step("limit_full", "limit", main_file, D2)
        naive_rows = args.naive_rows or args.rows
        _sql(url, truncate)
        step("naive_empty", "naive", data(naive_rows), D1)
        step("naive_full", "naive", data(naive_rows), D2)
        for size in [int(s) for s in args.memory_sizes.split(",") if s]:
            _sql(url, truncate)
            step(f"memory_{size}", "validated", data(size), D1)

        ratios = {
            "validated/limit empty": report["limit_empty"]["seconds"]
            / report["validated_empty"]["seconds"],
            "validated/limit full": report["limit_full"]["seconds"]
            / report["validated_full"]["seconds"],
            "validated/naive empty": report["validated_empty"]["rows_per_s"]
            / report["naive_empty"]["rows_per_s"],
            "validated/naive full": report["validated_full"]["rows_per_s"]
            / report["naive_full"]["rows_per_s"],
        }
        report["ratios"] = {k: round(v, 2) for k, v in ratios.items()}
        print(json.dumps({"summary": report}, indent=2, default=str))
    finally:
        drop()


if __name__ == "__main__":
    main()
