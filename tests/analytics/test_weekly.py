"""Weekly reports: the window, totals, growth, top internships, funnel, repeat buyers."""
from datetime import date, timedelta
from decimal import Decimal

import pytest
import time_machine

from analytics.models import WeeklyReport
from analytics.services import week_before, weekly_report_build
from ops.runtime.models import JobRun
from ops.runtime.runner import run_job
from tests.analytics.conftest import local
from tests.factories import CartFactory, EnrollmentFactory, InternshipFactory, OrderFactory, UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

SUNDAY = date(2024, 6, 9)


@pytest.mark.parametrize("run_day,week_start", [
    (date(2024, 6, 16), SUNDAY),           # the scheduled Sunday run: Sunday 9th to Saturday 15th
    (date(2024, 6, 15), date(2024, 6, 2)),  # a Saturday: its own week is not over
    (date(2024, 6, 10), SUNDAY - timedelta(days=7)),
    (date(2024, 6, 22), SUNDAY),
])
def test_the_window_is_the_last_complete_sunday_to_saturday_week(run_day, week_start):
    assert week_before(run_day) == week_start
    assert week_start.weekday() == 6


def _paid(internship, user, day, amount=None, hour=12):
    paid_at = local(day, hour)
    return OrderFactory(internship=internship, user=user, status="paid", created_at=paid_at - timedelta(hours=1),
                        paid_at=paid_at, **({"amount_paise": amount} if amount else {}))


def test_weekly_figures():
    # given a week (Sunday 9th to Saturday 15th) and the week before it
    data, design = InternshipFactory(title="Data"), InternshipFactory(title="Design")
    ann, bob, cy = UserFactory(), UserFactory(), UserFactory()
    for n in range(8):
        CartFactory(internship=data, created_at=local(SUNDAY + timedelta(days=n % 7), 8))
    for n in range(4):
        CartFactory(internship=data, created_at=local(SUNDAY - timedelta(days=1 + n), 8))
    _paid(data, ann, SUNDAY - timedelta(days=3), amount=1000)          # before: ann's first purchase
    _paid(data, ann, SUNDAY, amount=3000)                               # ann buys again: repeat
    bob_first = _paid(design, bob, SUNDAY + timedelta(days=1), amount=5000)
    _paid(design, bob, SUNDAY + timedelta(days=6), amount=5000, hour=23)  # Saturday 23:00 local: in
    _paid(data, cy, SUNDAY + timedelta(days=7), amount=9999, hour=0)   # created Saturday 23:00, paid after
    OrderFactory(internship=data, user=cy, created_at=local(SUNDAY + timedelta(days=2), 9))
    EnrollmentFactory(order=bob_first, internship=design, user=bob, created_at=local(SUNDAY + timedelta(days=1), 13))

    # when
    result = weekly_report_build(week_start=SUNDAY)

    # then
    report = WeeklyReport.objects.get()
    assert (report.week_start, report.week_end) == (SUNDAY, date(2024, 6, 15))
    assert result["week_end"] == "2024-06-15"
    assert report.carts_created == 8
    assert report.orders_created == 5
    assert report.orders_paid == 3
    assert report.enrollments_created == 1
    assert report.revenue_paise == 13000
    assert report.average_order_value_paise == 4333
    assert report.conversion_rate == Decimal("0.3750")
    assert report.revenue_growth == Decimal("12.0000")       # 13000 against 1000
    assert report.orders_paid_growth == Decimal("2.0000")
    assert report.carts_created_growth == Decimal("1.0000")  # 8 against 4
    assert report.enrollments_growth is None                 # nothing to grow from
    assert report.previous["revenue_paise"] == 1000 and report.previous["week_start"] == "2024-06-02"
    assert (report.buyers, report.repeat_buyers) == (2, 2)
    assert [(t["title"], t["revenue_paise"], t["orders_paid"]) for t in report.top_internships] == [
        ("Design", 10000, 2), ("Data", 3000, 1),
    ]
    assert report.funnel == [
        {"step": "carts", "count": 8, "rate": None},
        {"step": "orders", "count": 5, "rate": "0.6250"},
        {"step": "paid", "count": 3, "rate": "0.6000"},
        {"step": "enrolled", "count": 1, "rate": "0.3333"},
    ]


def test_weekly_job_is_idempotent_and_dry_run_writes_nothing():
    _paid(InternshipFactory(), UserFactory(), SUNDAY + timedelta(days=2), amount=700)
    with time_machine.travel(local(date(2024, 6, 16), 3), tick=False):
        dry = run_job("weekly_analytics", dry_run=True)
        assert not WeeklyReport.objects.exists()
        first = run_job("weekly_analytics", trigger=JobRun.Trigger.BEAT)
        again = run_job("weekly_analytics", day=date(2024, 6, 18))

    assert dry.status == first.status == again.status == JobRun.Status.SUCCESS
    assert dry.result["revenue_paise"] == 700
    report = WeeklyReport.objects.get()
    assert report.week_start == SUNDAY and report.revenue_paise == 700
