"""The declared schedules, when crontabs fire across DST, and sync_schedules."""
import json
from datetime import datetime, timedelta, timezone as dt_timezone
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django_celery_beat.models import CrontabSchedule, PeriodicTask, PeriodicTasks

from ops.runtime import schedules
from ops.runtime.scheduler import LocalCrontab
from ops.runtime.schedules import Cron, iter_fires, missed_fires, next_fire
from ops.runtime.services import schedules_sync

LONDON = ZoneInfo("Europe/London")
UTC = dt_timezone.utc


def utc(*args):
    return datetime(*args, tzinfo=UTC)


def fires(cron, after, until):
    out = []
    for instant in iter_fires(cron, LONDON, after):
        if instant > until:
            return out
        out.append(instant)
    return out


# --- declarations -------------------------------------------------------------------

CONTRACT_SCHEDULES = {
    "cart_cleanup": "*/15 * * * *",
    "webhook_health": "*/15 * * * *",
    "payment_sync": "*/30 * * * *",
    "payment_gateway_health": "5,35 * * * *",
    "order_cleanup": "10 * * * *",
    "email_service_health": "20 * * * *",
    "cache_health": "25 * * * *",
    "daily_analytics": "0 2 * * *",
    "db_backup": "0 2 * * *",
    "weekly_analytics": "0 3 * * 0",
    "db_cleanup": "30 3 * * 0",
    "ops.outbox_relay": "* * * * *",
    "ops.alerts_evaluate": "*/5 * * * *",
}


def test_every_contract_job_is_declared_once_with_expires_within_its_interval():
    declared = {s.name: s for s in schedules.declared()}
    assert {name: str(s.cron) for name, s in declared.items()} == CONTRACT_SCHEDULES
    for s in declared.values():
        assert 0 < s.expire_seconds <= s.interval.total_seconds()
        assert s.grace <= s.interval
        # the interval is what the crontab really does, so alerts measure the right thing
        first = next_fire(s.cron, "Asia/Kolkata", utc(2026, 6, 7, 0, 0))
        assert next_fire(s.cron, "Asia/Kolkata", first) - first <= s.interval
    # chained jobs are not scheduled: their parents start them
    assert "db_optimize" not in declared and "db_monitor" not in declared


# --- DST (Europe/London: spring forward 2026-03-29 01:00 UTC, fall back 2026-10-25 01:00 UTC) ---


def test_daily_at_two_follows_local_time_across_spring_forward():
    daily = Cron(minute="0", hour="2")
    assert fires(daily, utc(2026, 3, 27, 12), utc(2026, 3, 31, 12)) == [
        utc(2026, 3, 28, 2),  # 02:00 GMT
        utc(2026, 3, 29, 1),  # 02:00 BST, the day the clocks go forward
        utc(2026, 3, 30, 1),
        utc(2026, 3, 31, 1),
    ]


def test_a_skipped_local_time_runs_once_just_after_the_jump():
    at_0130 = Cron(minute="30", hour="1")  # 01:30 does not exist on 2026-03-29
    assert fires(at_0130, utc(2026, 3, 28, 12), utc(2026, 3, 30, 12)) == [
        utc(2026, 3, 29, 1, 30),  # 02:30 BST
        utc(2026, 3, 30, 0, 30),  # 01:30 BST
    ]


def test_a_repeated_local_time_runs_once_on_fall_back():
    at_0130 = Cron(minute="30", hour="1")  # 01:30 happens twice on 2026-10-25
    assert fires(at_0130, utc(2026, 10, 24, 12), utc(2026, 10, 26, 12)) == [
        utc(2026, 10, 25, 0, 30),  # the first 01:30 (BST)
        utc(2026, 10, 26, 1, 30),
    ]


def test_hourly_job_runs_every_real_hour_through_fall_back():
    hourly = Cron(minute="10")
    day_start, day_end = utc(2026, 10, 24, 23), utc(2026, 10, 25, 23, 59)  # local 25 October
    instants = fires(hourly, day_start, day_end)
    assert len(instants) == 25  # the day has 25 hours
    assert all(b - a == timedelta(hours=1) for a, b in zip(instants, instants[1:]))


def test_quarter_hourly_job_keeps_its_pace_through_spring_forward():
    every_15 = Cron(minute="*/15")
    instants = fires(every_15, utc(2026, 3, 29, 0), utc(2026, 3, 29, 3))
    assert len(instants) == 12
    assert all(b - a == timedelta(minutes=15) for a, b in zip(instants, instants[1:]))


def test_weekly_on_sunday_in_local_time():
    weekly = Cron(minute="0", hour="3", day_of_week="0")
    assert next_fire(weekly, LONDON, utc(2026, 3, 23)) == utc(2026, 3, 29, 2)  # 03:00 BST, Sunday
    assert next_fire(weekly, LONDON, utc(2026, 3, 29, 2)) == utc(2026, 4, 5, 2)


