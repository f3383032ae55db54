"""Audit measurement benchmark: `app.measure` against the ingest it audits, on 1,000,000 rows.

    .venv/bin/python benchmarks/bench_measure.py [--rows 1000000] [--stores 500] [--repeat 3]

Data: `--stores` portal-shaped missed-leads store files (the ingest benchmark's row shapes: ISO
and day-first dates, `+91 ...` and blank mobiles, free text with commas, quotes and newlines;
every 10th file CRLF, every 7th with a BOM, plus 2% sentinel stores) with 5% of each file's rows
repeating an earlier key of the same store, and the matching merged file (one row per key, the
last occurrence). Database: a fresh, migrated `crm_bench_*` database (`BENCH_DATABASE_URL`,
`DATABASE_URL`, else the embedded PostgreSQL under the work dir; see bench_ingest.py).

Measured, in this order, in one process:
- ingest: `app.ingest.ingest_file` of the merged file into the empty table (the time the
  measurement is compared with);
- measure_raw (all store files, and again with 1% of the stores excluding 10 records each) and
  measure_load (after the load committed), each `--repeat` times (min and median reported);
- both at once on two connections (how the audit can run them on two cores);
- the parse floor: COPY ... WHERE false of the same files (PostgreSQL's CSV parser alone,
  storing nothing), i.e. what any server-parsed count must cost at least;
- alongside (the graph's way, `app.reconcile.load_and_measure`): the table emptied, then the
  same ingest with both measures taken while it runs, alternating with the ingest alone
  (`--alongside-repeat` pairs). The cost of measuring is the difference of the medians, plus
  what the audit step still does with those measures (`measure_counts`). Since the raw measure
  moved into the merge step, this mode takes only the merged file's measure alongside and the
  audit step measures the raw files itself;
- pipeline (`--pipeline-rounds N`, the graph's way today; `--only-pipeline` skips the rest):
  the real merger on the raw files with the raw measure taken while it runs
  (`merge_and_measure`), then the load with the merged file's measure alongside, then the audit
  step's judging; against merge and load alone, both orders per round. The cost is the sum of
  the two steps' median differences plus the judging, reported against the load alone and
  against merge + load; the same in CPU seconds of the whole machine (`/proc/stat`: this
  process, the measuring process and the database server), with the hypervisor's steal.
  Also how long each step waited for its measuring process (`waited_s`: the raw measure's
  answer at the end of the merge, the read-back after the load's commit), timed exactly: the
  part of the cost that is on the steps' path whatever the machine's noise.
"""

import argparse
import asyncio
import csv
import functools
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_ingest import D1, HEADER, lead_row, setup_database  # noqa: E402

from app.config import MERGE_BUCKET_DB_SPECS  # noqa: E402

BUCKET = "missed_leads"
MERGED_HEADER = list(MERGE_BUCKET_DB_SPECS[BUCKET]["column_map"])


def generate(folder: Path, rows: int, stores: int, seed: int = 11) -> tuple[dict[str, Path], Path]:
    """The raw store files and the matching merged file (cached in `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    codes = [f"S{i:03d}" for i in range(stores)]
    sentinels = [f"E{i:03d}" for i in range(max(1, stores // 50))]
    files = {c: folder / f"{c}-missed-leads.csv" for c in codes + sentinels}
    merged = folder / "merged_missed_leads.csv"
    if merged.exists() and all(p.exists() for p in files.values()):
        return files, merged
    rnd = random.Random(seed)
    n = 0
    with merged.open("w", encoding="utf-8", newline="") as mf:
        merged_writer = csv.writer(mf, lineterminator="\n")
        merged_writer.writerow(MERGED_HEADER)
        for index, code in enumerate(codes):
            share = rows // stores + (1 if index < rows % stores else 0)
            winners: dict[str, list[object]] = {}
            crlf, bom = index % 10 == 3, index % 7 == 5
            with files[code].open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
                writer = csv.writer(f, lineterminator="\r\n" if crlf else "\n")
                writer.writerow(HEADER)
                for i in range(share):
                    n += 1
                    if winners and rnd.random() < 0.05:
                        pickup = rnd.choice(list(winners)[-200:])
                    else:
                        pickup = f"P{index:03d}{i:07d}"
                    row = lead_row(rnd, n, code, pickup)
                    writer.writerow(row)
                    winners[pickup] = row
            merged_writer.writerows(winners.values())
    for code in sentinels:
        files[code].write_bytes(b"No data available to export.")
    return files, merged


def _cpu() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine so far, from /proc/stat: busy is user,
    nice, system, irq and softirq of every CPU (this process, its measuring process and the
    database server alike); stolen is what the hypervisor gave to other guests."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


async def timed(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await fn()
    return time.perf_counter() - started, result


async def parse_floor(url: str, files: dict[str, Path], merged: Path) -> dict[str, float]:
    """COPY ... WHERE false: the server's CSV parser over the same bytes, storing nothing."""
    from app.db.engine import create_engine

    engine = create_engine(url)
    cols = ", ".join(f"c{i} text" for i in range(len(HEADER)))
    out: dict[str, float] = {}
    try:
        async with engine.connect() as conn:
            driver: Any = (await conn.get_raw_connection()).driver_connection
            async with driver.transaction():
                await driver.execute(f"CREATE TEMP TABLE floor ({cols}) ON COMMIT DROP")
                for label, paths in (("raw", list(files.values())), ("merged", [merged])):
                    started = time.perf_counter()
                    for path in paths:
                        if path.stat().st_size > 40:  # the sentinel has one column
                            await driver.copy_to_table(
                                "floor", source=path, format="csv", header=True, where="false"
                            )
                    out[label] = time.perf_counter() - started
    finally:
        await engine.dispose()
    return out


