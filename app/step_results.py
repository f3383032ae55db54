"""Step results handed from one step to the next of the same run, in the run's own folder.

A step reads only what its own run wrote (`DATA_DIR/<date>/<run>/.steps/<bucket>.<stage>.json`),
never "the newest result for this date": that one may belong to another run, and an audit that
combined another run's merge with this run's load once passed and deleted files whose changes
never reached the table. A step that finds no result of its own run fails, saying which step to
run first. The files are written atomically (temporary name, then rename) and are bookkeeping:
a dry run writes these and nothing in the database. The cleanup removes a bucket's step files
with its data files.
"""

import contextlib
import json
import secrets
from pathlib import Path
from typing import Any, TypeVar

from app.pipeline import from_jsonable, to_jsonable
from app.run_context import RunContext

T = TypeVar("T")
STEPS_DIR = ".steps"


class MissingStepResult(Exception):
    """The upstream step did not run (or did not finish) in this run."""


def result_path(ctx: RunContext, bucket: str, stage: str) -> Path:
    return ctx.run_dir / STEPS_DIR / f"{bucket}.{stage}.json"


def save_result(ctx: RunContext, bucket: str, stage: str, result: Any) -> Path:
    path = result_path(ctx, bucket, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps(to_jsonable(result), sort_keys=True), encoding="utf-8")
    tmp.replace(path)
    return path


def load_raw_result(ctx: RunContext, bucket: str, stage: str) -> dict[str, Any] | None:
    path = result_path(ctx, bucket, stage)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return dict(data)


def load_result(ctx: RunContext, cls: type[T], bucket: str, stage: str) -> T:
    data = load_raw_result(ctx, bucket, stage)
    if data is None:
        raise MissingStepResult(
            f"no {bucket}/{stage} result of run {ctx.run_id} for {ctx.run_date.isoformat()}: a "
            f"step only takes the results of its own run; materialize {bucket}/{stage} and its "
            "downstream steps together in one run"
        )
    return from_jsonable(cls, data)


def maybe_result(ctx: RunContext, cls: type[T], bucket: str, stage: str) -> T | None:
    """An optional hand-off (one a step may not have produced): None when absent."""
    data = load_raw_result(ctx, bucket, stage)
    return None if data is None else from_jsonable(cls, data)


def discard_result(ctx: RunContext, bucket: str, stage: str) -> None:
    """Forget an optional hand-off before the step that writes it runs again (a re-execution
    of the same run must never hand on what an earlier attempt measured)."""
    result_path(ctx, bucket, stage).unlink(missing_ok=True)


def remove_results(ctx_run_dir: Path, bucket: str) -> None:
    """After a bucket's cleanup: its bookkeeping goes with its files (the audit row stays)."""
    steps = ctx_run_dir / STEPS_DIR
    for path in steps.glob(f"{bucket}.*.json"):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        steps.rmdir()
