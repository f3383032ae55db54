"""One factory builds every bucket's chain from `MERGE_BUCKET_DB_SPECS`.

    <bucket>/raw_csvs → <bucket>/merged_csv → <bucket>/table → <bucket>/audit  (+ two checks)

The raw assets of all buckets come from one subsettable multi-asset: the portal makes a login
and a slow per-store dashboard visit (10-20 s in production) before any report of that store,
so downloading every selected bucket in one pass costs one dashboard visit per store instead of
one per store and bucket. Selecting a single bucket downloads only that bucket's reports.

Asset bodies only wire resources to `app` functions and turn results into metadata.
"""

import datetime as dt
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from app import json_logger
from app.audit import AuditRecord, get_audit, write_audit
from app.config import MERGE_BUCKET_DB_SPECS, merged_name
from app.ingest import IngestResult, ingest_file
from app.merger import MergeResult, merge_bucket
from app.pipeline import RawFiles, acquire_raw_files, from_jsonable
from app.settings import load_settings
from crm_assets.keys import AUDIT, AUDIT_CHECK, DOWNLOAD_CHECK, MERGED, RAW, TABLE, key
from crm_assets.metadata import latest_result, result_metadata, rows_by_store_markdown
from crm_assets.partitions import daily_partitions, partition_date
from crm_resources import (
    DatabaseResource,
    DataDirResource,
    PortalResource,
    RunOptionsResource,
    StoreScopeResource,
)

warnings.filterwarnings("ignore", category=dg.PreviewWarning)  # partitioned asset checks
warnings.filterwarnings("ignore", category=dg.BetaWarning)

KIND_TAGS = {
    "raw_csvs": {"csv"},
    "merged_csv": {"csv"},
    "table": {"postgres"},
    "audit": {"postgres"},
}


def _today() -> dt.date:
    return dt.datetime.now(load_settings().tz).date()


def _upstream(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext,
    asset_key: dg.AssetKey,
) -> dict[str, Any]:
    data = latest_result(context, asset_key, context.partition_key)
    if data is None:
        raise dg.Failure(f"no materialization of {asset_key.to_user_string()} for this date")
    return data


async def _record_failure(
    context: dg.AssetExecutionContext,
    db: DatabaseResource,
    bucket: str,
    error: BaseException,
    merge: MergeResult | None = None,
) -> None:
    """A failing step still leaves an audit row that says why, and keeps every file."""
    run_date = partition_date(context.partition_key)
    raw = from_jsonable(RawFiles, _upstream(context, key(bucket, RAW)))
    files = list(raw.files.values()) + ([merge.path] if merge else [])
    json_logger.log_event(
        "error",
        f"{bucket} failed: {error}",
        status="error",
        bucket=bucket,
        date=run_date,
        extras={"error": f"{type(error).__name__}: {error}"},
    )
    await write_audit(
        db.engine,
        run_id=context.run.run_id,
        bucket=bucket,
        run_date=run_date,
        download_rows_by_store=raw.rows_by_store,
        failed_stores=raw.failed,
        merge=merge,
        ingest=None,
        files=[Path(p) for p in files],
        error=f"{type(error).__name__}: {error}",
    )


def build_download_asset(buckets: Sequence[str]) -> dg.AssetsDefinition:
    specs = [
        dg.AssetSpec(
            key(bucket, RAW),
            group_name=bucket,
            skippable=True,
            kinds=KIND_TAGS[RAW],
            description=f"One {bucket} CSV per ETL-scope store, as the portal served it.",
        )
        for bucket in buckets
    ]

    @dg.multi_asset(
        name="portal_reports",
        specs=specs,
        can_subset=True,
        partitions_def=daily_partitions,
        description="Log in once, visit each store's dashboard once, download its reports.",
    )
    # No return annotation: Dagster reads it to type the outputs and does not recognise an
    # async generator (it would demand a tuple); this yields one MaterializeResult per bucket.
    async def portal_reports(  # type: ignore[no-untyped-def]
        context: dg.AssetExecutionContext,
        db: DatabaseResource,
        portal: PortalResource,
        store_scope: StoreScopeResource,
        data_dir: DataDirResource,
    ):
        selected = [b for b in buckets if key(b, RAW) in context.selected_asset_keys]
        with json_logger.run_context(context.run.run_id):
            stores = await store_scope.etl_stores(db.engine)
            await store_scope.report_stores(db.engine)  # a report store outside ETL scope: stop
            raw = await acquire_raw_files(
                portal.credentials,
                buckets=selected,
                stores=stores,
                run_date=partition_date(context.partition_key),
                today=_today(),
                data_dir=data_dir.root(),
                limits=portal.limits(),
                progress=None,  # a progress bar at a terminal, JSON only otherwise
            )
        errors = {b: r.error for b, r in raw.items() if r.error}
        for bucket, files in raw.items():
            if files.error:
                context.log.error(files.error)
                continue
            yield dg.MaterializeResult(
                asset_key=key(bucket, RAW),
                metadata=result_metadata(
                    files,
                    source=files.source,
                    stores=len(files.files),
                    download_total=files.download_total,
                    failed_store_count=len(files.failed),
                    retries=files.retries,
                    bytes=files.bytes_total,
                    rows_by_store=dg.MetadataValue.md(
                        rows_by_store_markdown(files.rows_by_store, files.failed)
                    ),
                ),
            )
        if len(errors) == len(raw):
            raise dg.Failure("; ".join(errors.values()))

    return portal_reports


