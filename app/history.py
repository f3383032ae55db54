"""Change history of the bucket tables, recorded by the load in the load's own transaction.

Every bucket table `<t>` has `<t>_changes` (`app.db.models.changes_table`): one row per key and
event of a run date D, `change` being

- `new`: the key had no row in the table before D was loaded;
- `changed`: one row per column whose value differs from the key's state *before D* (`old_value`
  -> `new_value`, text in one canonical form: ISO dates, plain decimals, `true`/`false`);
- `gone`: the key was *live* in the store's month-to-date snapshot and D's file, which has rows
  of that store, does not have it.

How it is computed (set-based SQL: no extra round trip per batch, one extra statement per load):

1. Per batch, in that batch's upsert statement (`ChangeRecorder.attach` adds CTEs; one
   statement is one snapshot, so they read the rows as they were before the upsert, and the
   batch still costs one round trip that overlaps the parsing of the next), the staging table is
   joined to the target. Only keys the upsert will write are considered (no row yet, or
   `target.run_date <= D`): a backfill records nothing for keys a newer snapshot holds, exactly
   as the upsert leaves their values alone, so newer history is never rewritten.
2. The base ("the key before D") is the current row when its `run_date < D`. When the row
   already holds D (a rerun of D, or the same key in a later batch of this file), the current row
   is D's own values, so the base is rebuilt from D's history: a D `new` row means "no base", and
   a D `changed` row gives that column's `old_value`; every other column did not change on D, so
   the current value *is* the base. D's `new`/`changed` rows for these keys are then deleted and
   recomputed in the same statement; when the staged values equal the row's (the usual rerun)
   D's rows for the key are already right and are left alone. Hence a reload of D records the
   same changes as the first load did (idempotent), and a reload with different content records
   the changes relative to the state before D, never relative to the first load of D. A reload
   of D after D+1 was loaded leaves D's history of the keys D+1 holds (and D's `gone`) alone.
3. After the last batch (`ChangeRecorder.record_gone`), for each store with rows in this file
   *and no row newer than D* (D is the store's newest snapshot; a backfill never computes `gone`),
   D's `gone` rows of that store are deleted and recomputed. A key is live before D when its row
   has `month_start(D) <= run_date < D` and no `gone` was recorded for it after that run_date and
   before D. With snapshots loaded in order this is exactly "in the previous snapshot of the same
   month", without having to know which dates were loaded: a key of the previous snapshot holds
   that date, and an older key was already reported gone. Rows of earlier months are never live,
   so the first snapshot of a month reports nothing gone (the month-to-date exports reset).
   Stores absent from the file (a failed or empty download) never report their keys gone.

Everything runs inside the load's transaction: a failed load leaves no history.

Known limits (documented, not hidden): a key that reappears after `gone` is `changed` (or
silent), not `new`, because its row still exists. A key that only an earlier load of D had
keeps its D row (the table keeps it too) and is not reported gone by a reload of D. The
advisory lock is per (bucket, date): two *different* dates of one bucket loaded at the same
moment do not see each other's uncommitted rows, so their history may disagree with the order
they commit in (the run lock is per date too); for exact history, load one date at a time.
A backfill of a never-loaded date inserts its keys as `new` on that date, and keys of that
backfill absent from the newer snapshot are not retro-reported `gone` on the newer date.
"""

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import CTE, Select, Table, and_, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import TextClause

from app.config import MERGE_BUCKET_DB_SPECS
from app.db.models import bucket_table, changes_table

STORE_COLUMN = "store_code"


@dataclass(frozen=True)
class Change:
    """One recorded event of one key on one run date."""

    run_date: dt.date
    run_id: str
    key: dict[str, Any]
    change: str
    column_name: str | None
    old_value: str | None
    new_value: str | None


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _canonical(expr: str, kind: str) -> str:
    """The text form stored in old/new_value; the same on both sides, so equal means unchanged."""
    if kind == "date":
        return f"to_char({expr}, 'YYYY-MM-DD')"
    if kind == "str":
        return expr
    return f"({expr})::text"  # bigint, numeric(14,2) (plain, e.g. 1200.00), boolean (true/false)


def _key_join(left: str, right: str, keys: Sequence[str]) -> str:
    return " AND ".join(f"{left}.{_q(k)} = {right}.{_q(k)}" for k in keys)


def _cols(alias: str, cols: Sequence[str]) -> str:
    return ", ".join(f"{alias}.{_q(c)}" for c in cols)


def _pair(column: str, kind: str) -> str:
    """(name, new, old) of one column, canonical text, from the carried raw values."""
    new = _canonical(f"b.{_q('n_' + column)}", kind)
    old = _canonical(f"b.{_q('o_' + column)}", kind)
    return f"('{column}', {new}, {old})"


def _date(value: dt.date) -> str:
    """A date literal (from a `date`, so nothing can be injected): keeps the CTEs bind-free."""
    return f"DATE '{dt.date.isoformat(value)}'"