def _stats(seconds: list[float]) -> dict[str, float]:
    return {"min_s": round(min(seconds), 3), "median_s": round(statistics.median(seconds), 3)}


async def run(url: str, files: dict[str, Path], merged: Path, repeat: int) -> dict[str, Any]:
    from app.db.engine import create_engine
    from app.ingest import ingest_file
    from app.measure import measure_load, measure_raw

    engine = create_engine(url)
    report: dict[str, Any] = {}
    try:
        seconds, result = await timed(
            lambda: ingest_file(engine, BUCKET, D1, merged, run_id="bench")
        )
        report["ingest"] = {"seconds": round(seconds, 3), "rows_read": result.rows_read}
        rnd = random.Random(3)
        stores = [s for s in sorted(files) if s.startswith("S")]
        share = result.rows_read // max(1, len(stores))
        exclude = {s: set(rnd.sample(range(1, share), 10)) for s in stores[::100]}

        async def raw(excluded: dict[str, set[int]] | None = None) -> Any:
            async with engine.connect() as conn:
                return await measure_raw(conn, BUCKET, files, excluded)

        async def load() -> Any:
            async with engine.connect() as conn:
                return await measure_load(conn, BUCKET, merged, run_id="bench", run_date=D1)

        for label, fn in (
            ("measure_raw", lambda: raw()),
            ("measure_raw_with_exclusions", lambda: raw(exclude)),
            ("measure_load", load),
        ):
            runs = [await timed(fn) for _ in range(repeat)]
            report[label] = _stats([s for s, _ in runs]) | {"result": _summary(runs[-1][1])}
        both = [await timed(lambda: asyncio.gather(raw(), load())) for _ in range(repeat)]
        report["both_concurrently"] = _stats([s for s, _ in both])
    finally:
        await engine.dispose()
    return report


async def _empty_tables(engine: Any) -> None:
    from sqlalchemy import text

    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {BUCKET}, {BUCKET}_changes"))


async def alongside(
    url: str, files: dict[str, Path], merged: Path, pairs: int, workdir: Path
) -> dict[str, Any]:
    """Ingest alone vs ingest with the audit's measures taken alongside, into an empty table."""
    from app.db.engine import create_engine
    from app.ingest import ingest_file
    from app.merger import MergeResult
    from app.reconcile import load_and_measure, measure_counts
    from app.run_context import RunContext

    engine = create_engine(url)
    ctx = RunContext("bench", D1, D1, workdir)
    merge = MergeResult(
        bucket=BUCKET, run_date=D1, path=merged, merged_rows=0, expected_unique=0,
        download_rows_by_store={}, download_total=0, columns=[], unknown_columns=[],
        duplicates_dropped=0, duration_ms=0.0,
        merged_stores={s: str(p) for s, p in files.items()},
    )  # fmt: skip
    alone: list[float] = []
    with_measures: list[float] = []
    judge: list[float] = []
    counts: Any = None
    try:
        for _ in range(pairs):
            await _empty_tables(engine)
            seconds, loaded = await timed(
                lambda: ingest_file(engine, BUCKET, D1, merged, run_id="bench")
            )
            alone.append(seconds)
            await _empty_tables(engine)
            seconds, (loaded, measured) = await timed(
                lambda: load_and_measure(
                    engine,
                    ctx,
                    merge,
                    lambda: ingest_file(engine, BUCKET, D1, merged, run_id="bench"),
                )
            )
            with_measures.append(seconds)
            assert measured is not None, "measures could not be taken alongside"
            seconds, counts = await timed(
                functools.partial(measure_counts, engine, ctx, merge, loaded, None, measured)
            )
            judge.append(seconds)
    finally:
        await engine.dispose()
    base = statistics.median(alone)
    cost = statistics.median(with_measures) - base + statistics.median(judge)
    return {
        "ingest_alone": _stats(alone),
        "ingest_with_measures_alongside": _stats(with_measures),
        "audit_step_with_those_measures": _stats(judge),
        "cost_s": round(cost, 3),
        "cost_vs_ingest": round(cost / base, 3),
        "counts": {
            k: getattr(counts, k)
            for k in ("download_total", "merged_rows", "expected_unique", "ingested_rows")
        },
    }


