"""Seeded checkout data with the expected report figures computed in Python, independently of SQL."""
import random
from collections import defaultdict
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings

from carts.models import Cart
from orders.models import Enrollment, Order
from tests.factories import (
    CartFactory,
    EnrollmentFactory,
    InternshipFactory,
    OrderFactory,
    PaymentFactory,
    UserFactory,
)


def local(day: date, hour: int = 0, minute: int = 0, zone: str | None = None) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=ZoneInfo(zone or settings.CHECKOUT_TIME_ZONE))


def local_date(moment: datetime | None) -> date | None:
    return moment.astimezone(ZoneInfo(settings.CHECKOUT_TIME_ZONE)).date() if moment else None


def expected_by_day() -> dict[date, dict]:
    """Per local day: totals and per-(internship, currency) lines, from the rows themselves."""
    main = settings.CHECKOUT_CURRENCY
    days = defaultdict(lambda: {"lines": defaultdict(lambda: defaultdict(int)), "money": defaultdict(lambda: defaultdict(int))})

    def bump(moment, internship, currency, field, n=1):
        if moment is not None:
            days[local_date(moment)]["lines"][(internship.pk if internship else None, currency)][field] += n

    for cart in Cart.objects.select_related("internship"):
        cur = cart.internship.currency
        bump(cart.created_at, cart.internship, cur, "carts_created")
        bump(cart.abandoned_at, cart.internship, cur, "carts_abandoned")
        bump(cart.converted_at, cart.internship, cur, "carts_converted")
    for order in Order.objects.select_related("internship").prefetch_related("payments"):
        bump(order.created_at, order.internship, order.currency, "orders_created")
        bump(order.paid_at, order.internship, order.currency, "orders_paid")
        bump(order.paid_at, order.internship, order.currency, "revenue_paise", order.amount_paise)
        bump(order.expired_at, order.internship, order.currency, "orders_expired")
        for payment in order.payments.all():
            if payment.refunded_paise:
                bump(payment.refunded_at, order.internship, payment.currency, "refunds_paise", payment.refunded_paise)
    for enrollment in Enrollment.objects.select_related("internship"):
        bump(enrollment.created_at, enrollment.internship, enrollment.internship.currency, "enrollments_created")

    result = {}
    for day, data in days.items():
        lines = {key: dict(values) for key, values in data["lines"].items()}
        total = defaultdict(int)
        money = defaultdict(lambda: defaultdict(int))
        for (_, cur), values in lines.items():
            for field, n in values.items():
                if field.endswith("_paise"):
                    money[cur][field] += n
                else:
                    total[field] += n
            money[cur]["orders_paid"] += values.get("orders_paid", 0)
        total["revenue_paise"] = money[main]["revenue_paise"]
        total["refunds_paise"] = money[main]["refunds_paise"]
        paid_main = money[main]["orders_paid"]
        total["average_order_value_paise"] = round(money[main]["revenue_paise"] / paid_main) if paid_main else 0
        total["revenue_by_currency"] = {
            cur: {"orders_paid": m["orders_paid"], "revenue_paise": m["revenue_paise"],
                  "refunds_paise": m["refunds_paise"]}
            for cur, m in sorted(money.items()) if m["orders_paid"] or m["revenue_paise"] or m["refunds_paise"]
        }
        result[day] = {"totals": dict(total), "lines": lines}
    return result


@pytest.fixture
def seeded():
    """Three local days of random carts, orders, payments and enrollments, times near midnight included."""
    rng = random.Random(20240601)
    day = date(2024, 6, 10)
    internships = [
        InternshipFactory(title="Data", price_paise=499900),
        InternshipFactory(title="Design", price_paise=250050),
        InternshipFactory(title="Remote", price_paise=9900, currency="USD"),
    ]
    users = [UserFactory() for _ in range(8)]
    minutes = list(range(-36 * 60, 60 * 60, 7))
    start = local(day - timedelta(days=1))

    def moment():
        # Skewed to the hours around local midnight, where the UTC and local days differ.
        offset = rng.choice(minutes) if rng.random() < 0.6 else rng.choice([-30, -1, 0, 1, 29, 24 * 60 - 1, 24 * 60, 24 * 60 + 30])
        return start + timedelta(minutes=offset) + timedelta(hours=24)

    for _ in range(60):
        internship = rng.choice(internships)
        created = moment()
        kind = rng.random()
        extra = {}
        if kind < 0.3:
            extra = {"status": "abandoned", "abandoned_at": created + timedelta(hours=rng.randint(1, 20))}
        elif kind < 0.6:
            extra = {"status": "converted", "converted_at": created + timedelta(minutes=rng.randint(1, 600))}
        CartFactory(internship=internship, user=rng.choice(users), created_at=created, **extra)
    for _ in range(50):
        internship = rng.choice(internships)
        created = moment()
        kind = rng.random()
        order = OrderFactory(
            internship=internship, user=rng.choice(users), currency=internship.currency, created_at=created,
            **(
                {"status": "paid", "paid_at": created + timedelta(minutes=rng.randint(1, 900))} if kind < 0.55
                else {"status": "expired", "expired_at": created + timedelta(hours=rng.randint(20, 40))} if kind < 0.8
                else {}
            ),
        )
        if order.status == "paid":
            payment = PaymentFactory(order=order, status="captured", captured_at=order.paid_at)
            if rng.random() < 0.5:
                EnrollmentFactory(order=order, user=order.user, internship=internship,
                                  created_at=order.paid_at + timedelta(minutes=rng.randint(0, 90)))
            if rng.random() < 0.25:
                payment.refunded_paise = rng.randint(1, payment.amount_paise)
                payment.refunded_at = order.paid_at + timedelta(hours=rng.randint(1, 30))
                payment.save()
    return day
