"""Reads of the analytics app: the checkout tables rolled up by local day, and report series.

`rollup(start, end)` costs a fixed number of grouped queries whatever the number
of rows or days: one scan per source table (orders, refunds, carts, enrollments)
finds the rows with any of its events (order created, paid, expired; cart
created, abandoned, converted) in the range by range predicates on their indexed
timestamps, and groups them by each event's local date in CHECKOUT_TIME_ZONE,
so a day is 23 or 25 hours long across DST and an order paid at 00:30 local time
counts for that local day. The zone's rules are applied to each row only in a
range that crosses a change of its UTC offset (see
`checkout.rollups`): they cost more than the rest of a
row's work.

The tracked counters (DailyCounter) are already kept by local day: announced by
the apps as they change things, they are read as they are, one query per range.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Iterable

from django.conf import settings
from django.db.models import Count, OuterRef, Subquery, Sum

from analytics.models import DailyCounter, DailyReport, WeeklyReport
from carts.selectors import cart_counts_by_day
from checkout.rollups import events_by_local_day
from checkout.timezones import local_days_span
from orders.models import Enrollment, Internship, Order
from payments.models import Payment

COUNT_FIELDS = (
    "carts_created", "carts_abandoned", "carts_converted",
    "orders_created", "orders_paid", "orders_expired", "enrollments_created",
)
MONEY_FIELDS = ("revenue_paise", "refunds_paise")
RATE_PLACES = Decimal("0.0001")


@dataclass
class Line:
    """One internship's figures in one currency over a day (or a sum of days)."""

    internship_id: int | None
    currency: str
    title: str = ""
    carts_created: int = 0
    carts_abandoned: int = 0
    carts_converted: int = 0
    orders_created: int = 0
    orders_paid: int = 0
    orders_expired: int = 0
    enrollments_created: int = 0
    revenue_paise: int = 0
    refunds_paise: int = 0



Lines = dict[tuple[int | None, str], Line]
# {subject: {counter: value}}, as the apps announced them (see analytics.tasks).
Tracked = dict[str, dict[str, int]]


def ratio(numerator: int, denominator: int) -> Decimal:
    """numerator / denominator to four places, 0 when the denominator is 0."""
    if not denominator:
        return Decimal("0.0000")
    return (Decimal(numerator) / Decimal(denominator)).quantize(RATE_PLACES, ROUND_HALF_UP)


def growth(current: int, previous: int) -> Decimal | None:
    """(current - previous) / previous to four places; None when there is nothing to grow from."""
    if not previous:
        return None
    return ratio(current - previous, previous)


def _round_div(numerator: int, denominator: int) -> int:
    return int((Decimal(numerator) / Decimal(denominator)).quantize(Decimal(1), ROUND_HALF_UP)) if denominator else 0


def rollup(start: date, end: date) -> dict[date, Lines]:
    """Every local day in [start, end) with its figures per (internship, currency)."""
    if end <= start:
        raise ValueError(f"empty range: {start} to {end}")
    days: dict[date, Lines] = {start + timedelta(days=n): {} for n in range((end - start).days)}

    def line(day: date, internship_id: int | None, currency: str) -> Line:
        return days[day].setdefault((internship_id, currency), Line(internship_id, currency))

    # One scan of the orders answers created, paid and expired: an order counts once for each of its
    # events in the range, on that event's local day.
    orders = events_by_local_day(
        Order.objects.all(), {"created": "created_at", "paid": "paid_at", "expired": "expired_at"}, start, end,
        group=("internship_id", "currency"), amounts={"paid": "amount_paise"},
    )
    for day, event, key, n, amount in orders:
        target = line(day, *key)
        if event == "created":
            target.orders_created += n
        elif event == "paid":
            target.orders_paid += n
            target.revenue_paise += amount
        else:
            target.orders_expired += n
    # Refunds are dated by the payment that returned the money (partial refunds included). Each one's
    # internship is looked up by its order's key: a join would let the planner read every order.
    internship_of_order = Order.objects.filter(pk=OuterRef("order_id")).order_by().values("internship_id")[:1]
    refunds = Payment.objects.filter(refunded_paise__gt=0).annotate(order_internship_id=Subquery(internship_of_order))
    for day, _, key, _, amount in events_by_local_day(
        refunds, {"refunded": "refunded_at"}, start, end, group=("order_internship_id", "currency"),
        amounts={"refunded": "refunded_paise"},
    ):
        line(day, *key).refunds_paise += amount

    # Carts and enrollments carry no currency: they go on their internship's currency line.
    per_internship: dict[date, dict[int | None, dict[str, int]]] = {
        day: dict(counts) for day, counts in cart_counts_by_day(start, end).items()
    }
    for day, _, (internship_id,), n, _ in events_by_local_day(
        Enrollment.objects.all(), {"created": "created_at"}, start, end, group=("internship_id",)
    ):
        counts = per_internship.setdefault(day, {}).setdefault(internship_id, {})
        counts["enrollments"] = counts.get("enrollments", 0) + n

    ids = {key[0] for lines in days.values() for key in lines} | {
        internship_id for counts in per_internship.values() for internship_id in counts
    }
    ids.discard(None)
    internships = {
        i["id"]: i for i in Internship.objects.filter(id__in=ids).order_by().values("id", "title", "currency")
    }
    for day, counts in per_internship.items():
        for internship_id, n in counts.items():
            known = internships.get(internship_id)
            target = line(day, internship_id, known["currency"] if known else settings.CHECKOUT_CURRENCY)
            target.carts_created += n.get("created", 0)
            target.carts_abandoned += n.get("abandoned", 0)
            target.carts_converted += n.get("converted", 0)
            target.enrollments_created += n.get("enrollments", 0)
    for lines in days.values():
        for item in lines.values():
            known = internships.get(item.internship_id)
            item.title = known["title"] if known else "(no internship)"
    return days


