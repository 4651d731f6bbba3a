"""Alert rules on payments that need a person: amounts that disagree with the gateway, payments stuck,
disputes waiting for an answer."""
from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db.models import Count, Min, Q

from ops.runtime.alerts import Condition, alert_rule
from payments.models import DISPUTE_NEEDS_ACTION, Dispute, Payment, Refund, RefundStatus


@alert_rule("payments:mismatch", next_step=(
    "open Payments in the admin filtered by mismatch (Flagged), compare each with the Razorpay dashboard, then "
    "resolve it on its page (Resolve mismatch): accept the gateway's amount, or refund and cancel the order; "
    "none is paid meanwhile"
))
def _mismatched(now: datetime) -> Condition:
    flagged = Payment.objects.exclude(mismatch="")
    count = flagged.count()
    oldest = flagged.order_by("created_at").values_list("pk", flat=True)[:5]
    return Condition(count > 0, f"{count} payments disagree with the gateway's amount or currency",
                     {"count": count, "oldest_ids": list(oldest)})


@alert_rule("payments:stuck", next_step=(
    "check payment_sync's latest runs (admin: Operations > Job runs) and the gateway's health; a payment "
    "authorized for long is captured by payment_sync, a created one is expired by order_cleanup"
))
def _stuck(now: datetime) -> Condition:
    after = settings.ALERT_PAYMENT_STUCK_AFTER
    stuck = Payment.objects.filter(
        Q(status=Payment.Status.AUTHORIZED, updated_at__lt=now - after)
        | Q(status=Payment.Status.CREATED, created_at__lt=now - settings.ORDER_TTL - after)
    )
    by_status = dict(stuck.values_list("status").annotate(n=Count("pk")).order_by())
    total = sum(by_status.values())
    return Condition(
        total > 0,
        f"{total} payments stuck ({', '.join(f'{n} {s}' for s, n in sorted(by_status.items())) or 'none'}) "
        f"longer than they should be",
        {"by_status": by_status, "after_s": round(after.total_seconds())},
    )


@alert_rule("payments:refund_stuck", next_step=(
    "open Refunds in the admin (status requested), read each one's last error, and check the refund in the "
    "Razorpay dashboard; payment_sync keeps asking with the same key, so it is never made twice"
))
def _refunds_stuck(now: datetime) -> Condition:
    after = settings.ALERT_PAYMENT_STUCK_AFTER
    waiting = Refund.objects.filter(status=RefundStatus.REQUESTED, created_at__lt=now - after)
    count = waiting.count()
    return Condition(count > 0, f"{count} refunds asked more than {after} ago are still not made",
                     {"count": count, "ids": list(waiting.order_by("created_at").values_list("pk", flat=True)[:5])})


@alert_rule("payments:dispute", next_step=(
    "open Payments in the admin filtered by dispute \"needs an answer\"; on the Razorpay dashboard "
    "(Transactions > Disputes) contest each with evidence, or accept it, before its respond-by date: "
    "an unanswered dispute is lost"
))
def _disputed(now: datetime) -> Condition:
    waiting = Dispute.objects.filter(status__in=DISPUTE_NEEDS_ACTION)
    figures = waiting.aggregate(count=Count("pk"), first_due=Min("respond_by"))
    count, first_due = figures["count"], figures["first_due"]
    due = f", the first due {first_due:%Y-%m-%d %H:%M} UTC" if first_due else ""
    return Condition(count > 0, f"payment disputes waiting for an answer: {count}{due}", {
        "count": count, "first_due": first_due.isoformat() if first_due else None,
        "dispute_ids": list(waiting.order_by("respond_by").values_list("razorpay_dispute_id", flat=True)[:5]),
    })
