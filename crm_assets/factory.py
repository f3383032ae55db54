"""One factory builds every bucket's chain from `MERGE_BUCKET_DB_SPECS`.

    <bucket>/raw_csvs → <bucket>/merged_csv → <bucket>/table → <bucket>/audit  (+ two checks)

The raw assets of all buckets come from one subsettable multi-asset: the portal makes a login
and a slow per-store dashboard visit (10-20 s in production) before any report of that store,
so downloading every selected bucket in one pass costs one dashboard visit per store instead of
one per store and bucket. Selecting a single bucket downloads only that bucket's reports.

Asset bodies only wire resources to `app` functions. Every step of a run reads the results of
the earlier steps of the same run (`app.step_results`, in the run's folder) and never "the
latest materialization of the date", which may be another run's. Every asset requires the
`run_lock` resource: the run holds its date from the first step to the last.

A dry run materializes `raw_csvs` and `merged_csv` (files really were downloaded and merged, in
the dry run's own folder), logs the ingestion plan from `table`, and records nothing else:
`table` yields no materialization (it is `output_required=False`), so `audit` and its checks
are skipped, and no database row is written.
"""

import warnings
from collections.abc import Awaitable, Sequence
from typing import Any

import dagster as dg

from app import json_logger
from app.audit import AuditRecord, audit_of_run, passed_runs
from app.config import MERGE_BUCKET_DB_SPECS
from app.downloader.client import PortalUnavailableError
from app.ingest import IngestResult, ingest_file
from app.measure import LoadMeasure
from app.measure_worker import warm_up
from app.merger import MergeResult
from app.pipeline import RawFiles, acquire_raw_files
from app.reconcile import (
    EMPTY_DAY,
    RawMeasured,
    audit_bucket,
    load_and_measure,
    merge_and_measure,
    record_failure,
)
from app.reject_store import first_rejects, replace_rejects
from app.report_check import check_file
from app.run_context import RunContext
from app.settings import load_settings
from app.step_results import discard_result, load_result, maybe_result, save_result
from crm_assets.keys import (
    AUDIT,
    AUDIT_CHECK,
    DOWNLOAD_CHECK,
    MEASURED,
    MEASURED_RAW,
    MERGED,
    RAW,
    TABLE,
    key,
)
from crm_assets.metadata import counts, md_table, rows_by_store_markdown
from crm_assets.partitions import daily_partitions
from crm_assets.policies import DOWNLOAD_RETRY_POLICY, without_retry
from crm_resources import (
    DatabaseResource,
    DataDirResource,
    PortalResource,
    RunDateLockResource,
    RunOptionsResource,
    StoreScopeResource,
)
from crm_resources.run_info import NOT_SERVABLE_TAG, run_context

warnings.filterwarnings("ignore", category=dg.PreviewWarning)  # partitioned asset checks
warnings.filterwarnings("ignore", category=dg.BetaWarning)

KIND_TAGS = {
    "raw_csvs": {"csv"},
    "merged_csv": {"csv"},
    "table": {"postgres"},
    "audit": {"postgres"},
}


def raw_metadata(files: RawFiles) -> dict[str, Any]:
    meta = counts(
        download_total=files.download_total,
        stores=len(files.files),
        failed_stores=len(files.failed),
        source=files.source,
        retries=files.retries,
        bytes=files.bytes_total,
    )
    meta["rows_by_store"] = dg.MetadataValue.md(
        rows_by_store_markdown(files.rows_by_store, files.failed)
    )
    return meta


