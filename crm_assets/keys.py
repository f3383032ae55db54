"""Asset keys of a bucket's chain: `<bucket>/raw_csvs → merged_csv → table → audit`."""

import dagster as dg

RAW, MERGED, TABLE, AUDIT = "raw_csvs", "merged_csv", "table", "audit"
AUDIT_CHECK = "audit_passed"
MEASURED = "measured"  # step result only (not an asset): the merged file's measure, from `table`
MEASURED_RAW = "measured_raw"  # step result only: the raw files' measure, from `merged_csv`
DOWNLOAD_CHECK = "all_stores_downloaded"


def key(bucket: str, stage: str) -> dg.AssetKey:
    return dg.AssetKey([bucket, stage])


def bucket_of(asset_key: dg.AssetKey) -> str:
    return asset_key.path[0]
