"""Webhook events applied through the same services as the sync, once, whatever is delivered twice."""
import hashlib
import hmac
import json
import uuid

import pytest
from django.core import mail

from orders.models import Enrollment, Order
from payments.models import Payment, WebhookEvent
from payments.tasks import webhook_event_process
from tests.payments.conftest import WEBHOOK_SECRET

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db]


def deliver(client, event: str, payment_entity: dict, event_id: str | None = None, **extra):
    body = json.dumps({
        "entity": "event", "event": event, "contains": ["payment", *extra],
        "payload": {"payment": {"entity": payment_entity}, **{k: {"entity": v} for k, v in extra.items()}},
    }).encode()
    signature = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return client.post(
        "/payments/webhooks/razorpay/", data=body, content_type="application/json",
        HTTP_X_RAZORPAY_SIGNATURE=signature, HTTP_X_RAZORPAY_EVENT_ID=event_id or f"evt_{uuid.uuid4().hex[:14]}",
    )


def test_payment_captured_event_pays_once_even_when_replayed(
        client, make_payment, fake_gateway, django_capture_on_commit_callbacks, redis_client):
    payment, pay_id = make_payment(at_gateway="captured")
    entity = fake_gateway.payment(pay_id)
    with django_capture_on_commit_callbacks(execute=True):
        assert deliver(client, "payment.captured", entity, event_id="evt_once").status_code == 200
        assert deliver(client, "payment.captured", entity, event_id="evt_once").status_code == 200
        # the same fact under another event id (order.paid) changes nothing either
        assert deliver(client, "order.paid", entity, order=fake_gateway.order(payment.razorpay_order_id)).status_code == 200
    payment.refresh_from_db()
    assert payment.status == "captured"
    assert Order.objects.get(pk=payment.order_id).status == "paid"
    assert Enrollment.objects.filter(order_id=payment.order_id).count() == 1
    assert len(mail.outbox) == 1
    assert WebhookEvent.objects.filter(processed_at__isnull=True).count() == 0
    # a task delivered twice does nothing the second time
    event = WebhookEvent.objects.get(event_id="evt_once")
    assert webhook_event_process.delay(event_id=event.pk).get() == "already_processed"


def test_payment_authorized_event_captures_through_the_claimed_fetch_first_path(
        client, make_payment, fake_gateway, django_capture_on_commit_callbacks, redis_client):
    payment, pay_id = make_payment(at_gateway="authorized")
    with django_capture_on_commit_callbacks(execute=True):
        deliver(client, "payment.authorized", fake_gateway.payment(pay_id))
    assert Payment.objects.get(pk=payment.pk).status == "captured"
    assert fake_gateway.captures(pay_id) == 1


def test_failed_then_late_stale_events_never_move_backwards(
        client, make_payment, fake_gateway, django_capture_on_commit_callbacks, redis_client):
    payment, pay_id = make_payment(at_gateway="captured")
    captured = fake_gateway.payment(pay_id)
    stale_failed = {**captured, "status": "failed", "error_code": "BAD_REQUEST_ERROR"}
    with django_capture_on_commit_callbacks(execute=True):
        deliver(client, "payment.captured", captured)
        deliver(client, "payment.failed", stale_failed)
    assert Payment.objects.get(pk=payment.pk).status == "captured"


def test_refund_processed_marks_payment_and_order_refunded(
        client, make_payment, fake_gateway, django_capture_on_commit_callbacks, redis_client):
    payment, pay_id = make_payment(at_gateway="captured")
    with django_capture_on_commit_callbacks(execute=True):
        deliver(client, "payment.captured", fake_gateway.payment(pay_id))
    fake_gateway.set_status(pay_id, "refunded")
    entity = fake_gateway.payment(pay_id)
    with django_capture_on_commit_callbacks(execute=True):
        deliver(client, "refund.processed", entity, refund=fake_gateway.refunds(pay_id)[-1])
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_paise) == ("refunded", payment.amount_paise)
    assert Order.objects.get(pk=payment.order_id).status == "refunded"


def test_event_for_an_unknown_payment_is_recorded_not_retried(
        client, fake_gateway, django_capture_on_commit_callbacks):
    order = fake_gateway.add_order(amount=1000)
    entity = fake_gateway.add_payment(order_id=order["id"], status="captured")
    with django_capture_on_commit_callbacks(execute=True):
        deliver(client, "payment.captured", entity, event_id="evt_unknown")
    event = WebhookEvent.objects.get(event_id="evt_unknown")
    assert event.processed_at is not None and "no payment" in event.error


@pytest.mark.parametrize("payment", [[1, 2], "pay_x", {"entity": ["not", "an", "object"]}, None])
def test_a_signed_but_malformed_event_is_recorded_as_such_not_a_crashed_task(
        client, fake_gateway, django_capture_on_commit_callbacks, payment):
    body = json.dumps({"entity": "event", "event": "payment.captured", "payload": {"payment": payment}}).encode()
    signature = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/payments/webhooks/razorpay/", data=body, content_type="application/json",
            HTTP_X_RAZORPAY_SIGNATURE=signature, HTTP_X_RAZORPAY_EVENT_ID="evt_malformed",
        )
    assert response.status_code == 200
    event = WebhookEvent.objects.get(event_id="evt_malformed")
    assert event.processed_at is not None and event.error == "no payment entity in the payload"
