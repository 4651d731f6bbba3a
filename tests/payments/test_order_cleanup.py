"""order_cleanup: overdue orders release their payments (never capture), expire with one email, orphans close."""
from datetime import timedelta

import pytest
from django.core import mail

from ops.runtime.runner import run_job
from payments.services.order_cleanup import order_cleanup_overdue
from orders.models import Order, OutgoingEmail
from orders.tasks import email_send, notification_send
from payments.models import Payment
from tests.factories import OrderFactory, PaymentFactory

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db]

OVERDUE = timedelta(hours=49)


def cleanup(capture_callbacks, **kwargs):
    with capture_callbacks(execute=True):
        return order_cleanup_overdue(**kwargs)


def test_authorized_payment_is_refunded_never_captured_and_the_order_expires_with_one_email(
        make_payment, fake_gateway, django_capture_on_commit_callbacks, redis_client):
    # given
    payment, pay_id = make_payment(at_gateway="authorized", age=OVERDUE)
    # when
    counts = cleanup(django_capture_on_commit_callbacks)
    # then
    payment.refresh_from_db()
    order = Order.objects.get(pk=payment.order_id)
    assert fake_gateway.captures(pay_id) == 0 and fake_gateway.payment(pay_id)["status"] == "refunded"
    assert payment.status == "refunded"
    assert (order.status, counts["orders_expired"]) == ("expired", 1)
    assert order.expired_at is not None and order.expiration_email_sent_at is not None
    assert len(mail.outbox) == 1 and "expired" in mail.outbox[0].subject
    # when the job, the notification and the email task all run again
    cleanup(django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        assert notification_send.delay(kind="order_expired", object_id=order.pk).get() == "already_sent"
        assert email_send.delay(email_id=OutgoingEmail.objects.get().pk).get() == "already_sent"
    # then still one email
    assert len(mail.outbox) == 1


def test_created_payment_without_attempt_is_cancelled_locally(make_payment, fake_gateway,
                                                              django_capture_on_commit_callbacks):
    payment, _ = make_payment(age=OVERDUE)
    counts = cleanup(django_capture_on_commit_callbacks)
    assert Payment.objects.get(pk=payment.pk).status == "cancelled"
    assert Order.objects.get(pk=payment.order_id).status == "expired"
    assert counts["payments_cancelled"] == 1
    assert not fake_gateway.calls("payment.refund") and not fake_gateway.calls("payment.capture")


def test_captured_at_gateway_pays_the_overdue_order_instead(make_payment, django_capture_on_commit_callbacks,
                                                           redis_client):
    payment, _ = make_payment(at_gateway="captured", age=OVERDUE)
    cleanup(django_capture_on_commit_callbacks)
    assert Order.objects.get(pk=payment.order_id).status == "paid"
    assert len(mail.outbox) == 1 and "enrolled" in mail.outbox[0].subject


def test_gateway_down_leaves_the_order_for_the_next_run(make_payment, fake_gateway,
                                                        django_capture_on_commit_callbacks):
    payment, _ = make_payment(at_gateway="authorized", age=OVERDUE)
    fake_gateway.set_faults(p_5xx=1.0)
    counts = cleanup(django_capture_on_commit_callbacks)
    assert counts["gateway_errors"] == 1
    assert Order.objects.get(pk=payment.order_id).status == "pending"
    assert Payment.objects.get(pk=payment.pk).claimed_until is None


@pytest.mark.parametrize("orphan", ["no_payment", "no_user", "no_internship"])
def test_orphaned_orders_are_cancelled_without_email(orphan, django_capture_on_commit_callbacks, fake_gateway):
    from django.utils import timezone
    fields = {"created_at": timezone.now() - OVERDUE}
    if orphan == "no_user":
        fields["user"] = None
    if orphan == "no_internship":
        fields.update(internship=None, amount_paise=1000)
    order = OrderFactory(**fields)
    if orphan != "no_payment":
        PaymentFactory(order=order, status="failed")
    counts = cleanup(django_capture_on_commit_callbacks)
    order.refresh_from_db()
    assert (order.status, counts["orders_cancelled_orphaned"]) == ("cancelled", 1)
    assert order.cancelled_at is not None and len(mail.outbox) == 0


def test_recent_pending_orders_are_left_alone(make_payment, django_capture_on_commit_callbacks):
    payment, _ = make_payment(at_gateway="authorized", age=timedelta(hours=3))
    assert not cleanup(django_capture_on_commit_callbacks)["orders_expired"]
    assert Order.objects.get(pk=payment.order_id).status == "pending"


def test_order_status_follows_payment_status(django_capture_on_commit_callbacks, redis_client):
    from django.utils import timezone
    captured = PaymentFactory(status="captured", captured_at=timezone.now(), razorpay_payment_id="pay_C1")
    refunded_order = OrderFactory(status="paid", paid_at=timezone.now())
    PaymentFactory(order=refunded_order, status="refunded", razorpay_payment_id="pay_R1")
    counts = cleanup(django_capture_on_commit_callbacks)
    assert Order.objects.get(pk=captured.order_id).status == "paid"
    assert Order.objects.get(pk=refunded_order.pk).status == "refunded"
    assert (counts["orders_marked_paid"], counts["orders_marked_refunded"]) == (1, 1)


def test_dry_run_changes_nothing(make_payment, fake_gateway, django_capture_on_commit_callbacks):
    payment, pay_id = make_payment(at_gateway="authorized", age=OVERDUE)
    OrderFactory(created_at=payment.order.created_at)
    with django_capture_on_commit_callbacks(execute=True):
        run = run_job("order_cleanup", dry_run=True)
    assert run.status == "success", run.error
    assert run.counts["would_refund"] == 1 and run.counts["would_cancel_orphaned"] == 1
    assert fake_gateway.payment(pay_id)["status"] == "authorized"
    assert Order.objects.filter(status="pending").count() == 2
