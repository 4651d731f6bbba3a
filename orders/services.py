"""Order writes: enrollment from a paid order, notifications and emails sent once."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Sequence

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django.db.models import F, Q
from django.template.loader import render_to_string
from django.utils import timezone

from checkout.timezones import local_zone
from ops.runtime.outbox import outbox_add, outbox_add_many
from orders.models import Enrollment, Order, OrderStatus, OutgoingEmail

log = logging.getLogger(__name__)

ENROLLMENT_CONFIRMATION = "enrollment_confirmation"
ORDER_EXPIRED = "order_expired"
PAYMENT_FAILED = "payment_failed"
ORDER_REFUNDED = "order_refunded"
EMAIL_LEASE = timedelta(minutes=5)
# The normal path (outbox → task) gets this long before a missing effect is re-driven.
HEAL_AFTER = settings.EFFECTS_REDRIVE_AFTER
HEAL_LIMIT = 2000
# An effect is re-driven at most once per this period (the re-drive's outbox key carries it).
REDRIVE_EVERY = 1800
# Claims of an email past this many (each attempt of each chain counts) stop its re-drives: its
# last chain is in the dead letters with the reason, for a person to look at.
EMAIL_REDRIVE_MAX_ATTEMPTS = 14


def format_money(paise: int, currency: str) -> str:
    return f"{paise // 100:,}.{paise % 100:02d} {currency}"


# --- enrollment --------------------------------------------------------------------------------

def enrollment_create(*, order_id: int) -> Enrollment | None:
    """The one enrollment of a paid order (None when the order is not paid); announces a new one."""
    with transaction.atomic():
        # Locked: a refund of the order at the same time (orders_refunded) waits, then revokes it.
        order = Order.objects.select_for_update().filter(pk=order_id, status=OrderStatus.PAID).values(
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


def enrollment_revoke(*, order_ids: Sequence[int], now: datetime | None = None) -> int:
    """Revoke the enrollments of these orders (refunded in full), in the caller's transaction; how many
    were standing. Idempotent: a revoked enrollment keeps its first revoked_at."""
    return Enrollment.objects.filter(order_id__in=order_ids, revoked_at__isnull=True).update(
        revoked_at=now or timezone.now()
    )


def orders_refunded(*, order_ids: Sequence[int], now: datetime | None = None) -> list[int]:
    """Mark these paid orders refunded (their payment was refunded in full), in the caller's transaction:
    their enrollments are revoked and the customer's email is queued, once, in the same transaction
    (so it is as durable as the refund; email_send and the re-drive of stored emails deliver it).
    Orders not paid are left as they are. Returns the ids of the orders refunded now."""
    now = now or timezone.now()
    refunded = list(
        Order.objects.select_for_update().filter(pk__in=order_ids, status=OrderStatus.PAID)
        .order_by("pk").values_list("pk", flat=True)
    )
    if not refunded:
        return []
    Order.objects.filter(pk__in=refunded).update(status=OrderStatus.REFUNDED, refunded_at=now, updated_at=now)
    enrollment_revoke(order_ids=refunded, now=now)
    for order_id in refunded:
        notification_send(kind=ORDER_REFUNDED, object_id=order_id)
    return refunded


def enrollment_heal_missing(*, now: datetime | None = None, dry_run: bool = False,
                            limit: int = HEAL_LIMIT) -> int:
    """Announce again the paid orders that have no enrollment (an event lost before its task ran, a
    dead task): `enrollment.missing` reaches enrollment_create, which is idempotent."""
    now = now or timezone.now()
    order_ids = list(
        Order.objects.filter(status=OrderStatus.PAID, paid_at__lt=now - HEAL_AFTER, enrollment__isnull=True)
        .order_by("pk").values_list("pk", flat=True)[:limit]
    )
    if dry_run or not order_ids:
        return len(order_ids)
    with transaction.atomic():
        # No key: each heal is a new announcement (order.paid's key was used by the first one).
        outbox_add_many(("enrollment.missing", {"order_id": order_id}, None) for order_id in order_ids)
    return len(order_ids)


def effects_redrive(*, now: datetime | None = None, dry_run: bool = False, limit: int = HEAL_LIMIT) -> dict[str, int]:
    """Re-drive every customer effect that is not done after HEAL_AFTER, whatever became of its message.

    Each effect's "done" is a row: the enrollment of a paid order, the sent-at marker of its confirmation,
    of an expired order's email and of a pending order's failed-payment email, the sent_at of a stored
    email. What is not done is announced again through the outbox (once per REDRIVE_EVERY each), to the
    same idempotent tasks as the first time.
    Returns how many of each were re-driven (or would be, in a dry run).
    """
    now = now or timezone.now()
    cutoff = now - HEAL_AFTER
    period = int(now.timestamp()) // REDRIVE_EVERY
    confirmations = list(
        Enrollment.objects.filter(confirmation_sent_at__isnull=True, revoked_at__isnull=True, created_at__lt=cutoff,
                                  user__email__gt="")
        .order_by("pk").values_list("pk", flat=True)[:limit]
    )
    expiries = list(
        Order.objects.filter(status=OrderStatus.EXPIRED, expiration_email_sent_at__isnull=True,
                             expired_at__lt=cutoff, user__email__gt="")
        .order_by("pk").values_list("pk", flat=True)[:limit]
    )
    # A failure is told only while its order still waits for a payment (paid or closed since: nothing to say).
    failures = list(
        Order.objects.filter(status=OrderStatus.PENDING, payment_failed_at__lt=cutoff,
                             payment_failed_email_sent_at__isnull=True, user__email__gt="")
        .order_by("pk").values_list("pk", flat=True)[:limit]
    )
    emails = list(
        OutgoingEmail.objects.filter(sent_at__isnull=True, created_at__lt=cutoff,
                                     attempts__lt=EMAIL_REDRIVE_MAX_ATTEMPTS)
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .order_by("pk").values_list("pk", flat=True)[:limit]
    )
    counts = {
        "enrollments_healed": enrollment_heal_missing(now=now, dry_run=dry_run, limit=limit),
        "notifications_redriven": len(confirmations) + len(expiries) + len(failures),
        "emails_redriven": len(emails),
    }
    if dry_run:
        return counts
    events = [
        ("notification.missing", {"kind": kind, "object_id": pk}, f"notification.missing:{kind}:{pk}:{period}")
        for kind, ids in ((ENROLLMENT_CONFIRMATION, confirmations), (ORDER_EXPIRED, expiries),
                          (PAYMENT_FAILED, failures)) for pk in ids
    ] + [("email.missing", {"email_id": pk}, f"email.missing:{pk}:{period}") for pk in emails]
    if events:
        with transaction.atomic():
            outbox_add_many(events)
    return counts


# --- notifications and email -------------------------------------------------------------------
# Each kind's message: (model, its sent-at marker, recipient, template context, what the row must
# still be for the email to go), or None when the object is gone.

def _enrollment_message(enrollment_id: int):
    e = Enrollment.objects.select_related("user", "internship", "order").filter(pk=enrollment_id).first()
    if e is None:
        return None
    return Enrollment, "confirmation_sent_at", e.user, {
        "order_id": e.order_id, "internship_title": e.internship.title if e.internship else "your internship",
        "amount": format_money(e.order.amount_paise, e.order.currency),
    }, {"revoked_at": None}


def _expired_message(order_id: int):
    o = Order.objects.select_related("user", "internship").filter(pk=order_id).first()
    if o is None:
        return None
    return Order, "expiration_email_sent_at", o.user, {
        "order_id": o.pk, "internship_title": o.internship.title if o.internship else "an internship",
        "amount": format_money(o.amount_paise, o.currency),
    }, {}


def _payment_failed_message(order_id: int):
    o = Order.objects.select_related("user", "internship").filter(pk=order_id).first()
    if o is None:
        return None
    pay_by = (o.created_at + settings.ORDER_TTL).astimezone(local_zone())
    # Claimed only while the order still waits: paid by another attempt (or closed) meanwhile, no email.
    return Order, "payment_failed_email_sent_at", o.user, {
        "order_id": o.pk, "internship_title": o.internship.title if o.internship else "an internship",
        "amount": format_money(o.amount_paise, o.currency),
        "pay_by": f"{pay_by:%d %b %Y, %H:%M} ({pay_by.tzname()})",
    }, {"status": OrderStatus.PENDING}


def _refunded_message(order_id: int):
    o = Order.objects.select_related("user", "internship").filter(pk=order_id).first()
    if o is None:
        return None
    return Order, "refund_email_sent_at", o.user, {
        "order_id": o.pk, "internship_title": o.internship.title if o.internship else "an internship",
        "amount": format_money(o.amount_paise, o.currency),
    }, {"status": OrderStatus.REFUNDED}


NOTIFICATIONS = {
    ENROLLMENT_CONFIRMATION: _enrollment_message, ORDER_EXPIRED: _expired_message,
    PAYMENT_FAILED: _payment_failed_message, ORDER_REFUNDED: _refunded_message,
}


def notification_send(*, kind: str, object_id: int) -> str:
    """Queue the email of a notification once: its sent-at marker is claimed by a conditional UPDATE
    in the transaction that writes the email and its outbox event. "not_needed" when the object no
    longer qualifies (an order paid since its payment failed, an enrollment revoked before its confirmation)."""
    if kind not in NOTIFICATIONS:
        raise ValueError(f"unknown notification {kind!r}; known: {', '.join(sorted(NOTIFICATIONS))}")
    with transaction.atomic():
        found = NOTIFICATIONS[kind](object_id)
        if found is None:
            return "missing"
        model, marker, user, context, still = found
        if user is None or not user.email:
            return "no_recipient"
        claimed = model.objects.filter(pk=object_id, **{f"{marker}__isnull": True}, **still).update(
            **{marker: timezone.now()}
        )
        if not claimed:
            if still and not model.objects.filter(pk=object_id, **{f"{marker}__isnull": False}).exists():
                return "not_needed"
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
