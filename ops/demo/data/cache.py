"""`cart_cache_warm`: write the Redis `cart:<token>` entries of the live carts, as the checkout would."""
from __future__ import annotations

import math
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from carts.models import Cart, CartStatus, cart_cache_key
from carts.services import cart_cache_value
from checkout.redis import get_redis


def cart_cache_warm(*, id_range: tuple[int, int] | None = None, now: datetime | None = None,
                    batch_size: int = 5000) -> int:
    """Write `cart:<token>` for active carts younger than CART_TTL, expiring with the cart.

    Pipelined, in batches by primary key. Returns how many keys were written (0 without Redis).
    """
    client = get_redis()
    if client is None:
        return 0
    now = now or timezone.now()
    ttl = settings.CART_TTL
    carts = Cart.objects.filter(status=CartStatus.ACTIVE, created_at__gt=now - ttl)
    if id_range is not None:
        carts = carts.filter(id__range=id_range)
    written, last_id = 0, 0
    while True:
        batch = list(
            carts.filter(id__gt=last_id).order_by("id").values_list(
                "id", "token", "user_id", "internship_id", "created_at", "updated_at"
            )[:batch_size]
        )
        if not batch:
            return written
        pipe = client.pipeline(transaction=False)
        for cart_id, token, user_id, internship_id, created_at, updated_at in batch:
            remaining = math.ceil((created_at + ttl - now).total_seconds())
            value = cart_cache_value(
                cart_id=cart_id, internship_id=internship_id, status=CartStatus.ACTIVE, updated_at=updated_at
            )
            pipe.set(cart_cache_key(token), value, ex=max(1, remaining))
        pipe.execute()
        written += len(batch)
        last_id = batch[-1][0]
