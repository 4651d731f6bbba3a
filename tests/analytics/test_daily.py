"""Daily reports: every field against figures computed independently from the rows."""
from datetime import date, datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

import pytest
import time_machine

from analytics.models import DailyInternshipReport, DailyReport
from analytics.selectors import rollup
from analytics.services import daily_reports_build
from carts.models import Cart
from ops.runtime.models import JobRun
from ops.runtime.runner import run_job
from tests.analytics.conftest import expected_by_day, local
from tests.factories import CartFactory, EnrollmentFactory, InternshipFactory, OrderFactory, PaymentFactory

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

COUNTS = ("carts_created", "carts_abandoned", "carts_converted", "orders_created", "orders_paid",
          "orders_expired", "enrollments_created")


def _report_figures(report: DailyReport) -> dict:
    return {name: getattr(report, name) for name in (*COUNTS, "revenue_paise", "refunds_paise",
                                                     "average_order_value_paise", "revenue_by_currency")}


def test_every_field_matches_independent_figures(seeded):
    # given three days of random activity around local midnights
    expected = expected_by_day()
    first, last = min(expected), max(expected)
    assert (last - first).days >= 3

    # when
    daily_reports_build(start=first, end=last + timedelta(days=1))

    # then
    for day, figures in expected.items():
        report = DailyReport.objects.get(date=day)
        want = {name: figures["totals"].get(name, 0) for name in COUNTS}
        want.update(
            revenue_paise=figures["totals"]["revenue_paise"],
            refunds_paise=figures["totals"]["refunds_paise"],
            average_order_value_paise=figures["totals"]["average_order_value_paise"],
            revenue_by_currency=figures["totals"]["revenue_by_currency"],
        )
        assert _report_figures(report) == want, day
        carts = want["carts_created"]
        assert report.conversion_rate == (
            (Decimal(want["orders_paid"]) / carts).quantize(Decimal("0.0001")) if carts else Decimal(0)
        )
        assert report.currency == "INR"
        lines = {
            (line.internship_id, line.currency): {
                name: getattr(line, name) for name in (*COUNTS, "revenue_paise", "refunds_paise")
                if getattr(line, name)
            }
            for line in report.internships.all()
        }
        assert lines == figures["lines"], day
    # The seed really exercised every figure and both currencies.
    reports = DailyReport.objects.all()
    for name in (*COUNTS, "revenue_paise", "refunds_paise"):
        assert any(getattr(r, name) for r in reports), name
    assert any("USD" in r.revenue_by_currency for r in reports)


def test_a_payment_at_half_past_midnight_counts_for_that_local_day():
    # given an order paid at 00:30 in Kolkata: 19:00 UTC the day before
    day = date(2024, 6, 10)
    paid_at = local(day, 0, 30)
    assert paid_at.astimezone(dt_timezone.utc).date() == day - timedelta(days=1)
    OrderFactory(status="paid", amount_paise=1000, created_at=paid_at, paid_at=paid_at)
    late = local(day, 23, 59)
    OrderFactory(status="paid", amount_paise=7, created_at=late, paid_at=late)

    # when
    daily_reports_build(start=day - timedelta(days=1), end=day + timedelta(days=2))

    # then
    reports = {r.date: r for r in DailyReport.objects.all()}
    assert reports[day - timedelta(days=1)].orders_paid == 0
    assert (reports[day].orders_paid, reports[day].revenue_paise) == (2, 1007)
    assert reports[day + timedelta(days=1)].orders_paid == 0


@pytest.mark.parametrize("day,hours", [(date(2024, 3, 31), 23), (date(2024, 10, 27), 25)])
def test_dst_days_are_23_and_25_hours_long(settings, day, hours):
    # given London, whose clocks change on these days, and an order in every UTC half hour around
    settings.CHECKOUT_TIME_ZONE = "Europe/London"
    start = datetime.combine(day - timedelta(days=2), datetime.min.time(), tzinfo=dt_timezone.utc)
    for half_hours in range(5 * 24 * 2):
        moment = start + timedelta(minutes=30 * half_hours)
        OrderFactory(amount_paise=100, created_at=moment, status="paid", paid_at=moment)

    # when
    daily_reports_build(start=day - timedelta(days=1), end=day + timedelta(days=2))

    # then the day holds as many half hours as it is long, and none is lost or counted twice
    reports = {r.date: r for r in DailyReport.objects.all()}
    assert reports[day].orders_created == hours * 2
    assert reports[day].revenue_paise == hours * 2 * 100
    assert reports[day - timedelta(days=1)].orders_paid == 48
    assert reports[day + timedelta(days=1)].orders_paid == 48


