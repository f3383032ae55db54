"""Download benchmark: N stores x 3 reports against the simulator, concurrent vs sequential.

The simulator runs in a child process (as the real portal is another machine), so this
process's memory and CPU are the downloader's alone. Latency is injected by the simulator with
asyncio.sleep, so the ideal wall time at concurrency C is (total latency) / C.

    .venv/bin/python benchmarks/bench_download.py --stores 500 --concurrency 8

Prints one figure per line and a final JSON object with everything.
"""

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import BUCKETS
from app.downloader import PortalCredentials, download_reports
from app.json_logger import get_logger
from app.portal_sim import SimConfig
from app.portal_sim.server import run_in_process

RUN_DATE = dt.date(2026, 3, 18)


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def timed_run(
    creds: PortalCredentials, stores: list[str], concurrency: int, data_dir: Path
) -> dict[str, Any]:
    samples: list[tuple[float, float]] = []
    started = time.perf_counter()

    async def sampler() -> None:
        while True:
            samples.append((time.perf_counter() - started, rss_mb()))
            await asyncio.sleep(0.1)

    task = asyncio.create_task(sampler())
    report = await download_reports(
        creds,
        store_codes=stores,
        buckets=list(BUCKETS),
        run_date=RUN_DATE,
        data_dir=data_dir,
        concurrency=concurrency,
        rate_per_s=0,  # the polite limit would cap this benchmark at rate x wall time
        progress=False,
    )
    wall = time.perf_counter() - started
    task.cancel()
    rss = [mb for _, mb in samples] or [rss_mb()]
    early = [mb for t, mb in samples if t <= wall * 0.2] or rss
    late = [mb for t, mb in samples if t >= wall * 0.8] or rss
    return {
        "concurrency": concurrency,
        "wall_s": round(wall, 2),
        "files": sum(len(b.files) for b in report.buckets.values()),
        "rows": sum(b.download_total for b in report.buckets.values()),
        "bytes": sum(b.bytes_total for b in report.buckets.values()),
        "failed_stores": len(report.failed_stores),
        "retries": report.retries,
        "logins": report.login_count,
        "rss_mb_first_20pct_max": round(max(early), 1),
        "rss_mb_last_20pct_max": round(max(late), 1),
        "rss_mb_peak": round(max(rss), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stores", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--dashboard-latency", type=float, default=0.1)
    parser.add_argument("--csv-latency", type=float, default=0.02)
    parser.add_argument("--skip-sequential", action="store_true")
    args = parser.parse_args()

    config = SimConfig(
        store_count=args.stores,
        seed=1,
        today=RUN_DATE,
        dashboard_latency_s=args.dashboard_latency,
        csv_latency_s=args.csv_latency,
        split_origins=True,
    )
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=run_in_process, args=(child, config), daemon=True)
    proc.start()
    info = parent.recv()
    creds = PortalCredentials(info["web_url"], info["base_url"], config.username, config.password)
    stores: list[str] = info["stores"]
    get_logger().configure(stream=open(os.devnull, "w"))  # noqa: SIM115 - lives for the run

    per_store = args.dashboard_latency + len(BUCKETS) * args.csv_latency
    total_latency = per_store * len(stores)
    ideal = total_latency / args.concurrency
    results: dict[str, Any] = {
        "stores": len(stores),
        "reports_per_store": len(BUCKETS),
        "dashboard_latency_s": args.dashboard_latency,
        "csv_latency_s": args.csv_latency,
        "total_latency_s": round(total_latency, 2),
        "ideal_s": round(ideal, 2),
        "cpu_count": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "rss_mb_before": round(rss_mb(), 1),
    }
    with tempfile.TemporaryDirectory() as tmp:
        concurrent = asyncio.run(
            timed_run(creds, stores, args.concurrency, Path(tmp) / "concurrent")
        )
        results["concurrent"] = concurrent
        results["vs_ideal"] = round(concurrent["wall_s"] / ideal, 2)
        print(f"concurrent (c={args.concurrency}): {concurrent['wall_s']} s", flush=True)
        print(f"ideal: {ideal:.2f} s -> {results['vs_ideal']}x of ideal", flush=True)
        if not args.skip_sequential:
            sequential = asyncio.run(timed_run(creds, stores, 1, Path(tmp) / "sequential"))
            results["sequential"] = sequential
            results["speedup_vs_sequential"] = round(sequential["wall_s"] / concurrent["wall_s"], 2)
            print(f"sequential: {sequential['wall_s']} s", flush=True)
            print(f"speedup: {results['speedup_vs_sequential']}x", flush=True)
    results["loadavg_after"] = os.getloadavg()
    parent.send("stop")
    results["simulator"] = parent.recv()
    proc.join(timeout=30)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
