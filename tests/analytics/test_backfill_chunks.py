"""`backfill_analytics --chunk-days N` as a real process: the range queued in chunks for the workers,
built by a worker process, single flight while its chunks are open, bad values refused in one line."""
import subprocess
import sys
from datetime import date, timedelta

import pytest

from analytics.models import DailyReport
from analytics.services import daily_reports_build
from ops.runtime.models import JobChunk, JobRun
from tests.analytics.conftest import local
from tests.conftest import ROOT, wait_for
from tests.factories import OrderFactory

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

FIRST, LAST = date(2024, 5, 20), date(2024, 5, 29)


def backfill(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "backfill_analytics", *args], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=120,
    )


def paid_order_a_day() -> None:
    for n in range((LAST - FIRST).days + 1):
        day = FIRST + timedelta(days=n)
        OrderFactory(status="paid", amount_paise=100 + n, created_at=local(day, 0, 10), paid_at=local(day, 0, 20))


def reports() -> dict[date, tuple[int, int, int]]:
    return {r.date: (r.orders_created, r.orders_paid, r.revenue_paise) for r in DailyReport.objects.all()}


@pytest.mark.django_db
@pytest.mark.parametrize("value,says", [
    ("-1", "--chunk-days must be between 0 and 366, not -1"),
    ("367", "--chunk-days must be between 0 and 366, not 367"),
    ("ten", "--chunk-days must be an integer, not 'ten'"),
    ("2.5", "--chunk-days must be an integer, not '2.5'"),
])
def test_a_bad_chunk_days_is_a_usage_error_in_one_line(process_env, value, says):
    done = backfill(process_env, "--from", FIRST.isoformat(), "--to", LAST.isoformat(), "--chunk-days", value)

    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"backfill_analytics: error: {says} (see --help)"]
    assert done.stdout == ""
    assert not JobRun.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_chunks_are_queued_for_the_workers_who_build_the_range(process_env, celery_worker_factory):
    # given a paid order on each of ten days
    paid_order_a_day()

    # when the range is asked for in chunks of three days (no worker running yet)
    done = backfill(process_env, "--from", FIRST.isoformat(), "--to", LAST.isoformat(), "--chunk-days", "3")

    # then the command says where the work went, and returns
    run = JobRun.objects.get(job="daily_analytics")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"daily_analytics run {run.pk} queued 4 chunks of 3 days for the workers, {FIRST} to {LAST}; "
        "follow it in the admin (Job runs)"
    ]
    assert run.status == JobRun.Status.RUNNING
    assert run.params == {"from": FIRST.isoformat(), "to": LAST.isoformat(), "chunk_days": 3}
    assert [(c.params["from"], c.params["to"]) for c in JobChunk.objects.filter(run=run).order_by("index")] == [
        ("2024-05-20", "2024-05-23"), ("2024-05-23", "2024-05-26"), ("2024-05-26", "2024-05-29"),
        ("2024-05-29", "2024-05-30"),
    ]
    assert not DailyReport.objects.exists()

    # and while its chunks are open another backfill is skipped, exit 3
    again = backfill(process_env, "--from", FIRST.isoformat(), "--to", LAST.isoformat())
    assert again.returncode == 3, again.stderr
    assert again.stderr.splitlines()[-1] == "skipped: a run of this job is still running its chunks"  # after the log

    # when a worker comes, it builds the chunks and closes the run
    celery_worker_factory(queues="default")
    wait_for(lambda: JobRun.objects.get(pk=run.pk).status != JobRun.Status.RUNNING, timeout=90,
             what="the worker to finish the chunks")

    # then the reports are those of the days built here one by one
    run.refresh_from_db()
    assert run.status == JobRun.Status.SUCCESS, run.error
    assert run.counts["days"] == 10 and run.counts["reports_written"] == 10
    built = reports()
    DailyReport.objects.all().delete()
    for n in range(10):
        daily_reports_build(start=FIRST + timedelta(days=n), end=FIRST + timedelta(days=n + 1))
    assert built == reports()
    assert built[FIRST + timedelta(days=4)] == (1, 1, 104)


@pytest.mark.django_db(transaction=True)
def test_tasks_run_in_process_close_the_run_before_the_command_returns(process_env):
    # given tasks run eagerly, in the command's own process (as in the demo)
    paid_order_a_day()
    env = {**process_env, "CELERY_TASK_ALWAYS_EAGER": "true"}

    # when
    done = backfill(env, "--from", FIRST.isoformat(), "--to", LAST.isoformat(), "--chunk-days", "4")

    # then the usual line: the run is over
    run = JobRun.objects.get(job="daily_analytics")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"10 daily reports written, {FIRST} to {LAST} (run {run.pk})"]
    assert run.status == JobRun.Status.SUCCESS and run.result["chunks"] == 3
    assert [revenue for _, (_, _, revenue) in sorted(reports().items())] == [100 + n for n in range(10)]


@pytest.mark.django_db(transaction=True)
def test_a_dry_run_with_chunk_days_is_computed_here_and_writes_nothing(process_env):
    paid_order_a_day()

    done = backfill(process_env, "--from", FIRST.isoformat(), "--to", LAST.isoformat(), "--chunk-days", "3",
                    "--dry-run")

    run = JobRun.objects.get(job="daily_analytics")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"10 daily reports computed (dry run), {FIRST} to {LAST} (run {run.pk})"]
    assert run.status == JobRun.Status.SUCCESS and not JobChunk.objects.exists()
    assert not DailyReport.objects.exists()
