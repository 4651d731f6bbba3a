"""Retries back off with capped full jitter (no sleeping); the last failure becomes a dead letter."""
import random

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from checkout.celery import QUEUES, app
from ops.runtime.models import DeadLetter, JobRun
from ops.runtime.dispatch import enqueue_job, job_task, requeue_dead_letter
from ops.runtime.tasks import backoff_countdown
from tests.brokers import BROKERS
from tests.conftest import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def test_backoff_ceilings_double_up_to_the_cap():
    class Top:  # the largest draw full jitter can make: the ceiling itself
        @staticmethod
        def uniform(low, high):
            return high

    assert [backoff_countdown(n, rng=Top) for n in range(7)] == [2, 4, 8, 16, 30, 30, 30]
    assert backoff_countdown(2, base=3, cap=100, rng=Top) == 27


def test_backoff_is_jittered_within_zero_and_the_ceiling():
    rng = random.Random(7)
    draws = [backoff_countdown(3, rng=rng) for _ in range(500)]
    assert all(0 <= d <= 16 for d in draws)
    assert min(draws) < 2 and max(draws) > 14  # spread over the whole range, not clustered


@pytest.fixture
def retry_countdowns(monkeypatch):
    """Record the countdown of every retry a task asks for, then let Celery retry as usual."""
    seen = []

    def spy(task):
        original = task.retry

        def retry(*args, **kwargs):
            seen.append(kwargs.get("countdown"))
            return original(*args, **kwargs)

        monkeypatch.setattr(task, "retry", retry)

    return seen, spy


def test_failing_job_retries_with_backoff_then_lands_in_dead_letters(retry_countdowns):
    seen, spy = retry_countdowns
    task = job_task("ops_test_job")
    spy(task)

    # when: eager mode runs the task and its retries inline
    enqueue_job("ops_test_job", params={"crash": "gateway down"})

    # then: max_retries=2 retries, each countdown within its ceiling (2 s, then 4 s)
    assert len(seen) == 2
    assert 0 <= seen[0] <= 2 and 0 <= seen[1] <= 4
    runs = list(JobRun.objects.filter(job="ops_test_job").order_by("started_at"))
    assert [r.trigger for r in runs] == ["manual", "retry", "retry"]
    assert {r.status for r in runs} == {JobRun.Status.FAILED}
    letter = DeadLetter.objects.get()
    assert letter.state == DeadLetter.State.DEAD
    assert letter.task_name == "jobs.ops_test_job"
    assert letter.attempts == 3
    assert letter.error == "RuntimeError: gateway down"
    assert "RuntimeError" in letter.traceback
    assert letter.kwargs["params"] == {"crash": "gateway down"}
    assert letter.first_failed_at <= letter.last_failed_at


def test_a_job_failing_for_a_reason_retries_cannot_change_is_not_retried(retry_countdowns):
    # a bad parameter (or a missing credential) fails the same way every time
    seen, spy = retry_countdowns
    spy(job_task("ops_test_job"))

    enqueue_job("ops_test_job", params={"steps": "many"})

    assert seen == []
    run = JobRun.objects.get()
    assert run.status == JobRun.Status.FAILED and run.error == "JobError: steps must be an integer, not 'many'"
    letter = DeadLetter.objects.get()
    assert letter.state == DeadLetter.State.DEAD and letter.attempts == 1


def test_background_task_retries_only_retryable_errors(retry_countdowns):
    seen, spy = retry_countdowns
    task = app.tasks["ops_test.flaky"]
    spy(task)

    task.apply_async(kwargs={"kind": "permanent"})
    assert seen == []  # a ValueError is not worth retrying
    permanent = DeadLetter.objects.get()
    assert permanent.state == DeadLetter.State.DEAD and permanent.attempts == 1

    task.apply_async(kwargs={"kind": "transient"})
    assert len(seen) == 3 and all(0 <= c <= 30 for c in seen)
    transient = DeadLetter.objects.exclude(pk=permanent.pk).get()
    assert transient.state == DeadLetter.State.DEAD and transient.attempts == 4


