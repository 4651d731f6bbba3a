"""After downtime, beat runs a missed slot once within the grace, and records the rest as skipped."""
from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
import time_machine
from django_celery_beat.models import PeriodicTask

from ops.runtime.models import JobRun
from ops.runtime.scheduler import catch_up_missed
from ops.runtime.services import schedules_sync

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

NOW = datetime(2026, 6, 10, 12, 5, tzinfo=dt_timezone.utc)  # 17:35 in Asia/Kolkata


def last_run(name, at):
    PeriodicTask.objects.filter(name=name).update(last_run_at=at)


@pytest.fixture
def synced(test_schedules):
    schedules_sync()


def test_missed_slot_within_grace_runs_once(synced):
    # given beat was down for 2 h, missing 8 quarter-hour slots; the last one (17:30 IST) was 5 min ago
    last_run("ops_test_job", NOW - timedelta(hours=2))

    outcomes = catch_up_missed(NOW)

    assert [(o["job"], o["action"], o["missed"]) for o in outcomes] == [("ops_test_job", "caught_up", 8)]
    run = JobRun.objects.get(job="ops_test_job")
    assert run.trigger == JobRun.Trigger.CATCH_UP and run.status == JobRun.Status.SUCCESS
    # the row is claimed, so a second start (or the regular tick) does not run it again
    assert PeriodicTask.objects.get(name="ops_test_job").last_run_at == NOW
    assert catch_up_missed(NOW) == []
    assert JobRun.objects.count() == 1


def test_missed_slot_past_grace_is_recorded_as_skipped(synced):
    # given the daily 02:00 IST slot was missed and it is now 17:35 IST, beyond the 3 h grace
    last_run("ops_test_undated", NOW - timedelta(days=1, hours=2))

    with time_machine.travel(NOW, tick=False):
        outcomes = catch_up_missed(NOW)

    assert [o["action"] for o in outcomes] == ["skipped"]
    run = JobRun.objects.get(job="ops_test_undated")
    assert run.status == JobRun.Status.SKIPPED and run.trigger == JobRun.Trigger.CATCH_UP
    assert "missed 1 slot(s)" in run.error and "02:00 IST" in run.error and "past the grace of 3 h" in run.error
    assert run.params["missed"] == 1


def test_nothing_missed_nothing_done(synced):
    last_run("ops_test_job", NOW - timedelta(minutes=3))  # 17:32 IST; next slot 17:45
    last_run("ops_test_undated", NOW - timedelta(hours=1))
    assert catch_up_missed(NOW) == []
    assert not JobRun.objects.exists()


def test_disabled_or_never_run_rows_are_left_to_beat(synced):
    PeriodicTask.objects.filter(name="ops_test_job").update(enabled=False, last_run_at=NOW - timedelta(hours=3))
    PeriodicTask.objects.filter(name="ops_test_undated").update(last_run_at=None)
    assert catch_up_missed(NOW) == []