def _time_waits(waited: dict[str, list[float]]) -> None:
    """Instrument the steps' waits for their measuring process (this benchmark only)."""
    from app.measure_worker import MergeStepWorker, _MeasureProcess

    def timing(fn: Any, label: str) -> Any:
        @functools.wraps(fn)
        async def wrapper(self: Any) -> Any:
            started = time.perf_counter()
            try:
                return await fn(self)
            finally:
                waited[label].append(time.perf_counter() - started)

        return wrapper

    MergeStepWorker.result = timing(MergeStepWorker.result, "raw_answer")  # type: ignore[method-assign]
    _MeasureProcess.merged_result = timing(_MeasureProcess.merged_result, "read_back")  # type: ignore[method-assign]


async def pipeline(url: str, files: dict[str, Path], rounds: int, workdir: Path) -> dict[str, Any]:
    """The graph's way end to end: merge with the raw measure during it, load with the merged
    measure during it, then the audit step's judging; against merge and load alone.

    Each round runs both orders (alone, then measured; measured, then alone) into an empty
    table, so drift on a shared machine falls on both sides. The merge is the real merger on
    the raw files (its merged file is what is loaded)."""
    from app.db.engine import create_engine
    from app.ingest import ingest_file
    from app.measure_worker import warm_up
    from app.reconcile import load_and_measure, measure_counts, merge_and_measure
    from app.reject_store import replace_rejects
    from app.run_context import RunContext

    warm_up()  # as the download step does in a run, long before the merge
    waited: dict[str, list[float]] = {"raw_answer": [], "read_back": []}
    _time_waits(waited)
    engine = create_engine(url)
    times: dict[str, list[float]] = {k: [] for k in ("merge", "merge_m", "load", "load_m", "judge")}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    stolen: list[float] = []
    staged_during_merge: list[bool] = []  # the merged file read as the merger wrote it
    counts: Any = None

    async def clocked(fn: Callable[[], Awaitable[Any]], label: str) -> tuple[float, Any]:
        busy, steal = _cpu()
        seconds, result = await timed(fn)
        busy_after, steal_after = _cpu()
        cpu[label].append(busy_after - busy)
        stolen.append(steal_after - steal)
        return seconds, result

    async def once(measure: bool) -> None:
        nonlocal counts
        ctx = RunContext(f"bench{len(times['judge'])}{int(measure)}", D1, D1, workdir / "runs")
        await _empty_tables(engine)
        seconds, (merge, raw_m) = await clocked(
            lambda: merge_and_measure(
                engine, ctx, BUCKET, files, measure=measure, then_load=measure
            ),
            "merge_m" if measure else "merge",
        )
        times["merge_m" if measure else "merge"].append(seconds)
        await replace_rejects(engine, ctx.run_id, BUCKET, D1, merge.rejects)

        def load() -> Any:
            return ingest_file(engine, BUCKET, D1, merge.path, run_id=ctx.run_id)

        if not measure:
            times["load"].append((await clocked(load, "load"))[0])
            return
        seconds, (loaded, load_m) = await clocked(
            lambda: load_and_measure(engine, ctx, merge, load), "load_m"
        )
        times["load_m"].append(seconds)
        assert raw_m is not None and load_m is not None, "a measure could not be taken alongside"
        staged_during_merge.append(load_m.staged_during_merge)
        seconds, counts = await clocked(
            functools.partial(measure_counts, engine, ctx, merge, loaded, raw_m, load_m), "judge"
        )
        assert seconds < 1 or counts is None, "the audit measured again: a hand-off was not used"
        times["judge"].append(seconds)

    try:
        for _ in range(rounds):
            for measure in (False, True, True, False):
                await once(measure)
    finally:
        await engine.dispose()
    med = {k: statistics.median(v) for k, v in times.items()}
    cost = med["merge_m"] - med["merge"] + med["load_m"] - med["load"] + med["judge"]
    mcpu = {k: statistics.median(v) for k, v in cpu.items()}
    cpu_cost = mcpu["merge_m"] - mcpu["merge"] + mcpu["load_m"] - mcpu["load"] + mcpu["judge"]
    return {
        "cpu_s_median": {k: round(v, 2) for k, v in mcpu.items()},
        "cpu_cost_s": round(cpu_cost, 2),
        "cpu_cost_vs_merge_and_load_cpu": round(cpu_cost / (mcpu["merge"] + mcpu["load"]), 3),
        "stolen_s_total": round(sum(stolen), 2),
        "merged_staged_during_merge": staged_during_merge,
        "waited_s": {k: _stats(v) for k, v in waited.items()},
        "waited_samples_s": {k: [round(x, 3) for x in v] for k, v in waited.items()},
        "merge_alone": _stats(times["merge"]),
        "merge_with_raw_measure": _stats(times["merge_m"]),
        "load_alone": _stats(times["load"]),
        "load_with_merged_measure": _stats(times["load_m"]),
        "audit_step_with_those_measures": _stats(times["judge"]),
        "cost_s": round(cost, 3),
        "cost_vs_load": round(cost / med["load"], 3),
        "cost_vs_merge_and_load": round(cost / (med["merge"] + med["load"]), 3),
        "samples_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "cpu_samples_s": {k: [round(x, 2) for x in v] for k, v in cpu.items()},
        "counts": {
            k: getattr(counts, k)
            for k in ("download_total", "merged_rows", "expected_unique", "ingested_rows")
        },
    }