def build_bucket_chain(bucket: str) -> tuple[list[dg.AssetsDefinition], list[Any]]:
    """The merged, table and audit assets of one bucket, and the audit's two checks."""
    table_name = MERGE_BUCKET_DB_SPECS[bucket]["table_name"]

    @dg.asset(
        key=key(bucket, MERGED),
        deps=[key(bucket, RAW)],
        group_name=bucket,
        partitions_def=daily_partitions,
        kinds=KIND_TAGS[MERGED],
        description=f"The stores' {bucket} files merged and de-duplicated on the dedupe keys.",
    )
    async def merged_csv(
        context: dg.AssetExecutionContext, db: DatabaseResource, data_dir: DataDirResource
    ) -> dg.MaterializeResult:
        raw = from_jsonable(RawFiles, _upstream(context, key(bucket, RAW)))
        with json_logger.run_context(context.run.run_id):
            try:
                merged = merge_bucket(bucket, raw.run_date, raw.files, data_dir.root())
            except Exception as exc:
                await _record_failure(context, db, bucket, exc)
                raise
        return dg.MaterializeResult(
            metadata=result_metadata(
                merged,
                merged_file=merged_name(bucket, raw.run_date),
                merged_rows=merged.merged_rows,
                expected_unique=merged.expected_unique,
                download_total=merged.download_total,
            )
        )

    @dg.asset(
        key=key(bucket, TABLE),
        deps=[key(bucket, MERGED)],
        group_name=bucket,
        partitions_def=daily_partitions,
        kinds=KIND_TAGS[TABLE],
        description=f"Upsert of the merged file into `{table_name}`.",
    )
    async def table(
        context: dg.AssetExecutionContext, db: DatabaseResource, options: RunOptionsResource
    ) -> dg.MaterializeResult:
        merged = from_jsonable(MergeResult, _upstream(context, key(bucket, MERGED)))
        with json_logger.run_context(context.run.run_id):
            try:
                loaded = await ingest_file(
                    db.engine,
                    bucket,
                    merged.run_date,
                    merged.path,
                    run_id=context.run.run_id,
                    batch_size=load_settings().ingest_batch_size,
                    dry_run=options.dry_run,
                )
            except Exception as exc:
                if not options.dry_run:
                    await _record_failure(context, db, bucket, exc, merged)
                raise
        return dg.MaterializeResult(
            metadata=result_metadata(
                loaded,
                table=table_name,
                dry_run=loaded.dry_run,
                ingested_rows=loaded.ingested_rows,
                inserted=loaded.inserted,
                updated=loaded.updated,
                rejected=loaded.rejected,
            )
        )

    @dg.asset(
        key=key(bucket, AUDIT),
        deps=[key(bucket, TABLE)],
        group_name=bucket,
        partitions_def=daily_partitions,
        kinds=KIND_TAGS[AUDIT],
        description="The reconciliation record in `pipeline_audit`: counts, verdict, manifest.",
    )
    async def audit(
        context: dg.AssetExecutionContext, db: DatabaseResource, options: RunOptionsResource
    ) -> dg.MaterializeResult:
        raw = from_jsonable(RawFiles, _upstream(context, key(bucket, RAW)))
        merged = from_jsonable(MergeResult, _upstream(context, key(bucket, MERGED)))
        loaded = from_jsonable(IngestResult, _upstream(context, key(bucket, TABLE)))
        if options.dry_run:
            return dg.MaterializeResult(metadata={"dry_run": True, "audit_id": None})
        with json_logger.run_context(context.run.run_id):
            record = await write_audit(
                db.engine,
                run_id=context.run.run_id,
                bucket=bucket,
                run_date=raw.run_date,
                download_rows_by_store=raw.rows_by_store,
                failed_stores=raw.failed,
                merge=merged,
                ingest=loaded,
                files=[*raw.files.values(), merged.path],
            )
        return dg.MaterializeResult(metadata=_audit_metadata(record))

    # Dagster runs async checks on the run's event loop; its stubs only type sync ones.
    @dg.asset_check(  # type: ignore[arg-type]
        asset=key(bucket, AUDIT),
        name=AUDIT_CHECK,
        blocking=True,
        partitions_def=daily_partitions,
        description="merged_rows == ingested_rows == expected_unique and nothing rejected.",
    )
    async def audit_passed(
        context: dg.AssetCheckExecutionContext, db: DatabaseResource
    ) -> dg.AssetCheckResult:
        record = await _audit_for_partition(context, db, bucket)
        if record is None:
            return dg.AssetCheckResult(
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
                description="dry run or no audit written: nothing was loaded or reconciled",
                metadata={"audit_id": None},
            )
        return dg.AssetCheckResult(
            passed=record.status == "passed",
            description=record.reason or "counts reconcile",
            metadata=_check_metadata(record),
        )

    @dg.asset_check(  # type: ignore[arg-type]
        asset=key(bucket, AUDIT),
        name=DOWNLOAD_CHECK,
        blocking=False,
        partitions_def=daily_partitions,
        description="Every store in scope delivered its report.",
    )
    async def all_stores_downloaded(
        context: dg.AssetCheckExecutionContext, db: DatabaseResource
    ) -> dg.AssetCheckResult:
        record = await _audit_for_partition(context, db, bucket)
        failed = dict(record.failed_stores) if record else {}
        if record is None:
            raw = latest_result(context, key(bucket, RAW), context.partition_key) or {}
            failed = dict(raw.get("failed") or {})
        return dg.AssetCheckResult(
            passed=not failed,
            severity=dg.AssetCheckSeverity.WARN,
            description=(
                f"{len(failed)} stores failed: {', '.join(sorted(failed))}"
                if failed
                else "all stores downloaded"
            ),
            metadata={"failed_stores": dg.MetadataValue.json(failed)},
        )

    return [merged_csv, table, audit], [audit_passed, all_stores_downloaded]


