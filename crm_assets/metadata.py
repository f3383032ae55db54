"""Materialization and check metadata: headline counts first, tables a person reads at a glance.

Step results travel between steps of a run through the run's own folder (`app.step_results`),
not through metadata; metadata is for people. Every value that came from the portal or a file
is escaped before it goes into markdown, so a store name like `<img src=x onerror=...>` or a
`|` renders as text and never breaks a table.
"""

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dagster as dg

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>])")


def md_escape(value: object, limit: int = 200) -> str:
    """Text safe inside a markdown table cell: HTML-escaped, markdown-escaped, one line."""
    text = " ".join(str(value).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=True))


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def rows_by_store_markdown(rows_by_store: Mapping[str, int], failed: Mapping[str, str]) -> str:
    rows = [
        (store, "-", f"failed: {failed[store]}")
        if store in failed
        else (store, rows_by_store[store], "ok")
        for store in sorted(set(rows_by_store) | set(failed))
    ]
    return md_table(["store", "rows", "status"], rows)


def counts(**values: Any) -> dict[str, Any]:
    """Headline numbers as plain metadata entries (None values left out)."""
    return {name: value for name, value in values.items() if value is not None}


def text_entry(value: str) -> dg.MetadataValue:
    return dg.MetadataValue.text(value)
