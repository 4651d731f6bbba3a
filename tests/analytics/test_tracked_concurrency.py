"""Two cleanups and a busy checkout as real processes: every deleted cart is announced and counted once."""
import json
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from analytics.models import DailyCounter
from carts.models import Cart
from checkout.timezones import local_date
from ops.runtime.models import OutboxEvent
from ops.runtime.outbox import outbox_relay
from tests.carts.processes import report_of, start
from tests.factories import InternshipFactory

pytestmark = [
    pytest.mark.django_db(transaction=True), pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow,
]


def test_overlapping_cleanups_announce_each_deleted_cart_once(redis_client, process_env):
    # given expired carts, some of which the checkout is about to order or come back to
    internship = InternshipFactory()
    started = timezone.now()
    expired = Cart.objects.bulk_create(
        Cart(internship=internship, created_at=started - timedelta(hours=30 + n % 7),
             updated_at=started - timedelta(hours=30))
        for n in range(600)
    )
    targets = [cart.pk for cart in reversed(expired[::5])]

    # when two cleanups (batches of 20) and the checkout start together
    gate = f"gate:{uuid.uuid4().hex}"
    cleaners = [start("cleaner", gate, process_env, 20) for _ in range(2)]
    writer = start("writer", gate, process_env, json.dumps(targets))
    redis_client.rpush(gate, *["go"] * 3)
    cleaned = [report_of(proc) for proc in cleaners]
    wrote = report_of(writer)
    finished = timezone.now()

    # then the announcements add up to exactly the carts deleted, whoever deleted them
    deleted_ids = {c.pk for c in expired} - set(Cart.objects.values_list("pk", flat=True))
    deleted = [c for c in expired if c.pk in deleted_ids]
    assert len(deleted) == sum(r["deleted"] for r in cleaned) > 0
    assert set(wrote["ordered"]).isdisjoint(deleted_ids)
    announced = [e.payload for e in OutboxEvent.objects.filter(topic="carts.expired.tally")]
    assert sum(p["counters"]["expired"] for p in announced) == len(deleted)
    assert len({p["key"] for p in announced}) == len(announced)
    # each cart's age was taken between the start and the end of the race
    ages = sum(p["counters"]["expired_age_seconds"] for p in announced)
    assert sum((started - c.created_at).total_seconds() for c in deleted) - len(announced) <= ages
    assert ages <= sum((finished - c.created_at).total_seconds() for c in deleted) + len(announced)

    # and counted once each when the events reach the consumer (here in-process), even sent twice
    for _ in range(2):
        OutboxEvent.objects.update(published_at=None)
        assert outbox_relay() == len(announced)
    assert {d.name: d.value for d in DailyCounter.objects.filter(subject="carts")} == {
        "expired": len(deleted), "expired_age_seconds": ages,
    }
    assert {d.day for d in DailyCounter.objects.all()} <= {local_date(started), local_date(finished)}