def test_beat_schedule_says_due_at_the_right_instants_through_fall_back():
    """What beat uses (LocalCrontab.is_due), not only the helper."""
    now = [utc(2026, 10, 25, 0, 10, 5)]
    hourly = LocalCrontab(Cron(minute="10"), LONDON, nowfun=lambda: now[0])
    # the first 01:10 (BST) is due
    due, _ = hourly.is_due(utc(2026, 10, 24, 23, 10))
    assert due
    # the second 01:10 (GMT), an hour later, is due again: an hourly job does not lose an hour
    now[0] = utc(2026, 10, 25, 1, 10, 5)
    due, wait = hourly.is_due(utc(2026, 10, 25, 0, 10, 5))
    assert due and 3590 <= wait <= 3600
    # and nothing is due in between
    now[0] = utc(2026, 10, 25, 0, 40)
    due, wait = hourly.is_due(utc(2026, 10, 25, 0, 10, 5))
    assert not due and wait == 30 * 60


def test_missed_fires_counts_slots_and_returns_the_last():
    count, last = missed_fires(Cron(minute="*/15"), LONDON, utc(2026, 6, 1, 10, 0), utc(2026, 6, 1, 11, 20))
    assert (count, last) == (5, utc(2026, 6, 1, 11, 15))


# --- sync_schedules -----------------------------------------------------------------


def sync(*args) -> str:
    out = StringIO()
    call_command("sync_schedules", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.mark.postgres
@pytest.mark.django_db
def test_sync_creates_rows_in_the_local_zone_and_is_idempotent(test_schedules, settings):
    settings.CHECKOUT_TIME_ZONE = "Europe/London"

    first = sync()
    assert "2 created" in first

    row = PeriodicTask.objects.get(name="ops_test_job")
    assert row.task == "jobs.ops_test_job"
    assert json.loads(row.kwargs) == {"trigger": "beat"}
    assert (row.crontab.minute, row.crontab.hour, str(row.crontab.timezone)) == ("*/15", "*", "Europe/London")
    assert row.expire_seconds == 15 * 60 and row.queue == "default" and row.enabled
    changed_at = PeriodicTasks.last_change()

    second = sync()
    assert "nothing changed" in second
    assert PeriodicTasks.last_change() == changed_at
    assert PeriodicTask.objects.filter(name__startswith="ops_test").count() == 2
    assert CrontabSchedule.objects.filter(timezone="Europe/London").count() == 2


@pytest.mark.postgres
@pytest.mark.django_db
def test_sync_keeps_admin_edits_until_code_changes_the_declaration(test_schedules, monkeypatch):
    sync()
    # given an operator moved the job to every 5 minutes in the admin
    row = PeriodicTask.objects.get(name="ops_test_job")
    row.crontab = CrontabSchedule.objects.create(minute="*/5", timezone=row.crontab.timezone)
    row.save()

    # when deploy syncs again with the same code, the edit stays
    assert "nothing changed" in sync()
    assert PeriodicTask.objects.get(name="ops_test_job").crontab.minute == "*/5"

    # when code changes this job's schedule, code wins, and a running beat is told
    before = PeriodicTasks.last_change()
    changed = tuple(
        schedules._job("ops_test_job", Cron(minute="*/10"), 10 * schedules.MINUTE, grace=5 * schedules.MINUTE)
        if s.name == "ops_test_job" else s
        for s in schedules.SCHEDULES
    )
    monkeypatch.setattr(schedules, "SCHEDULES", changed)
    assert "ops_test_job: updated" in sync()
    row = PeriodicTask.objects.get(name="ops_test_job")
    assert row.crontab.minute == "*/10" and row.expire_seconds == 600
    assert PeriodicTasks.last_change() > before
    # the other row was not touched
    assert PeriodicTask.objects.get(name="ops_test_undated").crontab.hour == "2"


@pytest.mark.postgres
@pytest.mark.django_db
def test_sync_disables_rows_no_longer_declared_and_leaves_foreign_rows(test_schedules, monkeypatch):
    sync()
    foreign = PeriodicTask.objects.create(
        name="someone-elses", task="celery.backend_cleanup",
        crontab=CrontabSchedule.objects.create(minute="0", hour="4"),
    )

    monkeypatch.setattr(schedules, "SCHEDULES", schedules.SCHEDULES[:1])
    out = sync()

    assert "ops_test_undated: disabled" in out
    assert not PeriodicTask.objects.get(name="ops_test_undated").enabled
    assert PeriodicTask.objects.get(name="ops_test_job").enabled
    foreign.refresh_from_db()
    assert foreign.enabled
    assert "nothing changed" in sync()


@pytest.mark.postgres
@pytest.mark.django_db
def test_declared_but_unregistered_jobs_are_reported_not_synced(test_schedules, monkeypatch):
    ghost = schedules._job("not_built_yet", Cron(minute="0"), schedules.HOUR, grace=schedules.HOUR)
    monkeypatch.setattr(schedules, "SCHEDULES", (*schedules.SCHEDULES, ghost))

    report = schedules_sync()

    assert report.unregistered == ["not_built_yet"]
    assert not PeriodicTask.objects.filter(name="not_built_yet").exists()
    err = StringIO()
    call_command("sync_schedules", stdout=StringIO(), stderr=err)
    assert "not_built_yet: declared but not registered" in err.getvalue()


@pytest.mark.postgres
@pytest.mark.django_db
def test_dry_run_sync_changes_nothing(test_schedules):
    out = sync("--dry-run")
    assert "ops_test_job: would be created" in out
    assert not PeriodicTask.objects.filter(name__startswith="ops_test").exists()