def test_an_empty_day_has_a_report_of_zeros():
    daily_reports_build(start=date(2024, 1, 1), end=date(2024, 1, 2))

    report = DailyReport.objects.get()
    assert report.date == date(2024, 1, 1)
    assert all(getattr(report, name) == 0 for name in (*COUNTS, "revenue_paise", "refunds_paise",
                                                          "average_order_value_paise"))
    assert report.conversion_rate == Decimal("0")
    assert report.revenue_by_currency == {}
    assert not report.internships.exists()


def test_rerun_replaces_the_report():
    # given a report of a day
    day = date(2024, 6, 10)
    order = OrderFactory(status="paid", created_at=local(day, 10), paid_at=local(day, 11))
    CartFactory(internship=order.internship, created_at=local(day, 9))
    daily_reports_build(start=day, end=day + timedelta(days=1))
    first = DailyReport.objects.get(date=day)

    # when the data changes and the day is built again, twice
    OrderFactory(internship=order.internship, status="paid", amount_paise=5, created_at=local(day, 12),
                 paid_at=local(day, 13))
    daily_reports_build(start=day, end=day + timedelta(days=1))
    daily_reports_build(start=day, end=day + timedelta(days=1))

    # then one report, one line per internship, with the new figures
    report = DailyReport.objects.get(date=day)
    assert report.pk == first.pk
    assert report.orders_paid == 2
    assert report.revenue_paise == order.amount_paise + 5
    assert report.conversion_rate == Decimal("2")
    assert DailyInternshipReport.objects.count() == 1
    assert report.internships.get().orders_paid == 2


def test_dry_run_computes_and_writes_nothing():
    day = date(2024, 6, 10)
    OrderFactory(status="paid", amount_paise=300, created_at=local(day, 10), paid_at=local(day, 11))

    built = daily_reports_build(start=day, end=day + timedelta(days=1), dry_run=True)

    assert built[0]["revenue_paise"] == 300
    assert not DailyReport.objects.exists()


def test_orders_in_another_currency_are_kept_apart():
    day = date(2024, 6, 10)
    OrderFactory(status="paid", amount_paise=100000, created_at=local(day, 10), paid_at=local(day, 10))
    OrderFactory(status="paid", amount_paise=100000, created_at=local(day, 10), paid_at=local(day, 10))
    OrderFactory(status="paid", amount_paise=2500, currency="USD", created_at=local(day, 10), paid_at=local(day, 10))

    daily_reports_build(start=day, end=day + timedelta(days=1))

    report = DailyReport.objects.get()
    assert (report.orders_paid, report.revenue_paise, report.average_order_value_paise) == (3, 200000, 100000)
    assert report.revenue_by_currency["USD"] == {"orders_paid": 1, "revenue_paise": 2500, "refunds_paise": 0}


def test_rollup_costs_the_same_queries_for_one_day_or_sixty(django_assert_num_queries):
    # given activity on many days
    internship = InternshipFactory()
    for n in range(60):
        day = date(2024, 1, 1) + timedelta(days=n)
        order = OrderFactory(internship=internship, status="paid", created_at=local(day, 1), paid_at=local(day, 2))
        EnrollmentFactory(order=order, internship=internship, user=order.user, created_at=local(day, 3))
        PaymentFactory(order=order, refunded_paise=1, refunded_at=local(day, 4))
        CartFactory(internship=internship, created_at=local(day, 1))

    # when/then: one day and sixty days take the same fixed number of queries: one scan of each source
    # table (orders, refunds, carts, cart tallies, enrollments) and one of the internships named
    with django_assert_num_queries(6):
        rollup(date(2024, 1, 1), date(2024, 1, 2))
    with django_assert_num_queries(6):
        days = rollup(date(2024, 1, 1), date(2024, 3, 1))
    assert sum(line.orders_paid for lines in days.values() for line in lines.values()) == 60


