"""Runs whose worker is lost: failed from their stopped heartbeat within a minute, with the counts they
had reached, their lease freed and their job queued again; a message that kills its worker every time
stops in the dead letters."""
import os
import signal
import time
import uuid
from datetime import timedelta

import pytest
from celery.exceptions import Ignore
from django.utils import timezone

from checkout.celery import app

import tests.ops.runtime.lost_jobs  # noqa: F401  (registers ops_test_long here)
from ops.runtime.dispatch import enqueue_job
from ops.runtime.ledger import HOLDER_DIED
from ops.runtime.models import DeadLetter, JobLease, JobRun
from ops.runtime.sweep import RUN_LOST_AFTER, runs_sweep
from ops.runtime.tasks import MAX_LOST_DELIVERIES
from tests.brokers import BROKERS
from tests.ops.jobs_for_tests import blpop_patiently

pytestmark = [pytest.mark.postgres]


def running(job="ops_test_job", *, beat_age, trigger="beat", **fields):
    now = timezone.now()
    return JobRun.objects.create(
        job=job, status=JobRun.Status.RUNNING, trigger=trigger, started_at=now - beat_age - timedelta(minutes=1),
        heartbeat_at=now - beat_age, host="host-a", pid=4242, params={"steps": 2}, **fields,
    )


@pytest.mark.django_db
def test_a_run_whose_heartbeat_stopped_is_failed_freed_and_queued_again(settings, django_capture_on_commit_callbacks):
    # given a scheduled run whose heartbeat stopped 40 s ago, its lease, and a live run of another job
    settings.CELERY_TASK_ALWAYS_EAGER = True
    lost = running(beat_age=RUN_LOST_AFTER + timedelta(seconds=10))
    JobLease.objects.create(job="ops_test_job", holder="host-a:4242:abcd", expires_at=timezone.now() + timedelta(hours=1))
    alive = running("ops_test_undated", beat_age=timedelta(seconds=3))

    # when the sweep runs (tasks run inline here, so the job runs again at once)
    counts = runs_sweep()

    # then the lost run is failed with the reason, its lease is gone, and the job ran again
    assert counts == {"lost": 1, "requeued": 1, "leases_freed": 1}
    lost.refresh_from_db()
    assert lost.status == "failed" and lost.error.startswith("worker lost: no heartbeat since")
    assert not JobLease.objects.exists()
    again = JobRun.objects.get(job="ops_test_job", trigger="retry")
    assert again.status == "success" and again.params == {"steps": 2}
    alive.refresh_from_db()
    assert alive.status == "running"
    # and a second sweep finds nothing more to do
    assert runs_sweep() == {"lost": 0, "requeued": 0, "leases_freed": 0}


