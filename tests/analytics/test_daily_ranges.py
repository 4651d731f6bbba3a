"""A range of days built in one go, or in chunks, gives exactly the reports of each day built alone."""
import random
from datetime import date, timedelta
from decimal import Decimal

import pytest

from analytics.models import DailyInternshipReport, DailyReport
from analytics.services import BACKFILL_CHUNK_DAYS, daily_reports_build
from carts.models import CartDayTally
from ops.runtime.models import JobRun
from ops.runtime.runner import run_job
from tests.analytics.conftest import local
from tests.factories import (
    CartFactory,
    EnrollmentFactory,
    InternshipFactory,
    OrderFactory,
    PaymentFactory,
    UserFactory,
)

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

# Forty local days: two rounds of a backfill, and London's spring change of clocks (2024-03-31) in the first.
FIRST = date(2024, 3, 10)
DAYS = 40
END = FIRST + timedelta(days=DAYS)
LINE_FIELDS = ("internship_id", "title", "currency", "carts_created", "carts_abandoned", "carts_converted",
               "orders_created", "orders_paid", "orders_expired", "enrollments_created", "revenue_paise",
               "refunds_paise")


def seed() -> None:
    """Carts, orders, payments with refunds and enrollments on every day, many a minute from a local midnight."""
    rng = random.Random(20240310)
    internships = [
        InternshipFactory(title="Data", price_paise=499900),
        InternshipFactory(title="Design", price_paise=250050),
        InternshipFactory(title="Remote", price_paise=9950, currency="USD"),
    ]
    users = [UserFactory() for _ in range(6)]

    def moment(day: date):
        minutes = rng.choice([-31, -1, 0, 1, 30, 12 * 60, 23 * 60 + 59, rng.randrange(24 * 60)])
        return local(day) + timedelta(minutes=minutes)

    for n in range(-1, DAYS + 1):
        day = FIRST + timedelta(days=n)
        for _ in range(4):
            created = moment(day)
            kind = rng.random()
            extra = ({"status": "abandoned", "abandoned_at": created + timedelta(hours=rng.randint(1, 30))}
                     if kind < 0.3 else
                     {"status": "converted", "converted_at": created + timedelta(minutes=rng.randint(1, 900))}
                     if kind < 0.6 else {})
            CartFactory(internship=rng.choice(internships), user=rng.choice(users), created_at=created, **extra)
        for _ in range(3):
            internship = rng.choice(internships)
            created = moment(day)
            kind = rng.random()
            order = OrderFactory(
                internship=internship, user=rng.choice(users), currency=internship.currency, created_at=created,
                amount_paise=internship.price_paise + rng.randint(0, 99),
                **(
                    {"status": "paid", "paid_at": created + timedelta(minutes=rng.randint(0, 1500))} if kind < 0.6
                    else {"status": "expired", "expired_at": created + timedelta(hours=rng.randint(20, 50))}
                    if kind < 0.8 else {}
                ),
            )
            if order.status != "paid":
                continue
            payment = PaymentFactory(order=order, status="captured", captured_at=order.paid_at)
            if rng.random() < 0.7:
                EnrollmentFactory(order=order, user=order.user, internship=internship,
                                  created_at=order.paid_at + timedelta(minutes=rng.randint(0, 120)))
            if rng.random() < 0.3:
                payment.refunded_paise = rng.randint(1, payment.amount_paise)
                payment.refunded_at = order.paid_at + timedelta(minutes=rng.randint(1, 3000))
                payment.save()
    # Carts cart_cleanup already deleted count on their days too.
    CartDayTally.objects.create(day=FIRST + timedelta(days=3), internship=internships[0], created_deleted=5,
                                abandoned_deleted=2)
    CartDayTally.objects.create(day=FIRST + timedelta(days=35), internship=internships[2], created_deleted=1)


def stored() -> dict[date, dict]:
    """Every stored daily report with its lines, as plain values (ids and build times left out)."""
    figures = [field.name for field in DailyReport._meta.concrete_fields if field.name not in {"id", "computed_at"}]
    reports = {report["date"]: {**report, "lines": []} for report in DailyReport.objects.values(*figures)}
    for line in DailyInternshipReport.objects.order_by("id").values("report__date", *LINE_FIELDS):
        reports[line.pop("report__date")]["lines"].append(line)
    return reports


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "Europe/London"])
def test_a_range_gives_the_reports_of_each_day_built_alone(settings, zone):
    # given forty days of activity, in a zone without a change of clocks and in one with
    settings.CHECKOUT_TIME_ZONE = zone
    seed()
    assert DAYS > BACKFILL_CHUNK_DAYS

    # when the range is built at once, then each day alone
    built = daily_reports_build(start=FIRST, end=END)
    together = stored()
    DailyReport.objects.all().delete()
    alone = [report for n in range(DAYS) for report in daily_reports_build(
        start=FIRST + timedelta(days=n), end=FIRST + timedelta(days=n + 1))]

    # then every figure, rate, line and currency is the same, in the same order
    assert stored() == together
    assert alone == built
    assert sorted(together) == [FIRST + timedelta(days=n) for n in range(DAYS)]
    # The seed exercised what a report holds: both currencies, refunds, rates that are not round.
    reports = together.values()
    assert all(report["lines"] for report in reports)
    assert any("USD" in report["revenue_by_currency"] for report in reports)
    assert any(report["refunds_paise"] for report in reports)
    assert {line["currency"] for report in reports for line in report["lines"]} == {"INR", "USD"}
    assert any(report["conversion_rate"] not in (Decimal(0), Decimal(1)) for report in reports)
    assert any(report["revenue_paise"] % 100 for report in reports)


def test_a_range_built_in_chunks_by_the_job_gives_the_same_reports():
    # given forty days of activity, built once in one go
    seed()
    daily_reports_build(start=FIRST, end=END)
    together = stored()
    DailyReport.objects.all().delete()

    # when the job builds the range in chunks of a week (tasks run in this process here)
    run = run_job("daily_analytics", params={"from": FIRST.isoformat(), "to": (END - timedelta(days=1)).isoformat(),
                                              "chunk_days": 7})

    # then
    run.refresh_from_db()
    assert run.status == JobRun.Status.SUCCESS
    assert run.result["chunks"] == 6 and run.counts["days"] == DAYS
    assert stored() == together
