"""POST /payments/webhooks/razorpay/: signed deliveries stored once and handed over; everything else refused."""
import base64
import json
import threading

import pytest
import razorpay
from django.db import connection
from django.test import Client
from django.urls import reverse

from ops.runtime.models import OutboxEvent
from payments.models import WebhookEvent, WebhookRejection
from payments.webhooks import MAX_BODY_BYTES, WEBHOOK_TOPIC, webhook_signature
from tests.payments.conftest import WEBHOOK_SECRET

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

URL = "/payments/webhooks/razorpay/"


@pytest.fixture(autouse=True)
def webhook_secret(settings):
    settings.RAZORPAY_WEBHOOK_SECRET = WEBHOOK_SECRET


def delivery(event="payment.captured", payment_id="pay_Webhook000001"):
    return json.dumps({
        "entity": "event", "account_id": "acc_Test00000001", "event": event,
        "contains": ["payment"], "created_at": 1735689600,
        "payload": {"payment": {"entity": {
            "id": payment_id, "entity": "payment", "amount": 49900, "currency": "INR",
            "status": "captured", "order_id": "order_Webhook00001", "captured": True,
        }}},
    }, separators=(",", ":")).encode()


def sdk_signed(body: bytes) -> str:
    """The signature Razorpay sends, checked with the SDK's own verification."""
    signature = webhook_signature(body, WEBHOOK_SECRET)
    assert razorpay.Client(auth=("k", "s")).utility.verify_webhook_signature(
        body.decode(), signature, WEBHOOK_SECRET
    )
    return signature


def post(client, body: bytes, *, signature=None, event_id="evt_Test000000001", **headers):
    if signature is not None:
        headers["HTTP_X_RAZORPAY_SIGNATURE"] = signature
    if event_id is not None:
        headers["HTTP_X_RAZORPAY_EVENT_ID"] = event_id
    return client.post(URL, data=body, content_type="application/json", **headers)


def test_the_route_is_the_contract():
    assert reverse("payments:razorpay-webhook") == URL


def test_signed_delivery_is_stored_and_announced_after_commit(client, django_capture_on_commit_callbacks):
    # given
    body = delivery()
    # when
    with django_capture_on_commit_callbacks() as callbacks:
        response = post(client, body, signature=sdk_signed(body))
    # then
    assert response.status_code == 200 and response.json()["status"] == "stored"
    event = WebhookEvent.objects.get()
    assert (event.event_id, event.event, event.processed_at) == ("evt_Test000000001", "payment.captured", None)
    assert event.payload == json.loads(body)
    announced = OutboxEvent.objects.get()
    assert (announced.topic, announced.payload, announced.key) == (
        WEBHOOK_TOPIC, {"event_id": event.pk}, "webhook:evt_Test000000001",
    )
    assert len(callbacks) == 1
    assert not WebhookRejection.objects.exists()


def test_replay_is_acknowledged_and_stored_once(client):
    body = delivery()
    signature = sdk_signed(body)
    first = post(client, body, signature=signature)
    again = post(client, body, signature=signature)
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json()["status"] == "duplicate"
    assert WebhookEvent.objects.count() == 1 and OutboxEvent.objects.count() == 1


def test_tampered_body_is_refused_and_nothing_stored(client):
    # given: a valid signature for another body
    signature = sdk_signed(delivery())
    tampered = delivery(payment_id="pay_Attacker00001")
    # when
    response = post(client, tampered, signature=signature)
    # then
    assert response.status_code == 400 and response.json()["error"] == "bad_signature"
    assert not WebhookEvent.objects.exists() and not OutboxEvent.objects.exists()
    assert list(WebhookRejection.objects.values_list("reason", flat=True)) == ["bad_signature"]


def test_signature_with_another_secret_is_refused(client):
    body = delivery()
    response = post(client, body, signature=webhook_signature(body, "someone-else"))
    assert response.status_code == 400
    assert not WebhookEvent.objects.exists()


def test_missing_signature_is_refused(client):
    response = post(client, delivery())
    assert response.status_code == 400
    assert WebhookRejection.objects.get().reason == "bad_signature"


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"payload": {}}', "\u00e9".encode("latin-1")])
def test_signed_but_malformed_body_is_refused(client, body):
    response = post(client, body, signature=webhook_signature(body, WEBHOOK_SECRET))
    assert response.status_code == 400 and response.json()["error"] == "bad_json"
    assert not WebhookEvent.objects.exists()
    assert WebhookRejection.objects.get().reason == "bad_json"


def test_missing_event_id_is_refused(client):
    body = delivery()
    response = post(client, body, signature=sdk_signed(body), event_id=None)
    assert response.status_code == 400 and response.json()["error"] == "no_event_id"
    assert not WebhookEvent.objects.exists()


def test_oversized_body_is_413_and_nothing_stored(client):
    body = b'{"event":"payment.captured","pad":"' + b"x" * MAX_BODY_BYTES + b'"}'
    response = post(client, body, signature=webhook_signature(body, WEBHOOK_SECRET))
    assert response.status_code == 413
    assert not WebhookEvent.objects.exists()
    assert WebhookRejection.objects.get().reason == "too_large"


def test_unhandled_event_type_is_acknowledged_stored_processed_and_not_announced(client):
    body = delivery(event="subscription.charged")
    response = post(client, body, signature=sdk_signed(body))
    assert response.status_code == 200 and response.json()["status"] == "ignored"
    event = WebhookEvent.objects.get()
    assert event.processed_at is not None
    assert not OutboxEvent.objects.exists()


def test_only_post():
    assert Client().get(URL).status_code == 405


def test_no_webhook_secret_is_503_and_nothing_stored(client, settings):
    settings.RAZORPAY_WEBHOOK_SECRET = ""
    body = delivery()
    response = post(client, body, signature=webhook_signature(body, WEBHOOK_SECRET))
    assert response.status_code == 503
    assert not WebhookEvent.objects.exists() and not WebhookRejection.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_replays_store_one_event():
    # given: Razorpay retrying while the first delivery is still being stored
    body = delivery()
    signature = sdk_signed(body)
    statuses = []
    barrier = threading.Barrier(4)

    def deliver():
        try:
            barrier.wait()
            statuses.append(post(Client(), body, signature=signature).status_code)
        finally:
            connection.close()

    # when
    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then
    assert statuses == [200] * 4
    assert WebhookEvent.objects.count() == 1
    assert OutboxEvent.objects.filter(topic=WEBHOOK_TOPIC).count() == 1


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_stored_event_is_queued_for_webhook_event_process_on_high(celery_live, redis_client):
    # given: a real broker (the test Redis) instead of inline tasks
    body = delivery()
    # when
    response = post(Client(), body, signature=sdk_signed(body))
    # then: after commit, one message for the processing task sits on the high queue
    assert response.status_code == 200
    event = WebhookEvent.objects.get()
    messages = [json.loads(raw) for raw in redis_client.lrange("high", 0, -1)]
    assert [m["headers"]["task"] for m in messages] == ["webhook_event_process"]
    args, kwargs, _ = json.loads(base64.b64decode(messages[0]["body"]))
    assert (args, kwargs) == ([], {"event_id": event.pk})
    assert OutboxEvent.objects.get().published_at is not None
