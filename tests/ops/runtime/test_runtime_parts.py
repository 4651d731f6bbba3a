"""The runtime's shared parts: declared parameters, follow-up chunks with their cap, the bounded
batch loop, heartbeats, and the one job-status selector (interval and "late" from the schedule as it is)."""
import time
from datetime import date, datetime, timedelta, timezone as dt_timezone
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from django.db import IntegrityError
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from ops.runtime import heartbeat, params
from ops.runtime.batches import Batch, run_batches
from ops.runtime.errors import JobError
from ops.runtime.models import JobRun, ManagedSchedule
from ops.runtime.params import read_params
from ops.runtime.registry import job, unregister
from ops.runtime.runner import run_job
from ops.runtime.status import job_statuses

DECLARED = {
    "size": params.integer(10, low=1, high=100),
    "share": params.number(0.5, low=0, high=1),
    "step": params.choice("expire", ("expire", "abandon")),
    "day": params.day(),
    "check": params.flag(),
}


# --- parameters --------------------------------------------------------------------------------

def test_declared_parameters_get_their_defaults_and_types():
    assert read_params("j", DECLARED, {}) == {"size": 10, "share": 0.5, "step": "expire", "day": None, "check": None}
    got = read_params("j", DECLARED, {"size": "20", "share": 1, "day": "2026-03-01", "check": True, "chunk": 3})
    assert got["size"] == 20 and got["share"] == 1.0 and got["day"] == date(2026, 3, 1) and got["check"] is True


@pytest.mark.parametrize(("raw", "message"), [
    ({"sise": 5}, "unknown parameter(s) for j: sise (it takes: check, day, share, size, step)"),
    ({"size": 0}, "size must be between 1 and 100, not 0"),
    ({"size": 2.5}, "size must be an integer, not 2.5"),
    ({"size": True}, "size must be an integer, not True"),
    ({"share": "half"}, "share must be a number, not 'half'"),
    ({"step": "both"}, "step must be one of expire, abandon, not 'both'"),
    ({"day": "01/03/2026"}, "day must be a date as YYYY-MM-DD, not '01/03/2026'"),
    ({"check": "yes"}, "check must be true or false, not 'yes'"),
])
def test_a_bad_parameter_is_one_clear_error(raw, message):
    with pytest.raises(JobError) as caught:
        read_params("j", DECLARED, raw)
    assert str(caught.value) == message


@pytest.mark.django_db
def test_a_run_with_a_bad_parameter_fails_before_its_body_runs():
    called = []

    @job("runtime_params_job", params={"size": params.integer(1, low=1)})
    def runtime_params_job(ctx):
        called.append(ctx.params)

    try:
        run = run_job("runtime_params_job", params={"size": -1})
    finally:
        unregister("runtime_params_job")
    assert run.status == JobRun.Status.FAILED and run.error == "JobError: size must be at least 1, not -1"
    assert not run.traceback and not called


# --- follow-up chunks --------------------------------------------------------------------------

@pytest.mark.django_db
def test_follow_up_chunks_are_numbered_and_stop_at_the_cap(django_capture_on_commit_callbacks, settings):
    # given a job that always has more to do, capped at three chunks (tasks run inline here)
    settings.CELERY_TASK_ALWAYS_EAGER = True
    seen = []

    @job("runtime_chunked_job", max_chunks=3, params={"cursor": params.integer(0, low=0)})
    def runtime_chunked_job(ctx):
        seen.append((ctx.chunk, ctx.params["cursor"]))
        ctx.continue_later(cursor=ctx.params["cursor"] + 10)
        return {"cursor": ctx.params["cursor"]}

    try:
        first = run_job("runtime_chunked_job")
    finally:
        unregister("runtime_chunked_job")

    # then the first run and two follow-ups ran, each resuming where the last one stopped
    assert seen == [(0, 0), (1, 10), (2, 20)]
    runs = list(JobRun.objects.filter(job="runtime_chunked_job").order_by("pk"))
    assert [r.trigger for r in runs] == ["manual", "continuation", "continuation"]
    assert runs[0].pk == first.pk and runs[0].result["next_chunk"] == "queued"
    assert runs[-1].result == {"cursor": 20, "chunk": 2, "next_chunk": "capped"}
    assert runs[-1].params == {"cursor": 20, "chunk": 2}


# --- the batch loop ----------------------------------------------------------------------------

@pytest.mark.django_db
def test_batches_walk_to_the_end_and_sum_what_they_did():
    rows = list(range(1, 26))

    def step(after_id):
        batch = [r for r in rows if r > after_id][:10]
        return Batch(len(batch), batch[-1] if batch else None, more=len(batch) == 10,
                     tally={"odd": sum(r % 2 for r in batch)})

    seen = []
    progress = run_batches(step, on_batch=lambda p: seen.append(p.rows))
    assert (progress.rows, progress.batches, progress.after_id, progress.done) == (25, 3, 25, True)
    assert progress.tally == {"odd": 13} and seen == [10, 20, 25]


