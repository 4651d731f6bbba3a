"""POST /payments/webhooks/razorpay/: signed deliveries stored once and handed over; everything else refused."""
import base64
import io
import json
import threading

import pytest
import razorpay
from django.db import connection
from django.test import Client
from django.urls import reverse

from checkout.redis import get_redis
from ops.runtime.models import OutboxEvent
from payments import webhooks
from payments.models import WebhookEvent, WebhookRejection
from payments.webhooks import (
    MAX_BODY_BYTES,
    WEBHOOK_TOPIC,
    webhook_event_apply,
    webhook_rejection_counts,
    webhook_signature,
)
from tests.ops.maintenance.conftest import free_port
from tests.payments.conftest import WEBHOOK_SECRET

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

URL = "/payments/webhooks/razorpay/"


@pytest.fixture(autouse=True)
def webhook_secret(settings):
    settings.RAZORPAY_WEBHOOK_SECRET = WEBHOOK_SECRET


@pytest.fixture(autouse=True)
def fresh_rejection_counts():
    """No refused delivery counted or sampled before the test (they are kept across requests by design)."""
    def clear():
        webhooks._sampled_until.clear()
        client = get_redis()
        if client is not None:
            for key in client.scan_iter("webhooks:rejected:*"):
                client.delete(key)

    clear()
    yield
    clear()


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


@pytest.mark.redis
def test_refused_deliveries_are_counted_and_one_a_minute_per_reason_kept(client):
    # given anyone posting unsigned and badly signed deliveries, and a signed one that is not JSON
    for n in range(40):
        assert post(client, delivery(), signature="0" * 64 if n % 2 else None).status_code == 400
    body = b"{not json"
    for _ in range(3):
        assert post(client, body, signature=webhook_signature(body, WEBHOOK_SECRET)).status_code == 400

    # then every one is counted, and each reason keeps a single sample row with its detail
    assert webhook_rejection_counts(3600) == {"bad_signature": 40, "bad_json": 3}
    samples = sorted(WebhookRejection.objects.values_list("reason", flat=True))
    print(f"\n43 refused deliveries: counts {webhook_rejection_counts(3600)}, sample rows {samples}")
    assert samples == ["bad_json", "bad_signature"]


@pytest.mark.parametrize("redis_url", ["", "dead"])
def test_without_redis_one_refusal_a_minute_per_reason_is_kept(client, settings, redis_url):
    # given no Redis configured, or one where nothing answers
    settings.REDIS_URL = redis_url and f"redis://127.0.0.1:{free_port()}/0"
    for _ in range(20):
        assert post(client, delivery(), signature="0" * 64).status_code == 400
    assert webhook_rejection_counts(3600) is None
    assert WebhookRejection.objects.count() == 1


def test_a_refusal_is_answered_even_when_its_sample_cannot_be_stored(client, monkeypatch):
    from django.db import DatabaseError

    def broken(**kwargs):
        raise DatabaseError("database down")

    monkeypatch.setattr(WebhookRejection.objects, "create", broken)
    assert post(client, delivery(), signature="0" * 64).status_code == 400


def chunked(client, body: bytes, *, terminated: bool, signature: str):
    """A chunked delivery as a WSGI server hands it over: no CONTENT_LENGTH, the dechunked body on wsgi.input."""
    extra = {"wsgi.input_terminated": True} if terminated else {}
    return client.generic(
        "POST", URL, body, content_type="application/json", CONTENT_LENGTH="", HTTP_TRANSFER_ENCODING="chunked",
        HTTP_X_RAZORPAY_SIGNATURE=signature, HTTP_X_RAZORPAY_EVENT_ID="evt_Chunked0000001",
        **{"wsgi.input": io.BytesIO(body)}, **extra,
    )


def test_a_chunked_body_is_read_whole_from_a_server_that_ends_its_input(client):
    body = delivery()
    response = chunked(client, body, terminated=True, signature=sdk_signed(body))
    assert response.status_code == 200 and response.json()["status"] == "stored"
    assert WebhookEvent.objects.get().payload == json.loads(body)


def test_a_chunked_body_over_the_limit_is_413(client):
    body = b'{"event":"payment.captured","pad":"' + b"x" * MAX_BODY_BYTES + b'"}'
    response = chunked(client, body, terminated=True, signature=webhook_signature(body, WEBHOOK_SECRET))
    assert response.status_code == 413
    assert not WebhookEvent.objects.exists()


def test_a_chunked_body_a_server_cannot_delimit_is_411_not_a_bad_signature(client):
    body = delivery()
    response = chunked(client, body, terminated=False, signature=sdk_signed(body))
    assert response.status_code == 411
    assert not WebhookEvent.objects.exists()


@pytest.mark.parametrize("entity, error", [
    ({"amount_refunded": 10**30}, "payment entity refused by the database: bigint out of range"),
    ({"amount": "499900"}, "unreadable payment entity: amount '499900' is not a whole number of paise"),
    ({"created_at": "yesterday"}, "unreadable payment entity: invalid literal for int() with base 10: 'yesterday'"),
    ({"status": None}, "unreadable payment entity: payment 'pay_{id}' has an unknown status None"),
])
def test_a_signed_event_with_a_malformed_entity_is_recorded_as_such_not_a_crashed_task(make_payment, entity, error):
    # given a signed payment.captured whose entity holds a value no payment can have
    payment, pay_id = make_payment(at_gateway="captured")
    fields = {"id": pay_id, "entity": "payment", "amount": payment.amount_paise, "currency": "INR",
              "status": "captured", "order_id": payment.razorpay_order_id, **entity}
    event = WebhookEvent.objects.create(event_id="evt_Malformed00001", event="payment.captured",
                                        payload={"payload": {"payment": {"entity": fields}}})
    # when
    outcome = webhook_event_apply(event_id=event.pk)
    # then the event is done with its reason, and the payment untouched
    event.refresh_from_db()
    assert outcome == event.error == error.format(id=pay_id.removeprefix("pay_"))
    assert event.processed_at is not None
    payment.refresh_from_db()
    assert payment.status == "created"
