"""Disputes: Razorpay's signed `payment.dispute.*` deliveries flag the payment they dispute, page once
(`payments:dispute`) while one waits for an answer and recover when none does, and show in the admin."""
import json
import time
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from ops.runtime.alerts import evaluate_rules
from ops.runtime.models import AlertIncident
from payments.models import Dispute, WebhookEvent
from payments.webhooks import webhook_event_apply, webhook_signature
from tests.factories import PaymentFactory, staff_user
from tests.payments.conftest import WEBHOOK_SECRET

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

URL = "/payments/webhooks/razorpay/"
DISPUTE_ID = "disp_Test0000000001"


@pytest.fixture(autouse=True)
def alert_mail(settings):
    settings.ADMINS = [("Ops", "ops@example.com")]
    settings.ALERT_BACKENDS = ["ops.runtime.alerts.LogBackend", "ops.runtime.alerts.EmailBackend"]


@pytest.fixture
def captured(make_payment):
    payment, pay_id = make_payment(at_gateway="captured", local_status="captured", amount=499900)
    return payment, pay_id


def dispute_body(event: str, payment_id: str, *, at: int, dispute_id: str = DISPUTE_ID, amount=499900,
                 respond_by: int | None = None, status: str = "open", entity: dict | None = None) -> bytes:
    """A delivery as Razorpay posts it: the payment and the dispute entities, the event's time."""
    dispute = entity if entity is not None else {
        "id": dispute_id, "entity": "dispute", "payment_id": payment_id, "amount": amount, "currency": "INR",
        "amount_deducted": 0, "reason_code": "chargeback", "reason_description": "Product not received",
        "respond_by": respond_by, "status": status, "phase": "chargeback", "created_at": at,
    }
    return json.dumps({
        "entity": "event", "account_id": "acc_Test00000001", "event": event, "contains": ["payment", "dispute"],
        "payload": {"payment": {"entity": {"id": payment_id, "entity": "payment", "amount": 499900,
                                           "currency": "INR", "status": "captured"}},
                    "dispute": {"entity": dispute}},
        "created_at": at,
    }, separators=(",", ":")).encode()


def deliver(client, body: bytes, event_id: str, capture) -> WebhookEvent:
    """Post a signed delivery and let its processing run as the worker would (the outbox, then the task)."""
    with capture(execute=True):
        response = client.post(URL, data=body, content_type="application/json",
                               HTTP_X_RAZORPAY_SIGNATURE=webhook_signature(body, WEBHOOK_SECRET),
                               HTTP_X_RAZORPAY_EVENT_ID=event_id)
    assert response.status_code == 200 and response.json()["status"] == "stored"
    return WebhookEvent.objects.get(event_id=event_id)


def alert_mails():
    return [m.subject for m in mail.outbox if "payments:dispute" in m.subject]


