"""Pydantic row models, generated from `MERGE_BUCKET_DB_SPECS`: no hand-written model per bucket.

Each model validates one CSV row (already renamed to DB column names) with the rules of
`app.coercion`, so the ingester and anyone validating a sample share one definition.
"""

import datetime as dt
from decimal import Decimal
from functools import cache
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, create_model

from app.coercion import CoercionError, coerce_value
from app.config import MERGE_BUCKET_DB_SPECS, CoerceKind

PY_TYPES: dict[str, type] = {
    "int": int,
    "str": str,
    "date": dt.date,
    "float": Decimal,
    "bool": bool,
}


class RowModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _validator(column: str, kind: CoerceKind, is_key: bool) -> BeforeValidator:
    def _coerce(raw: Any) -> Any:
        if raw is None or isinstance(raw, str):
            return coerce_value(column, kind, raw, is_key=is_key)
        return raw  # already a Python value (e.g. built in a test)

    return BeforeValidator(_coerce)


@cache
def row_model(bucket: str) -> type[RowModel]:
    spec = MERGE_BUCKET_DB_SPECS[bucket]
    keys = set(spec["dedupe_keys"])
    fields: dict[str, Any] = {}
    for column, kind in spec["coerce"].items():
        py_type: Any = PY_TYPES[kind]
        is_key = column in keys
        if kind == "bool":
            fields[column] = (Annotated[bool, _validator(column, kind, is_key)], False)
        elif is_key:
            fields[column] = (Annotated[py_type, _validator(column, kind, is_key)], ...)
        else:
            fields[column] = (Annotated[py_type | None, _validator(column, kind, is_key)], None)
    name = "".join(part.title() for part in bucket.split("_")) + "Row"
    return create_model(name, __base__=RowModel, **fields)


def validate_row(bucket: str, raw: dict[str, str | None]) -> dict[str, Any]:
    """Coerce one row (DB column names → raw text) or raise CoercionError with every reason."""
    try:
        return row_model(bucket).model_validate(raw).model_dump()
    except ValidationError as exc:
        reasons = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            ctx_error = (err.get("ctx") or {}).get("error")
            reason = str(ctx_error) if ctx_error is not None else err["msg"]
            reasons.append(f"{loc}: {reason}" if loc else reason)
        raise CoercionError("; ".join(reasons)) from None
