"""Metadata markdown renders hostile store names and reasons as text.

Store names and reject reasons come from the portal and from files; the UI renders the tables
as GitHub-flavoured markdown. Rendered here with markdown-it (CommonMark + tables, installed
with rich), the output must hold no tag, no link, and exactly one cell per value, each showing
the original text.
"""

import html
import re

import pytest
from markdown_it import MarkdownIt

from crm_assets.metadata import md_escape, md_table, rows_by_store_markdown

HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "](javascript:alert(1))",
    "[click](javascript:alert(1))",
    "a | b || c",
    "<script>alert(1)</script>",
    "**bold** _it_ `code` # not a heading",
    "&lt;already escaped&gt;",
    "back\\slash\\|",
]


def _render(markdown: str) -> str:
    return MarkdownIt("commonmark").enable("table").render(markdown)


def _cells(rendered: str) -> list[list[str]]:
    rows = re.findall(r"<tr>\n(.*?)</tr>", rendered, re.DOTALL)
    return [[html.unescape(c) for c in re.findall(r"<t[dh]>(.*?)</t[dh]>", r)] for r in rows]


def _assert_plain(rendered: str) -> None:
    tags = set(re.findall(r"<\s*([a-zA-Z]+)", rendered))
    assert tags <= {"table", "thead", "tbody", "tr", "th", "td"}, rendered
    assert "href" not in rendered and "<a" not in rendered


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_store_name_or_reason_is_one_cell_of_text(value: str) -> None:
    rendered = _render(md_table(["store", "line", "reason"], [(value, 7, value)]))
    _assert_plain(rendered)
    assert _cells(rendered) == [["store", "line", "reason"], [value, "7", value]]


def test_rows_by_store_escapes_failure_reasons() -> None:
    reason = "<img src=x onerror=alert(1)> | ](javascript:alert(1))"
    rendered = _render(rows_by_store_markdown({"A1": 3}, {"B<2>": reason}))
    _assert_plain(rendered)
    assert _cells(rendered) == [
        ["store", "rows", "status"],
        ["A1", "3", "ok"],
        ["B<2>", "-", f"failed: {reason}"],
    ]


def test_md_escape_keeps_one_line_and_caps_length() -> None:
    assert md_escape("two\nlines\r\n\there") == "two lines here"
    long = md_escape("x" * 500, limit=20)
    assert long.endswith("…") and len(long) == 20