@pytest.mark.django_db
def test_a_lost_run_started_by_hand_is_failed_but_not_run_again(settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    running(beat_age=timedelta(minutes=5), trigger="manual")
    assert runs_sweep() == {"lost": 1, "requeued": 0, "leases_freed": 0}
    assert JobRun.objects.filter(trigger="retry").count() == 0


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker", BROKERS, indirect=True)
def test_a_killed_worker_is_noticed_within_a_minute_and_the_job_runs_again(
    celery_worker_factory, celery_live, broker, process_env, redis_client
):
    # given a whole worker (parent and children) running a long job that has counted 7 steps
    env = {**process_env, "CHECKOUT_EXTRA_JOB_MODULES": "tests.ops.jobs_for_tests,tests.ops.runtime.lost_jobs"}
    worker = celery_worker_factory(queues="default", concurrency=1, env=env)
    key = f"lost:{uuid.uuid4().hex}"
    enqueue_job("ops_test_long", trigger="beat", params={"key": key, "steps": 7})
    started = blpop_patiently(redis_client, f"{key}:started", 30)
    assert started, "the worker never started the job:\n" + worker.log()
    run_id = int(started[1])
    # its heartbeat has stored the counts so far
    deadline = time.monotonic() + 15
    while JobRun.objects.get(pk=run_id).counts != {"written": 7} and time.monotonic() < deadline:
        time.sleep(0.2)
    assert JobRun.objects.get(pk=run_id).counts == {"written": 7}

    # when the worker is killed with -9, and the sweep runs as beat would (every few seconds here)
    os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(timeout=10)
    killed_at = time.monotonic()
    second = celery_worker_factory(queues="default", concurrency=1, env=env)
    redis_client.rpush(f"{key}:release", "go")  # the next run is released at once
    while JobRun.objects.get(pk=run_id).status == JobRun.Status.RUNNING:
        assert time.monotonic() - killed_at < 60, "the lost run was not noticed within a minute"
        runs_sweep()
        time.sleep(1)
    noticed = time.monotonic() - killed_at

    # then the run is failed as lost, with the counts it had reached, within a minute
    lost = JobRun.objects.get(pk=run_id)
    assert lost.status == "failed" and lost.counts == {"written": 7}
    # and the job runs again to the end, once, as a clean run would
    deadline = time.monotonic() + 60
    while not JobRun.objects.filter(job="ops_test_long", status="success").exists():
        assert time.monotonic() < deadline, "the job did not run again:\n" + second.log()
        time.sleep(0.2)
    again = JobRun.objects.get(job="ops_test_long", status="success")
    print(f"\n{broker.name}: worker killed, lost run closed after {noticed:.1f} s ({lost.error}); ran again in "
          f"{(again.finished_at - lost.finished_at).total_seconds():.1f} s more as {again.trigger} "
          f"(same message: {again.task_id == lost.task_id}); counts {again.counts}")
    assert again.counts == {"written": 7} and again.result == {"released": True}
    assert JobRun.objects.filter(job="ops_test_long").count() == 2
    if broker.name == "rabbitmq":
        # RabbitMQ gave the unacknowledged message back when the worker's connection died; its
        # second delivery found the job's lock free and closed the dead run before starting
        assert again.task_id == lost.task_id and again.trigger == JobRun.Trigger.BEAT
        assert lost.error == HOLDER_DIED
    else:
        # Redis holds the message until its visibility timeout: the sweep queued the job again
        assert again.task_id != lost.task_id and again.trigger == JobRun.Trigger.RETRY
        assert lost.error.startswith("worker lost")


@pytest.mark.django_db
def test_a_message_whose_worker_died_every_time_stops_in_the_dead_letters(settings):
    # given a job message that lost its worker three times already (the runs the restarts failed)
    settings.CELERY_TASK_ALWAYS_EAGER = True
    task_id = f"poison-{uuid.uuid4().hex}"
    for _ in range(MAX_LOST_DELIVERIES):
        JobRun.objects.create(job="ops_test_job", status="failed", error=HOLDER_DIED, task_id=task_id)
    from ops.runtime.dispatch import job_task

    # when the broker delivers it again
    task = job_task("ops_test_job")
    task.push_request(id=task_id, delivery_info={"redelivered": True, "routing_key": "default"}, retries=0)
    try:
        with pytest.raises(Ignore):
            task.run(params={"steps": 1})
    finally:
        task.pop_request()

    # then it does not run: it is a dead letter that says why
    assert JobRun.objects.filter(task_id=task_id).count() == MAX_LOST_DELIVERIES
    letter = DeadLetter.objects.get(task_id=task_id)
    assert letter.state == "dead" and "its worker died 3 times running it" in letter.error


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker", BROKERS, indirect=True)
def test_a_task_that_kills_its_worker_every_time_stops_after_three_deaths(
    celery_worker_factory, celery_live, broker, process_env, redis_client
):
    # given a worker whose pool child dies whenever it runs this task
    env = {**process_env, "CHECKOUT_EXTRA_JOB_MODULES": "tests.ops.jobs_for_tests,tests.ops.runtime.lost_jobs"}
    worker = celery_worker_factory(queues="default", concurrency=1, env=env)
    marker = f"dies:{uuid.uuid4().hex}"

    # when it is sent once
    result = app.tasks["ops_test.dies"].apply_async(kwargs={"marker": marker})

    # then the broker gives it back after each death, and after the third it is a dead letter, unrun
    started = time.monotonic()
    while not DeadLetter.objects.filter(task_id=result.id).exists():
        assert time.monotonic() - started < 60, "the poison task was not stopped:\n" + worker.log()[-4000:]
        time.sleep(0.2)
    letter = DeadLetter.objects.get(task_id=result.id)
    deaths = redis_client.llen(marker)
    print(f"\n{broker.name}: poison task: {deaths} deaths, buried after {time.monotonic() - started:.1f} s")
    assert deaths == MAX_LOST_DELIVERIES
    assert letter.state == "dead" and "its worker died 3 times running it" in letter.error
