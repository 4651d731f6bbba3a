"""A storm of signed Razorpay webhooks (duplicates, captured before authorized, stale failures) posted while
payment_sync runs on a real worker: every payment ends at the gateway's truth, each paid order is enrolled and
confirmed once, and no captured payment is ever moved back to failed."""
import json
import random
import time

import pytest
import razorpay
from django.test import Client

from ops.runtime.models import OutboxEvent
from payments.models import Payment, WebhookEvent
from tests.conftest import wait_for
from tests.faults.gateway_helpers import (
    SyncRuns,
    capture_chains,
    captures,
    dead_letters,
    effects_exactly_once,
    gateway_figures,
    more_than_one,
    not_converged,
    populate,
    print_figures,
    quiet_logs,  # noqa: F401  (fixture)
    retries_logged,
    worker_env,
    wrong_money,
)
from tests.payments.conftest import KEY_ID, KEY_SECRET, WEBHOOK_SECRET

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

URL = "/payments/webhooks/razorpay/"
POPULATION = {
    "unpaid": 20, "captured": 60, "authorized": 50, "known_authorized": 10, "failed": 30, "retried": 20,
    "capture_refused": 10, "order_amount": 10, "order_currency": 10,
}
# The gateway is this slow while the first wave arrives, so the first sync holds its claims meanwhile.
SLOW_MS = 200
SYNC_EVERY = 2.0
MAX_RUNS = 20


def snapshot(entity: dict, status: str) -> dict:
    """The payment as an earlier event showed it (Razorpay's entity at that moment)."""
    earlier = {**entity, "status": status, "captured": False}
    if status == "failed":
        earlier.update(error_code="BAD_REQUEST_ERROR", error_reason="payment_failed",
                       error_description="Payment failed because the bank declined it")
    return earlier


def storm(fake, population) -> tuple[list[list], dict]:
    """The deliveries, in waves: a payment's n-th delivery goes out in wave n, shuffled among the others."""
    waves: list[list] = [[], [], [], []]
    counts = {"duplicate": 0, "captured before authorized": 0, "stale failed": 0}

    def say(event, payment_id, entity=None):
        return fake.webhook(event, payment_id, secret=WEBHOOK_SECRET, entity=entity)

    for n, case in enumerate(population.cases):
        pay_id, sequence = case.gateway_payment_id, []
        if case.kind in ("captured", "order_currency"):
            captured = say("payment.captured", pay_id)
            authorized = say("payment.authorized", pay_id, snapshot(fake.payment(pay_id), "authorized"))
            sequence = [captured, captured, authorized]
            counts["captured before authorized"] += 1
            if n % 3 == 0:  # it had failed once (a late authorization followed); that event comes last
                sequence.append(say("payment.failed", pay_id, snapshot(fake.payment(pay_id), "failed")))
                counts["stale failed"] += 1
        elif case.kind == "retried":  # the first attempt's failure arrives after the second's capture
            captured = say("payment.captured", pay_id)
            sequence = [captured, say("payment.failed", case.attempts[0]), captured]
            counts["stale failed"] += 1
        elif case.kind in ("authorized", "known_authorized", "capture_refused", "order_amount"):
            authorized = say("payment.authorized", pay_id)
            sequence = [authorized, authorized]
        elif case.kind == "failed":
            failed = say("payment.failed", pay_id)
            sequence = [failed, failed]
        counts["duplicate"] += len(sequence) - len({d.event_id for d in sequence})
        for wave, delivery in zip(waves, sequence):
            wave.append(delivery)
    rng = random.Random(7)
    for wave in waves:
        rng.shuffle(wave)
    return waves, counts


def post(client: Client, delivery) -> str:
    response = client.post(URL, data=delivery.body, content_type="application/json",
                           HTTP_X_RAZORPAY_SIGNATURE=delivery.signature, HTTP_X_RAZORPAY_EVENT_ID=delivery.event_id)
    assert response.status_code == 200, response.content
    return response.json()["status"]


def all_processed() -> bool:
    return not WebhookEvent.objects.filter(processed_at__isnull=True).exists()


def moved_back(population) -> list[int]:
    """Captured payments that a failure was applied to after their capture (the event of it says when)."""
    captured = dict(Payment.objects.filter(pk__in=[c.payment_pk for c in population.cases], status="captured")
                    .values_list("pk", "captured_at"))
    late = OutboxEvent.objects.filter(topic="payment.failed", payload__payment_id__in=list(captured))
    return sorted({e.payload["payment_id"] for e in late if e.created_at > captured[e.payload["payment_id"]]})


