"""Every run leaves one ledger row: success, failure, skip (lock held or by the job) and dry run."""
import pytest

from ops.runtime.locks import try_acquire
from ops.runtime.models import JobRun
from ops.runtime.registry import get_job
from ops.runtime.ledger import LOCK_HELD
from ops.runtime.runner import run_job
from ops.runtime.dispatch import enqueue_job

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def test_success_row_has_counts_result_and_timing():
    run = run_job("ops_test_job", params={"steps": 3})

    run.refresh_from_db()
    assert run.status == JobRun.Status.SUCCESS
    assert run.trigger == JobRun.Trigger.MANUAL
    assert run.counts == {"written": 3}
    assert run.result == {"date": None, "trigger": "manual"}
    assert run.finished_at >= run.started_at
    assert run.duration_ms is not None and run.pid and run.host
    assert not run.dry_run and run.error == ""


def test_expected_failure_is_recorded_without_traceback():
    run = run_job("ops_test_job", params={"fail_unless_file": "/nonexistent/flag"})

    run.refresh_from_db()
    assert run.status == JobRun.Status.FAILED
    assert run.error == "JobError: /nonexistent/flag does not exist"
    assert run.traceback == ""


def test_unexpected_failure_keeps_the_traceback_and_can_raise():
    with pytest.raises(RuntimeError, match="boom"):
        run_job("ops_test_job", params={"crash": "boom"}, raise_errors=True)

    run = JobRun.objects.get(job="ops_test_job")
    assert run.status == JobRun.Status.FAILED
    assert "RuntimeError: boom" in run.traceback


def test_run_is_skipped_while_another_holds_the_lock():
    # given another run holding the job's lock
    job = get_job("ops_test_job")
    with try_acquire(job.name, lease=job.time_limit):
        # when
        run = run_job("ops_test_job", params={"steps": 1})
    # then
    assert run.status == JobRun.Status.SKIPPED
    assert run.error == LOCK_HELD
    assert run.counts == {}
    # and the lock is free again
    assert run_job("ops_test_job").status == JobRun.Status.SUCCESS


def test_lock_is_not_reentrant_in_the_same_thread():
    job = get_job("ops_test_job")
    with try_acquire(job.name, lease=job.time_limit):
        assert try_acquire(job.name, lease=job.time_limit) is None


def test_job_that_skips_itself_records_the_reason():
    run = run_job("ops_test_job", params={"skip": "nothing to do on holidays"})

    assert run.status == JobRun.Status.SKIPPED
    assert run.error == "nothing to do on holidays"


def test_dry_run_is_marked_and_the_job_sees_it():
    run = run_job("ops_test_job", dry_run=True, params={"steps": 2})

    run.refresh_from_db()
    assert run.dry_run is True
    assert run.status == JobRun.Status.SUCCESS
    assert run.counts == {"would_write": 2}


def test_a_row_left_running_by_a_dead_process_is_closed_by_the_next_run():
    # given a row whose process died mid-run (its lock went with it)
    orphan = JobRun.objects.create(job="ops_test_job", status=JobRun.Status.RUNNING)

    run_job("ops_test_job")

    orphan.refresh_from_db()
    assert orphan.status == JobRun.Status.FAILED
    assert "died" in orphan.error and orphan.finished_at is not None


def test_eager_mode_runs_enqueued_jobs_inline():
    """The demo has no broker: enqueue_job must still run the job and write its row."""
    task_id = enqueue_job("ops_test_job", params={"steps": 1})

    run = JobRun.objects.get(job="ops_test_job")
    assert run.task_id == task_id
    assert run.status == JobRun.Status.SUCCESS and run.counts == {"written": 1}
