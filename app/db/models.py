"""ORM models. Bucket tables are generated from `MERGE_BUCKET_DB_SPECS`; Alembic owns the DDL.

Each bucket table has the spec's mapped columns with their coerced types, a primary key on the
spec's `dedupe_keys` (the upsert's conflict target), and bookkeeping columns: `run_date` (the
snapshot the row was last loaded from, so a backfill never rolls newer values back), `run_id`,
`created_at`, `updated_at`.

Each bucket also gets a change table `<table_name>_changes` (see `app.history`), generated from
the same spec so a new bucket gets its history with no extra code.
"""

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

from app.coercion import AMOUNT_PRECISION, AMOUNT_SCALE
from app.config import MERGE_BUCKET_DB_SPECS

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# float is money in this domain (taxable and net amounts): exact NUMERIC, not double precision.
SQL_TYPES: dict[str, type[TypeEngine[Any]] | TypeEngine[Any]] = {
    "int": BigInteger(),
    "str": Text(),
    "date": Date(),
    "float": Numeric(AMOUNT_PRECISION, AMOUNT_SCALE),
    "bool": Boolean(),
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _now_column(name: str) -> Column[dt.datetime]:
    return Column(name, DateTime(timezone=True), nullable=False, server_default=func.now())


class StoreMaster(Base):
    """Store scope: `etl_flag` selects ingestion, `report_flag` selects reporting."""

    __tablename__ = "store_master"

    store_code: Mapped[str] = mapped_column(String(32), primary_key=True)
    store_name: Mapped[str | None] = mapped_column(Text)
    etl_flag: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())
    report_flag: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=true())
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


class PipelineAudit(Base):
    """One row per run, bucket and run date: every count, the verdict, and the file manifest."""

    __tablename__ = "pipeline_audit"
    __table_args__ = (
        UniqueConstraint("run_id", "bucket", "run_date"),
        Index(None, "bucket", "run_date"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64), nullable=False)
    bucket: Mapped[str] = mapped_column(String(64), nullable=False)
    run_date: Mapped[dt.date] = mapped_column(Date, nullable=False)
    download_total: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    download_rows_by_store: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, default=dict
    )
    failed_stores: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict)
    merged_rows: Mapped[int | None] = mapped_column(BigInteger)
    expected_unique: Mapped[int | None] = mapped_column(BigInteger)
    ingested_rows: Mapped[int | None] = mapped_column(BigInteger)
    inserted: Mapped[int | None] = mapped_column(BigInteger)
    updated: Mapped[int | None] = mapped_column(BigInteger)
    kept_newer: Mapped[int | None] = mapped_column(BigInteger)
    rejected: Mapped[int | None] = mapped_column(BigInteger)
    # Measured after the load (app.measure / ingest_rejects), never derived from other counts.
    quarantined: Mapped[int | None] = mapped_column(BigInteger)
    blocking: Mapped[int | None] = mapped_column(BigInteger)
    in_file_duplicates: Mapped[int | None] = mapped_column(BigInteger)
    written: Mapped[int | None] = mapped_column(BigInteger)
    missing_keys: Mapped[int | None] = mapped_column(BigInteger)
    details: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, default=dict, server_default=text("'{}'::jsonb")
    )
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    manifest: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, nullable=False, default=list)
    cleanup_status: Mapped[str | None] = mapped_column(String(16))
    cleanup_run_id: Mapped[str | None] = mapped_column(String(64))
    cleanup_reason: Mapped[str | None] = mapped_column(Text)
    cleaned_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


class IngestReject(Base):
    """A row the ingester could not load, kept with its reason: nothing is dropped in silence."""

    __tablename__ = "ingest_rejects"
    __table_args__ = (Index(None, "bucket", "run_date"), Index(None, "run_id", "bucket"))

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64), nullable=False)
    bucket: Mapped[str] = mapped_column(String(64), nullable=False)
    run_date: Mapped[dt.date] = mapped_column(Date, nullable=False)
    store_code: Mapped[str | None] = mapped_column(String(32))
    file: Mapped[str] = mapped_column(Text, nullable=False)
    line_number: Mapped[int] = mapped_column(Integer, nullable=False)
    record_no: Mapped[int | None] = mapped_column(Integer)
    # app.rejects codes; `blocking` is the bucket's quarantine rule applied when it was written.
    code: Mapped[str] = mapped_column(String(32), nullable=False, server_default="bad_value")
    blocking: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=true())
    raw_row: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    error: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


