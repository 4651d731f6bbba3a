"""Refunds of captured payments, as a durable effect: recorded first, asked of the gateway once, re-driven until done.

`payment_refund` stores the Refund row (holding its amount against what is left to refund) before the
gateway is asked. Its idempotency key goes to Razorpay as X-Refund-Idempotency and in the refund's
notes, so a refund whose answer was lost (a timeout, a crash) is neither forgotten nor made twice:
`refunds_redrive` (run by payment_sync) takes every refund still `requested` after the grace, looks for
it among the payment's refunds at the gateway, and asks again with the same key when it is not there.

    requested ──(the gateway made it)──────────────────> processed
        └─────(the gateway refused it: nothing made)──> failed

A processed refund moves the payment's refunded amount forward; one that completes the payment refunds
it and its paid order in the same transaction (the enrollment revoked, the customer emailed once:
orders.services.orders_refunded).
"""
from __future__ import annotations

import logging
import uuid
from collections import Counter
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from orders.services import HEAL_AFTER, format_money, orders_refunded
from payments import gateway
from payments.models import Payment, PaymentStatus, Refund, RefundStatus

log = logging.getLogger("payments.services")

REQUESTED, PROCESSED, FAILED = RefundStatus.REQUESTED, RefundStatus.PROCESSED, RefundStatus.FAILED
# Longer than a gateway call lasts (RAZORPAY_TIMEOUT and the rate limit's wait): a holder that died
# leaves the refund to the re-drive once it lapses.
REFUND_LEASE = timedelta(minutes=5)
# Where each refund carries its key at Razorpay, to be recognised among the payment's refunds.
NOTE_KEY = "checkout_refund_key"
REDRIVE_LIMIT = 200
# A request that arrives while the same key's first request is still being processed.
_CONFLICT = 409


class RefundRefused(ValueError):
    """A refund that cannot be asked for (the payment is not captured, more than is left, a key reused);
    its message is one line for the person who asked."""


def payment_refundable_paise(*, payment_id: int) -> int:
    """What is left to refund of a payment: its amount less what was refunded and what is being refunded."""
    payment = Payment.objects.filter(pk=payment_id).values("amount_paise", "refunded_paise").first()
    if payment is None:
        raise RefundRefused(f"payment {payment_id} does not exist")
    return _left(payment_id, payment["amount_paise"], payment["refunded_paise"])


def _left(payment_id: int, amount: int, refunded: int) -> int:
    sums = Refund.objects.filter(payment_id=payment_id, status__in=(REQUESTED, PROCESSED)).aggregate(
        requested=Sum("amount_paise", filter=Q(status=REQUESTED)),
        processed=Sum("amount_paise", filter=Q(status=PROCESSED)),
    )
    # Refunds made elsewhere (the dashboard) show in refunded_paise; ours show there once processed.
    return amount - max(refunded, sums["processed"] or 0) - (sums["requested"] or 0)


