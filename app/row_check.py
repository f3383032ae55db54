"""The bucket's row model compiled for hot loops: one coercer for the merger and the ingester.

Why a compiled coercer and not the Pydantic model per row: the row model of a bucket
(`app.row_models`) is `coerce_value(column, kind, raw, is_key)` per field (its BeforeValidators)
plus a type check those values always pass. Calling the model per row costs ~10 us before any
rule runs, and `to_date` tries format after format for day-first dates (~20 us), which makes
Python, not the database, the bottleneck of a million-row day. So `RowCoercer` calls the very
same `coerce_value` per column (its compiled form, `value_coercer`), memoised per column in a
bounded dict (a month-to-date export repeats its dates, flags, stores and sources endlessly).
Any row where a rule raises is re-validated by the Pydantic model itself, whose complete
message (every failing column) becomes the reject reason, so the model stays the referee.
`tests/test_coercion.py` pins compiled == model on every coercion case.

`validation="model"` runs the Pydantic model on every row instead (slower, same result).
"""

import operator
from collections.abc import Callable, Sequence
from typing import Any, Literal

from app.coercion import CoercionError, value_coercer
from app.config import MERGE_BUCKET_DB_SPECS, CoerceKind
from app.row_models import row_model, validate_row

Validation = Literal["compiled", "model"]


class _Memo(dict[str | None, Any]):
    """`coerce_value` for one column, memoised; bounded, so memory stays flat on any file."""

    def __init__(self, column: str, kind: CoerceKind, is_key: bool, limit: int) -> None:
        super().__init__()
        self.column, self.kind, self.is_key, self.limit = column, kind, is_key, limit
        self.coerce = value_coercer(column, kind, is_key)
        self.misses = 0

    def __missing__(self, raw: str | None) -> Any:
        self.misses += 1
        value = self.coerce(raw)
        if len(self) >= self.limit:
            self.clear()
        self[raw] = value
        return value


class RowCoercer:
    """Coerce one raw record into the bucket's DB values, in `MERGE_BUCKET_DB_SPECS` coerce order.

    `positions[i]` is the index in the record of the i-th `coerce` column (None: the file lacks
    the column, which reads as NULL; a missing key column then fails like a blank key).
    `width` is the header's width: a shorter or longer record is padded / cut to it (the strict
    reader never passes one). Call `tune()` now and then (e.g. after each batch): it stops
    memoising columns that rarely repeat. `rows` counts the calls; do not increment it yourself.
    """

    CACHE_LIMIT = 50_000  # per column; cleared when full, so memory stays flat

    def __init__(
        self,
        bucket: str,
        positions: Sequence[int | None],
        width: int,
        validation: Validation | str = "compiled",
    ) -> None:
        spec = MERGE_BUCKET_DB_SPECS[bucket]
        columns = list(spec["coerce"])
        if len(positions) != len(columns):
            raise ValueError(f"{bucket}: {len(positions)} positions for {len(columns)} columns")
        keys = set(spec["dedupe_keys"])
        self.bucket = bucket
        self.columns = columns
        self.model = validation == "model"
        self.validator = row_model(bucket).__pydantic_validator__
        self.fields = [
            (c, spec["coerce"][c], p, c in keys) for c, p in zip(columns, positions, strict=True)
        ]
        self.caches = [
            _Memo(c, kind, is_key, self.CACHE_LIMIT) for c, kind, _, is_key in self.fields
        ]
        # Missing columns read one None cell appended after the header's width.
        self.width = width
        self.pad = any(p is None for _, _, p, _ in self.fields)
        slots = [width if p is None else p for _, _, p, _ in self.fields]
        self.pick = operator.itemgetter(*slots)
        self.calls: list[Callable[[str | None], Any]] = [m.__getitem__ for m in self.caches]
        self.rows = 0

    def tune(self) -> None:
        """Call columns that rarely repeat (ids, keys) directly: a memo that misses is waste."""
        if self.rows < 1000:
            return
        for index, memo in enumerate(self.caches):
            if memo.misses > self.rows // 2:
                self.calls[index] = memo.coerce
                memo.clear()

    def raw(self, record: Sequence[str | None]) -> dict[str, str | None]:
        """DB column -> raw cell, for the columns the file has (what the row model validates)."""
        width = len(record)
        return {
            c: (record[p] if p < width else None) for c, _, p, _ in self.fields if p is not None
        }

    def __call__(self, record: Sequence[str | None]) -> tuple[Any, ...]:
        """Coerced values in coerce order; CoercionError with the row model's full reason."""
        self.rows += 1
        if len(record) != self.width:
            record = ([*record] + [None] * self.width)[: self.width]
        if self.model:
            try:
                return tuple(self.validator.validate_python(self.raw(record)).__dict__.values())
            except Exception:
                validate_row(self.bucket, self.raw(record))
                raise CoercionError("row failed validation") from None
        try:
            raws = self.pick([*record, None] if self.pad else record)
            if len(self.fields) == 1:
                raws = (raws,)
            return tuple(map(operator.call, self.calls, raws))
        except CoercionError:
            validate_row(self.bucket, self.raw(record))  # raises with every reason of the row
            raise  # pragma: no cover - the model and the rules never disagree
