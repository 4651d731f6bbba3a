"""Order writes: enrollment from a paid order, notifications sent once, order expiry and status repair."""
from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.template.loader import render_to_string
from django.utils import timezone

from ops.outbox import outbox_add
from orders.models import Enrollment, Order, OrderStatus, OutgoingEmail
from payments import services as payments
from payments.models import Payment, PaymentStatus

log = logging.getLogger(__name__)

ENROLLMENT_CONFIRMATION = "enrollment_confirmation"
ORDER_EXPIRED = "order_expired"
EMAIL_LEASE = timedelta(minutes=5)
BATCH = 500
# The normal path (outbox → enrollment_create) gets this long before the sync heals an order.
HEAL_AFTER = timedelta(minutes=10)
HEAL_LIMIT = 2000


def format_money(paise: int, currency: str) -> str:
    return f"{paise // 100:,}.{paise % 100:02d} {currency}"


# --- enrollment --------------------------------------------------------------------------------

def enrollment_create(*, order_id: int) -> Enrollment | None:
    """The one enrollment of a paid order (None when the order is not paid); announces a new one."""
    with transaction.atomic():
        order = Order.objects.filter(pk=order_id, status=OrderStatus.PAID).values(
            "user_id", "internship_id"
        ).first()
        if order is None:
            log.info("order %s is not paid: no enrollment", order_id)
            return None
        enrollment, created = Enrollment.objects.get_or_create(
            order_id=order_id,
            defaults={"user_id": order["user_id"], "internship_id": order["internship_id"]},
        )
        if created:
            outbox_add(
                "enrollment.created", {"kind": ENROLLMENT_CONFIRMATION, "object_id": enrollment.pk},
                key=f"enrollment.created:{enrollment.pk}",
            )
    return enrollment


def enrollment_heal_missing(*, now: datetime | None = None, dry_run: bool = False,
                            limit: int = HEAL_LIMIT) -> int:
    """Ask again for the enrollment of paid orders that have none (an event lost before the outbox, a
    dead task); enrollment_create is idempotent, so asking twice is harmless."""
    from checkout.celery import app

    now = now or timezone.now()
    order_ids = list(
        Order.objects.filter(status=OrderStatus.PAID, paid_at__lt=now - HEAL_AFTER, enrollment__isnull=True)
        .order_by("pk").values_list("pk", flat=True)[:limit]
    )
    if dry_run:
        return len(order_ids)
    sent = 0
    for order_id in order_ids:
        try:
            app.tasks["enrollment_create"].apply_async(kwargs={"order_id": order_id})
        except Exception as exc:  # broker down: the next run heals them
            log.warning("enrollment of order %s not requested: %s", order_id, exc)
            break
        sent += 1
    return sent


# --- notifications and email -------------------------------------------------------------------

def _enrollment_message(enrollment_id: int):
    e = Enrollment.objects.select_related("user", "internship", "order").filter(pk=enrollment_id).first()
    if e is None:
        return None
    return Enrollment, "confirmation_sent_at", e.user, {
        "order_id": e.order_id, "internship_title": e.internship.title if e.internship else "your internship",
        "amount": format_money(e.order.amount_paise, e.order.currency),
    }


def _expired_message(order_id: int):
    o = Order.objects.select_related("user", "internship").filter(pk=order_id).first()
    if o is None:
        return None
    return Order, "expiration_email_sent_at", o.user, {
        "order_id": o.pk, "internship_title": o.internship.title if o.internship else "an internship",
        "amount": format_money(o.amount_paise, o.currency),
    }


NOTIFICATIONS = {ENROLLMENT_CONFIRMATION: _enrollment_message, ORDER_EXPIRED: _expired_message}


def notification_send(*, kind: str, object_id: int) -> str:
    """Queue the email of a notification once: its sent-at marker is claimed by a conditional UPDATE
    in the transaction that writes the email and its outbox event."""
    if kind not in NOTIFICATIONS:
        raise ValueError(f"unknown notification {kind!r}; known: {', '.join(sorted(NOTIFICATIONS))}")
    with transaction.atomic():
        found = NOTIFICATIONS[kind](object_id)
        if found is None:
            return "missing"
        model, marker, user, context = found
        if user is None or not user.email:
            return "no_recipient"
        claimed = model.objects.filter(pk=object_id, **{f"{marker}__isnull": True}).update(
            **{marker: timezone.now()}
        )
        if not claimed:
            return "already_sent"
        context["name"] = user.get_full_name() or user.get_username()
        subject = render_to_string(f"orders/email/{kind}_subject.txt", context).strip()
        body = render_to_string(f"orders/email/{kind}_body.txt", context)
        email = OutgoingEmail.objects.create(key=f"{kind}:{object_id}", to=user.email, subject=subject, body=body)
        outbox_add("email.queued", {"email_id": email.pk}, key=f"email.queued:{email.pk}")
    return "queued"