@pytest.mark.django_db
def test_batches_stop_between_batches_once_the_deadline_has_passed():
    progress = run_batches(lambda after_id: Batch(10, after_id + 10), deadline=0.0)
    assert (progress.batches, progress.after_id, progress.done) == (1, 10, False)


@pytest.mark.django_db
def test_a_batch_refused_by_a_conflict_runs_once_more_when_asked():
    attempts = []

    def step(after_id):
        attempts.append(after_id)
        if len(attempts) == 1:
            raise IntegrityError("a row referenced since the batch was chosen")
        return Batch(0, None)

    assert run_batches(step, redo_on_conflict=True).done and attempts == [0, 0]
    with pytest.raises(IntegrityError):
        run_batches(lambda after_id: (_ for _ in ()).throw(IntegrityError("x")))


# --- heartbeats --------------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_a_running_job_leaves_heartbeats_with_its_counts_so_far(monkeypatch):
    # given heartbeats every 50 ms, and a job body busy with something that reports nothing
    monkeypatch.setattr(heartbeat, "HEARTBEAT_EVERY", 0.05)
    seen = []

    @job("runtime_heartbeat_job")
    def runtime_heartbeat_job(ctx):
        ctx.add("done", 2)
        started = JobRun.objects.values_list("heartbeat_at", flat=True).get(pk=ctx.run.pk)
        # the process's heartbeat thread may be in a 5 s wait started before the patch
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            row = JobRun.objects.values("heartbeat_at", "counts", "status").get(pk=ctx.run.pk)
            if row["heartbeat_at"] != started and row["counts"]:
                seen.append(row)
                return
            time.sleep(0.02)  # the test waits for another thread's write; no worker sleeps

    try:
        run = run_job("runtime_heartbeat_job")
    finally:
        unregister("runtime_heartbeat_job")

    # then the row showed the run alive, with its counts so far, while it ran
    assert seen and seen[0]["status"] == "running" and seen[0]["counts"] == {"done": 2}
    assert run.status == "success" and run.heartbeat_at is not None


# --- job status --------------------------------------------------------------------------------

NOW = datetime(2026, 3, 4, 12, 0, tzinfo=dt_timezone.utc)


@pytest.mark.django_db
def test_interval_and_late_follow_the_schedule_as_edited_not_as_declared():
    # given ops_test_job declared every 15 minutes but edited in the admin to every 2 hours
    crontab = CrontabSchedule.objects.create(minute="0", hour="*/2", timezone="UTC")
    PeriodicTask.objects.create(name="ops_test_job", task="jobs.ops_test_job", crontab=crontab)
    ManagedSchedule.objects.create(name="ops_test_job", created_at=NOW - timedelta(hours=3))
    JobRun.objects.create(job="ops_test_job", status="success", started_at=NOW - timedelta(hours=3),
                          finished_at=NOW - timedelta(hours=3))

    status = job_statuses(NOW)["ops_test_job"]

    # then it is expected every two hours, and three hours without success is not late
    assert status.interval == timedelta(hours=2) and not status.late
    assert status.next_due == datetime(2026, 3, 4, 14, 0, tzinfo=dt_timezone.utc)
    assert job_statuses(NOW + timedelta(hours=2))["ops_test_job"].late


@pytest.mark.django_db
def test_a_job_that_never_succeeded_is_late_from_when_its_schedule_was_made_not_from_beat_saves():
    crontab = CrontabSchedule.objects.create(minute="*/15", timezone="UTC")
    PeriodicTask.objects.create(name="ops_test_job", task="jobs.ops_test_job", crontab=crontab)
    ManagedSchedule.objects.create(name="ops_test_job", created_at=NOW - timedelta(hours=1))
    # beat saving the row (last_run_at, total_run_count) moves date_changed to now
    PeriodicTask.objects.filter(name="ops_test_job").update(date_changed=NOW)
    assert job_statuses(NOW)["ops_test_job"].late


@pytest.mark.django_db
def test_an_interval_schedule_from_the_admin_is_a_schedule(settings):
    every = IntervalSchedule.objects.create(every=10, period=IntervalSchedule.MINUTES)
    PeriodicTask.objects.create(name="admin made", task="jobs.ops_test_undated", interval=every,
                                last_run_at=NOW - timedelta(minutes=4))
    status = job_statuses(NOW)["ops_test_undated"]
    assert status.interval == timedelta(minutes=10)
    assert status.next_due == NOW + timedelta(minutes=6)

    with time_machine.travel(NOW, tick=False):
        out = StringIO()
        call_command("runjob", "--list", stdout=out)
    line = next(line for line in out.getvalue().splitlines() if line.startswith("ops_test_undated"))
    assert "every 10 min" in line and "not synced" not in line


@pytest.mark.django_db
def test_jobs_nothing_schedules_are_never_late():
    JobRun.objects.create(job="ops_test_undated", status="failed", started_at=NOW - timedelta(days=30))
    status = job_statuses(NOW)["ops_test_undated"]
    assert not status.scheduled and not status.late and status.interval is None