BOOKKEEPING_COLUMNS = ("run_date", "run_id", "created_at", "updated_at")


def _bucket_table(bucket: str, spec: dict[str, Any]) -> Table:
    keys = spec["dedupe_keys"]
    columns: list[Column[Any]] = []
    for name, kind in spec["coerce"].items():
        is_key = name in keys
        columns.append(
            Column(
                name,
                SQL_TYPES[kind],
                nullable=not is_key and kind != "bool",
                server_default=false() if kind == "bool" else None,
            )
        )
    columns += [
        Column("run_date", Date, nullable=False),
        Column("run_id", String(64), nullable=False),
        _now_column("created_at"),
        _now_column("updated_at"),
    ]
    table = Table(
        spec["table_name"],
        Base.metadata,
        *columns,
        PrimaryKeyConstraint(*keys),  # in dedupe_keys order: the upsert's conflict target
        comment=f"merge bucket {bucket}",
    )
    Index(None, table.c.run_date)
    return table


BUCKET_TABLES: dict[str, Table] = {
    bucket: _bucket_table(bucket, spec) for bucket, spec in MERGE_BUCKET_DB_SPECS.items()
}


def bucket_table(bucket: str) -> Table:
    return BUCKET_TABLES[bucket]


CHANGE_KINDS = ("new", "changed", "gone")


def _changes_table(bucket: str, spec: dict[str, Any]) -> Table:
    """`<table>_changes`: what one load changed per key (written by `app.history`).

    Values are text in one canonical form (ISO dates, plain decimals, true/false), so one table
    holds every column's changes whatever its type.
    """
    keys = spec["dedupe_keys"]
    name = f"{spec['table_name']}_changes"
    kinds = ", ".join(f"'{k}'" for k in CHANGE_KINDS)
    table = Table(
        name,
        Base.metadata,
        Column("id", BigInteger, primary_key=True, autoincrement=True),
        Column("run_date", Date, nullable=False),
        Column("run_id", String(64), nullable=False),
        *[Column(k, SQL_TYPES[spec["coerce"][k]], nullable=False) for k in keys],
        Column("change", String(16), nullable=False),
        Column("column_name", Text),
        Column("old_value", Text),
        Column("new_value", Text),
        _now_column("created_at"),
        CheckConstraint(f"change IN ({kinds})", name="change_kind"),
        comment=f"change history of merge bucket {bucket}",
    )
    Index(None, table.c["store_code"], table.c.run_date)  # a store's dates (reports, gone)
    Index(None, *[table.c[k] for k in keys], table.c.run_date)
    return table


CHANGE_TABLES: dict[str, Table] = {
    bucket: _changes_table(bucket, spec) for bucket, spec in MERGE_BUCKET_DB_SPECS.items()
}


def changes_table(bucket: str) -> Table:
    return CHANGE_TABLES[bucket]


class ReportRecipient(Base):
    """Who receives a store's report; removed with the store."""

    __tablename__ = "report_recipients"

    store_code: Mapped[str] = mapped_column(
        String(32),
        ForeignKey("store_master.store_code", ondelete="CASCADE"),
        primary_key=True,
    )
    email: Mapped[str] = mapped_column(Text, primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


class ReportDelivery(Base):
    """One report sent (or failed) to one recipient for a store and date: a resend is an update."""

    __tablename__ = "report_deliveries"
    __table_args__ = (
        UniqueConstraint("store_code", "run_date", "recipient"),
        CheckConstraint("status IN ('sent', 'failed')", name="status"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    store_code: Mapped[str] = mapped_column(String(32), nullable=False)
    run_date: Mapped[dt.date] = mapped_column(Date, nullable=False)
    recipient: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