def email_send(*, email_id: int) -> str:
    """Send one stored email unless it was sent; the row is claimed while SMTP is talked to.

    A sender that dies between SMTP accepting the mail and the sent_at stamp leaves the
    lease to expire and the email may go twice; that window is the only one.
    """
    now = timezone.now()
    claimed = (
        OutgoingEmail.objects.filter(pk=email_id, sent_at__isnull=True)
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .update(claimed_until=now + EMAIL_LEASE, attempts=F("attempts") + 1)
    )
    if not claimed:
        return "already_sent" if OutgoingEmail.objects.filter(pk=email_id, sent_at__isnull=False).exists() else "busy"
    email = OutgoingEmail.objects.get(pk=email_id)
    try:
        connection = get_connection(timeout=settings.EMAIL_TIMEOUT)
        EmailMessage(email.subject, email.body, settings.DEFAULT_FROM_EMAIL, [email.to],
                     connection=connection).send()
    except Exception as exc:
        OutgoingEmail.objects.filter(pk=email_id).update(
            claimed_until=None, last_error=f"{type(exc).__name__}: {exc}"[:255]
        )
        raise
    OutgoingEmail.objects.filter(pk=email_id).update(sent_at=timezone.now(), claimed_until=None, last_error="")
    return "sent"


# --- order_cleanup -----------------------------------------------------------------------------

def order_cleanup_overdue(*, dry_run: bool = False, concurrency: int = 4, batch_size: int = BATCH,
                          now: datetime | None = None) -> Counter:
    """Settle orders left pending past ORDER_TTL.

    1. Their unsettled payments are looked up at Razorpay (claimed first): an authorized
       one is refunded (never captured), a captured one makes the order paid, one that
       never got a gateway payment is cancelled locally. A gateway error leaves the
       order for the next run.
    2. Order status follows payment status (captured → paid, refunded → refunded).
    3. Orders with no money left in flight are closed. The orphan rule: an order with
       no user, no internship, or no payment ever started is `cancelled` without an
       email (there is no one to tell, or nothing they began to pay); every other one
       is `expired` and its buyer gets the expiration email once.
    """
    now = now or timezone.now()
    cutoff = now - settings.ORDER_TTL
    counts: Counter = Counter()
    _settle_overdue_payments(cutoff=cutoff, now=now, concurrency=concurrency, batch_size=batch_size,
                             dry_run=dry_run, counts=counts)
    counts.update(order_sync_payment_status(now=now, batch_size=batch_size, dry_run=dry_run))
    _close_overdue(cutoff=cutoff, now=now, batch_size=batch_size, dry_run=dry_run, counts=counts)
    return counts


_SETTLE_FIELDS = ("razorpay_order_id", "razorpay_payment_id", "amount_paise", "currency", "status",
                  "refunded_paise", "mismatch", "order_id")


def _release_probe(row: dict):
    gp = payments.probe_order_payments(row)
    if gp is not None and gp.status == PaymentStatus.AUTHORIZED:
        gp = payments.refund_authorized(gp)
    return gp


def _settle_overdue_payments(*, cutoff, now, concurrency, batch_size, dry_run, counts: Counter) -> None:
    overdue = Payment.objects.filter(
        status__in=payments.UNSETTLED, order__status=OrderStatus.PENDING, order__created_at__lt=cutoff,
    )
    after = 0
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="order-cleanup") as pool:
        while True:
            rows = payments.claim_chunk(overdue.filter(pk__gt=after), size=batch_size, now=now,
                                        fields=_SETTLE_FIELDS, claim=not dry_run)
            if not rows:
                return
            after = rows[-1]["pk"]
            probe = payments.probe_order_payments if dry_run else _release_probe
            observations = payments.observe(rows, probe, pool)
            failed_calls = [o.row["pk"] for o in observations if o.error]
            counts["gateway_errors"] += len(failed_calls)
            if dry_run:
                for o in observations:
                    if o.payment is not None and o.payment.status == PaymentStatus.AUTHORIZED:
                        counts["would_refund"] += 1
                    elif not o.error and (o.payment is None or o.payment.status == PaymentStatus.CREATED):
                        counts["would_cancel_payment"] += 1
            else:
                never_paid = [o.row["pk"] for o in observations
                              if not o.error and (o.payment is None or o.payment.status == PaymentStatus.CREATED)]
                with transaction.atomic():
                    applied = payments.payment_apply_observations(
                        observations=[(o.row["pk"], o.payment) for o in observations if not o.error],
                        request_capture=False,
                    )
                    counts.update({f"payments_{k}": v for k, v in applied.counts.items()})
                    counts["payments_cancelled"] += Payment.objects.filter(
                        pk__in=never_paid, status=PaymentStatus.CREATED
                    ).update(status=PaymentStatus.CANCELLED, updated_at=now, claimed_until=None)
                if failed_calls:
                    payments.payment_release(payment_ids=failed_calls)
            if len(rows) < batch_size:
                return


