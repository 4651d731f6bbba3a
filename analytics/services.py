"""Writes of the analytics app: daily and weekly reports, and batched counters."""
from __future__ import annotations

from datetime import date, timedelta
from typing import Callable

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from analytics.models import DailyCounter, DailyInternshipReport, DailyReport, TrackReceipt, WeeklyReport
from analytics.selectors import (
    COUNT_FIELDS,
    MONEY_FIELDS,
    Line,
    buyers,
    expired_cart_age_average,
    growth,
    merge_lines,
    ratio,
    rollup,
    totals,
    tracked_by_day,
    tracked_totals,
)
from checkout.timezones import local_today

# Days rolled up and written per round in a backfill: bounds the memory a round holds
# (days x internships x currencies lines) while keeping the statements per day tiny.
BACKFILL_CHUNK_DAYS = 31
# Rows of per-internship lines in one INSERT: bounds a statement's size, not the round's.
LINES_PER_STATEMENT = 2000
TOP_INTERNSHIPS = 10
WEEK = timedelta(days=7)

Progress = Callable[[int, int | None, str], None]


def _jsonable(figures: dict) -> dict:
    """The figures as a job's result shows them: plain JSON, with the figures derived from them."""
    shown = {k: str(v) if k.endswith(("_rate", "_growth")) and v is not None else v for k, v in figures.items()}
    return {**shown, "average_expired_cart_age_seconds": expired_cart_age_average(figures["tracked"])}


@transaction.atomic
def daily_reports_store(*, reports: list[tuple[date, dict, list[Line]]]) -> None:
    """Write the reports of several days (day, figures, lines) and their per-internship lines,
    replacing what was there.

    The same few statements for one day or a round of a backfill: an upsert of every report, one
    delete of their old lines and an insert of the new ones, in one transaction.
    """
    if not reports:
        return
    now = timezone.now()
    stored = DailyReport.objects.bulk_create(
        [DailyReport(date=day, computed_at=now, **figures) for day, figures, _ in reports],
        update_conflicts=True, unique_fields=["date"], update_fields=[*reports[0][1], "computed_at"],
    )
    DailyInternshipReport.objects.filter(report__in=stored).delete()
    DailyInternshipReport.objects.bulk_create(
        (
            DailyInternshipReport(
                report=report, internship_id=item.internship_id, title=item.title, currency=item.currency,
                **{name: getattr(item, name) for name in COUNT_FIELDS + MONEY_FIELDS},
            )
            for report, (_, _, lines) in zip(stored, reports)
            for item in lines
        ),
        batch_size=LINES_PER_STATEMENT,
    )


def daily_reports_build(
    *, start: date, end: date, dry_run: bool = False, on_progress: Progress | None = None
) -> list[dict]:
    """Build the daily reports of local days [start, end), BACKFILL_CHUNK_DAYS days per round: each
    round's rollup, then its reports written in one transaction.

    Rerunning replaces each day's report. With dry_run the figures are computed
    and returned but nothing is written.
    """
    if end <= start:
        raise ValueError(f"no days from {start} to {end}")
    currency = settings.CHECKOUT_CURRENCY
    total_days = (end - start).days
    built: list[dict] = []
    chunk_start = start
    while chunk_start < end:
        chunk_end = min(chunk_start + timedelta(days=BACKFILL_CHUNK_DAYS), end)
        tracked = tracked_by_day(chunk_start, chunk_end)
        reports = []
        for day, lines in rollup(chunk_start, chunk_end).items():
            ordered = sorted(lines.values(), key=lambda item: (-item.revenue_paise, item.title, item.currency))
            reports.append((day, {**totals(ordered, currency), "tracked": tracked[day]}, ordered))
        if not dry_run:
            daily_reports_store(reports=reports)
        for day, figures, _ in reports:
            built.append({"date": day.isoformat(), **_jsonable(figures)})
            if on_progress is not None:
                on_progress(len(built), total_days, day.isoformat())
        chunk_start = chunk_end
    return built


def week_before(day: date) -> date:
    """First day (a Sunday) of the last complete Sunday-to-Saturday week before `day`."""
    back_to_saturday = (day.weekday() - 5) % 7 or 7
    return day - timedelta(days=back_to_saturday + 6)


