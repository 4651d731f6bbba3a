"""Health of the payment side: the Razorpay API (payment_gateway) and the webhook pipeline (webhooks).

Is the Razorpay API reachable with our credentials, and how fast:

The probe fetches an order id that never exists. Razorpay answers it only after checking
the credentials, so "does not exist" (400) means reachable and authenticated, 401 means bad
credentials, and a timeout, refused connection, 5xx or HTML page means the gateway is down.

Status rule (read by /health/): ok; degraded when the answer is slower than half the
client timeout or the gateway (or our shared limit) is rate limiting us; down when payments
cannot work at all: keys missing, keys refused, or no usable answer.
"""
from __future__ import annotations

import time
from urllib.parse import urlsplit

from datetime import timedelta

from django.conf import settings
from django.db.models import Count, Max, Min, Q
from django.utils import timezone

from ops.maintenance.models import HealthCheck
from ops.maintenance.services import health_record
from payments import gateway
from payments.models import Payment, WebhookEvent, WebhookRejection
from payments.webhooks import webhook_rejection_counts

SERVICE = "payment_gateway"
WEBHOOKS_SERVICE = "webhooks"
# Webhooks: unprocessed events older than this are a backlog, not work in progress.
WEBHOOK_BACKLOG_AGE = timedelta(minutes=5)
WEBHOOK_BACKLOG_MAX = 100
WEBHOOK_REJECTION_WINDOW = timedelta(hours=1)
# Payment states Razorpay announces by webhook: a payment reaching one means a genuine delivery was due.
ANNOUNCED_STATES = ("authorized", "captured", "failed", "refunded")
PROBE_ORDER_ID = "order_healthprobe00000"


def gateway_health_check() -> dict:
    """Probe the gateway once; returns {"status", "latency_ms", "detail"} without storing it."""
    detail = {"host": urlsplit(settings.RAZORPAY_BASE_URL).netloc or "api.razorpay.com"}
    started = time.monotonic()
    try:
        gateway.fetch_order(PROBE_ORDER_ID)
        status, reason = "ok", "answered"
    except gateway.GatewayNotConfigured:
        return {"status": "down", "latency_ms": None, "detail": {**detail, "reason": "not_configured"}}
    except gateway.GatewayRejected:
        status, reason = "ok", "answered"
    except gateway.GatewayAuthError as exc:
        status, reason = "down", "bad_credentials"
        detail["http_status"] = exc.status
    except gateway.GatewayRateLimited as exc:
        status, reason = "degraded", "rate_limited"
        detail.update(http_status=exc.status, retry_after=exc.retry_after)
    except gateway.GatewayUnavailable as exc:
        status, reason = "down", "unavailable"
        detail.update(http_status=exc.status, error=exc.message)
    latency_ms = round((time.monotonic() - started) * 1000, 1)
    if status == "ok" and latency_ms > settings.RAZORPAY_TIMEOUT * 1000 / 2:
        status, reason = "degraded", "slow"
    return {"status": status, "latency_ms": latency_ms, "detail": {**detail, "reason": reason}}


def gateway_health_record(*, dry_run: bool = False) -> dict:
    """Probe and store the result for /health/ (dry run: probe only)."""
    result = gateway_health_check()
    if not dry_run:
        health_record(service=SERVICE, **result)
    return result


def webhooks_check() -> HealthCheck:
    """The Razorpay webhook pipeline: last event age, unprocessed backlog, refused deliveries.

    Refused deliveries are information, not a failure: anyone can send them. They make the
    pipeline degraded only with evidence that genuine deliveries are the ones refused:
    signature failures in the window, no delivery that passed, and payments that moved at
    the gateway meanwhile (Razorpay announces those; an outsider cannot move them).
    """
    started = time.monotonic()
    now = timezone.now()
    since = now - WEBHOOK_REJECTION_WINDOW
    events = WebhookEvent.objects.aggregate(
        last=Max("received_at"),
        received=Count("pk", filter=Q(received_at__gte=since)),
        backlog=Count("pk", filter=Q(processed_at__isnull=True, received_at__lt=now - WEBHOOK_BACKLOG_AGE)),
        oldest_unprocessed=Min("received_at", filter=Q(processed_at__isnull=True)),
    )
    rejections = webhook_rejection_counts(int(WEBHOOK_REJECTION_WINDOW.total_seconds()))
    counted = "all"
    if rejections is None:  # no Redis: the sample rows, at most one per reason a minute
        counted = "samples"
        rejections = dict(
            WebhookRejection.objects.filter(received_at__gte=since)
            .values_list("reason").annotate(n=Count("pk")).order_by()
        )
    problems, notes = [], []
    if events["backlog"] > WEBHOOK_BACKLOG_MAX:
        problems.append(f"{events['backlog']} events unprocessed for over {WEBHOOK_BACKLOG_AGE}")
    signature_failures = rejections.get("bad_signature", 0)
    if rejections:
        notes.append(f"{sum(rejections.values())} deliveries refused in the last {WEBHOOK_REJECTION_WINDOW}")
    if signature_failures and not events["received"] and Payment.objects.filter(
        updated_at__gte=since, status__in=ANNOUNCED_STATES,
    ).exists():
        problems.append(
            f"{signature_failures} deliveries failed the signature check in the last {WEBHOOK_REJECTION_WINDOW}"
            " and none passed while payments moved at the gateway: is RAZORPAY_WEBHOOK_SECRET the secret set"
            " at Razorpay?"
        )
    last, oldest = events["last"], events["oldest_unprocessed"]
    return health_record(
        service=WEBHOOKS_SERVICE, status="degraded" if problems else "ok", latency_ms=round((time.monotonic() - started) * 1000, 2),
        detail={
            "last_event_age_s": round((now - last).total_seconds()) if last else None,
            "events_last_hour": events["received"],
            "backlog": events["backlog"],
            "oldest_unprocessed_age_s": round((now - oldest).total_seconds()) if oldest else None,
            "rejections_last_hour": rejections,
            "rejections_counted": counted,
            "notes": notes,
            "problems": problems,
        },
    )
