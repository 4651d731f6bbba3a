"""A payment that ends failed tells its customer once, by email, with the order and what to do: from the
`payment.failed` event, or from the re-drive when that message was lost; never once the order is paid."""
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from ops.runtime.models import DeadLetter, OutboxEvent
from orders.models import Order, OrderStatus, OutgoingEmail
from orders.services import EMAIL_REDRIVE_MAX_ATTEMPTS, HEAL_AFTER, PAYMENT_FAILED, REDRIVE_EVERY, effects_redrive
from orders.tasks import payment_failure_notify
from payments.services.settle import payment_sync_pending
from tests.factories import OrderFactory
from tests.ops.maintenance.conftest import free_port
from tests.payments.conftest import fake_gateway, make_payment  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def failed_payment(make_payment, capture_callbacks, *, deliver: bool):
    """A payment the gateway failed, applied by the sync; its events delivered now or lost (`deliver`)."""
    payment, _ = make_payment(at_gateway="failed")
    with capture_callbacks(execute=deliver):
        assert payment_sync_pending()["failed"] == 1
    if not deliver:  # handed to the broker, which lost them
        OutboxEvent.objects.filter(published_at__isnull=True).update(published_at=timezone.now())
    return Order.objects.get(pk=payment.order_id), payment


def failure_emails():
    return [m for m in mail.outbox if "did not go through" in m.subject]


def test_a_failed_payment_tells_its_customer_once_with_the_order_and_what_to_do(
        make_payment, django_capture_on_commit_callbacks):
    # when the sync applies a failure and the event reaches its task (inline here)
    order, payment = failed_payment(make_payment, django_capture_on_commit_callbacks, deliver=True)

    # then the order records it and the customer has one email about this order
    assert order.status == OrderStatus.PENDING and order.payment_failed_at and order.payment_failed_email_sent_at
    (email,) = failure_emails()
    print(f"subject={email.subject!r}\n{email.body}")
    assert email.to == [order.user.email]
    assert f"order {order.pk}" in email.subject and f"order {order.pk}" in email.body
    assert "4,999.00 INR" in email.body
    assert "pay again" in email.body and order.internship.title in email.body

    # when the event is delivered again, the sync runs again, and the re-drive comes round later
    with django_capture_on_commit_callbacks(execute=True):
        assert payment_failure_notify.delay(payment_id=payment.pk, order_id=order.pk).get() == "already_sent"
        payment_sync_pending()
        counts = effects_redrive(now=timezone.now() + HEAL_AFTER * 2)
    # then nothing more is sent
    assert counts["notifications_redriven"] == 0
    assert len(failure_emails()) == 1 and OutgoingEmail.objects.filter(key=f"{PAYMENT_FAILED}:{order.pk}").count() == 1


def test_a_lost_failure_message_is_redriven_after_the_grace_until_told(
        make_payment, django_capture_on_commit_callbacks):
    # given a failure whose event never reached a worker (the broker lost it)
    order, _ = failed_payment(make_payment, django_capture_on_commit_callbacks, deliver=False)
    assert OutboxEvent.objects.filter(topic="payment.failed", payload__order_id=order.pk).exists()
    assert order.payment_failed_at and order.payment_failed_email_sent_at is None and not mail.outbox

    # when the sweep runs inside the grace, nothing is re-driven yet
    with django_capture_on_commit_callbacks(execute=True):
        assert effects_redrive()["notifications_redriven"] == 0
    # when it runs after the grace
    later = timezone.now() + HEAL_AFTER + timedelta(minutes=1)
    with django_capture_on_commit_callbacks(execute=True):
        first = effects_redrive(now=later)
    with django_capture_on_commit_callbacks(execute=True):
        second = effects_redrive(now=later + timedelta(seconds=REDRIVE_EVERY))
    print(f"re-driven: first sweep {first}, second sweep {second}")

    # then the customer was told once, and the next sweep found it done
    assert first["notifications_redriven"] == 1 and second["notifications_redriven"] == 0
    assert OutboxEvent.objects.filter(topic="notification.missing",
                                      payload={"kind": PAYMENT_FAILED, "object_id": order.pk}).count() == 1
    order.refresh_from_db()
    assert order.payment_failed_email_sent_at is not None
    assert [m.to for m in failure_emails()] == [[order.user.email]]


