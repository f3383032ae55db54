"""Step results travel between assets as materialization metadata (JSON), never as pickles."""

from collections.abc import Mapping
from typing import Any

import dagster as dg

from app.pipeline import to_jsonable

RESULT = "result"


def result_metadata(result: Any, **counts: Any) -> dict[str, Any]:
    """The full result as JSON plus headline counts the UI can chart."""
    meta: dict[str, Any] = {RESULT: dg.MetadataValue.json(to_jsonable(result))}
    for name, value in counts.items():
        if value is None:
            continue
        if isinstance(value, (int, float, str, bool, dg.MetadataValue)):
            meta[name] = value
        else:
            meta[name] = dg.MetadataValue.json(to_jsonable(value))
    return meta


def latest_result(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext,
    asset_key: dg.AssetKey,
    partition_key: str,
) -> dict[str, Any] | None:
    """The JSON result of the newest materialization of `asset_key` for this partition."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition_key]), limit=1
    ).records
    if not records:
        return None
    materialization = records[0].asset_materialization
    if materialization is None:
        return None
    value = materialization.metadata.get(RESULT)
    data = getattr(value, "value", value)
    return dict(data) if isinstance(data, Mapping) else None


def rows_by_store_markdown(rows_by_store: Mapping[str, int], failed: Mapping[str, str]) -> str:
    lines = ["| store | rows | status |", "|---|---:|---|"]
    for store in sorted(set(rows_by_store) | set(failed)):
        if store in failed:
            lines.append(f"| {store} | - | failed: {failed[store]} |")
        else:
            lines.append(f"| {store} | {rows_by_store[store]} | ok |")
    return "\n".join(lines)