def payment_refund(payment: Payment, amount_paise: int, *, reason: str, requested_by: str,
                   idempotency_key: str | None = None) -> Refund:
    """Refund `amount_paise` (whole paise, in the payment's currency) of a captured payment, once.

    `reason` says why and `requested_by` who asked (a username, or a job's name); both are kept on the
    row. `idempotency_key` is the caller's key for this request (a confirmation form's token; 10 to 64 of
    A-Z a-z 0-9 _ -): asked again with it, the service returns the first call's refund and asks the
    gateway nothing, so a double submit refunds once. Without one, each call is a new refund.

    The row is stored before the gateway is asked. Returns it:
    - `processed`: the gateway made it (`razorpay_refund_id`); a refund that completes the payment has
      refunded its order, revoked the enrollment and queued the customer's email;
    - `failed`: the gateway refused it and nothing was refunded (`last_error` says why);
    - `requested`: the gateway did not answer (`last_error`); payment_sync asks again, with the same
      key, until it is made or refused.
    Raises RefundRefused (a ValueError, one line) when the refund cannot be asked for.
    """
    if isinstance(amount_paise, bool) or not isinstance(amount_paise, int) or amount_paise <= 0:
        raise RefundRefused(f"a refund is a positive whole number of paise, got {amount_paise!r}")
    if not reason or not reason.strip():
        raise RefundRefused("a refund needs a reason")
    if not requested_by or not requested_by.strip():
        raise RefundRefused("a refund needs the name of who asked for it")
    if idempotency_key is not None and not gateway.REFUND_KEY.fullmatch(idempotency_key):
        raise RefundRefused(f"idempotency_key must be 10 to 64 of A-Z a-z 0-9 _ -, got {idempotency_key!r}")
    key = idempotency_key or uuid.uuid4().hex
    now = timezone.now()
    with transaction.atomic():
        # The payment's row lock orders concurrent refunds of it: each sees what the others hold.
        row = (Payment.objects.select_for_update(of=("self",)).filter(pk=payment.pk)
               .values("status", "amount_paise", "currency", "refunded_paise", "razorpay_payment_id").first())
        if row is None:
            raise RefundRefused(f"payment {payment.pk} does not exist")
        existing = Refund.objects.filter(idempotency_key=key).first()
        if existing is not None:
            if (existing.payment_id, existing.amount_paise) != (payment.pk, amount_paise):
                raise RefundRefused(f"key {key} was already used for {existing}")
            return existing
        if row["status"] != PaymentStatus.CAPTURED or not row["razorpay_payment_id"]:
            raise RefundRefused(f"payment {payment.pk} is {row['status']}: only a captured payment can be refunded")
        left = _left(payment.pk, row["amount_paise"], row["refunded_paise"])
        if amount_paise > left:
            raise RefundRefused(
                f"payment {payment.pk}: {format_money(amount_paise, row['currency'])} asked, "
                f"{format_money(max(left, 0), row['currency'])} left to refund"
            )
        refund = Refund.objects.create(
            payment_id=payment.pk, amount_paise=amount_paise, currency=row["currency"], idempotency_key=key,
            reason=reason.strip()[:255], requested_by=requested_by.strip()[:150], created_at=now, updated_at=now,
            attempts=1, claimed_until=now + REFUND_LEASE,
        )
    log.info("refund %s of payment %s: %s asked by %s (%s)", refund.pk, payment.pk,
             format_money(amount_paise, row["currency"]), refund.requested_by, refund.reason)
    return _ask(refund, row["razorpay_payment_id"], look_first=False)


def refunds_redrive(*, now: datetime | None = None, dry_run: bool = False,
                    limit: int = REDRIVE_LIMIT) -> dict[str, int]:
    """Ask the gateway again for every refund still `requested` after the grace (HEAL_AFTER) that no one
    holds: found among the payment's refunds, it is processed; not there, it is asked for again with its
    key. Counts how many were re-driven and what became of them (still pending: the gateway did not answer)."""
    now = now or timezone.now()
    due = (Refund.objects.filter(status=REQUESTED, created_at__lt=now - HEAL_AFTER)
           .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)))
    ids = list(due.order_by("pk").values_list("pk", flat=True)[:limit])
    counts = Counter({"refunds_redriven": 0})
    if dry_run:
        counts["refunds_redriven"] = len(ids)
        return dict(counts)
    for refund_id in ids:
        claimed_at = timezone.now()
        # Claimed before the gateway is asked: two syncs never ask for one refund at once.
        claimed = (Refund.objects.filter(pk=refund_id, status=REQUESTED)
                   .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=claimed_at))
                   .update(claimed_until=claimed_at + REFUND_LEASE, updated_at=claimed_at, attempts=F("attempts") + 1))
        if not claimed:
            continue
        refund = Refund.objects.select_related("payment").get(pk=refund_id)
        refund = _ask(refund, refund.payment.razorpay_payment_id, look_first=True)
        counts["refunds_redriven"] += 1
        counts[{PROCESSED: "refunds_processed", FAILED: "refunds_failed"}.get(refund.status, "refunds_pending")] += 1
    return dict(counts)



def _ask(refund: Refund, razorpay_payment_id: str, *, look_first: bool) -> Refund:
    """Ask the gateway for a refund this caller has claimed; `look_first` when an earlier ask may have
    made it (its answer lost): then the payment's refunds at the gateway are searched for its key first."""
    if look_first:
        try:
            made = _made_at_gateway(refund, razorpay_payment_id)
        except gateway.GatewayError as exc:  # cannot tell whether it was made: ask again later
            return _unsettled(refund, exc)
        if made is not None:
            return _settled(refund, made)
    try:
        made = gateway.refund(razorpay_payment_id, refund.amount_paise, idempotency_key=refund.idempotency_key,
                              notes={NOTE_KEY: refund.idempotency_key})
    except gateway.GatewayError as exc:
        if exc.retryable or exc.status == _CONFLICT:
            # Perhaps made (an answer lost after the gateway applied it): the re-drive looks first.
            return _unsettled(refund, exc)
        # Refused (a business rule, credentials): this request made nothing, and no earlier one did.
        return _finish(refund, FAILED, error=f"refused: {exc}")
    return _settled(refund, made)


