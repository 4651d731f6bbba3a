"""payment_sync and order_cleanup given chunk_rows: id ranges done as chunk tasks (in-process here), the
same outcome and counts as one process, summed into one run, and the closing step's report and order
statuses once (workers on three hosts: tests/payments/test_sync_across_hosts.py)."""
from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from ops.runtime.models import JobChunk
from ops.runtime.runner import run_job
from orders.models import Enrollment, Order
from payments.models import Payment, PaymentReport
from tests.factories import OrderFactory, PaymentFactory

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db]

OVERDUE = timedelta(hours=49)
MIX = ("captured", "authorized", "failed", None, "captured", "authorized", "captured", "failed", None, "captured")


@pytest.mark.parametrize("chunk_rows", [0, 3])
def test_payment_sync_in_chunks_settles_every_payment_once_and_reports_the_whole_run(
        chunk_rows, make_payment, fake_gateway, django_capture_on_commit_callbacks, redis_client):
    # given ten pending payments in every state the gateway can hold, and a paid order never enrolled
    made = [make_payment(at_gateway=status, amount=1000 + n) for n, status in enumerate(MIX)]
    lost = OrderFactory(status="paid", paid_at=timezone.now() - timedelta(hours=1))

    # when payment_sync runs, in ranges of three payments or in one process
    with django_capture_on_commit_callbacks(execute=True):
        run = run_job("payment_sync", params={"chunk_rows": chunk_rows})

    # then both ways give the same outcome: each payment settled once, the effects re-driven once,
    # one report of the whole run
    chunks = JobChunk.objects.filter(run=run).count()
    print(f"chunk_rows={chunk_rows} chunks={chunks} counts={dict(sorted(run.counts.items()))}")
    assert run.status == "success", run.error
    assert chunks == (4 if chunk_rows else 0)
    assert run.counts["seen"] == 10 and run.counts["captured"] == 4 and run.counts["failed"] == 2
    assert run.counts["capture_requested"] == 2 and run.counts["enrollments_healed"] == 1
    statuses = Counter(Payment.objects.filter(pk__in=[p.pk for p, _ in made]).values_list("status", flat=True))
    assert statuses == {"captured": 6, "failed": 2, "created": 2}
    assert all(fake_gateway.captures(pay_id) == 1 for (_, pay_id), status in zip(made, MIX) if status == "authorized")
    assert Order.objects.filter(status="paid").count() == 7 and Enrollment.objects.filter(order=lost).exists()
    report = PaymentReport.objects.get(job_run_id=run.pk)
    assert run.result["report_id"] == report.pk and report.sync_counts["seen"] == 10
    # (the captures asked for run as tasks once the run's transactions commit: after its report here)
    assert report.amounts["INR"]["captured_paise"] == sum(1000 + n for n, status in enumerate(MIX) if status == "captured")


def test_payment_sync_with_nothing_pending_still_writes_its_report(fake_gateway, redis_client):
    run = run_job("payment_sync", params={"chunk_rows": 100})
    assert run.status == "success" and not JobChunk.objects.filter(run=run).exists()
    assert PaymentReport.objects.get(job_run_id=run.pk).pk == run.result["report_id"]


@pytest.mark.parametrize("chunk_rows", [0, 2])
def test_order_cleanup_in_chunks_settles_and_closes_every_overdue_order_once(
        chunk_rows, make_payment, fake_gateway, django_capture_on_commit_callbacks, redis_client):
    # given overdue orders with an authorized payment, a payment never attempted, a captured one, an
    # orphan; a recent order; and a paid order whose payment was refunded (no range holds it)
    authorized = [make_payment(at_gateway="authorized", age=OVERDUE) for _ in range(3)]
    never_tried = [make_payment(age=OVERDUE) for _ in range(2)]
    captured, _ = make_payment(at_gateway="captured", age=OVERDUE)
    orphan = OrderFactory(status="pending", created_at=timezone.now() - OVERDUE, user=None)
    recent, _ = make_payment(age=timedelta(hours=1))
    refunded = OrderFactory(status="paid", paid_at=timezone.now() - timedelta(days=3))
    PaymentFactory(order=refunded, status="refunded", amount_paise=refunded.amount_paise,
                   refunded_paise=refunded.amount_paise)

    # when order_cleanup runs, in ranges of two orders or in one process
    with django_capture_on_commit_callbacks(execute=True):
        run = run_job("order_cleanup", params={"chunk_rows": chunk_rows})

    # then the same outcome both ways, each order once
    print(f"chunk_rows={chunk_rows} chunks={JobChunk.objects.filter(run=run).count()} counts={run.counts}")
    assert run.status == "success", run.error
    assert JobChunk.objects.filter(run=run).count() == (4 if chunk_rows else 0)
    assert all(fake_gateway.captures(pay_id) == 0 and fake_gateway.payment(pay_id)["status"] == "refunded"
               for _, pay_id in authorized)
    order_status = dict(Order.objects.values_list("pk", "status"))
    assert {order_status[p.order_id] for p, _ in authorized + never_tried} == {"expired"}
    assert order_status[captured.order_id] == "paid" and order_status[orphan.pk] == "cancelled"
    assert order_status[recent.order_id] == "pending" and order_status[refunded.pk] == "refunded"
    assert run.counts["orders_expired"] == 5 and run.counts["orders_cancelled_orphaned"] == 1
    assert run.counts["payments_refunded"] == 3 and run.counts["payments_cancelled"] == 2
    assert run.counts["payments_orders_paid"] == 1 and run.counts["orders_marked_refunded"] == 1