def order_sync_payment_status(*, now: datetime | None = None, batch_size: int = BATCH,
                              dry_run: bool = False) -> Counter:
    """Orders whose status disagrees with their payments: captured → paid (announced), refunded → refunded."""
    now = now or timezone.now()
    counts: Counter = Counter()
    captured = Payment.objects.filter(order=OuterRef("pk"), status=PaymentStatus.CAPTURED, mismatch="")
    unpaid = Order.objects.filter(status__in=payments.PAYABLE_ORDER_STATUSES).filter(Exists(captured))
    refunded = Order.objects.filter(status=OrderStatus.PAID).filter(
        Exists(Payment.objects.filter(order=OuterRef("pk"), status=PaymentStatus.REFUNDED))
    ).exclude(Exists(Payment.objects.filter(order=OuterRef("pk"), status=PaymentStatus.CAPTURED)))
    if dry_run:
        counts["would_mark_paid"] = unpaid.count()
        counts["would_mark_refunded"] = refunded.count()
        return counts
    while True:
        with transaction.atomic():
            ids = list(unpaid.select_for_update(skip_locked=True, of=("self",))
                       .order_by("pk").values_list("pk", flat=True)[:batch_size])
            Order.objects.filter(pk__in=ids).update(
                status=OrderStatus.PAID, updated_at=now,
                paid_at=Coalesce(Subquery(captured.order_by("captured_at").values("captured_at")[:1]), now),
            )
            for order_id in ids:
                outbox_add("order.paid", {"order_id": order_id}, key=f"order.paid:{order_id}")
        counts["orders_marked_paid"] += len(ids)
        if len(ids) < batch_size:
            break
    while True:
        with transaction.atomic():
            ids = list(refunded.select_for_update(skip_locked=True, of=("self",))
                       .order_by("pk").values_list("pk", flat=True)[:batch_size])
            Order.objects.filter(pk__in=ids).update(status=OrderStatus.REFUNDED, refunded_at=now, updated_at=now)
        counts["orders_marked_refunded"] += len(ids)
        if len(ids) < batch_size:
            break
    return counts


def _close_overdue(*, cutoff, now, batch_size, dry_run, counts: Counter) -> None:
    in_flight = Payment.objects.filter(
        order=OuterRef("pk"),
        status__in=(PaymentStatus.CREATED, PaymentStatus.AUTHORIZED, PaymentStatus.CAPTURED),
    )
    overdue = (
        Order.objects.filter(status=OrderStatus.PENDING, created_at__lt=cutoff)
        .exclude(Exists(in_flight))
        .annotate(started=Exists(Payment.objects.filter(order=OuterRef("pk"))))
    )
    if dry_run:
        orphan = Q(user__isnull=True) | Q(internship__isnull=True) | Q(started=False)
        counts["would_cancel_orphaned"] = overdue.filter(orphan).count()
        counts["would_expire"] = overdue.exclude(orphan).count()
        return
    after = 0
    while True:
        with transaction.atomic():
            batch = list(
                overdue.filter(pk__gt=after).select_for_update(skip_locked=True, of=("self",))
                .order_by("pk").values("pk", "user_id", "internship_id", "started")[:batch_size]
            )
            if not batch:
                return
            after = batch[-1]["pk"]
            orphans = {o["pk"] for o in batch if not (o["user_id"] and o["internship_id"] and o["started"])}
            expired = [o["pk"] for o in batch if o["pk"] not in orphans]
            Order.objects.filter(pk__in=orphans).update(
                status=OrderStatus.CANCELLED, cancelled_at=now, updated_at=now
            )
            Order.objects.filter(pk__in=expired).update(status=OrderStatus.EXPIRED, expired_at=now, updated_at=now)
            for order_id in expired:
                outbox_add("order.expired", {"kind": ORDER_EXPIRED, "object_id": order_id},
                           key=f"order.expired:{order_id}")
        counts["orders_cancelled_orphaned"] += len(orphans)
        counts["orders_expired"] += len(expired)
        if len(batch) < batch_size:
            return