def test_the_fake_signs_its_deliveries_as_razorpay_does(fake_gateway):
    order = fake_gateway.add_order(amount=49900)
    payment = fake_gateway.add_payment(order_id=order["id"], status="captured")
    delivery = fake_gateway.webhook("order.paid", payment["id"], secret=WEBHOOK_SECRET)
    body = json.loads(delivery.body)
    assert body["event"] == "order.paid" and body["contains"] == ["payment", "order"]
    assert body["payload"]["payment"]["entity"]["status"] == "captured"
    assert body["payload"]["order"]["entity"]["status"] == "paid"
    assert razorpay.Client(auth=(KEY_ID, KEY_SECRET)).utility.verify_webhook_signature(
        delivery.body.decode(), delivery.signature, WEBHOOK_SECRET)
    again = fake_gateway.webhook("order.paid", payment["id"], secret=WEBHOOK_SECRET, event_id=delivery.event_id)
    assert again.event_id == delivery.event_id


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_webhook_storm_during_payment_sync_leaves_money_and_effects_right(
        fake_gateway, smtp_sink, fault_redis, celery_worker_factory, process_env, quiet_logs):
    started = time.monotonic()
    # given payments in every state, and the deliveries Razorpay makes about them
    population = populate(fake_gateway, POPULATION)
    waves, counts = storm(fake_gateway, population)
    worker = celery_worker_factory(queues="high,default", concurrency=4,
                                   env=worker_env(process_env, fake_gateway, smtp_sink, fault_redis,
                                                  PAYMENT_SYNC_AFTER="1"))
    sync, client, outcomes, captured_seen, regressions = SyncRuns(concurrency=2), Client(), {}, set(), set()

    def watch_captured():
        # A captured payment seen otherwise later, caught in the act (moved_back finds it afterwards too).
        now = dict(Payment.objects.filter(pk__in=[c.payment_pk for c in population.cases])
                   .exclude(status="created").values_list("pk", "status"))
        regressions.update(pk for pk in captured_seen if now.get(pk) != "captured")
        captured_seen.update(pk for pk, status in now.items() if status == "captured")

    def converged():
        watch_captured()
        return not not_converged(population, smtp_sink)

    # when the storm arrives while the first sync holds its claims and asks a slow gateway
    fake_gateway.set_faults(latency_ms=SLOW_MS)
    first = sync.send()
    wait_for(lambda: Payment.objects.filter(claimed_until__isnull=False).exists(), timeout=30,
             what="the first sync's claims")
    for n, wave in enumerate(waves):
        for delivery in wave:
            outcome = post(client, delivery)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        watch_captured()
        if n == 0:  # the captures the first wave asked for meet the sync's claims; then the gateway is fast
            wait_for(lambda: retries_logged(worker, "PaymentBusy") >= 10 or all_processed(), timeout=30,
                     what="the first wave's captures")
            fake_gateway.set_faults(latency_ms=0)
    sync.wait(first)

    # and payment_sync keeps running as beat would
    runs = sync.until(converged, every=SYNC_EVERY, max_runs=MAX_RUNS)

    # then every payment reached the gateway's truth, each paid order enrolled and confirmed once
    assert runs is not None, f"not converged after {MAX_RUNS} runs: {dict(not_converged(population, smtp_sink))}"
    wait_for(all_processed, timeout=30, what="every event to be processed")

    # when the late deliveries come again (Razorpay retries), after all that
    for delivery in waves[-1] + waves[-2]:
        post(client, delivery)
    wait_for(all_processed, timeout=30, what="the late deliveries to be processed")
    time.sleep(1.0)  # anything they set off has run
    watch_captured()

    # then nothing moved back, nothing happened twice, the money is the gateway's
    assert not not_converged(population, smtp_sink)
    assert wrong_money(fake_gateway, population) == []
    assert effects_exactly_once(population, smtp_sink) == []
    assert regressions == set() and moved_back(population) == []
    delivered = {d.event_id for wave in waves for d in wave}
    assert WebhookEvent.objects.filter(event_id__in=delivered).count() == len(delivered)
    chains = capture_chains(population)
    assert more_than_one(chains) == {}
    # and the storm did meet the sync: captures it asked for found their payment claimed, and waited
    assert retries_logged(worker, "PaymentBusy") > 0

    calls, _ = gateway_figures(fake_gateway)
    print_figures("webhook storm during payment_sync on a real worker", {
        "payments": len(population),
        "deliveries posted": f"{sum(len(w) for w in waves)} ({counts['duplicate']} duplicates, "
                             f"{counts['captured before authorized']} captured before authorized, "
                             f"{counts['stale failed']} stale failures), then {len(waves[-1]) + len(waves[-2])} again",
        "outcomes": outcomes,
        "events stored": len(delivered),
        "sync runs": f"1 under the storm, then {runs} to converge (bound {MAX_RUNS})",
        "gateway calls": f"{sum(calls.values())} {dict(calls)}",
        "captures applied": captures(fake_gateway, population),
        "capture chains": sum(chains.values()),
        "captured payments watched": len(captured_seen),
        "capture retries that found the sync's claim": retries_logged(worker, "PaymentBusy"),
        "dead letters": dict(dead_letters()),
        "wall time": f"{time.monotonic() - started:.1f} s",
    })