def batch_ctes(bucket: str, stage_name: str, run_date: dt.date, run_id: str) -> list[CTE]:
    """Diff staging vs the state before D; replace D's new/changed rows of the keys it writes.

    The target is probed per staged key (LATERAL ... LIMIT 1 pins the primary-key lookup): the
    staging table has no statistics, and a hash join would scan the whole, growing target on
    every batch. Returned as CTEs to attach to the batch's upsert statement: one statement is
    one snapshot, so the diff reads the rows (and D's history) exactly as they were before this
    batch, and the upsert still overlaps the parsing of the next batch (one round trip).
    """
    spec = MERGE_BUCKET_DB_SPECS[bucket]
    keys: list[str] = spec["dedupe_keys"]
    cols = [c for c in spec["coerce"] if c not in keys]
    target, hist = _q(bucket_table(bucket).name), _q(changes_table(bucket).name)
    d = _date(run_date)
    kcols = ", ".join(_q(k) for k in keys)
    h_keys = ", ".join(f"h.{_q(k)}" for k in keys)
    b_keys = ", ".join(f"b.{_q(k)}" for k in keys)
    c_keys = ", ".join(f"c.{_q(k)}" for k in keys)
    raw = ", ".join(f"s.{_q(c)} AS {_q('n_' + c)}, t.{_q(c)} AS {_q('o_' + c)}" for c in cols)
    same = f"({_cols('s', cols)}) IS NOT DISTINCT FROM ({_cols('t', cols)})"
    pairs = ", ".join(_pair(c, spec["coerce"][c]) for c in cols)
    parts = {
        "hist_cand": f"""
SELECT {", ".join(f"s.{_q(k)}" for k in keys)}, t.{_q(keys[0])} IS NULL AS absent,
       t.run_date = {d} AS rerun, {same} AS same, {raw}
FROM {_q(stage_name)} s LEFT JOIN LATERAL (
  SELECT * FROM {target} r WHERE {_key_join("r", "s", keys)} LIMIT 1
) t ON true
WHERE t.run_date IS NULL OR t.run_date <= {d}""",
        # D's own new/changed rows of the keys a rerun rewrites. Reached per key through the
        # (keys..., run_date) index only: the run_date filter sits outside an OFFSET 0 fence,
        # so no plan can scan all of D's history (which grows with every batch of the load
        # and has no statistics yet) once per batch. The rows are then deleted by their ctid (a
        # TID scan, never a scan of the table); safe within this one statement, and no other
        # transaction writes D's history of this bucket (the load's advisory lock).
        "hist_d": f"""
SELECT x.*
FROM hist_cand c CROSS JOIN LATERAL (
  SELECT h.ctid AS row_tid, {h_keys}, h.run_date, h.change, h.column_name, h.old_value
  FROM {hist} h WHERE {_key_join("h", "c", keys)} OFFSET 0
) x
WHERE c.rerun AND NOT c.same AND x.run_date = {d} AND x.change <> 'gone'""",
        "hist_prior": f"""
SELECT {h_keys}, bool_or(h.change = 'new') AS was_new,
       jsonb_object_agg(h.column_name, h.old_value) FILTER (WHERE h.change = 'changed') AS olds
FROM hist_d h
GROUP BY {h_keys}""",
        "hist_dropped": f"""
DELETE FROM {hist} h WHERE h.ctid = ANY (ARRAY(SELECT row_tid FROM hist_d))""",
        "hist_base": f"""
SELECT c.*, coalesce(p.was_new, false) AS is_new, p.olds
FROM hist_cand c LEFT JOIN hist_prior p USING ({kcols})
WHERE NOT c.absent AND NOT c.same""",
        "hist_rows": f"""
INSERT INTO {hist} (run_date, run_id, {kcols}, change, column_name, old_value, new_value)
SELECT {d}, CAST(:hist_run_id AS text), {c_keys}, 'new', NULL, NULL, NULL
FROM hist_cand c WHERE c.absent
UNION ALL
SELECT {d}, CAST(:hist_run_id AS text), {b_keys}, 'new', NULL, NULL, NULL
FROM hist_base b WHERE b.is_new
UNION ALL
SELECT {d}, CAST(:hist_run_id AS text), {b_keys}, 'changed', u.name, u.old, u.new
FROM hist_base b CROSS JOIN LATERAL (
  SELECT x.name, CASE WHEN b.olds -> x.name IS NOT NULL THEN b.olds ->> x.name ELSE x.cur END
         AS old, x.new
  FROM (VALUES {pairs}) AS x(name, new, cur)
) u
WHERE NOT b.is_new AND u.old IS DISTINCT FROM u.new""",
    }
    clauses = {name: text(sql) for name, sql in parts.items()}
    clauses["hist_rows"] = clauses["hist_rows"].bindparams(hist_run_id=run_id)
    return [clause.columns().cte(name) for name, clause in clauses.items()]


