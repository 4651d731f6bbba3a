"""A thousand payments in every state against a gateway that fails a fifth of its calls: payment_sync, run
again and again on real workers, converges in a bounded number of runs, the money always the gateway's."""
import time
from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from ops.demo.fake_gateway import FakeRazorpay
from orders.models import Order
from payments.models import Payment
from payments.services.order_cleanup import order_cleanup_overdue
from payments.services.state import CAPTURE_REFUSED
from tests.conftest import wait_for
from tests.faults.gateway_helpers import (
    EXPIRY,
    REDRIVE_COUNTS,
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
    received,
    retries_logged,
    worker_env,
    wrong_money,
)
from tests.payments.conftest import KEY_ID, KEY_SECRET

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

POPULATION = {
    "unpaid": 420, "captured": 80, "authorized": 50, "known_authorized": 15, "failed": 100, "retried": 15,
    "paid_twice": 20, "capture_refused": 20, "capture_failed": 20,
    "order_amount": 65, "order_currency": 65, "gateway_amount": 65, "gateway_currency": 65,
}
FAULTS = {"p_5xx": 0.10, "p_429": 0.05, "p_timeout": 0.05, "p_html": 0.03}
# Transient: each payment or order id meets at most this many faults, so the runs needed are bounded.
FAULTS_PER_ID = 2
# Beat's half-hour, scaled down: a run starts this long after the previous one started (or when it ended).
SYNC_EVERY = 4.0
MAX_RUNS = 20


def test_a_resource_meets_at_most_its_share_of_transient_faults():
    with FakeRazorpay(KEY_ID, KEY_SECRET, seed=3) as fake:
        payment = fake.add_payment(amount=10000)
        fake.set_faults(p_5xx=1.0, max_per_id=2)
        with requests.Session() as session:
            statuses = [session.get(f"{fake.base_url}/v1/payments/{payment['id']}", auth=(KEY_ID, KEY_SECRET),
                                    timeout=2).status_code for _ in range(4)]
            other = session.get(f"{fake.base_url}/v1/payments/pay_other", auth=(KEY_ID, KEY_SECRET), timeout=2)
    assert statuses == [503, 503, 200, 200] and other.status_code == 503


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_payment_sync_converges_under_gateway_faults_with_the_money_and_effects_right(
        fake_gateway, smtp_sink, fault_redis, celery_worker_factory, process_env, quiet_logs):
    started = time.monotonic()
    # given 1000+ payments in every state, some whose money disagrees with their order or the gateway
    population = populate(fake_gateway, POPULATION)
    # and a gateway failing about a fifth of its calls, answers of captures lost after they were applied
    fake_gateway.set_faults(**FAULTS, timeout_hold_s=1.0, after_apply=True, max_per_id=FAULTS_PER_ID)
    # and a worker whose sync looks again at a payment two runs after it last changed (as an hour is to beat's
    # half-hour), while the capture retries keep their real backoff
    worker = celery_worker_factory(queues="high,default", concurrency=4, env=worker_env(
        process_env, fake_gateway, smtp_sink, fault_redis, PAYMENT_SYNC_AFTER=f"{2 * SYNC_EVERY:g}"))
    set_up = time.monotonic() - started

    # when payment_sync runs as beat would, until everything reached the gateway's truth
    def money_right():
        assert wrong_money(fake_gateway, population) == []

    sync = SyncRuns(concurrency=8)
    runs = sync.until(lambda: not not_converged(population, smtp_sink), every=SYNC_EVERY, max_runs=MAX_RUNS,
                      after_each=money_right)
    converged_at = time.monotonic()

    # then it converged, within the bound
    assert runs is not None, f"not converged after {MAX_RUNS} runs: {dict(not_converged(population, smtp_sink))}"
    # no order paid against money that disagrees, no buyer charged twice
    assert wrong_money(fake_gateway, population) == []
    for case in population.of("order_amount", "order_currency", "gateway_amount", "gateway_currency"):
        assert Order.objects.get(pk=case.order_pk).status == "pending"
    # captures the gateway refused or failed ended failed, with the reason
    refused = Payment.objects.filter(pk__in=[c.payment_pk for c in population.of("capture_refused")])
    assert set(refused.values_list("error_code", flat=True)) == {CAPTURE_REFUSED}
    bank_failed = Payment.objects.filter(pk__in=[c.payment_pk for c in population.of("capture_failed")])
    assert all("capture failed" in d for d in bank_failed.values_list("error_description", flat=True))
    # at most one capture-retry chain per payment, and the sync left a payment alone while its chain ran
    chains = capture_chains(population)
    assert more_than_one(chains) == {}
    assert set(chains) == {c.payment_pk for c in population.where(asks_capture=True)}
    assert retries_logged(worker, "PaymentBusy") == 0

    # when order_cleanup runs once their orders are past ORDER_TTL
    expirable = population.where(expires=True)
    cleanup = order_cleanup_overdue(now=timezone.now() + timedelta(minutes=15))

    # then exactly those orders expire, each buyer gets one expiry email, and nothing else happened twice
    assert cleanup["orders_expired"] == len(expirable)
    assert set(Order.objects.filter(status="expired").values_list("pk", flat=True)) == {c.order_pk for c in expirable}
    wait_for(lambda: len(received(smtp_sink, EXPIRY)) >= len(expirable), timeout=30, what="the expiry emails")
    expiries = received(smtp_sink, EXPIRY)
    assert set(expiries) == {c.email for c in expirable} and max(expiries.values()) == 1
    assert effects_exactly_once(population, smtp_sink) == []

    calls, faults = gateway_figures(fake_gateway)
    print_figures("gateway faults over payment_sync on real workers", {
        "payments": len(population),
        "runs to converge": f"{runs} (bound {MAX_RUNS}, a run every {SYNC_EVERY:g} s)",
        "gateway calls": f"{sum(calls.values())} {dict(calls)}",
        "gateway faults": f"{sum(faults.values())} ({sum(faults.values()) / sum(calls.values()):.0%}) {dict(faults)}",
        "captures applied": captures(fake_gateway, population),
        "capture chains": sum(chains.values()),
        "capture retries": f"{retries_logged(worker, 'Gateway')} after a gateway fault",
        "gateway errors seen by the sync": sync.total("gateway_errors"),
        "mismatches flagged": sync.total("mismatched"),
        "effects re-driven": {key: sync.total(key) for key in REDRIVE_COUNTS},
        "dead letters": dict(dead_letters()),
        "wall time": f"{time.monotonic() - started:.1f} s (set-up {set_up:.1f} s, "
                     f"convergence {converged_at - started - set_up:.1f} s)",
    })
