"""The broker lost: paid orders whose enrollment and confirmation email are in flight when Redis is
killed -9 and comes back empty, once after the outbox handed their events over (the messages die
inside the broker) and once before (the handover fails, the events wait in the outbox). After
recovery payment_sync, sent as the scheduler sends it, brings every effect to done exactly once."""
import time
from datetime import timedelta

import pytest

from ops.runtime.dispatch import enqueue_job
from ops.runtime.models import JobRun, OutboxEvent
from ops.runtime.outbox import outbox_relay
from orders.models import Enrollment, OutgoingEmail
from payments.services.settle import payment_sync_pending
from tests.conftest import wait_for
from tests.faults.conftest import FAULT_GRACE, effects_census, wait_converged

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

ORDERS = 30
# How often payment_sync runs here (every 30 min in production), a little longer than the grace.
SCHEDULE_EVERY = FAULT_GRACE.total_seconds() + 1
REDRIVEN = ("enrollments_healed", "notifications_redriven", "emails_redriven", "outbox_relayed")


def paid_at_the_gateway(make_payment, n=ORDERS):
    """n orders whose payments were captured at Razorpay while the checkout still has them as created."""
    return [make_payment(at_gateway="captured") for _ in range(n)]


def sync_as_scheduled(after_id: int = 0, timeout: float = 30) -> JobRun:
    """Send payment_sync as the scheduler does, and wait for its ledger row to close."""
    enqueue_job("payment_sync", trigger=JobRun.Trigger.BEAT)
    return wait_for(
        lambda: JobRun.objects.filter(job="payment_sync", pk__gt=after_id).exclude(status="running").first(),
        timeout, "payment_sync to run on the worker",
    )


def redriven(run: JobRun) -> dict[str, int]:
    return {key: run.counts.get(key, 0) for key in REDRIVEN}


def recover(smtp_sink, worker, since: float, runs_max: int = 10) -> tuple[float, list[JobRun]]:
    """payment_sync on its schedule (here every SCHEDULE_EVERY) until every effect is done once;
    (seconds from `since` until then, the runs it took)."""
    runs: list[JobRun] = []
    while True:
        runs.append(sync_as_scheduled(runs[-1].pk if runs else 0))
        assert runs[-1].status == "success", f"payment_sync failed: {runs[-1].error}\n{worker.log()[-4000:]}"
        try:
            wait_converged(smtp_sink, timeout=SCHEDULE_EVERY, worker=worker)
            return time.monotonic() - since, runs
        except AssertionError:
            if len(runs) >= runs_max:
                raise


def assert_done_once_and_stays_so(smtp_sink, worker, runs: list[JobRun]) -> dict[str, int]:
    census = effects_census(smtp_sink)
    assert census["paid"] == ORDERS
    assert census["enrolled"] == ORDERS and census["enrollments_duplicated"] == 0
    assert census["confirmed"] == census["emails_sent"] == ORDERS
    assert census["mails_received"] == ORDERS and census["mails_missing"] == 0 and census["mails_duplicated"] == 0
    # a scheduled run after recovery finds nothing left to re-drive, and sends nothing twice
    time.sleep(FAULT_GRACE.total_seconds())
    last = sync_as_scheduled(runs[-1].pk)
    assert {k: v for k, v in redriven(last).items() if k != "outbox_relayed"} == {
        "enrollments_healed": 0, "notifications_redriven": 0, "emails_redriven": 0}
    time.sleep(1)
    assert effects_census(smtp_sink) == census, worker.log()[-4000:]
    return census


@pytest.mark.django_db(transaction=True)
def test_messages_lost_inside_the_broker_are_redriven_once(
        fault_redis, fault_worker, smtp_sink, make_payment, settings):
    # given paid orders, their order.paid events handed over to the broker by the outbox
    settings.PAYMENT_SYNC_AFTER = timedelta(0)
    first = 2 * ORDERS // 3
    paid_at_the_gateway(make_payment, first)
    payment_sync_pending()
    outbox_relay()
    # and a worker that got part-way through them before it stopped: enrollments made, some
    # confirmations queued, their emails waiting in the broker (the default queue had no consumer)
    high = fault_worker(queues="high", concurrency=2)
    wait_for(lambda: OutgoingEmail.objects.count() >= first // 2, 30, "half of the confirmations")
    high.stop()
    # and more orders paid since, their events handed over too
    paid_at_the_gateway(make_payment, ORDERS - first)
    payment_sync_pending()
    outbox_relay()
    assert not OutboxEvent.objects.filter(topic="order.paid", published_at__isnull=True).exists()
    assert OutboxEvent.objects.filter(topic="order.paid").count() == ORDERS

    # when Redis is killed -9 and comes back empty
    fault_redis.kill()
    restarted = time.monotonic()
    fault_redis.start()
    lost = effects_census(smtp_sink)
    print(f"\nbroker killed after the handover: {ORDERS - lost['enrolled']} enrollments, "
          f"{lost['emails_stored'] - lost['emails_sent']} stored emails and "
          f"{lost['enrolled'] - lost['emails_stored']} confirmations in flight")
    assert lost["enrolled"] == first and lost["emails_stored"] < first and lost["emails_sent"] == 0

    # then payment_sync, as scheduled, re-drives what the broker lost; every effect is done once
    worker = fault_worker(queues="high,default", concurrency=2)
    recovered, runs = recover(smtp_sink, worker, restarted)
    census = assert_done_once_and_stays_so(smtp_sink, worker, runs)
    figures = {k: sum(redriven(r)[k] for r in runs) for k in REDRIVEN}
    print(f"recovered in {recovered:.1f} s after the restart, {len(runs)} payment_sync run(s); "
          f"re-driven: {figures}; done: {census}")
    assert figures["enrollments_healed"] > 0 and figures["emails_redriven"] > 0


@pytest.mark.django_db(transaction=True)
def test_events_the_broker_never_took_wait_in_the_outbox_and_are_done_once(
        fault_redis, fault_worker, smtp_sink, make_payment, settings):
    # given a worker, and the broker killed before the paid orders' events are handed over
    settings.PAYMENT_SYNC_AFTER = timedelta(0)
    paid_at_the_gateway(make_payment)
    worker = fault_worker(queues="high,default", concurrency=2)
    fault_redis.kill()

    # when the payments settle while the broker is down
    counts = payment_sync_pending()
    assert counts["captured"] == ORDERS

    # then the orders are paid and their events wait in the outbox, unpublished
    waiting = OutboxEvent.objects.filter(topic="order.paid", published_at__isnull=True)
    assert waiting.count() == ORDERS
    assert not Enrollment.objects.exists()

    # when Redis comes back (empty) and payment_sync runs as scheduled
    fault_redis.start()
    restarted = time.monotonic()
    recovered, runs = recover(smtp_sink, worker, restarted)

    # then every effect is done once, and the outbox is drained
    census = assert_done_once_and_stays_so(smtp_sink, worker, runs)
    assert not OutboxEvent.objects.filter(published_at__isnull=True).exists()
    figures = {k: sum(redriven(r)[k] for r in runs) for k in REDRIVEN}
    print(f"\nbroker down before the handover: {ORDERS} order.paid events waited in the outbox; recovered "
          f"in {recovered:.1f} s after the restart, {len(runs)} payment_sync run(s); relayed and re-driven: "
          f"{figures}; done: {census}")
    assert figures["outbox_relayed"] >= ORDERS