def tracked_by_day(start: date, end: date) -> dict[date, Tracked]:
    """The tracked counters of every local day in [start, end) ({} for a day without any), in one query."""
    if end <= start:
        raise ValueError(f"empty range: {start} to {end}")
    days: dict[date, Tracked] = {start + timedelta(days=n): {} for n in range((end - start).days)}
    rows = (
        DailyCounter.objects.filter(day__gte=start, day__lt=end)
        .order_by("day", "subject", "name").values_list("day", "subject", "name", "value")
    )
    for day, subject, name, value in rows:
        days[day].setdefault(subject, {})[name] = value
    return days


def tracked_totals(start: date, end: date) -> Tracked:
    """The tracked counters of local days [start, end), summed in SQL."""
    rows = (
        DailyCounter.objects.filter(day__gte=start, day__lt=end)
        .order_by("subject", "name").values_list("subject", "name").annotate(total=Sum("value"))
    )
    summed: Tracked = {}
    for subject, name, total in rows:
        summed.setdefault(subject, {})[name] = total
    return summed


def expired_cart_age_average(tracked: Tracked) -> int | None:
    """Mean age of the carts cart_cleanup deleted, in whole seconds; None when it deleted none."""
    carts = tracked.get("carts", {})
    if not carts.get("expired"):
        return None
    return _round_div(carts.get("expired_age_seconds", 0), carts["expired"])


def merge_lines(many: Iterable[Lines]) -> Lines:
    """Sum the lines of several days."""
    merged: Lines = {}
    for lines in many:
        for key, item in lines.items():
            total = merged.setdefault(key, Line(item.internship_id, item.currency, item.title))
            for name in COUNT_FIELDS + MONEY_FIELDS:
                setattr(total, name, getattr(total, name) + getattr(item, name))
    return merged


def totals(lines: Iterable[Line], currency: str) -> dict:
    """Report totals: counts over every currency, money in `currency`, other currencies kept apart."""
    result = {name: 0 for name in COUNT_FIELDS}
    by_currency: dict[str, dict[str, int]] = {}
    for item in lines:
        for name in COUNT_FIELDS:
            result[name] += getattr(item, name)
        if item.orders_paid or item.revenue_paise or item.refunds_paise:
            money = by_currency.setdefault(
                item.currency, {"orders_paid": 0, "revenue_paise": 0, "refunds_paise": 0}
            )
            money["orders_paid"] += item.orders_paid
            money["revenue_paise"] += item.revenue_paise
            money["refunds_paise"] += item.refunds_paise
    main = by_currency.get(currency, {"orders_paid": 0, "revenue_paise": 0, "refunds_paise": 0})
    result.update(
        currency=currency,
        revenue_paise=main["revenue_paise"],
        refunds_paise=main["refunds_paise"],
        average_order_value_paise=_round_div(main["revenue_paise"], main["orders_paid"]),
        conversion_rate=ratio(result["orders_paid"], result["carts_created"]),
        revenue_by_currency=dict(sorted(by_currency.items())),
    )
    return result


def buyers(start: date, end: date) -> tuple[int, int]:
    """(buyers, repeat buyers) of local days [start, end): distinct users with an order paid then,
    and those of them with at least two paid orders by the end (earlier purchases included)."""
    start_at, end_at = local_days_span(start, end)
    paid_then = Order.objects.filter(paid_at__gte=start_at, paid_at__lt=end_at, user_id__isnull=False).order_by()
    count = paid_then.aggregate(n=Count("user_id", distinct=True))["n"]
    repeat = (
        Order.objects.filter(paid_at__lt=end_at, user_id__in=paid_then.values("user_id"))
        .order_by()
        .values("user_id")
        .annotate(n=Count("id"))
        .filter(n__gte=2)
        .count()
    )
    return count, repeat


def daily_series(*, last: date, days: int) -> list[dict]:
    """Stored daily reports of the `days` local dates ending with `last`, oldest first."""
    return list(
        DailyReport.objects.filter(date__gt=last - timedelta(days=days), date__lte=last)
        .order_by("date")
        .values("date", "currency", "revenue_paise", "orders_paid", "carts_created", "conversion_rate")
    )


def weekly_series(*, last: date, days: int) -> list[dict]:
    """Stored weekly reports whose window starts within the `days` local dates ending with `last`."""
    return list(
        WeeklyReport.objects.filter(week_start__gt=last - timedelta(days=days), week_start__lte=last)
        .order_by("week_start")
        .values("week_start", "currency", "revenue_paise", "orders_paid", "carts_created", "conversion_rate")
    )
