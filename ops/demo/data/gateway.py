"""`fake_gateway_populate`: give the local fake Razorpay the seeded payments the real one would know."""
from __future__ import annotations

import random
from collections import Counter

from payments.models import Payment, PaymentStatus


def fake_gateway_populate(fake, *, seed: int = 0, batch_size: int = 2000) -> Counter:
    """Give the local fake Razorpay what the real one would know about the seeded payments.

    Settled payments mirror our rows; of the payments still `created` here, some were in
    fact paid (or failed) at the gateway and only payment_sync will find out.
    """
    rng = random.Random(seed)
    counts: Counter = Counter()
    gateway_status = {
        PaymentStatus.AUTHORIZED: "authorized", PaymentStatus.CAPTURED: "captured",
        PaymentStatus.FAILED: "failed", PaymentStatus.REFUNDED: "refunded",
    }
    rows = Payment.objects.order_by("id").values_list(
        "razorpay_order_id", "razorpay_payment_id", "amount_paise", "currency", "status", "error_code",
        "error_description",
    )
    for order_id, payment_id, amount, currency, status, error_code, error_description in rows.iterator(
        chunk_size=batch_size
    ):
        fake.add_order(amount=amount, currency=currency, order_id=order_id)
        counts["orders"] += 1
        if payment_id and status in gateway_status:
            fake.add_payment(
                order_id=order_id, payment_id=payment_id, status=gateway_status[status],
                error_code=error_code or None, error_description=error_description or None,
            )
            counts[gateway_status[status]] += 1
        elif status == PaymentStatus.CREATED:
            roll = rng.random()
            if roll < 0.5:
                fake.add_payment(order_id=order_id, status="captured")
                counts["captured_unseen"] += 1
            elif roll < 0.7:
                fake.add_payment(order_id=order_id, status="failed")
                counts["failed_unseen"] += 1
    return counts