def merged_metadata(merged: MergeResult) -> dict[str, Any]:
    meta = counts(
        download_total=merged.download_total,
        merged_rows=merged.merged_rows,
        expected_unique=merged.expected_unique,
        duplicates=merged.duplicates_dropped,
        quarantined=merged.quarantined,
        blocking=merged.blocking,
        failed_stores=len(merged.failed_stores),
    )
    meta["merged_file"] = dg.MetadataValue.path(str(merged.path))
    if merged.rejects:
        rows = [
            (r.store_code or "", r.line_number, r.code, r.reason, "blocking" if r.blocking else "")
            for r in merged.rejects[:10]
        ]
        meta["first_rejects"] = dg.MetadataValue.md(
            md_table(["store", "line", "code", "reason", ""], rows)
        )
    return meta


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
        retry_policy=DOWNLOAD_RETRY_POLICY,
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
        run_lock: RunDateLockResource,
    ):
        ctx = run_context(context, data_dir.root())
        selected = [b for b in buckets if key(b, RAW) in context.selected_asset_keys]
        warm_up()  # the merge steps' measuring processes: their fork server imports meanwhile
        # An async generator resumes in a fresh context at every yield: set the log's run id
        # around the awaited work only, never across a yield.
        with json_logger.run_context(ctx.run_id):
            try:
                raw = await _acquire(ctx, selected, db, portal, store_scope)
            except PortalUnavailableError:
                raise  # the portal is down: the step's RetryPolicy tries again, backing off
            except Exception as exc:  # wrong password, store scope, ...: a retry cannot help
                raise without_retry(exc) from exc
            for bucket, files in raw.items():
                save_result(ctx, bucket, RAW, files)
                if files.error:
                    context.log.error(files.error)
                    await record_failure(db.engine, ctx, bucket, files.error, raw=files)
        for bucket, files in raw.items():
            if not files.error:
                yield dg.MaterializeResult(asset_key=key(bucket, RAW), metadata=raw_metadata(files))
        if all(files.error for files in raw.values()):
            raise _all_failed(context, list(raw.values()))

    return portal_reports


def _all_failed(context: dg.AssetExecutionContext, raw: list[RawFiles]) -> dg.Failure:
    """No bucket has anything to merge; a date the portal cannot serve is tagged as such."""
    not_servable = all(f.not_servable for f in raw)
    if not_servable:
        context.instance.add_run_tags(context.run.run_id, {NOT_SERVABLE_TAG: "true"})
    return dg.Failure(
        "; ".join(f.error or "" for f in raw),
        allow_retries=False,
        metadata={"not_servable": not_servable},
    )