def test_no_failure_email_once_another_attempt_paid_the_order(make_payment, django_capture_on_commit_callbacks):
    # given a failure whose message is still on its way
    order, payment = failed_payment(make_payment, django_capture_on_commit_callbacks, deliver=False)
    # when the customer pays the order with another attempt before it arrives
    retry, _ = make_payment(at_gateway="captured")
    retry.__class__.objects.filter(pk=retry.pk).update(order=order)
    with django_capture_on_commit_callbacks(execute=False):
        assert payment_sync_pending()["orders_paid"] == 1
    # and then the failure's message arrives, and the sweep comes round
    with django_capture_on_commit_callbacks(execute=True):
        outcome = payment_failure_notify.delay(payment_id=payment.pk, order_id=order.pk).get()
        counts = effects_redrive(now=timezone.now() + HEAL_AFTER * 2)

    # then nothing is said about a failure the customer has made good
    order.refresh_from_db()
    assert order.status == OrderStatus.PAID and outcome == "not_needed"
    assert counts["notifications_redriven"] == 0
    assert order.payment_failed_email_sent_at is None and not failure_emails()
    assert not OutgoingEmail.objects.filter(key__startswith=PAYMENT_FAILED).exists()


def test_a_failure_of_an_order_paid_or_closed_already_is_not_recorded(
        make_payment, django_capture_on_commit_callbacks):
    # given failed payments of an order paid by another payment and of an expired order
    now = timezone.now()
    paid = OrderFactory(status=OrderStatus.PAID, paid_at=now)
    expired = OrderFactory(status=OrderStatus.EXPIRED, expired_at=now)
    for order in (paid, expired):
        payment, _ = make_payment(at_gateway="failed")
        payment.__class__.objects.filter(pk=payment.pk).update(order=order)
    # when the sync applies the failures and their events run
    with django_capture_on_commit_callbacks(execute=True):
        assert payment_sync_pending()["failed"] == 2
    # then neither order asks for a failure email
    assert not Order.objects.filter(pk__in=[paid.pk, expired.pk], payment_failed_at__isnull=False).exists()
    assert not failure_emails()


def test_a_failure_email_that_keeps_failing_ends_in_the_dead_letters_with_its_reason(
        settings, make_payment, django_capture_on_commit_callbacks):
    # given SMTP that refuses every connection
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", free_port(), 1
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    # when a failure is told: the email task and its retries run inline, and all fail
    failed_payment(make_payment, django_capture_on_commit_callbacks, deliver=True)
    order = Order.objects.get(payment_failed_at__isnull=False)
    email = OutgoingEmail.objects.get(key=f"{PAYMENT_FAILED}:{order.pk}")
    # and the sweep re-drives it in later periods until its attempts run out
    now, sweeps = timezone.now() + HEAL_AFTER * 2, 0
    while email.attempts < EMAIL_REDRIVE_MAX_ATTEMPTS:
        with django_capture_on_commit_callbacks(execute=True):
            assert effects_redrive(now=now + timedelta(seconds=REDRIVE_EVERY * sweeps))["emails_redriven"] == 1
        email.refresh_from_db()
        sweeps += 1

    # then the notification is done (its marker), the email is not, and says why; it is a dead letter
    dead = DeadLetter.objects.filter(task_name="email_send", state=DeadLetter.State.DEAD)
    print(f"attempts={email.attempts} sweeps={sweeps} dead_letters={dead.count()} last_error={email.last_error!r}")
    assert email.sent_at is None and "ConnectionRefusedError" in email.last_error
    assert dead.exists() and all("ConnectionRefusedError" in d.error for d in dead)
    assert all(d.kwargs == {"email_id": email.pk} for d in dead)
    # and once its attempts are spent the sweep leaves it to a person
    assert effects_redrive(now=now + timedelta(seconds=REDRIVE_EVERY * (sweeps + 1))) == {
        "enrollments_healed": 0, "notifications_redriven": 0, "emails_redriven": 0,
    }