async def _audit_for_partition(
    context: dg.AssetCheckExecutionContext, db: DatabaseResource, bucket: str
) -> AuditRecord | None:
    """The audit row this partition's audit materialization points at (the database is truth)."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=key(bucket, AUDIT), asset_partitions=[context.partition_key]
        ),
        limit=1,
    ).records
    materialization = records[0].asset_materialization if records else None
    audit_id = materialization.metadata.get("audit_id") if materialization else None
    value = getattr(audit_id, "value", audit_id)
    if not isinstance(value, int):
        return None
    return await get_audit(db.engine, value)


def _counts(record: AuditRecord) -> dict[str, Any]:
    return {
        "download_total": record.download_total,
        "merged_rows": record.merged_rows,
        "expected_unique": record.expected_unique,
        "ingested_rows": record.ingested_rows,
        "rejected": record.rejected,
    }


def _check_metadata(record: AuditRecord) -> dict[str, Any]:
    meta: dict[str, Any] = {"audit_id": record.id, "status": record.status}
    meta.update({k: v for k, v in _counts(record).items() if v is not None})
    if record.reason:
        meta["reason"] = record.reason
    return meta


def _audit_metadata(record: AuditRecord) -> dict[str, Any]:
    meta = _check_metadata(record)
    meta["failed_stores"] = dg.MetadataValue.json(dict(record.failed_stores))
    meta["manifest"] = dg.MetadataValue.json(list(record.manifest))
    return meta


def build_all_assets() -> tuple[list[dg.AssetsDefinition], list[Any]]:
    buckets = list(MERGE_BUCKET_DB_SPECS)
    assets: list[dg.AssetsDefinition] = [build_download_asset(buckets)]
    checks: list[Any] = []
    for bucket in buckets:
        chain, bucket_checks = build_bucket_chain(bucket)
        assets += chain
        checks += bucket_checks
    return assets, checks