def _funnel(figures: dict) -> list[dict]:
    steps = [
        ("carts", figures["carts_created"]),
        ("orders", figures["orders_created"]),
        ("paid", figures["orders_paid"]),
        ("enrolled", figures["enrollments_created"]),
    ]
    return [
        {"step": step, "count": count, "rate": None if i == 0 else str(ratio(count, steps[i - 1][1]))}
        for i, (step, count) in enumerate(steps)
    ]


def weekly_report_build(*, week_start: date, dry_run: bool = False) -> dict:
    """Build the report of the seven local days from `week_start`, against the seven before."""
    currency = settings.CHECKOUT_CURRENCY
    days = rollup(week_start - WEEK, week_start + WEEK)
    current = merge_lines(lines for day, lines in days.items() if day >= week_start)
    previous = merge_lines(lines for day, lines in days.items() if day < week_start)
    figures = totals(current.values(), currency)
    before = totals(previous.values(), currency)
    buyer_count, repeat_count = buyers(week_start, week_start + WEEK)
    # Ranked in the report's currency first; amounts in other currencies are never compared with it.
    ranked = sorted(
        (item for item in current.values() if item.orders_paid or item.revenue_paise),
        key=lambda item: (item.currency != currency, item.currency, -item.revenue_paise, item.title),
    )
    figures.update(
        week_end=week_start + WEEK - timedelta(days=1),
        revenue_growth=growth(figures["revenue_paise"], before["revenue_paise"]),
        orders_paid_growth=growth(figures["orders_paid"], before["orders_paid"]),
        carts_created_growth=growth(figures["carts_created"], before["carts_created"]),
        enrollments_growth=growth(figures["enrollments_created"], before["enrollments_created"]),
        previous={
            "week_start": (week_start - WEEK).isoformat(),
            **{name: before[name] for name in COUNT_FIELDS + MONEY_FIELDS},
            "conversion_rate": str(before["conversion_rate"]),
        },
        buyers=buyer_count,
        repeat_buyers=repeat_count,
        top_internships=[
            {
                "internship_id": item.internship_id, "title": item.title, "currency": item.currency,
                "revenue_paise": item.revenue_paise, "orders_paid": item.orders_paid,
            }
            for item in ranked[:TOP_INTERNSHIPS]
        ],
        funnel=_funnel(figures),
        tracked=tracked_totals(week_start, week_start + WEEK),
    )
    if not dry_run:
        WeeklyReport.objects.update_or_create(
            week_start=week_start, defaults={**figures, "computed_at": timezone.now()}
        )
    return {"week_start": week_start.isoformat(), **_jsonable(figures), "week_end": figures["week_end"].isoformat()}


def counters_track(*, key: str, day: date, subject: str, counters: dict[str, int]) -> bool:
    """Add `counters` to the running totals of (`day`, `subject`) once per `key`, in one statement.

    Returns False when `key` was already counted (a redelivered task), changing nothing.
    """
    if not key or not subject:
        raise ValueError("a key and a subject are required")
    bad = [name for name, value in counters.items() if not name or type(value) is not int]
    if bad:
        raise ValueError(f"counters must be named integers: {', '.join(map(repr, bad))}")
    receipts = TrackReceipt._meta.db_table
    table = DailyCounter._meta.db_table
    key_column = connection.ops.quote_name("key")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {receipts} ({key_column}, created_at) VALUES (%s, %s)"
            f" ON CONFLICT ({key_column}) DO NOTHING",
            [key, connection.ops.adapt_datetimefield_value(timezone.now())],
        )
        if cursor.rowcount == 0:
            return False
        if counters:
            rows = sorted(counters.items())
            cursor.execute(
                f"INSERT INTO {table} (day, subject, name, value) VALUES "
                + ", ".join(["(%s, %s, %s, %s)"] * len(rows))
                + f" ON CONFLICT (day, subject, name) DO UPDATE SET value = {table}.value + excluded.value",
                [v for name, value in rows for v in (day.isoformat(), subject, name, value)],
            )
    return True


def track_receipts_prune(*, keep: timedelta = timedelta(days=7)) -> int:
    """Forget receipts older than any redelivery could be; returns how many went."""
    deleted, _ = TrackReceipt.objects.filter(created_at__lt=timezone.now() - keep).delete()
    return deleted


def default_report_day() -> date:
    return local_today() - timedelta(days=1)