def _made_at_gateway(refund: Refund, razorpay_payment_id: str) -> dict | None:
    for entity in gateway.fetch_refunds(razorpay_payment_id):
        notes = entity.get("notes")
        if isinstance(notes, dict) and notes.get(NOTE_KEY) == refund.idempotency_key:
            return entity
    return None


def _settled(refund: Refund, entity: dict) -> Refund:
    """The gateway's refund entity for ours: made (processed, or on its way), or failed there."""
    refund_id = entity.get("id")
    if not isinstance(refund_id, str) or not refund_id.startswith("rfnd_"):
        return _unsettled(refund, gateway.GatewayUnavailable(
            f"refund answer without a refund id: {refund_id!r}", operation="payment.refund"))
    if entity.get("amount") != refund.amount_paise:
        log.error("refund %s: the gateway's %s is for %r paise, ours for %s", refund.pk, refund_id,
                  entity.get("amount"), refund.amount_paise)
    if entity.get("status") == "failed":
        return _finish(refund, FAILED, error=f"the gateway's refund {refund_id} failed", razorpay_refund_id=refund_id)
    return _finish(refund, PROCESSED, razorpay_refund_id=refund_id)


def _unsettled(refund: Refund, exc: Exception) -> Refund:
    """No answer to go by: the refund stays requested, free for the re-drive, with what happened."""
    Refund.objects.filter(pk=refund.pk, status=REQUESTED).update(
        claimed_until=None, last_error=f"{type(exc).__name__}: {exc}"[:255], updated_at=timezone.now()
    )
    log.warning("refund %s of payment %s not settled, asked again by payment_sync: %s",
                refund.pk, refund.payment_id, exc)
    refund.refresh_from_db()
    return refund


def _finish(refund: Refund, status: str, *, error: str = "", razorpay_refund_id: str | None = None) -> Refund:
    now = timezone.now()
    with transaction.atomic():
        done = Refund.objects.filter(pk=refund.pk, status=REQUESTED).update(
            status=status, razorpay_refund_id=razorpay_refund_id, last_error=error[:255], claimed_until=None,
            updated_at=now, processed_at=now if status == PROCESSED else None,
        )
        if done and status == PROCESSED:
            _payment_refunded(refund.payment_id, now)
    if done:
        log.log(logging.INFO if status == PROCESSED else logging.ERROR, "refund %s of payment %s %s%s",
                refund.pk, refund.payment_id, status, f": {error}" if error else "")
    refund.refresh_from_db()
    return refund


def _payment_refunded(payment_id: int, now: datetime) -> None:
    """Move the payment's refunded amount forward to what our processed refunds add up to (never back:
    the gateway's own figure, from a webhook, may be ahead); a payment refunded in full refunds its order.

    Written here rather than as a gateway observation: a payment flagged for a person (a mismatch) is
    refunded by that person, and its figures must follow.
    """
    row = Payment.objects.select_for_update(of=("self",)).filter(pk=payment_id).values(
        "status", "amount_paise", "refunded_paise", "order_id").get()
    ours = Refund.objects.filter(payment_id=payment_id, status=PROCESSED).aggregate(total=Sum("amount_paise"))
    total = min(row["amount_paise"], max(row["refunded_paise"], ours["total"] or 0))
    fields = {"refunded_paise": total, "refunded_at": now, "updated_at": now}
    full = row["status"] == PaymentStatus.CAPTURED and total >= row["amount_paise"]
    if full:
        fields["status"] = PaymentStatus.REFUNDED
    Payment.objects.filter(pk=payment_id).update(**fields)
    # A second payment taken for the order (refunded as a duplicate) leaves it paid by the one still captured.
    if full and not Payment.objects.filter(order_id=row["order_id"], status=PaymentStatus.CAPTURED).exists():
        orders_refunded(order_ids=[row["order_id"]], now=now)