def test_each_event_of_a_row_counts_on_its_own_day_and_only_inside_the_range():
    # given an order created on day 1, paid on day 2 and refunded on day 3; an order created the day before
    # the range and expired on day 1; a cart created on day 2 and abandoned the day after the range
    day1 = date(2024, 6, 10)
    internship = InternshipFactory()
    paid = OrderFactory(internship=internship, status="paid", amount_paise=1234, created_at=local(day1, 23, 59),
                        paid_at=local(day1 + timedelta(days=1), 0, 1))
    PaymentFactory(order=paid, refunded_paise=34, refunded_at=local(day1 + timedelta(days=2), 9))
    OrderFactory(internship=internship, status="expired", created_at=local(day1 - timedelta(days=1), 12),
                 expired_at=local(day1, 12))
    CartFactory(internship=internship, status="abandoned", created_at=local(day1 + timedelta(days=1), 8),
                abandoned_at=local(day1 + timedelta(days=3), 8))

    # when the three days are rolled up together, and one by one
    together = rollup(day1, day1 + timedelta(days=3))
    alone = {day: rollup(day, day + timedelta(days=1))[day] for day in together}

    # then each event counts once, on its local day, and nothing outside the range counts
    figures = {
        day: [(line.orders_created, line.orders_paid, line.revenue_paise, line.orders_expired, line.refunds_paise,
               line.carts_created, line.carts_abandoned) for line in lines.values()]
        for day, lines in together.items()
    }
    assert figures == {
        day1: [(1, 0, 0, 1, 0, 0, 0)],
        day1 + timedelta(days=1): [(0, 1, 1234, 0, 0, 1, 0)],
        day1 + timedelta(days=2): [(0, 0, 0, 0, 34, 0, 0)],
    }
    assert {day: [vars(line) for line in lines.values()] for day, lines in alone.items()} == {
        day: [vars(line) for line in lines.values()] for day, lines in together.items()
    }


def test_carts_deleted_by_cart_cleanup_still_count():
    # given carts created yesterday, one abandoned, that cart_cleanup deletes before the 02:00 report
    day = date(2024, 6, 9)
    internship = InternshipFactory()
    CartFactory(internship=internship, created_at=local(day, 1))
    CartFactory(internship=internship, created_at=local(day, 1, 30), status="abandoned",
                abandoned_at=local(day, 3))
    with time_machine.travel(local(day + timedelta(days=1), 1, 45), tick=False):
        cleanup = run_job("cart_cleanup")
    assert cleanup.status == JobRun.Status.SUCCESS and not Cart.objects.exists()

    # when
    daily_reports_build(start=day, end=day + timedelta(days=1))

    # then
    report = DailyReport.objects.get(date=day)
    assert (report.carts_created, report.carts_abandoned) == (2, 1)
    assert report.internships.get().carts_created == 2


def test_job_reports_yesterday_by_default_and_a_given_date():
    # given an order paid yesterday (local) and one paid on an earlier date
    OrderFactory(status="paid", amount_paise=111, created_at=local(date(2024, 6, 9), 10),
                 paid_at=local(date(2024, 6, 9), 23, 45))
    OrderFactory(status="paid", amount_paise=222, created_at=local(date(2024, 6, 1), 10),
                 paid_at=local(date(2024, 6, 1), 11))

    with time_machine.travel(local(date(2024, 6, 10), 2, 0), tick=False):
        # when the scheduled run comes at 02:00
        scheduled = run_job("daily_analytics", trigger=JobRun.Trigger.BEAT)
        # and someone reports a date by hand
        manual = run_job("daily_analytics", day=date(2024, 6, 1))
        today = run_job("daily_analytics", day=date(2024, 6, 10))

    # then
    assert scheduled.status == manual.status == JobRun.Status.SUCCESS
    assert scheduled.result["date"] == "2024-06-09" and scheduled.result["revenue_paise"] == 111
    assert scheduled.counts == {"days": 1, "reports_written": 1, "receipts_pruned": 0}
    assert DailyReport.objects.get(date=date(2024, 6, 1)).revenue_paise == 222
    assert today.status == JobRun.Status.FAILED and "not over yet" in today.error
    assert not today.traceback


def test_job_dry_run_writes_nothing():
    with time_machine.travel(local(date(2024, 6, 10), 2, 0), tick=False):
        run = run_job("daily_analytics", dry_run=True)
    assert run.status == JobRun.Status.SUCCESS
    assert run.result["date"] == "2024-06-09"
    assert not DailyReport.objects.exists()


@pytest.mark.parametrize("params,message", [
    ({"from": "2024-06-05", "to": "2024-06-01"}, "is after"),
    ({"from": "2024-13-01", "to": "2024-06-01"}, "YYYY-MM-DD"),
    ({"from": "2024-06-01"}, "both"),
])
def test_job_range_errors_are_clear_and_write_nothing(params, message):
    with time_machine.travel(local(date(2024, 6, 10), 2, 0), tick=False):
        run = run_job("daily_analytics", params=params)
    assert run.status == JobRun.Status.FAILED
    assert message in run.error and not run.traceback
    assert not DailyReport.objects.exists()
