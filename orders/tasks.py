"""Celery tasks of the orders app: enrollment from `order.paid`, notifications, email."""
from smtplib import SMTPException

from django.db import DatabaseError

from ops.runtime.outbox import subscribe
from ops.runtime.tasks import background_task
from orders import services


@background_task("enrollment_create", queue="high", max_retries=5, retry_on=(DatabaseError,))
def enrollment_create(order_id: int) -> int | None:
    """Create the enrollment of a paid order (idempotent)."""
    enrollment = services.enrollment_create(order_id=order_id)
    return enrollment.pk if enrollment else None


@background_task("notification_send", queue="high", max_retries=5, retry_on=(DatabaseError,))
def notification_send(kind: str, object_id: int) -> str:
    """Queue a notification's email, once per object."""
    return services.notification_send(kind=kind, object_id=object_id)


@background_task("payment_failure_notify", queue="high", max_retries=5, retry_on=(DatabaseError,))
def payment_failure_notify(payment_id: int, order_id: int) -> str:
    """Tell the customer once that a payment of their order failed (nothing when it was paid since)."""
    return services.notification_send(kind=services.PAYMENT_FAILED, object_id=order_id)


@background_task(
    "email_send", queue="default", max_retries=6, backoff_base=4.0, backoff_cap=600.0,
    retry_on=(OSError, SMTPException, DatabaseError),
)
def email_send(email_id: int) -> str:
    """Send one stored email unless it was already sent."""
    return services.email_send(email_id=email_id)


subscribe("order.paid", "enrollment_create")
subscribe("enrollment.missing", "enrollment_create")
subscribe("enrollment.created", "notification_send")
subscribe("order.expired", "notification_send")
subscribe("payment.failed", "payment_failure_notify")
subscribe("email.queued", "email_send")
# Re-drives of effects not done in time (services.effects_redrive).
subscribe("notification.missing", "notification_send")
subscribe("email.missing", "email_send")