def test_a_dispute_flags_its_payment_pages_once_and_recovers_when_answered(
        client, captured, fake_gateway, django_capture_on_commit_callbacks):
    payment, pay_id = captured
    other = PaymentFactory(status="captured", razorpay_payment_id="pay_NotDisputed01")
    t0 = int(time.time()) - 3600
    due = t0 + 3 * 86400
    seen = []

    def step(event, at, event_id, **kw):
        received = deliver(client, dispute_body(event, pay_id, at=at, respond_by=due, **kw), event_id,
                           django_capture_on_commit_callbacks)
        assert received.processed_at is not None and received.error == ""
        changes = evaluate_rules()
        status = Dispute.objects.get().status
        seen.append((event.removeprefix("payment.dispute."), status, changes.get("payments:dispute", "-")))
        return changes

    # a dispute is raised: the payment is flagged and the alert opens, once
    assert step("payment.dispute.created", t0, "evt_D1") == {"payments:dispute": "opened"}
    dispute = Dispute.objects.get()
    assert (dispute.payment_id, dispute.razorpay_dispute_id, dispute.amount_paise, dispute.reason) == (
        payment.pk, DISPUTE_ID, 499900, "Product not received")
    assert dispute.respond_by == datetime.fromtimestamp(due, tz=dt_timezone.utc)
    incident = AlertIncident.objects.get(job="payments:dispute", resolved_at__isnull=True)
    assert incident.summary.startswith("payment disputes waiting for an answer: 1, the first due ")
    assert "Razorpay dashboard" in incident.detail["next_step"] and incident.detail["dispute_ids"] == [DISPUTE_ID]
    assert evaluate_rules() == {} and len(alert_mails()) == 1

    # the admin lists it under its filter, with the dispute's status, and shows it on the payment's page
    client.force_login(staff_user("viewer", "payments.view_payment", "payments.view_dispute"))
    listed = client.get(reverse("admin:payments_payment_changelist") + "?dispute=needs_answer").content.decode()
    page = client.get(reverse("admin:payments_payment_change", args=[payment.pk])).content.decode()
    everything = client.get(reverse("admin:payments_payment_changelist")).content.decode()
    assert pay_id in listed and other.razorpay_payment_id not in listed
    assert '<td class="field-dispute">open</td>' in listed
    assert '<td class="field-dispute">-</td>' in everything
    assert DISPUTE_ID in page and "Product not received" in page

    # more evidence asked for: still waiting, no second page
    assert step("payment.dispute.action_required", t0 + 60, "evt_D2") == {}
    # contested: under the bank's review, the alert recovers
    assert step("payment.dispute.under_review", t0 + 120, "evt_D3") == {"payments:dispute": "resolved"}
    # a late delivery of the first event changes nothing
    assert step("payment.dispute.created", t0 - 10, "evt_D1-late") == {}
    assert step("payment.dispute.won", t0 + 180, "evt_D4") == {}
    for row in seen:
        print("event {:<16} dispute {:<16} alert {}".format(*row))

    assert [s for _, s, _ in seen] == ["open", "action_required", "under_review", "under_review", "won"]
    assert len(alert_mails()) == 2  # the page and its recovery notice
    won = client.get(reverse("admin:payments_payment_changelist") + "?dispute=won").content.decode()
    assert '<td class="field-dispute">won</td>' in won
    assert pay_id not in client.get(reverse("admin:payments_payment_changelist") + "?dispute=needs_answer"
                                    ).content.decode()


@pytest.mark.parametrize("entity, error", [
    (None, "no dispute entity in the payload"),
    ({"id": "not-a-dispute", "amount": 100, "currency": "INR", "payment_id": "pay_X"}, "unreadable dispute entity: id"),
    ({"id": "disp_Bad0000000001", "amount": "100", "currency": "INR"}, "amount '100' is not a whole number"),
    ({"id": "disp_Bad0000000002", "amount": 100, "currency": 7}, "unreadable dispute entity: currency 7"),
    ({"id": "disp_Bad0000000003", "amount": 100, "currency": "INR", "payment_id": "pay_Unknown00001"},
     "no payment for dispute disp_Bad0000000003"),
])
def test_a_malformed_or_unknown_dispute_is_a_recorded_error_not_a_crash(entity, error):
    body = json.loads(dispute_body("payment.dispute.created", "pay_Unknown00001", at=int(time.time()),
                                   entity=entity or {}))
    if entity is None:
        del body["payload"]["dispute"]
    event = WebhookEvent.objects.create(event_id="evt_Bad", event="payment.dispute.created", payload=body)

    outcome = webhook_event_apply(event_id=event.pk)

    event.refresh_from_db()
    print(f"{error}: {outcome}")
    assert error in outcome and event.error == outcome and event.processed_at is not None
    assert not Dispute.objects.exists()
    assert evaluate_rules().get("payments:dispute") is None


def test_a_lost_dispute_records_what_was_deducted_and_pages_nobody(captured, fake_gateway):
    payment, pay_id = captured
    at = int(time.time())
    entity = {"id": DISPUTE_ID, "entity": "dispute", "payment_id": pay_id, "amount": 499900, "currency": "INR",
              "amount_deducted": 499900, "reason_code": "fraud", "respond_by": at - 60, "status": "lost",
              "phase": "chargeback"}
    event = WebhookEvent.objects.create(event_id="evt_L", event="payment.dispute.lost",
                                        payload=json.loads(dispute_body("payment.dispute.lost", pay_id, at=at,
                                                                        entity=entity)))
    assert webhook_event_apply(event_id=event.pk) == "applied"
    dispute = Dispute.objects.get()
    assert (dispute.status, dispute.amount_deducted_paise, dispute.reason) == ("lost", 499900, "fraud")
    assert dispute.respond_by < timezone.now() - timedelta(seconds=30)
    assert evaluate_rules().get("payments:dispute") is None and not alert_mails()