def _summary(result: Any) -> dict[str, Any]:
    keep = (
        "total", "expected_unique", "keyless_rows", "excluded_rows", "merged_rows", "written",
        "kept_newer", "missing_keys", "duplicate_keys_in_merged", "duration_ms",
    )  # fmt: skip
    out = {k: getattr(result, k) for k in keep if hasattr(result, k)}
    out["errors"] = getattr(result, "errors", None) or getattr(result, "error", None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--stores", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--alongside-repeat", type=int, default=2, help="ingest / alongside pairs")
    ap.add_argument(
        "--pipeline-rounds", type=int, default=0, help="merge+load rounds, the graph's way"
    )
    ap.add_argument("--only-pipeline", action="store_true", help="skip the other measurements")
    args = ap.parse_args()

    from app import json_logger

    json_logger.configure(stream=open(os.devnull, "w"))  # noqa: SIM115
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crm-bench-measure-"))
    started = time.perf_counter()
    files, merged = generate(workdir / f"data_{args.rows}_{args.stores}", args.rows, args.stores)
    size = sum(p.stat().st_size for p in files.values())
    print(f"data: {len(files)} files, {size / 1e6:.1f} MB raw, {merged.stat().st_size / 1e6:.1f} "
          f"MB merged ({time.perf_counter() - started:.1f}s)", flush=True)  # fmt: skip
    url, drop = setup_database(workdir)
    if args.only_pipeline:
        try:
            report: dict[str, Any] = {
                "pipeline": asyncio.run(pipeline(url, files, args.pipeline_rounds, workdir))
            }
        finally:
            drop()
        report["rows"], report["stores"], report["cpus"] = args.rows, len(files), os.cpu_count()
        print(json.dumps({"summary": report}, indent=2, default=str))
        return
    try:
        report = asyncio.run(run(url, files, merged, args.repeat))
        report["parse_floor_s"] = {
            k: round(v, 3) for k, v in asyncio.run(parse_floor(url, files, merged)).items()
        }
        if args.alongside_repeat:
            report["alongside"] = asyncio.run(
                alongside(url, files, merged, args.alongside_repeat, workdir)
            )
        if args.pipeline_rounds:
            report["pipeline"] = asyncio.run(pipeline(url, files, args.pipeline_rounds, workdir))
    finally:
        drop()
    ingest = report["ingest"]["seconds"]
    report["vs_ingest"] = {
        "measure_raw": round(report["measure_raw"]["median_s"] / ingest, 3),
        "measure_load": round(report["measure_load"]["median_s"] / ingest, 3),
        "raw + load (sequential)": round(
            (report["measure_raw"]["median_s"] + report["measure_load"]["median_s"]) / ingest, 3
        ),
        "raw + load (concurrently)": round(report["both_concurrently"]["median_s"] / ingest, 3),
        "parse floor (raw + merged)": round(sum(report["parse_floor_s"].values()) / ingest, 3),
    }
    report["rows"], report["stores"], report["cpus"] = args.rows, len(files), os.cpu_count()
    print(json.dumps({"summary": report}, indent=2, default=str))


if __name__ == "__main__":
    main()
