"""The runtime across real processes: single flight between a worker and runjob, a SIGKILLed
holder, and a real beat firing schedules into the ledger and django-celery-results."""
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta

import pytest
from celery.result import AsyncResult
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult

from ops.runtime.locks import try_acquire
from ops.runtime.models import JobRun
from ops.runtime.registry import get_job
from ops.runtime.runner import run_job
from ops.runtime.dispatch import enqueue_job
from tests.brokers import BROKERS
from tests.conftest import ROOT, wait_for
from tests.ops.jobs_for_tests import blpop_patiently

pytestmark = [
    pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True),
]


def runjob(env, *args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "manage.py", "runjob", *args], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs,
    )


@pytest.mark.parametrize("broker", BROKERS, indirect=True)
def test_second_process_is_skipped_while_a_worker_holds_the_job(
    celery_worker_factory, celery_live, process_env, redis_client
):
    # given a real worker running the job, holding it until told to finish
    celery_worker_factory(queues="default", concurrency=1)
    key = f"hold:{uuid.uuid4().hex}"
    task_id = enqueue_job("ops_test_job", params={"hold_key": key})
    assert blpop_patiently(redis_client, f"{key}:started", 30), "the worker never started the job"

    # when another process runs the same job
    second = runjob(process_env, "ops_test_job")
    out, err = second.communicate(timeout=60)

    # then it is skipped (exit 3), and the first one finishes normally
    assert second.returncode == 3, err
    redis_client.rpush(f"{key}:release", 1)
    assert AsyncResult(task_id).get(timeout=30)["status"] == "success"
    runs = {r.status: r for r in JobRun.objects.filter(job="ops_test_job")}
    assert set(runs) == {"success", "skipped"}
    assert runs["success"].task_id == task_id and runs["skipped"].pid == second.pid
    assert runs["success"].pid != runs["skipped"].pid


def test_a_sigkilled_holder_frees_the_lock_and_the_next_run_succeeds(process_env, redis_client):
    # given a runjob process holding the job
    key = f"hold:{uuid.uuid4().hex}"
    holder = runjob({**process_env, "OPS_TEST_HOLD_KEY": key}, "ops_test_job", start_new_session=True)
    try:
        assert blpop_patiently(redis_client, f"{key}:started", 30), "the holder never started"
        assert run_job("ops_test_job").status == JobRun.Status.SKIPPED

        # when it is killed without a chance to clean up
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
        holder.communicate()

    # then the server drops its session and lock (asynchronously, but promptly)
    job = get_job("ops_test_job")

    def lock_is_free():
        lock = try_acquire(job.name, lease=job.time_limit)
        if lock is not None:
            lock.release()
        return lock is not None

    wait_for(lock_is_free, timeout=15, what="the killed holder's lock to be released")
    run = run_job("ops_test_job")
    assert run.status == JobRun.Status.SUCCESS
    # and the row the dead process left "running" is closed
    dead = JobRun.objects.get(job="ops_test_job", pid=holder.pid, status=JobRun.Status.FAILED)
    assert "died" in dead.error


def start_beat(env, tmp_path):
    log_path = tmp_path / "beat.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "checkout", "beat", "-l", "INFO", "--max-interval", "1",
         "--pidfile", str(tmp_path / "beat.pid")],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    return proc, log, log_path


@pytest.mark.parametrize("broker", BROKERS, indirect=True)
def test_real_beat_fires_schedules_into_the_ledger_and_results_and_sees_admin_edits(
    celery_worker_factory, broker, process_env, tmp_path
):
    # given a crontab row that is overdue, and a row an operator has not enabled yet
    overdue = PeriodicTask.objects.create(
        name="test: overdue crontab", task="jobs.ops_test_job", kwargs=json.dumps({"trigger": "beat"}),
        crontab=CrontabSchedule.objects.create(minute="*", timezone="Europe/London"),
        expire_seconds=60, last_run_at=timezone.now() - timedelta(minutes=2),
    )
    later = PeriodicTask.objects.create(
        name="test: enabled later", task="jobs.ops_test_undated", kwargs=json.dumps({"trigger": "beat"}),
        interval=IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS), enabled=False,
    )
    celery_worker_factory(queues="default", concurrency=1)
    beat, log, log_path = start_beat(process_env, tmp_path)
    try:
        # then beat fires the overdue crontab; the worker runs it
        run = wait_for(
            lambda: JobRun.objects.filter(job="ops_test_job", status="success").first(),
            what=f"the scheduled run\n{log_path.read_text(errors='replace')}",
        )
        assert run.trigger == JobRun.Trigger.BEAT
        result = wait_for(lambda: TaskResult.objects.filter(task_id=run.task_id, status="SUCCESS").first())
        assert result.task_name == "jobs.ops_test_job" and result.periodic_task_name == overdue.name

        # when the operator enables the other row (as the admin does: save()), beat, still running, picks it up
        later.enabled = True
        later.save()
        wait_for(
            lambda: JobRun.objects.filter(job="ops_test_undated", trigger="beat", status="success").exists(),
            what=f"the row enabled while beat runs\n{log_path.read_text(errors='replace')}",
        )
        assert beat.poll() is None  # no restart
    finally:
        os.killpg(beat.pid, signal.SIGTERM)
        try:
            beat.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(beat.pid, signal.SIGKILL)
            beat.wait()
        log.close()