async def _acquire(
    ctx: RunContext,
    buckets: Sequence[str],
    db: DatabaseResource,
    portal: PortalResource,
    store_scope: StoreScopeResource,
) -> dict[str, RawFiles]:
    stores = await store_scope.etl_stores(db.engine)
    await store_scope.report_stores(db.engine)  # a report store outside ETL scope: stop
    done = {b: await passed_runs(db.engine, b, ctx.run_date) for b in buckets}
    return await acquire_raw_files(
        portal.credentials,
        ctx=ctx,
        buckets=buckets,
        stores=stores,
        limits=portal.limits(),
        passed_runs=done,
        verify=check_file,
        progress=None,  # a progress bar at a terminal, JSON only otherwise
    )


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
        context: dg.AssetExecutionContext,
        db: DatabaseResource,
        data_dir: DataDirResource,
        options: RunOptionsResource,
        run_lock: RunDateLockResource,
    ) -> dg.MaterializeResult:
        ctx = run_context(context, data_dir.root())
        with json_logger.run_context(ctx.run_id):
            raw = load_result(ctx, RawFiles, bucket, RAW)
            discard_result(ctx, bucket, MEASURED_RAW)
            try:  # the audit's raw measure is taken while the merge runs (none in a dry run)
                merged, measured = await merge_and_measure(
                    db.engine,
                    ctx,
                    bucket,
                    raw.files,
                    measure=not options.dry_run,
                    then_load=_runs_step(context, key(bucket, TABLE)),
                )
                if not options.dry_run:
                    await replace_rejects(
                        db.engine, ctx.run_id, bucket, ctx.run_date, merged.rejects
                    )
            except Exception as exc:
                if not options.dry_run:
                    await record_failure(db.engine, ctx, bucket, _why(exc), raw=raw)
                raise
            save_result(ctx, bucket, MERGED, merged)
            if measured is not None:
                save_result(ctx, bucket, MEASURED_RAW, measured)
        return dg.MaterializeResult(metadata=merged_metadata(merged))

    @dg.asset(
        key=key(bucket, TABLE),
        deps=[key(bucket, MERGED)],
        group_name=bucket,
        partitions_def=daily_partitions,
        kinds=KIND_TAGS[TABLE],
        output_required=False,
        description=f"Upsert of the merged file into `{table_name}`.",
    )
    # No return annotation: an optional output is an async generator that may yield nothing.
    async def table(  # type: ignore[no-untyped-def]
        context: dg.AssetExecutionContext,
        db: DatabaseResource,
        data_dir: DataDirResource,
        options: RunOptionsResource,
        run_lock: RunDateLockResource,
    ):
        ctx = run_context(context, data_dir.root())
        with json_logger.run_context(ctx.run_id):
            merged = load_result(ctx, MergeResult, bucket, MERGED)
            discard_result(ctx, bucket, MEASURED)

            def load() -> Awaitable[IngestResult]:
                return ingest_file(
                    db.engine,
                    bucket,
                    ctx.run_date,
                    merged.path,
                    run_id=ctx.run_id,
                    batch_size=load_settings().ingest_batch_size,
                    dry_run=options.dry_run,
                )

            try:
                if options.dry_run:
                    loaded, measured = await load(), None
                else:  # the audit's measures are taken while the load runs
                    loaded, measured = await load_and_measure(db.engine, ctx, merged, load)
            except Exception as exc:
                if not options.dry_run:
                    raw = load_result(ctx, RawFiles, bucket, RAW)
                    await record_failure(db.engine, ctx, bucket, _why(exc), raw=raw, merge=merged)
                raise
            if options.dry_run:
                context.log.info(
                    f"dry run: {loaded.rows_read} rows would be loaded; nothing written"
                )
                return  # no materialization: nothing a later step or the UI could take as real
            save_result(ctx, bucket, TABLE, loaded)
            if measured is not None:
                save_result(ctx, bucket, MEASURED, measured)
        yield dg.MaterializeResult(
            metadata=counts(
                table=table_name,
                rows_read=loaded.rows_read,
                inserted=loaded.inserted,
                updated=loaded.updated,
                rejected_at_load=loaded.rejected,
            )
        )

    @dg.asset(
        key=key(bucket, AUDIT),
        deps=[key(bucket, TABLE)],
        group_name=bucket,
        partitions_def=daily_partitions,
        kinds=KIND_TAGS[AUDIT],
        description="The reconciliation record in `pipeline_audit`: measured counts, verdict.",
    )
    async def audit(
        context: dg.AssetExecutionContext,
        db: DatabaseResource,
        data_dir: DataDirResource,
        run_lock: RunDateLockResource,
    ) -> dg.MaterializeResult:
        ctx = run_context(context, data_dir.root())
        with json_logger.run_context(ctx.run_id):
            raw = load_result(ctx, RawFiles, bucket, RAW)
            merged = load_result(ctx, MergeResult, bucket, MERGED)
            loaded = load_result(ctx, IngestResult, bucket, TABLE)
            raw_measured = maybe_result(ctx, RawMeasured, bucket, MEASURED_RAW)
            load_measured = maybe_result(ctx, LoadMeasure, bucket, MEASURED)
            record = await audit_bucket(
                db.engine, ctx, raw, merged, loaded, raw_measured, load_measured
            )
        return dg.MaterializeResult(metadata=audit_metadata(record))

    return [merged_csv, table, audit], build_checks(bucket)


