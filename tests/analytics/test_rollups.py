"""checkout.rollups.events_by_local_day against the rows counted in Python, in every form it takes."""
import random
from collections import Counter
from datetime import date, timedelta

import pytest

from checkout.rollups import events_by_local_day
from orders.models import Order
from tests.analytics.conftest import local, local_date
from tests.factories import InternshipFactory, OrderFactory

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

EVENTS = {"created": "created_at", "paid": "paid_at", "expired": "expired_at"}


def seed(first: date, days: int) -> None:
    rng = random.Random(7)
    internships = [InternshipFactory(), InternshipFactory(currency="USD")]
    for n in range(-2, days + 2):
        for _ in range(5):
            created = local(first + timedelta(days=n)) + timedelta(minutes=rng.choice([-1, 0, 1, rng.randrange(1440)]))
            internship = rng.choice(internships)
            kind = rng.random()
            OrderFactory(
                internship=internship, currency=internship.currency, created_at=created,
                amount_paise=rng.randint(1, 10_000),
                **({"status": "paid", "paid_at": created + timedelta(minutes=rng.randint(0, 2000))} if kind < 0.5
                   else {"status": "expired", "expired_at": created + timedelta(hours=rng.randint(1, 60))}
                   if kind < 0.8 else {}),
            )


def expected(start: date, end: date) -> tuple[Counter, Counter]:
    counts, amounts = Counter(), Counter()
    for order in Order.objects.all():
        for event, field in EVENTS.items():
            day = local_date(getattr(order, field))
            if day is not None and start <= day < end:
                key = (day, event, (order.internship_id, order.currency))
                counts[key] += 1
                amounts[key] += order.amount_paise if event == "paid" else 0
    return counts, amounts


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "Europe/London"])
@pytest.mark.parametrize("days", [1, 3, 12])
def test_each_event_counts_once_on_its_local_day(settings, zone, days):
    # given orders around local midnights; in London the twelve days cross the change of clocks
    settings.CHECKOUT_TIME_ZONE = zone
    first = date(2024, 3, 25)
    seed(first, days)
    start, end = first, first + timedelta(days=days)

    # when
    tallies = list(events_by_local_day(Order.objects.all(), EVENTS, start, end,
                                       group=("internship_id", "currency"), amounts={"paid": "amount_paise"}))

    # then every (day, event, group) comes once, with the rows' own figures
    counts, amounts = expected(start, end)
    assert len(tallies) == len({(t.day, t.event, t.group) for t in tallies})
    assert {(t.day, t.event, t.group): t.n for t in tallies} == dict(counts)
    assert {(t.day, t.event, t.group): t.amount for t in tallies} == dict(amounts)
    assert {t.event for t in tallies} == set(EVENTS)


def test_bad_ranges_and_amounts_are_refused():
    with pytest.raises(ValueError, match="empty range: 2024-01-02 to 2024-01-02"):
        list(events_by_local_day(Order.objects.all(), EVENTS, date(2024, 1, 2), date(2024, 1, 2)))
    with pytest.raises(ValueError, match="amounts for events not counted: refunded"):
        list(events_by_local_day(Order.objects.all(), EVENTS, date(2024, 1, 1), date(2024, 1, 2),
                                 amounts={"refunded": "amount_paise"}))
