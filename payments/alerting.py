"""Alert rules on payments that need a person: amounts that disagree with the gateway, payments stuck."""
from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db.models import Count, Q

from ops.runtime.alerts import Condition, alert_rule
from payments.models import Payment


@alert_rule("payments:mismatch", next_step=(
    "open Payments in the admin filtered by mismatch, compare each with the Razorpay dashboard, then "
    "resolve it: accept the gateway's amount, or refund and cancel the order; none is paid meanwhile"
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