def gone_sql(bucket: str) -> TextClause:
    """Replace D's `gone` rows of the file's stores for which D is the newest snapshot."""
    spec = MERGE_BUCKET_DB_SPECS[bucket]
    keys: list[str] = spec["dedupe_keys"]
    target, hist = _q(bucket_table(bucket).name), _q(changes_table(bucket).name)
    kcols = ", ".join(_q(k) for k in keys)
    sc = _q(STORE_COLUMN)
    return text(f"""
WITH fresh AS (
  SELECT f.store_code FROM unnest(CAST(:stores AS text[])) AS f(store_code)
  WHERE NOT EXISTS (
    SELECT 1 FROM {target} t WHERE t.{sc} = f.store_code AND t.run_date > CAST(:d AS date))
), dropped AS (
  DELETE FROM {hist} h USING fresh f
  WHERE h.{sc} = f.store_code AND h.run_date = CAST(:d AS date) AND h.change = 'gone'
)
INSERT INTO {hist} (run_date, run_id, {kcols}, change)
SELECT CAST(:d AS date), CAST(:rid AS text), {", ".join(f"t.{_q(k)}" for k in keys)}, 'gone'
FROM {target} t JOIN fresh f ON t.{sc} = f.store_code
WHERE t.run_date >= CAST(:month_start AS date) AND t.run_date < CAST(:d AS date)
  AND NOT EXISTS (
    SELECT 1 FROM {hist} g
    WHERE {_key_join("g", "t", keys)} AND g.change = 'gone'
      AND g.run_date > t.run_date AND g.run_date < CAST(:d AS date))
""")


class ChangeRecorder:
    """The history side of one `_load` (one bucket, one date, one transaction)."""

    def __init__(self, bucket: str, stage_name: str, run_date: dt.date, run_id: str) -> None:
        spec = MERGE_BUCKET_DB_SPECS[bucket]
        if STORE_COLUMN not in spec["dedupe_keys"]:
            raise ValueError(f"{bucket}: change history needs {STORE_COLUMN} in dedupe_keys")
        self._store_slot = list(spec["coerce"]).index(STORE_COLUMN)
        self._ctes = batch_ctes(bucket, stage_name, run_date, run_id)
        self._gone = gone_sql(bucket)
        self._params = {"d": run_date, "rid": run_id}
        self._month_start = run_date.replace(day=1)
        self.stores: set[str] = set()

    def saw(self, records: Iterable[Sequence[Any]]) -> None:
        """Remember the stores this file has rows for: only those can report keys gone."""
        slot = self._store_slot
        self.stores.update(r[slot] for r in records)

    def attach(self, upsert: Select[Any]) -> Select[Any]:
        """The batch's upsert statement, with this batch's history written by the same statement."""
        return upsert.add_cte(*self._ctes)

    async def record_gone(self, conn: AsyncConnection) -> None:
        """After the last batch: the keys of the month's live snapshot this file lacks."""
        if self.stores:
            params = {**self._params, "stores": sorted(self.stores)}
            await conn.execute(self._gone, {**params, "month_start": self._month_start})


def _range(table: Table, store_code: str, since: dt.date, until: dt.date | None) -> Any:
    cond = and_(table.c[STORE_COLUMN] == store_code, table.c.run_date >= since)
    return cond if until is None else and_(cond, table.c.run_date <= until)


async def changes_since(
    conn: AsyncConnection,
    bucket: str,
    store_code: str,
    run_date: dt.date,
    until: dt.date | None = None,
) -> list[Change]:
    """A store's changes on `run_date` and later (to `until`, inclusive), oldest first."""
    table = changes_table(bucket)
    keys: list[str] = MERGE_BUCKET_DB_SPECS[bucket]["dedupe_keys"]
    stmt = (
        select(table)
        .where(_range(table, store_code, run_date, until))
        .order_by(table.c.run_date, *[table.c[k] for k in keys], table.c.change, table.c.id)
    )
    return [
        Change(
            run_date=row.run_date,
            run_id=row.run_id,
            key={k: row._mapping[k] for k in keys},
            change=row.change,
            column_name=row.column_name,
            old_value=row.old_value,
            new_value=row.new_value,
        )
        for row in (await conn.execute(stmt)).all()
    ]


async def change_counts(
    conn: AsyncConnection,
    bucket: str,
    store_code: str,
    run_date: dt.date,
    until: dt.date | None = None,
) -> dict[tuple[str, str | None], int]:
    """Counts per (change, column_name) from `run_date` on: `("changed", "status") -> 3`."""
    table = changes_table(bucket)
    stmt = (
        select(table.c.change, table.c.column_name, func.count())
        .where(_range(table, store_code, run_date, until))
        .group_by(table.c.change, table.c.column_name)
    )
    return {(kind, column): n for kind, column, n in (await conn.execute(stmt)).all()}
