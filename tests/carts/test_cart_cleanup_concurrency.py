"""Two cleanups and a busy checkout, as three real processes on one database."""
import json
import uuid
from datetime import timedelta

import pytest
from django.db.models import Sum
from django.utils import timezone

from carts.models import Cart, CartDayTally, CartStatus, cart_cache_key
from orders.models import Order
from tests.carts.processes import report_of, start
from tests.factories import OrderFactory

pytestmark = [
    pytest.mark.django_db(transaction=True), pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow,
]

H = timedelta(hours=1)


def _bulk_carts(internship, n, *, age, idle=None, **fields) -> list[Cart]:
    now = timezone.now()
    return Cart.objects.bulk_create(
        Cart(internship=internship, created_at=now - age, updated_at=now - (idle or age), **fields)
        for _ in range(n)
    )


def test_overlapping_cleanups_and_checkout_writes(internship, redis_client, process_env):
    # given expired carts (some of which the checkout is about to use), and carts that must stay
    expired = _bulk_carts(internship, 900, age=30 * H)
    young = _bulk_carts(internship, 100, age=2 * H, idle=timedelta(minutes=5))
    idle = _bulk_carts(internship, 100, age=3 * H, idle=2 * H)
    converted = _bulk_carts(internship, 50, age=30 * H, status=CartStatus.CONVERTED, converted_at=timezone.now())
    ordered = _bulk_carts(internship, 50, age=30 * H)
    for cart in ordered:
        OrderFactory(cart=cart, internship=internship, user=None)
    keep = young + idle + converted + ordered
    pipe = redis_client.pipeline(transaction=False)
    for cart in expired + keep:
        pipe.set(cart.cache_key, "{}")
    pipe.execute()
    # the checkout works through every sixth expired cart, newest first, against the cleanups' order
    targets = [cart.pk for cart in reversed(expired[::6])]

    # when two cleanups and the checkout start together
    gate = f"gate:{uuid.uuid4().hex}"
    cleaners = [start("cleaner", gate, process_env, 20) for _ in range(2)]
    writer = start("writer", gate, process_env, json.dumps(targets))
    redis_client.rpush(gate, *["go"] * 3)
    cleaned = [report_of(proc) for proc in cleaners]
    wrote = report_of(writer)

    # then nothing that should stay is lost
    saved = set(wrote["touched"]) | set(wrote["ordered"])
    survivors = set(Cart.objects.values_list("pk", flat=True))
    assert saved | {c.pk for c in keep} | set(wrote["created"]) <= survivors
    assert set(Order.objects.filter(cart__isnull=False).values_list("cart_id", flat=True)) >= set(wrote["ordered"])
    for pk in [c.pk for c in young + idle + converted + ordered] + wrote["created"] + wrote["touched"]:
        assert redis_client.exists(cart_cache_key(Cart.objects.get(pk=pk).token)), pk
    # idle active carts are flagged abandoned, those with orders included (an order is not activity)
    flagged = [c.pk for c in idle + ordered] + wrote["ordered"]
    assert set(Cart.objects.filter(pk__in=flagged).values_list("status", flat=True)) == {"abandoned"}

    # and nothing that should go stays: every other expired cart and its key are gone
    gone = [c for c in expired if c.pk not in saved]
    assert not survivors & {c.pk for c in gone}
    assert not any(redis_client.exists(c.cache_key) for c in gone)
    assert set(wrote["touch_refused"]) | set(wrote["order_refused"]) <= {c.pk for c in gone}

    # and each deleted cart was counted once, by exactly one of the two cleanups
    assert sum(r["deleted"] for r in cleaned) == len(gone)
    assert CartDayTally.objects.aggregate(n=Sum("created_deleted"))["n"] == len(gone)
    assert sum(r["flagged"] for r in cleaned) == len(flagged)
