"""`demo_data_reset`: empty the domain tables, the seeded accounts and the cart cache before a new seed.

`demo_data_doomed` counts what a reset would delete, for `seed_demo --reset` to show first.
"""
from __future__ import annotations

import logging
from collections import Counter

from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import CASCADE

from carts.models import Cart
from checkout.db import is_postgres
from checkout.redis import get_redis
from orders.models import Enrollment, Internship, Order
from payments.models import Payment

log = logging.getLogger(__name__)

DOMAIN_MODELS = (Enrollment, Payment, Order, Cart, Internship)


def _reached_models() -> list:
    """The domain models and those whose rows go with theirs: on PostgreSQL every table with a
    foreign key into them (TRUNCATE … CASCADE empties it whole), elsewhere what Django's CASCADE deletes."""
    every_reference = is_postgres()
    reached = list(DOMAIN_MODELS)
    for model in reached:  # grows while it is walked: references of references
        for field in model._meta.get_fields(include_hidden=True):
            if not (field.auto_created and not field.concrete and (field.one_to_many or field.one_to_one)):
                continue
            if (every_reference or field.on_delete is CASCADE) and field.related_model not in reached:
                reached.append(field.related_model)
    return reached


def _seeded_users():
    return get_user_model().objects.filter(is_staff=False, is_superuser=False)


def demo_data_doomed() -> Counter:
    """What `demo_data_reset` would delete now, by table (the cart cache keys are not counted)."""
    counts = Counter({model._meta.model_name: model.objects.count() for model in _reached_models()})
    counts["user"] = _seeded_users().count()
    return counts


def demo_data_reset() -> Counter:
    """Empty the domain tables (enrollments, payments, orders, carts, internships, and on PostgreSQL
    every table with a foreign key into them), the seeded accounts (every user that is neither staff
    nor superuser) and the `cart:*` cache keys.
    """
    with transaction.atomic():
        counts = demo_data_doomed()
        counts["user"] = 0  # counted as they are deleted
        if is_postgres():
            tables = ", ".join(connection.ops.quote_name(m._meta.db_table) for m in DOMAIN_MODELS)
            # CASCADE: report rows that point at internships go with them. TRUNCATE refuses
            # tables with deferred checks pending in this transaction, so run those first.
            with connection.cursor() as cursor:
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
                cursor.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
        else:
            for model in DOMAIN_MODELS:
                model.objects.all().delete()
        users = _seeded_users()
        last_id = 0
        while True:
            ids = list(users.filter(id__gt=last_id).order_by("id").values_list("id", flat=True)[:5000])
            if not ids:
                break
            get_user_model().objects.filter(id__in=ids).delete()
            counts["user"] += len(ids)
            last_id = ids[-1]
    client = get_redis()
    if client is not None:
        try:
            batch = []
            for key in client.scan_iter(match="cart:*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    counts["cache_key"] += client.unlink(*batch)
                    batch = []
            if batch:
                counts["cache_key"] += client.unlink(*batch)
        except Exception as exc:  # the tables are empty; stale keys expire with their TTL
            log.warning("reset: cart cache keys not removed: %s: %s", type(exc).__name__, exc)
    return counts
