"""Alert rules on the dependencies whose health jobs store results: down for too long pages once."""
from __future__ import annotations

from datetime import datetime

from django.conf import settings

from ops.maintenance.models import HealthCheck
from ops.runtime.alerts import Condition, alert_rule

# What each stored service is to a person, and what to do when it stays down.
DEPENDENCIES = {
    "payment_gateway": (
        "Razorpay",
        "check Razorpay's status page and that RAZORPAY_KEY_ID/RAZORPAY_KEY_SECRET are valid (the reason "
        "says which); payments wait and payment_sync reconciles them once the gateway answers",
    ),
    "email_service": (
        "SMTP",
        "check the mail server at EMAIL_HOST:EMAIL_PORT and its credentials; emails are kept and "
        "re-sent by payment_sync once it answers",
    ),
    "webhooks": (
        "Razorpay webhooks",
        "check the webhook URL and secret in the Razorpay dashboard and that POST "
        "/payments/webhooks/razorpay/ reaches the app; payment_sync reconciles payments meanwhile",
    ),
    "cache": (
        "Redis",
        "check the Redis server at REDIS_URL (memory, connections); while it is down carts are not "
        "cached and, when it is the broker, no background task runs",
    ),
}


def down_since(service: str) -> tuple[datetime, dict] | None:
    """When the service's current run of `down` results began, with the latest result's detail; None if up."""
    latest = HealthCheck.objects.filter(service=service).values("status", "detail", "checked_at").first()
    if latest is None or latest["status"] != HealthCheck.Status.DOWN:
        return None
    last_up = (
        HealthCheck.objects.filter(service=service).exclude(status=HealthCheck.Status.DOWN)
        .values_list("checked_at", flat=True).first()
    )
    first_down = HealthCheck.objects.filter(service=service, status=HealthCheck.Status.DOWN)
    if last_up is not None:
        first_down = first_down.filter(checked_at__gt=last_up)
    since = first_down.order_by("checked_at").values_list("checked_at", flat=True).first()
    return since, latest["detail"] or {}


def _down_too_long(service: str, label: str):
    def check(now: datetime) -> Condition:
        found = down_since(service)
        limit = settings.ALERT_DEPENDENCY_DOWN_AFTER
        if found is None:
            return Condition(False, f"{label} is up")
        since, detail = found
        down_for = now - since
        reason = detail.get("reason") or detail.get("error") or "no reason recorded"
        minutes = round(down_for.total_seconds() / 60)
        return Condition(
            down_for >= limit,
            f"{label} down for {minutes} min (since {since:%Y-%m-%d %H:%M %Z}): {reason}",
            {"service": service, "since": since.isoformat(), "down_s": round(down_for.total_seconds()),
             "reason": reason},
        )
    return check


for _service, (_label, _advice) in DEPENDENCIES.items():
    alert_rule(f"dependency:{_service}", next_step=_advice)(_down_too_long(_service, _label))
