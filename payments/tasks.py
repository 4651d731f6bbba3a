"""Celery tasks of the payments app: capture retries and webhook event processing (queue high)."""
from django.db import DatabaseError

from ops.runtime.outbox import subscribe
from ops.runtime.tasks import background_task
from payments.services.capture import payment_settle_authorized
from payments.services.claims import PaymentBusy
from payments.webhooks import webhook_event_apply
from payments.gateway import GatewayRateLimited, GatewayUnavailable


# Backoff ceilings 4, 16, 64, 256, 600, 600 s: an outage of up to half an hour is ridden
# out well inside Razorpay's 3-day auto-refund window; after that the next payment_sync asks again.
@background_task(
    "payment_retry", queue="high", max_retries=6, backoff_base=4.0, backoff_cap=600.0,
    retry_on=(GatewayUnavailable, GatewayRateLimited, DatabaseError, PaymentBusy),
)
def payment_retry(payment_id: int) -> str:
    """Capture (or, when its order can no longer be bought, refund) one authorized payment."""
    return payment_settle_authorized(payment_id=payment_id)


@background_task("webhook_event_process", queue="high", max_retries=5, retry_on=(DatabaseError,))
def webhook_event_process(event_id: int) -> str:
    """Apply one stored Razorpay webhook event."""
    return webhook_event_apply(event_id=event_id)


subscribe("payment.authorized", "payment_retry")
subscribe("webhook.received", "webhook_event_process")
