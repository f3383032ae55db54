"""The PDF's content (ReportLab flowables): same sections, same numbers as the HTML page.

Strings reach ReportLab only as escaped Paragraph text (`render.para_text`), so a name like
`<font size=90>` or `<script>` is printed, not interpreted.
"""

from collections.abc import Sequence
from typing import Any

from reportlab.graphics.shapes import Drawing, PolyLine, String
from reportlab.lib import colors
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.platypus import Flowable, Paragraph, Spacer, Table, TableStyle

from app.reports.build import StoreReport
from app.reports.kpis import AGEING_BANDS, TrendPoint
from app.reports.render import fmt, para_text

_styles = getSampleStyleSheet()
H1, BODY = _styles["Title"], _styles["BodyText"]
# A section heading never ends a page alone: it moves with the table or chart it introduces.
H2 = ParagraphStyle("section", parent=_styles["Heading2"], keepWithNext=1)
SMALL = ParagraphStyle("small", parent=BODY, fontSize=8, leading=10)
WARN = ParagraphStyle("warn", parent=BODY, textColor=colors.HexColor("#9a1b1b"))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    cells = [[Paragraph(para_text(h), SMALL) for h in header]]
    cells += [[Paragraph(para_text(c), SMALL) for c in row] for row in rows]
    table = Table(cells, repeatRows=1, hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8eef6")),
                ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ]
        )
    )
    return table


def trend_drawing(trend: Sequence[TrendPoint], width: float = 480, height: float = 150) -> Drawing:
    """Leads, conversions and open orders per day as three poly-lines (ReportLab graphics)."""
    drawing = Drawing(width, height)
    top = max([1, *(max(p.leads, p.undelivered) for p in trend)])
    n = max(len(trend) - 1, 1)
    pad = 20

    def line(values: list[int], color: Any) -> PolyLine:
        points: list[float] = []
        for i, v in enumerate(values):
            points += [pad + i * (width - 2 * pad) / n, pad + v * (height - 2 * pad) / top]
        return PolyLine(points, strokeColor=color, strokeWidth=1.5)

    drawing.add(PolyLine([pad, pad, width - pad, pad], strokeColor=colors.grey))
    drawing.add(line([p.leads for p in trend], colors.HexColor("#1f77b4")))
    drawing.add(line([p.converted for p in trend], colors.HexColor("#2ca02c")))
    drawing.add(line([p.undelivered for p in trend], colors.HexColor("#d62728")))
    drawing.add(String(pad, height - 10, f"max {top}", fontSize=7))
    drawing.add(String(pad, 4, "leads (blue), converted (green), undelivered (red)", fontSize=7))
    return drawing


def _kpi_rows(report: StoreReport) -> list[list[Any]]:
    k = report.kpis
    rows: list[list[Any]] = []
    if k.leads:
        rows += [
            ["Missed leads (month to date)", k.leads.total],
            ["Converted", k.leads.converted],
            ["Conversion %", k.leads.conversion_pct],
        ]
        rows += [[f"Type: {t}", f"{n} ({c} conv.)"] for t, n, c in k.leads.by_customer_type]
        rows += [[f"Source: {s}", f"{n} ({c} conv.)"] for s, n, c in k.leads.by_source]
    if k.orders:
        rows += [["Undelivered orders", k.orders.count], ["Net amount", k.orders.net_amount]]
        rows += [[f"Days late {b}", k.orders.ageing[b]] for b in AGEING_BANDS]
        rows += [[b.capitalize(), k.orders.ageing[b]] for b in ("not due", "no expected date")]
    if k.repeat:
        rows += [["Repeat customers: Yes", k.repeat.yes], ["Repeat customers: No", k.repeat.no]]
    return rows


def _since_rows(report: StoreReport) -> list[list[Any]]:
    s = report.kpis.since
    return [
        ["Leads converted", s.leads_converted],
        ["New leads", s.new_leads],
        ["Orders delivered", s.orders_delivered],
        ["New undelivered orders", s.new_undelivered],
        ["Repeat status changes", s.repeat_status_changes],
    ]


def story(report: StoreReport) -> list[Flowable]:
    title = f"{report.store_code} {report.store_name or ''} - {fmt(report.run_date)}"
    out: list[Flowable] = [Paragraph(para_text(title), H1)]
    for status in report.not_reconciled:
        text = f"{status.bucket} is not reconciled for this date: {status.reason}"
        out.append(Paragraph(para_text(text), WARN))
    out += [Paragraph("Month to date", H2), _table(["figure", "value"], _kpi_rows(report))]
    out.append(Paragraph("Since yesterday", H2))
    if report.kpis.since.note:
        out.append(Paragraph(para_text(report.kpis.since.note), SMALL))
    out += [_table(["change", "count"], _since_rows(report))]
    out += [Paragraph("Daily trend", H2), trend_drawing(report.kpis.trend), Spacer(1, 6)]
    out.append(Paragraph(para_text(f"Leads to call ({len(report.leads_to_call)})"), H2))
    leads = [[x.pickup_no, x.name, x.mobile, x.pickup_date, x.source] for x in report.leads_to_call]
    out.append(_table(["pickup", "name", "mobile", "pickup date", "source"], leads))
    out.append(Paragraph(para_text(f"Orders to deliver ({len(report.orders_to_deliver)})"), H2))
    out.append(
        _table(
            ["order", "customer", "mobile", "expected", "days late", "amount"],
            [
                [o.order_id, o.customer, o.mobile, o.expected, o.days_late, o.amount]
                for o in report.orders_to_deliver
            ],
        )
    )
    return out
