"""payment_sync fanned out over three workers of distinct host names: the payments spread over the
hosts, each settled and captured once, one report of the whole run, and the gateway's rate limit held
for all of them together (one schedule in Redis), measured where the calls arrive: at the gateway."""
import time
from collections import Counter

import pytest

from ops.runtime.dispatch import enqueue_job
from ops.runtime.models import JobChunk, JobRun
from payments.models import Payment, PaymentReport
from tests.conftest import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

HOSTS = ("w1@hostA", "w2@hostB", "w3@hostC")
PAYMENTS, CHUNK_ROWS = 180, 15
RATE = 40.0  # gateway calls a second, for the three workers together
MIX = ("captured", "authorized", "failed", None, "captured", "captured")


def busiest_window(times: list[float], width: float) -> int:
    """The most calls that arrived within any `width` seconds."""
    times, most, first = sorted(times), 0, 0
    for last, at in enumerate(times):
        while at - times[first] > width:
            first += 1
        most = max(most, last - first + 1)
    return most


@pytest.mark.django_db(transaction=True)
def test_payment_sync_spreads_over_three_hosts_under_one_rate_limit_and_settles_each_payment_once(
    celery_worker_factory, celery_live, process_env, fake_gateway, make_payment, redis_client,
):
    # given pending payments in every state, and three workers (one process each) on three hosts
    made = [make_payment(at_gateway=MIX[n % len(MIX)], amount=10_000 + n) for n in range(PAYMENTS)]
    env = {**process_env, "RAZORPAY_BASE_URL": fake_gateway.base_url, "RAZORPAY_KEY_ID": fake_gateway.key_id,
           "RAZORPAY_KEY_SECRET": fake_gateway.key_secret, "RAZORPAY_RATE_LIMIT": str(RATE),
           "RAZORPAY_RATE_MAX_WAIT": "5", "RAZORPAY_TIMEOUT": "5"}
    for host in HOSTS:
        celery_worker_factory(queues="high,default", concurrency=1, env=env, extra_args=("-n", host))
    fake_gateway.set_faults(latency_ms=20)

    # when a run fans out to chunks of 15 payments, 4 gateway calls at once in each
    started = time.monotonic()
    enqueue_job("payment_sync", params={"chunk_rows": CHUNK_ROWS, "concurrency": 4})
    run = wait_for(lambda: JobRun.objects.filter(job="payment_sync").exclude(status="running").first(),
                   timeout=120, what="the run closed")
    authorized = [pay_id for (_, pay_id), n in zip(made, range(PAYMENTS)) if MIX[n % len(MIX)] == "authorized"]
    # a capture is recorded after the gateway answers it: wait for both, not for the gateway's side alone
    wait_for(lambda: all(fake_gateway.captures(pay_id) for pay_id in authorized)
             and not Payment.objects.filter(status="authorized").exists(), timeout=60,
             what="the captures asked for and recorded")
    elapsed = time.monotonic() - started

    # then the work spread over the hosts and every payment was settled once
    chunks = list(JobChunk.objects.filter(run=run))
    per_host = Counter(chunk.worker for chunk in chunks)
    calls = fake_gateway.calls()
    fetches = Counter(call["id"] for call in calls if call["operation"] == "order_payments")
    arrivals = [call["at"] for call in calls]
    burst = max(1, int(RATE // 10))
    window_1s, window_3s = busiest_window(arrivals, 1.0), busiest_window(arrivals, 3.0)
    span = max(arrivals) - min(arrivals)
    print(f"chunks={len(chunks)} per host={dict(sorted(per_host.items()))} calls={len(calls)} "
          f"({dict(Counter(call['operation'] for call in calls))}) over {span:.1f}s = {len(calls) / span:.1f}/s "
          f"(limit {RATE:g}/s, burst {burst}); busiest 1 s: {window_1s}, 3 s: {window_3s}; "
          f"run={run.status} seen={run.counts.get('seen')} time={elapsed:.1f}s")
    assert run.status == "success", run.error
    assert len(chunks) == PAYMENTS // CHUNK_ROWS and all(chunk.status == "done" for chunk in chunks)
    assert len(per_host) >= 2 and sum(per_host.values()) == len(chunks)
    assert run.counts["seen"] == PAYMENTS and run.counts["skipped_claimed"] == 0
    assert len(fetches) == PAYMENTS and set(fetches.values()) <= {1, 2}  # once by the sync (+ a capture's check)
    assert all(fake_gateway.captures(pay_id) == 1 for pay_id in authorized)
    statuses = Counter(Payment.objects.values_list("status", flat=True))
    assert statuses == {"captured": PAYMENTS * 2 // 3, "failed": PAYMENTS // 6, "created": PAYMENTS // 6}
    assert PaymentReport.objects.filter(job_run_id=run.pk).count() == 1
    # and the three hosts together kept to the one rate: at most RATE a second plus the burst allowance
    # (two calls of slack for the way from a slot to its arrival at the gateway)
    assert window_1s <= RATE + burst + 2
    assert window_3s <= 3 * RATE + burst + 2
    assert len(calls) / span <= RATE * 1.05