def build_checks(bucket: str) -> list[Any]:
    # Dagster runs async checks on the run's event loop; its stubs only type sync ones.
    @dg.asset_check(  # type: ignore[arg-type]
        asset=key(bucket, AUDIT),
        name=AUDIT_CHECK,
        blocking=True,
        partitions_def=daily_partitions,
        description="download - duplicates - quarantined = merged = expected = ingested.",
    )
    async def audit_passed(
        context: dg.AssetCheckExecutionContext, db: DatabaseResource, data_dir: DataDirResource
    ) -> dg.AssetCheckResult:
        ctx = run_context(context, data_dir.root())
        record = await audit_of_run(db.engine, ctx.run_id, bucket, ctx.run_date)
        if record is None:
            return dg.AssetCheckResult(
                passed=False,
                description=f"run {ctx.run_id} wrote no audit for {bucket} {ctx.run_date}",
                metadata={"audit_id": None},
            )
        meta = check_metadata(record)
        if record.blocking or record.quarantined:
            rejects = await first_rejects(db.engine, ctx.run_id, bucket, ctx.run_date)
            meta["first_rejects"] = dg.MetadataValue.md(rejects_markdown(rejects))
        return dg.AssetCheckResult(
            passed=record.passed,
            description=record.reason or "counts reconcile",
            metadata=meta,
        )

    @dg.asset_check(  # type: ignore[arg-type]
        asset=key(bucket, AUDIT),
        name=DOWNLOAD_CHECK,
        blocking=False,
        partitions_def=daily_partitions,
        description="Every store in scope delivered a usable report.",
    )
    async def all_stores_downloaded(
        context: dg.AssetCheckExecutionContext, db: DatabaseResource, data_dir: DataDirResource
    ) -> dg.AssetCheckResult:
        ctx = run_context(context, data_dir.root())
        record = await audit_of_run(db.engine, ctx.run_id, bucket, ctx.run_date)
        failed = dict(record.failed_stores) if record else {}
        if record is not None and EMPTY_DAY in (record.reason or ""):
            failed = {"all stores": EMPTY_DAY}
        return dg.AssetCheckResult(
            passed=record is not None and not failed,
            severity=dg.AssetCheckSeverity.WARN,
            description=(
                f"{len(failed)} stores failed: {', '.join(sorted(failed))}"
                if failed
                else ("all stores downloaded" if record else "no audit in this run")
            ),
            metadata={
                "failed_stores": dg.MetadataValue.md(
                    md_table(["store", "reason"], sorted(failed.items()))
                )
            },
        )

    return [audit_passed, all_stores_downloaded]


def rejects_markdown(rejects: Sequence[dict[str, Any]]) -> str:
    rows = [
        (r["store_code"] or "", r["line_number"], r["code"], r["error"], r["blocking"])
        for r in rejects
    ]
    return md_table(["store", "line", "code", "reason", "blocking"], rows)


def _runs_step(context: dg.AssetExecutionContext, asset: dg.AssetKey) -> bool:
    """Does this run also materialize `asset`? (The merge step then keeps its measuring process,
    with the merged file staged, for the table step: `app.reconcile.merge_and_measure`.)"""
    selected = context.run.asset_selection
    if selected is None:
        selected = context.job_def.asset_layer.selected_asset_keys
    return asset in selected


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def check_metadata(record: AuditRecord) -> dict[str, Any]:
    meta = counts(
        download_total=record.download_total,
        in_file_duplicates=record.in_file_duplicates,
        quarantined=record.quarantined,
        blocking=record.blocking,
        merged_rows=record.merged_rows,
        expected_unique=record.expected_unique,
        ingested_rows=record.ingested_rows,
        missing_keys=record.missing_keys,
        status=record.status,
    )
    meta["audit_id"] = dg.MetadataValue.text(str(record.id))
    if record.reason:
        meta["reason"] = dg.MetadataValue.text(record.reason)
    return meta


def audit_metadata(record: AuditRecord) -> dict[str, Any]:
    meta = check_metadata(record)
    meta["failed_stores"] = dg.MetadataValue.md(
        md_table(["store", "reason"], sorted(record.failed_stores.items()))
    )
    meta["files"] = len(record.manifest)
    if when := (record.details or {}).get("measured_when"):
        meta["measured_when"] = dg.MetadataValue.json(when)
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
