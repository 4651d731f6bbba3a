"""Is the Razorpay API reachable with our credentials, and how fast: the payment_gateway health result.

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

from django.conf import settings

from ops.maintenance.services import health_record
from payments import gateway

SERVICE = "payment_gateway"
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
