"""`demo_data_reset`: empty the domain tables, the seeded accounts and the cart cache before a new seed."""
from __future__ import annotations

import logging
from collections import Counter

from django.contrib.auth import get_user_model
from django.db import connection, transaction

from carts.models import Cart
from checkout.db import is_postgres
from checkout.redis import get_redis
from orders.models import Enrollment, Internship, Order
from payments.models import Payment

log = logging.getLogger(__name__)


def demo_data_reset() -> Counter:
    """Empty the domain tables (enrollments, payments, orders, carts, internships), the seeded

    accounts (every user that is neither staff nor superuser) and the `cart:*` cache keys.
    """
    counts: Counter = Counter()
    with transaction.atomic():
        for model in (Enrollment, Payment, Order, Cart, Internship):
            counts[model._meta.model_name] = model.objects.count()
        if is_postgres():
            tables = ", ".join(
                connection.ops.quote_name(m._meta.db_table) for m in (Enrollment, Payment, Order, Cart, Internship)
            )
            # CASCADE: report rows that point at internships go with them. TRUNCATE refuses
            # tables with deferred checks pending in this transaction, so run those first.
            with connection.cursor() as cursor:
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
                cursor.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
        else:
            for model in (Enrollment, Payment, Order, Cart, Internship):
                model.objects.all().delete()
        users = get_user_model().objects.filter(is_staff=False, is_superuser=False)
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