@pytest.mark.django_db(transaction=True)
def test_a_payment_range_taken_over_after_its_worker_died_keeps_what_was_settled_and_its_counts(
        celery_live, make_payment, fake_gateway, redis_client):
    from ops.runtime import ledger
    from ops.runtime.context import JobContext
    from ops.runtime.params import read_params
    from ops.runtime.registry import get_job
    from ops.runtime.runner import run_chunk
    from ops.runtime.sweep import RUN_LOST_AFTER, runs_sweep
    from payments.jobs import _sync_part

    # given a run in one range whose first attempt settled every payment and died before ending the chunk
    made = [make_payment(at_gateway=status, amount=1000 + n) for n, status in enumerate(MIX)]
    run = run_job("payment_sync", params={"chunk_rows": 100})
    chunk = JobChunk.objects.get(run=run)
    first = ledger.chunk_claim(chunk.pk, worker="w1@hostA")
    job = get_job("payment_sync")
    _sync_part(JobContext(job=job, run=run, trigger=run.trigger, part=dict(first.params), attempt=1,
                          chunk_pk=chunk.pk, params=read_params(job.name, job.params, run.params)))
    stored = JobChunk.objects.get(pk=chunk.pk).progress
    assert stored["state"]["after_id"] == made[-1][0].pk and stored["counts"]["seen"] == 10

    # when the sweep hands it to another worker, which takes it over
    assert runs_sweep(now=timezone.now() + RUN_LOST_AFTER * 2)["chunks_lost"] == 1
    run_chunk(chunk.pk, worker="w2@hostB")

    # then it starts after the last payment settled: nothing asked twice, every payment counted once
    run.refresh_from_db()
    fetches = Counter(call["id"] for call in fake_gateway.calls() if call["operation"] == "order_payments")
    print(f"counts={run.counts} fetches={sum(fetches.values())}")
    assert run.status == "success", run.error
    assert run.counts["seen"] == 10 and run.counts["captured"] == 4 and run.counts["failed"] == 2
    assert len(fetches) == 10 and set(fetches.values()) == {1}
    assert PaymentReport.objects.get(job_run_id=run.pk).sync_counts["seen"] == 10


class WorkerKilled(BaseException):
    """The process of a worker ending mid-transaction (what kill -9 does to the batch in flight)."""


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("commits", [2, 4, 7])
def test_an_order_range_taken_over_after_its_worker_died_counts_each_order_once(
        commits, celery_live, make_payment, fake_gateway, redis_client):
    from dataclasses import dataclass

    from ops.runtime import ledger
    from ops.runtime.context import JobContext
    from ops.runtime.models import OutboxEvent
    from ops.runtime.params import read_params
    from ops.runtime.registry import get_job
    from ops.runtime.runner import run_chunk
    from ops.runtime.sweep import RUN_LOST_AFTER, runs_sweep
    from payments.jobs import _cleanup_part

    @dataclass
    class DiesAfterCommits(JobContext):
        left: int = 0

        def checkpoint(self, **state) -> None:
            if not self.left:
                raise WorkerKilled(f"killed in the transaction after {commits} commits")
            super().checkpoint(**state)
            self.left -= 1

    # given overdue orders in one range, done one order a transaction, whose first attempt dies after
    # `commits` transactions committed (in the payments' step, the order statuses' step, or the closing)
    authorized = [make_payment(at_gateway="authorized", age=OVERDUE) for _ in range(3)]
    never_tried = [make_payment(age=OVERDUE) for _ in range(2)]
    captured, _ = make_payment(at_gateway="captured", age=OVERDUE)
    orphan = OrderFactory(status="pending", created_at=timezone.now() - OVERDUE, user=None)
    run = run_job("order_cleanup", params={"chunk_rows": 100, "batch_size": 1, "concurrency": 1})
    chunk = JobChunk.objects.get(run=run)
    first = ledger.chunk_claim(chunk.pk, worker="w1@hostA")
    job = get_job("order_cleanup")
    with pytest.raises(WorkerKilled):
        _cleanup_part(DiesAfterCommits(
            job=job, run=run, trigger=run.trigger, part=dict(first.params), attempt=1, chunk_pk=chunk.pk,
            params=read_params(job.name, job.params, run.params), left=commits,
        ))
    stored = JobChunk.objects.get(pk=chunk.pk).progress

    # when the sweep hands the range to another worker, which takes it over
    assert runs_sweep(now=timezone.now() + RUN_LOST_AFTER * 2)["chunks_lost"] == 1
    run_chunk(chunk.pk, worker="w2@hostB")

    # then the run's counts are those of one pass: the lost attempt's committed work counted once,
    # nothing redone (one refund at the gateway per authorized payment, one expiry email per order)
    run.refresh_from_db()
    refunds = Counter(refund["payment_id"] for refund in fake_gateway.refunds())
    expiries = OutboxEvent.objects.filter(topic="order.expired").values_list("key", flat=True)
    print(f"died after {commits} commits at {stored['state']}; counts={dict(sorted(run.counts.items()))}")
    assert run.status == "success", run.error
    assert run.counts["payments_refunded"] == 3 and run.counts["payments_cancelled"] == 2
    assert run.counts["payments_orders_paid"] == 1
    assert run.counts["orders_expired"] == 5 and run.counts["orders_cancelled_orphaned"] == 1
    assert refunds == {pay_id: 1 for _, pay_id in authorized}
    assert sorted(expiries) == sorted(f"order.expired:{p.order_id}" for p, _ in authorized + never_tried)
    order_status = dict(Order.objects.values_list("pk", "status"))
    assert order_status[captured.order_id] == "paid" and order_status[orphan.pk] == "cancelled"
