"""HTML (Jinja2, autoescaped, inline CSS and SVG) and PDF (ReportLab) of a store's report.

Portal text is hostile (a customer called `<script>...`): the HTML templates run with
autoescape on and the chart is built from numbers only; in the PDF every string goes through
`xml_escape` before it reaches a `Paragraph` (ReportLab parses a mini-markup there) or is put
into a table cell as plain text.
"""

import datetime as dt
import io
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape as xml_escape

import jinja2

from app.reports.build import ReportSet, StoreReport
from app.reports.kpis import AGEING_BANDS, TrendPoint

TEMPLATES = Path(__file__).parent / "templates"
CHART_W, CHART_H, PAD = 360, 160, 24

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,  # every `{{ value }}` is HTML-escaped, whatever the file name
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def fmt(value: object) -> str:
    """One way to show a value in HTML and PDF: '-' for unknown, money with two decimals."""
    if value is None:
        return "-"
    if isinstance(value, Decimal):
        return f"{value:,.2f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


_env.filters["fmt"] = fmt


@dataclass(frozen=True)
class Chart:
    """SVG geometry of the month's trend: numbers only, never portal text."""

    width: int
    height: int
    leads: str  # polyline points
    converted: str
    undelivered: str
    max_count: int
    first_day: str
    last_day: str


def _points(values: Sequence[int], top: int) -> str:
    n = max(len(values) - 1, 1)
    span_x, span_y = CHART_W - 2 * PAD, CHART_H - 2 * PAD
    return " ".join(
        f"{PAD + i * span_x / n:.1f},{CHART_H - PAD - v * span_y / top:.1f}"
        for i, v in enumerate(values)
    )


def chart(trend: Sequence[TrendPoint]) -> Chart:
    top = max([1, *(max(p.leads, p.undelivered) for p in trend)])
    return Chart(
        CHART_W,
        CHART_H,
        _points([p.leads for p in trend], top),
        _points([p.converted for p in trend], top),
        _points([p.undelivered for p in trend], top),
        top,
        trend[0].day.isoformat() if trend else "",
        trend[-1].day.isoformat() if trend else "",
    )


def store_html(report: StoreReport) -> str:
    return _env.get_template("store.html.j2").render(
        r=report, k=report.kpis, chart=chart(report.kpis.trend), bands=AGEING_BANDS
    )


def index_html(reports: ReportSet) -> str:
    rows = [(r, r.headline()) for r in reports.reports]
    return _env.get_template("index.html.j2").render(run_date=reports.run_date, rows=rows)


def store_pdf(report: StoreReport) -> bytes:
    """An A4 PDF of the same report (ReportLab platypus; the chart drawn by its graphics)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm
    from reportlab.platypus import SimpleDocTemplate

    from app.reports.pdf import story

    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=15 * mm,
        bottomMargin=15 * mm,
        title=f"Store report {report.store_code} {report.run_date.isoformat()}",
    )
    doc.build(story(report))
    return buffer.getvalue()


def para_text(value: Any) -> str:
    """Text safe inside a ReportLab Paragraph (which parses its own markup)."""
    return xml_escape(fmt(value))
