"""Capturing an authorized payment (or releasing it when its order can no longer be bought).

Called by the payment_retry task, which the outbox's `payment.authorized` events start.
Gateway calls are made only under the payment's claim, never inside a database transaction.
"""
from __future__ import annotations

import logging
from dataclasses import replace

from django.utils import timezone

from payments import gateway
from payments.models import Payment
from payments.services.claims import PaymentBusy, payment_claim, payment_release
from payments.services.state import (
    AUTHORIZED,
    CAPTURE_REFUSED,
    FAILED,
    REFUNDED,
    GatewayPayment,
    capture_allowed,
    mismatch,
    payment_apply_observations,
)

log = logging.getLogger("payments.services")


def payment_settle_authorized(*, payment_id: int) -> str:
    """Capture an authorized payment while its order may still be bought, else refund it.

    Fetches before acting, so a capture whose answer was lost is seen as captured and
    never repeated; an "already captured" rejection is read the same way. Gateway
    outages, and a payment another worker holds, raise (the payment_retry task retries
    them with backoff).
    """
    token = payment_claim(payment_id=payment_id, statuses=(AUTHORIZED,))
    if token is None:
        if Payment.objects.filter(pk=payment_id, status=AUTHORIZED).exists():
            # Still to capture, but held (by a sync or order_cleanup that took it before this chain was
            # asked for): the chain is the payment's only one, so it comes back later rather than end
            # with nobody to capture.
            raise PaymentBusy(f"payment {payment_id} is claimed by another worker")
        return "skipped"
    try:
        payment = Payment.objects.select_related("order").get(pk=payment_id)
        gp = GatewayPayment.from_entity(gateway.fetch_payment(payment.razorpay_payment_id))
        outcome = gp.status
        row = {"amount_paise": payment.amount_paise, "currency": payment.currency,
               "order__amount_paise": payment.order.amount_paise, "order__currency": payment.order.currency}
        if gp.status == AUTHORIZED and not mismatch(row, gp):
            now = timezone.now()
            if capture_allowed(order_status=payment.order.status, order_created_at=payment.order.created_at,
                               authorized_since=gp.authorized_since, now=now):
                gp = _capture(payment, gp)
                outcome = gp.status
            else:
                gp, outcome = refund_authorized(gp), "refunded"
        payment_apply_observations(observations=[(payment_id, gp)], request_capture=False, claim_token=token)
        return outcome
    finally:
        payment_release(payment_ids=[payment_id], token=token)


def _capture(payment: Payment, gp: GatewayPayment) -> GatewayPayment:
    try:
        return GatewayPayment.from_entity(
            gateway.capture(payment.razorpay_payment_id, payment.amount_paise, payment.currency)
        )
    except gateway.GatewayRejected as exc:
        now_at_gateway = GatewayPayment.from_entity(gateway.fetch_payment(payment.razorpay_payment_id))
        log.info("capture of payment %s refused (%s); the gateway has it %s",
                 payment.pk, exc.description, now_at_gateway.status)
        if now_at_gateway.status != AUTHORIZED:
            return now_at_gateway
        # Refused, yet still authorized: asking again gets the same answer. The payment fails here with
        # the reason (its order then expires at ORDER_TTL, with one email); the money is never taken,
        # and Razorpay's auto-refund releases the authorization.
        return replace(now_at_gateway, status=FAILED, error_code=CAPTURE_REFUSED,
                       error_description=f"capture refused: {exc.description}"[:255])


def refund_authorized(gp: GatewayPayment) -> GatewayPayment:
    """Release an authorized payment that may no longer be captured (in full, as Razorpay requires)."""
    try:
        refund = gateway.refund(gp.id)
    except gateway.GatewayRejected:  # refunded meanwhile (auto-refund, an earlier answer lost): ask
        return GatewayPayment.from_entity(gateway.fetch_payment(gp.id))
    return replace(gp, status=REFUNDED, amount_refunded=int(refund.get("amount") or gp.amount))
