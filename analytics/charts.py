"""Server-rendered SVG geometry for the report charts: revenue bars and a conversion line.

The page draws what this computes, so the chart needs no JavaScript and no
library from a CDN (the admin may run offline).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

WIDTH, HEIGHT = 900, 260
LEFT, RIGHT, TOP, BOTTOM = 70, 60, 20, 40


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str


@dataclass
class Point:
    x: float
    y: float
    label: str


@dataclass
class Chart:
    title: str
    currency: str
    width: int = WIDTH
    height: int = HEIGHT
    bars: list[Bar] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    revenue_max: str = "0"
    conversion_max: str = "0%"
    first_label: str = ""
    last_label: str = ""
    plot_left: int = LEFT
    plot_right: int = WIDTH - RIGHT
    plot_top: int = TOP
    plot_bottom: int = HEIGHT - BOTTOM

    @property
    def polyline(self) -> str:
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points)


def rupees(paise: int) -> str:
    return f"{paise / 100:,.2f}"


def _nice_ceiling(value: float) -> float:
    """A round axis maximum at or above value (1, 2, 5 x 10^n)."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return float(step * magnitude)
    return float(10 * magnitude)


def build_chart(*, rows: list[dict], first: date, slots: int, step_days: int, key: str, title: str,
                currency: str) -> Chart:
    """One slot per day (or week) from `first`; a slot without a stored report stays empty."""
    chart = Chart(title=title, currency=currency)
    plot_w = chart.plot_right - chart.plot_left
    plot_h = chart.plot_bottom - chart.plot_top
    slot_w = plot_w / slots
    revenue_top = _nice_ceiling(max((r["revenue_paise"] for r in rows), default=0) / 100)
    conversion_top = _nice_ceiling(float(max((r["conversion_rate"] for r in rows), default=Decimal(0))) * 100)
    chart.revenue_max = f"{revenue_top:,.0f}"
    chart.conversion_max = f"{conversion_top:g}%"
    chart.first_label = first.isoformat()
    chart.last_label = (first + timedelta(days=step_days * (slots - 1))).isoformat()
    for row in rows:
        slot = (row[key] - first).days // step_days
        if not 0 <= slot < slots:
            continue
        x = chart.plot_left + slot * slot_w
        height = (row["revenue_paise"] / 100) / revenue_top * plot_h
        rate = float(row["conversion_rate"]) * 100
        chart.bars.append(Bar(
            x=round(x + slot_w * 0.1, 1), y=round(chart.plot_bottom - height, 1),
            width=round(max(slot_w * 0.8, 1), 1), height=round(height, 1),
            label=f"{row[key]}: {rupees(row['revenue_paise'])} {row['currency']}, "
                  f"{row['orders_paid']} paid, conversion {rate:.2f}%",
        ))
        chart.points.append(Point(
            x=round(x + slot_w / 2, 1), y=round(chart.plot_bottom - rate / conversion_top * plot_h, 1),
            label=f"{row[key]}: conversion {rate:.2f}%",
        ))
    return chart