def test_dead_letter_is_requeued_from_the_admin_action(client, tmp_path):
    # given a dead job that failed because a file was missing
    flag = tmp_path / "ready"
    enqueue_job("ops_test_job", params={"fail_unless_file": str(flag)})
    letter = DeadLetter.objects.get(state=DeadLetter.State.DEAD)
    # and the cause fixed
    flag.touch()
    admin = get_user_model().objects.create_superuser("ops", "ops@example.com", "pw")
    client.force_login(admin)

    # when the operator requeues it in the admin
    response = client.post(
        reverse("admin:ops_deadletter_changelist"),
        {"action": "requeue", "_selected_action": [letter.pk]},
        follow=True,
    )

    # then the task ran again (inline here) and succeeded; the letter remembers the new task
    assert response.status_code == 200
    assert "Requeued 1 task(s)." in response.content.decode()
    letter.refresh_from_db()
    assert letter.state == DeadLetter.State.REQUEUED and letter.requeued_task_id
    rerun = JobRun.objects.get(task_id=letter.requeued_task_id)
    assert rerun.status == JobRun.Status.SUCCESS and rerun.trigger == JobRun.Trigger.RETRY


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker", BROKERS, indirect=True)
def test_retries_go_through_the_broker_and_a_dead_letter_is_requeued_through_it(
    celery_worker_factory, celery_live, broker, tmp_path
):
    # given a task sent with a countdown under a second, before any worker runs
    soon = app.tasks["ops_test.flaky"].apply_async(kwargs={"kind": "permanent"}, countdown=0.4)
    # and a real worker
    celery_worker_factory(queues="default", concurrency=1)

    # when a job fails every time
    crashing = enqueue_job("ops_test_job", params={"crash": "gateway down"})

    # then the job is retried twice, each retry sent through the broker with its countdown, then buried
    dead = wait_for(lambda: DeadLetter.objects.filter(task_id=crashing, state=DeadLetter.State.DEAD).first(),
                    timeout=40, what="the failing job's dead letter")
    runs = list(JobRun.objects.filter(job="ops_test_job", task_id=crashing).order_by("started_at"))
    assert [r.trigger for r in runs] == ["manual", "retry", "retry"]
    assert {r.status for r in runs} == {JobRun.Status.FAILED} and dead.attempts == 3
    waits = [(b.started_at - a.finished_at).total_seconds() for a, b in zip(runs, runs[1:])]
    # and the delayed task ran (its dead letter says it failed once, as it always does)
    delayed = wait_for(lambda: DeadLetter.objects.filter(task_id=soon.id).first(), what="the delayed task")
    assert delayed.state == DeadLetter.State.DEAD and delayed.attempts == 1

    # when a job buried for a missing file is requeued once the file is there
    flag = tmp_path / "ready"
    missing = enqueue_job("ops_test_job", params={"fail_unless_file": str(flag)})
    letter = wait_for(lambda: DeadLetter.objects.filter(task_id=missing, state=DeadLetter.State.DEAD).first(),
                      what="the missing file's dead letter")
    flag.touch()
    requeued = requeue_dead_letter(letter, requested_by="ops")

    # then the worker runs it again, to success
    rerun = wait_for(lambda: JobRun.objects.filter(task_id=requeued, status=JobRun.Status.SUCCESS).first(),
                     what="the requeued run")
    print(f"\n{broker.name}: retries waited {', '.join(f'{w:.1f}' for w in waits)} s "
          f"(ceilings 2 and 4 s); requeued dead letter ran as {rerun.trigger}")
    assert rerun.trigger == JobRun.Trigger.RETRY and rerun.requested_by == "ops"
    if broker.name == "rabbitmq":
        # and the work queues are durable quorum queues, whose countdowns wait in the broker's delay queues
        kinds = broker.queue_kinds()
        assert {name: kinds[name] for name in QUEUES} == {name: ("quorum", True) for name in QUEUES}
        assert kinds["celery_delayed_0"] == ("quorum", True)
