"""The database cut under a busy worker: the network to PostgreSQL (a proxy the test cuts) goes for a
few seconds while a worker runs customer-facing tasks (enrollments, their notifications and emails,
capture retries). No task is lost: every effect is done once after the database returns, by the tasks'
own retries and redeliveries; a task that fails for good while the database is away still ends in the
dead letters; a job message given back by a stopping worker still runs."""
import re
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from checkout.celery import app
from ops.runtime import metrics
from ops.runtime.dispatch import enqueue_job
from ops.runtime.models import DeadLetter, JobRun
from ops.runtime.outbox import outbox_relay
from orders.models import OrderStatus
from orders.services import NOTIFICATIONS
from payments.models import Payment
from tests.conftest import wait_for
from tests.factories import OrderFactory
from tests.faults.conftest import converged, effects_census

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

PAID_ORDERS = 90
AUTHORIZED = 30
BAD_TASKS = 5
CUT_SECONDS = 3.0
RELAY_EVERY = 2.0
CUSTOMER_TASKS = ("enrollment_create", "notification_send", "email_send", "payment_retry")


def full_log(worker) -> str:
    return worker.log_path.read_text(errors="replace")


def log_failures(log: str) -> dict[str, int]:
    """Failures the worker logged: attempts that will retry, failures it could not record."""
    return {
        "will_retry": len(re.findall(r"attempt=\d+ will retry", log)),
        "unrecorded": len(re.findall(r"could not record failure of task", log)),
    }


def payments_state(payment_ids) -> dict[str, list[int]]:
    """Each payment: captured here, or still to capture with its retry chain on record, or neither
    (its task acknowledged and forgotten, or not run yet)."""
    captured = set(Payment.objects.filter(pk__in=payment_ids, status="captured").values_list("pk", flat=True))
    retrying = {
        letter["kwargs"].get("payment_id") for letter in DeadLetter.objects.filter(
            task_name="payment_retry", state=DeadLetter.State.RETRYING).values("kwargs")
    }
    return {
        "captured": sorted(captured),
        "retrying": sorted(pk for pk in payment_ids if pk not in captured and pk in retrying),
        "neither": sorted(pk for pk in payment_ids if pk not in captured and pk not in retrying),
    }


def converge(smtp_sink, payment_ids, timeout: float = 60) -> tuple[int, float, dict[str, int], dict]:
    """Wait until every paid order's effects are done once and every payment is captured or on its
    retry chain, relaying the outbox as the schedule does (every minute in production, every
    RELAY_EVERY here); (events relayed, seconds waited, census, payments)."""
    started, relayed, last_relay = time.monotonic(), 0, float("-inf")
    while True:
        if time.monotonic() - last_relay >= RELAY_EVERY:
            relayed += outbox_relay()
            last_relay = time.monotonic()
        census, payments = effects_census(smtp_sink), payments_state(payment_ids)
        if converged(census) and not payments["neither"]:
            return relayed, time.monotonic() - started, census, payments
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not converged after {timeout:.0f} s: {census}, payments {payments}")
        time.sleep(0.2)


