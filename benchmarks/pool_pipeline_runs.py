"""Pool the pipeline samples of several `bench_measure.py --only-pipeline` outputs.

    .venv/bin/python benchmarks/pool_pipeline_runs.py OUT1 [OUT2 ...]

Why: on a noisy machine one run's medians move by more than the effect. Each round of
`bench_measure.py` runs merge and load alone twice and measured twice (A B B A), so a round gives
one paired difference per step; this prints the median and the mean of those round costs (the
mean with its standard error), and the medians of all samples pooled, against the load alone
and merge + load. Only outputs of the same code and size should be pooled (the script checks
the row count).
"""

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def _pipeline(path: Path) -> tuple[dict[str, Any], int]:
    text = path.read_text()
    summary = json.loads(text[text.index("{\n") :])["summary"]
    return summary["pipeline"], summary["rows"]


def _round_costs(samples: dict[str, list[float]]) -> list[float]:
    """Per round: (measured - alone) of merge plus of load, each the mean of two runs."""
    costs = []
    for r in range(len(samples["merge"]) // 2):
        pair = slice(2 * r, 2 * r + 2)
        step = 0.0
        for alone, measured in (("merge", "merge_m"), ("load", "load_m")):
            step += statistics.mean(samples[measured][pair]) - statistics.mean(samples[alone][pair])
        costs.append(step + statistics.mean(samples["judge"][pair]))
    return costs


def main() -> None:
    pooled: dict[str, list[float]] = {}
    waits: dict[str, list[float]] = {}
    rounds: list[float] = []
    sizes = set()
    for name in sys.argv[1:]:
        pipeline, rows = _pipeline(Path(name))
        sizes.add(rows)
        for key, values in pipeline["samples_s"].items():
            pooled.setdefault(key, []).extend(values)
        for key, values in pipeline.get("waited_samples_s", {}).items():
            waits.setdefault(key, []).extend(values)
        rounds += _round_costs(pipeline["samples_s"])
    if len(sizes) != 1:
        raise SystemExit(f"outputs of different sizes: {sorted(sizes)}")
    med = {k: statistics.median(v) for k, v in pooled.items()}
    load, merge_and_load = med["load"], med["merge"] + med["load"]
    mean = statistics.mean(rounds)
    se = statistics.stdev(rounds) / len(rounds) ** 0.5 if len(rounds) > 1 else float("nan")
    median_cost = med["merge_m"] - med["merge"] + med["load_m"] - med["load"] + med["judge"]
    out = {
        "rows": sizes.pop(),
        "runs": len(sys.argv) - 1,
        "rounds": len(rounds),
        "samples_per_arm": len(pooled["merge"]),
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "cost_of_pooled_medians_s": round(median_cost, 3),
        "round_costs_s": [round(c, 3) for c in rounds],
        "median_round_cost_s": round(statistics.median(rounds), 3),
        "median_round_cost_vs_load": round(statistics.median(rounds) / load, 3),
        "mean_round_cost_s": round(mean, 3),
        "standard_error_s": round(se, 3),
        "mean_cost_vs_load": round(mean / load, 3),
        "mean_cost_vs_merge_and_load": round(mean / merge_and_load, 3),
        "waited_median_s": {k: round(statistics.median(v), 3) for k, v in waits.items() if v},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
