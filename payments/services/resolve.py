"""Resolving a payment flagged as a mismatch (the gateway's amount or currency disagrees with ours).

A flagged payment is never paid by the sync; a person decides, with the gateway's word fetched again
under the payment's claim:

- accept the gateway's amount (`payment_mismatch_accept`): only for an amount the gateway holds
  (authorized or captured) in our currency, for an order still waiting for its money. The payment and
  its order take the gateway's amount, the flag is cleared and the gateway's state is applied by
  `payment_apply_observations`, the sync's own rules: captured pays the order (its enrollment follows),
  authorized asks for the capture.
- refund and cancel (`payment_mismatch_refund`): an order still waiting is cancelled; money captured is
  refunded in full through `payment_refund` (recorded first, idempotent, re-driven by payment_sync), an
  authorization is released; the payment row then mirrors the gateway's figures. The flag is cleared
  once the refund is made or on its way; a refund the gateway refused leaves the payment flagged.

Gateway calls are made under the payment's claim and never inside a transaction. Both raise
MismatchRefused (one line) when the decision cannot be taken, and let gateway errors through.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models import Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from orders.models import Order, OrderStatus
from orders.services import format_money
from payments.models import Payment, PaymentStatus, Refund, RefundStatus
from payments.services.capture import refund_authorized
from payments.services.claims import payment_claim, payment_release
from payments.services.refunds import payment_refund, payment_refundable_paise
from payments.services.settle import probe_order_payments
from payments.services.state import (
    AUTHORIZED,
    CAPTURED,
    FAILED,
    REFUNDED,
    PAYABLE_ORDER_STATUSES,
    GatewayPayment,
    payment_apply_observations,
)

log = logging.getLogger("payments.services")

_ANY_STATUS = tuple(PaymentStatus.values)
_ROW = ("pk", "status", "mismatch", "amount_paise", "currency", "order_id", "razorpay_order_id",
        "razorpay_payment_id", "refunded_paise")


class MismatchRefused(ValueError):
    """The resolution cannot be taken (not flagged, the gateway's state does not allow it, busy);
    its message is one line for the person who asked."""


@dataclass(frozen=True)
class Resolution:
    """What a resolution did: `outcome` (accepted, refunded, refund_requested, refund_failed, released,
    closed) and one line saying it, for the person and the audit entry; `repeated` when the same request
    (its key) was made before and this call changed nothing."""

    outcome: str
    summary: str
    refund: Refund | None = None
    repeated: bool = False


def payment_mismatch_gateway(*, payment_id: int) -> GatewayPayment | None:
    """The gateway's deciding attempt for the payment's Razorpay order now (what a resolution would act on)."""
    row = Payment.objects.filter(pk=payment_id).values(*_ROW).first()
    if row is None:
        raise MismatchRefused(f"payment {payment_id} does not exist")
    return _gateway_word(row)


def payment_mismatch_accept(*, payment_id: int, requested_by: str) -> Resolution:
    """Take the gateway's amount as the payment's and its order's, then apply the gateway's state as the sync does."""
    token, row = _claimed(payment_id)
    try:
        gp = _gateway_word(row)
        now = timezone.now()
        with transaction.atomic():
            row = _locked_flagged(payment_id)
            order = Order.objects.select_for_update().filter(pk=row["order_id"]).values(
                "status", "amount_paise", "currency").get()
            if gp is None or gp.status not in (AUTHORIZED, CAPTURED):
                state = "no payment" if gp is None else f"the payment {gp.id} {gp.status}"
                raise MismatchRefused(f"payment {payment_id}: the gateway has {state}, no amount to accept; "
                                      f"refund and cancel closes it")
            if gp.currency != row["currency"] or gp.currency != order["currency"]:
                raise MismatchRefused(
                    f"payment {payment_id}: the gateway's currency {gp.currency} is not ours "
                    f"({row['currency']}, order {order['currency']}); only refund and cancel resolves it")
            if order["status"] not in PAYABLE_ORDER_STATUSES:
                raise MismatchRefused(
                    f"payment {payment_id}: its order {row['order_id']} is {order['status']}, so the money "
                    f"cannot pay it; refund and cancel instead")
            Payment.objects.filter(pk=payment_id).update(amount_paise=gp.amount, mismatch="", updated_at=now)
            Order.objects.filter(pk=row["order_id"]).update(amount_paise=gp.amount, updated_at=now)
            applied = payment_apply_observations(observations=[(payment_id, gp)], claim_token=token, now=now)
        was, became = format_money(order["amount_paise"], order["currency"]), format_money(gp.amount, gp.currency)
        after = Payment.objects.filter(pk=payment_id).values_list("status", flat=True).get()
        order_now = Order.objects.filter(pk=row["order_id"]).values_list("status", flat=True).get()
        summary = (f"payment {payment_id}: the gateway's {became} accepted (the order asked {was}); "
                   f"payment {after}, order {row['order_id']} {order_now}"
                   + ("; its capture is asked for" if applied.counts["capture_requested"] else ""))
        log.info("%s, by %s", summary, requested_by)
        return Resolution("accepted", summary)
    finally:
        payment_release(payment_ids=[payment_id], token=token)


def payment_mismatch_refund(*, payment_id: int, reason: str, requested_by: str,
                            idempotency_key: str | None = None) -> Resolution:
    """Cancel the order if it still waits, give back whatever the gateway holds, and clear the flag.

    `idempotency_key` (a confirmation form's token) makes a second submit return the first one's refund.
    """
    if idempotency_key:
        done = Refund.objects.filter(idempotency_key=idempotency_key).first()
        if done is not None:
            if done.payment_id != payment_id:
                raise MismatchRefused(f"key {idempotency_key} was already used for {done}")
            return _refund_resolution(payment_id, done, again=True)
    if not reason or not reason.strip():
        raise MismatchRefused("a refund needs a reason")
    token, row = _claimed(payment_id)
    try:
        gp = _gateway_word(row)
        released = gp is not None and gp.status == AUTHORIZED
        if released:
            # Never captured: released in full, as order_cleanup releases an authorization it will not capture.
            gp = refund_authorized(gp)
        now = timezone.now()
        with transaction.atomic():
            row = _locked_flagged(payment_id)
            cancelled = Order.objects.filter(pk=row["order_id"], status__in=PAYABLE_ORDER_STATUSES).update(
                status=OrderStatus.CANCELLED, cancelled_at=now, updated_at=now)
            holds = _mirror(payment_id, gp, now)
        order_note = (f"order {row['order_id']} cancelled" if cancelled else
                      f"order {row['order_id']} left {_order_status(row['order_id'])}")
        if holds != CAPTURED:
            what = {
                "nothing": "no money at the gateway, payment cancelled",
                FAILED: "the gateway's payment failed, nothing to refund",
                REFUNDED: (f"authorization of {format_money(gp.amount, gp.currency)} released" if released
                           else "already refunded at the gateway"),
            }[holds]
            summary = f"payment {payment_id}: {what}; {order_note}"
            log.info("%s, by %s (%s)", summary, requested_by, reason)
            return Resolution("released" if released else "closed", summary)
    finally:
        payment_release(payment_ids=[payment_id], token=token)
    left = payment_refundable_paise(payment_id=payment_id)
    if left <= 0:
        # Refunds already recorded cover the payment: the flag goes, the re-drive finishes them.
        Payment.objects.filter(pk=payment_id).update(mismatch="", updated_at=timezone.now())
        return Resolution("refund_requested", f"payment {payment_id}: refunds already recorded cover it; {order_note}")
    refund = payment_refund(Payment.objects.get(pk=payment_id), left, reason=reason, requested_by=requested_by,
                            idempotency_key=idempotency_key)
    resolution = _refund_resolution(payment_id, refund, order_note=order_note)
    log.info("%s, by %s (%s)", resolution.summary, requested_by, reason)
    return resolution


def _claimed(payment_id: int) -> tuple[datetime, dict]:
    token = payment_claim(payment_id=payment_id, statuses=_ANY_STATUS)
    if token is None:
        if not Payment.objects.filter(pk=payment_id).exists():
            raise MismatchRefused(f"payment {payment_id} does not exist")
        raise MismatchRefused(f"payment {payment_id} is being settled by a job right now: try again in a few minutes")
    row = Payment.objects.filter(pk=payment_id).values(*_ROW).get()
    if not row["mismatch"]:
        payment_release(payment_ids=[payment_id], token=token)
        raise MismatchRefused(f"payment {payment_id} is not flagged as a mismatch: nothing to resolve")
    return token, row


def _locked_flagged(payment_id: int) -> dict:
    row = Payment.objects.select_for_update(of=("self",)).filter(pk=payment_id).values(*_ROW).get()
    if not row["mismatch"]:  # resolved by someone else since the claim was taken
        raise MismatchRefused(f"payment {payment_id} is not flagged as a mismatch: nothing to resolve")
    return row


def _gateway_word(row: dict) -> GatewayPayment | None:
    try:
        return probe_order_payments(row)
    except ValueError as exc:  # an answer the money logic cannot read
        raise MismatchRefused(f"payment {row['pk']}: the gateway's answer cannot be read: {exc}") from None


def _mirror(payment_id: int, gp: GatewayPayment | None, now: datetime) -> str:
    """Write the gateway's figures on the payment, whose order no longer waits for it; what the gateway
    holds: "captured" (the flag stays until its refund is recorded), "refunded", "failed" or "nothing"."""
    payments = Payment.objects.filter(pk=payment_id)
    if gp is None or gp.status == PaymentStatus.CREATED:
        payments.update(status=PaymentStatus.CANCELLED, mismatch="", updated_at=now)
        return "nothing"
    money = {"razorpay_payment_id": gp.id, "amount_paise": gp.amount, "currency": gp.currency, "updated_at": now}
    if gp.status == FAILED:
        payments.update(status=FAILED, mismatch="", error_code=gp.error_code,
                        error_description=gp.error_description, **money)
        return FAILED
    if gp.status == REFUNDED or gp.amount_refunded >= gp.amount:
        payments.update(status=REFUNDED, mismatch="", refunded_paise=min(gp.amount_refunded or gp.amount, gp.amount),
                        refunded_at=now, **money)
        return REFUNDED
    if gp.status != CAPTURED:  # an authorization the gateway would not release
        raise MismatchRefused(f"payment {payment_id}: the gateway still has {gp.id} {gp.status}; nothing changed")
    payments.update(status=CAPTURED, refunded_paise=gp.amount_refunded,
                    captured_at=Coalesce("captured_at", Value(now)), **money)
    return CAPTURED


def _order_status(order_id: int) -> str:
    return Order.objects.filter(pk=order_id).values_list("status", flat=True).get()


def _refund_resolution(payment_id: int, refund: Refund, *, order_note: str = "", again: bool = False) -> Resolution:
    money = format_money(refund.amount_paise, refund.currency)
    prefix = f"payment {payment_id}: " + ("already asked: " if again else "")
    tail = f"; {order_note}" if order_note else ""
    if refund.status == RefundStatus.FAILED:
        return Resolution("refund_failed", f"{prefix}the gateway refused the refund of {money} ({refund.last_error}); "
                                           f"nothing was refunded, the payment stays flagged{tail}", refund, again)
    if not again:
        # Made, or recorded and re-driven by payment_sync until made: the person's decision is taken.
        Payment.objects.filter(pk=payment_id).exclude(mismatch="").update(mismatch="", updated_at=timezone.now())
    if refund.status == RefundStatus.PROCESSED:
        return Resolution("refunded", f"{prefix}{money} refunded ({refund.razorpay_refund_id}){tail}", refund, again)
    return Resolution("refund_requested", f"{prefix}refund of {money} recorded, the gateway did not answer "
                                          f"({refund.last_error}); payment_sync asks again{tail}", refund, again)