@pytest.mark.django_db(transaction=True)
def test_no_task_is_lost_when_the_database_is_cut_under_a_busy_worker(
        db_proxy, fault_worker, smtp_sink, make_payment, fake_gateway):
    # given paid orders waiting for their enrollment, and authorized payments waiting for their capture
    # (a gateway answering in 40 ms, so captures are in flight when the cut comes)
    now = timezone.now()
    orders = [OrderFactory(status=OrderStatus.PAID, paid_at=now).pk for _ in range(PAID_ORDERS)]
    payments = {
        payment.pk: pay_id for payment, pay_id in (
            make_payment(at_gateway="authorized", local_status="authorized", age=timedelta(minutes=1))
            for _ in range(AUTHORIZED))
    }
    fake_gateway.set_faults(latency_ms=40)
    worker = fault_worker(queues="high,default", concurrency=3)

    # when their tasks stream in, and the database is cut for a few seconds while the worker is busy
    sent = 0
    for i, order_id in enumerate(orders):
        app.tasks["enrollment_create"].apply_async(kwargs={"order_id": order_id})
        sent += 1
        if i % 3 == 0 and i // 3 < AUTHORIZED:
            app.tasks["payment_retry"].apply_async(kwargs={"payment_id": list(payments)[i // 3]})
            sent += 1
    wait_for(lambda: effects_census(smtp_sink)["enrolled"] >= PAID_ORDERS // 6, 30, "the worker to be busy")
    before = effects_census(smtp_sink)
    severed = db_proxy.cut()
    time.sleep(CUT_SECONDS)
    db_proxy.restore()

    # then every paid order is enrolled once and its confirmation received once, by the tasks themselves
    # (retries, redeliveries) and the outbox relay on its schedule (events committed just before the
    # database went away, whose publication needed it)
    relayed, converged_in, census, state = converge(smtp_sink, payments)
    assert census["paid"] == PAID_ORDERS + len(state["captured"])
    assert census["mails_duplicated"] == 0 and census["enrollments_duplicated"] == 0
    # and every capture was made at most once; a payment whose claim the cut left behind is not
    # forgotten: its retry chain is on record, and comes back once the claim lapses
    assert all(fake_gateway.captures(pay_id) <= 1 for pay_id in payments.values())
    assert all(fake_gateway.captures(payments[pk]) == 1 for pk in state["captured"])
    # and nothing was buried: the cut was shorter than any task's retries
    assert not DeadLetter.objects.filter(state=DeadLetter.State.DEAD).exists()

    stats = metrics.task_stats()
    ran = {name: stats.get(name, {}) for name in CUSTOMER_TASKS}
    failures = log_failures(full_log(worker))
    print(f"\ndatabase cut {CUT_SECONDS:.0f} s under a busy worker ({severed} connections severed, "
          f"{db_proxy.refused} refused): {sent} tasks sent, {sum(s.get('total', 0) for s in ran.values())} "
          f"customer task runs, {sum(s.get('failed', 0) for s in ran.values())} failed during the cut, "
          f"{failures['will_retry']} retried ({failures['unrecorded']} failures not recordable then); "
          f"{before['enrolled']} enrolled before the cut; {relayed} events relayed after; converged "
          f"{converged_in:.1f} s after the database returned; payments captured {len(state['captured'])}, "
          f"retrying on a claim the cut left behind {len(state['retrying'])}")
    assert failures["will_retry"] > 0 and failures["unrecorded"] > 0, "the cut did not hit any task"


@pytest.mark.django_db(transaction=True)
def test_tasks_failing_for_good_while_the_database_is_cut_still_land_in_the_dead_letters(
        db_proxy, fault_worker):
    # given a worker, and the database cut
    worker = fault_worker(queues="high,default", concurrency=2)
    db_proxy.cut()

    # when tasks not worth retrying are tried while it is away: notifications nobody knows, and a run
    # of a job with a bad parameter (which fails only once the database lets it start)
    bad = [app.tasks["notification_send"].apply_async(kwargs={"kind": "sms", "object_id": n}).id
           for n in range(BAD_TASKS)]
    bad_run = enqueue_job("payment_sync", trigger=JobRun.Trigger.BEAT, params={"concurrency": "many"})
    tried = [f"could not record failure of task notification_send {task_id}" for task_id in bad]
    tried.append(f"could not record failure of task jobs.payment_sync {bad_run}")
    wait_for(lambda: all(line in full_log(worker) for line in tried), 20, "the tasks to be tried during the cut")
    db_proxy.restore()
    restored = time.monotonic()

    # then each is a dead letter with its one-line reason once the database is back
    wait_for(lambda: DeadLetter.objects.filter(task_id__in=[*bad, bad_run], state=DeadLetter.State.DEAD).count()
             == BAD_TASKS + 1, 30, "the failed tasks in the dead letters")
    letters = {letter.task_id: letter for letter in DeadLetter.objects.filter(task_id__in=[*bad, bad_run])}
    assert {letters[task_id].error for task_id in bad} == {
        f"ValueError: unknown notification 'sms'; known: {', '.join(sorted(NOTIFICATIONS))}"}
    assert letters[bad_run].error == "JobError: concurrency must be an integer, not 'many'"
    # and the job's failure is one line in the worker's log, its run failed once the database let it start
    assert JobRun.objects.get(task_id=bad_run).status == JobRun.Status.FAILED
    assert f"jobs.payment_sync[{bad_run}] raised expected: JobError" in full_log(worker)
    print(f"\n{BAD_TASKS + 1} tasks failing for good during a database cut: all in the dead letters "
          f"{time.monotonic() - restored:.1f} s after it returned, after "
          f"{sorted(letter.attempts for letter in letters.values())} attempts")


@pytest.mark.django_db(transaction=True)
def test_a_job_message_given_back_while_the_database_is_cut_still_runs(db_proxy, fault_worker):
    # given a worker holding a scheduled run of a job (due in a moment), and stopping: the broker gets
    # the message back, marked redelivered
    first = fault_worker(queues="default", concurrency=1)
    task_id = enqueue_job("cart_cleanup", trigger=JobRun.Trigger.BEAT, countdown=2)
    wait_for(lambda: task_id in full_log(first), 15, "the worker to hold the run")
    first.stop()

    # when another worker takes it while the database is cut (its poison count needs the database)
    db_proxy.cut()
    second = fault_worker(queues="default", concurrency=1)
    wait_for(lambda: task_id in full_log(second), 15, "the other worker to take it")
    time.sleep(CUT_SECONDS)
    db_proxy.restore()
    restored = time.monotonic()

    # then the run happens once the database is back
    run = wait_for(lambda: JobRun.objects.filter(task_id=task_id, status=JobRun.Status.SUCCESS).first(), 45,
                   "the given-back run to happen")
    print(f"\njob message given back during a database cut: ran {time.monotonic() - restored:.1f} s after the "
          f"database returned (trigger {run.trigger})")
    assert JobRun.objects.filter(task_id=task_id, status=JobRun.Status.SUCCESS).count() == 1
