"""When every job runs: the one module that declares schedules, in CHECKOUT_TIME_ZONE.

`manage.py sync_schedules` copies these declarations into django-celery-beat's
tables (where the admin can edit them). Chained jobs (db_optimize, db_monitor)
are not scheduled: the jobs before them start them through `then=`.

This module also knows when a crontab fires, correctly across DST: a local time
that a spring-forward skips runs at the moment after the jump; a local time that
a fall-back repeats runs once, except that jobs whose hour is `*` run in both
repeated hours, as they would on a clock without DST.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta, timezone as dt_timezone
from typing import Iterator
from zoneinfo import ZoneInfo

from celery import schedules as celery_schedules
from django.conf import settings

from ops.runtime.registry import JOB_TASK_PREFIX


@dataclass(frozen=True)
class Cron:
    """A crontab in celery's field syntax (day_of_week 0 = Sunday)."""

    minute: str = "*"
    hour: str = "*"
    day_of_week: str = "*"
    day_of_month: str = "*"
    month_of_year: str = "*"

    def __str__(self) -> str:
        return f"{self.minute} {self.hour} {self.day_of_month} {self.month_of_year} {self.day_of_week}"

    @classmethod
    def from_row(cls, row) -> "Cron":
        """From a django_celery_beat CrontabSchedule."""
        return cls(row.minute, row.hour, row.day_of_week, row.day_of_month, row.month_of_year)


@dataclass(frozen=True)
class Schedule:
    name: str  # the PeriodicTask name
    task: str  # the Celery task it sends
    cron: Cron
    # The nominal time between runs: a sent task expires after it. (How late a job is
    # is measured against its schedule as it is now: ops.runtime.status.)
    interval: timedelta
    # How late a slot missed during downtime may still run, once, at start-up.
    grace: timedelta
    job: str | None = None
    kwargs: tuple[tuple[str, object], ...] = ()

    @property
    def expire_seconds(self) -> int:
        return int(self.interval.total_seconds())

    def declaration(self, *, queue: str, zone: str) -> dict:
        """What code declares for the beat row: the input of the sync fingerprint."""
        return {
            "task": self.task,
            "cron": asdict(self.cron),
            "timezone": zone,
            "queue": queue,
            "expire_seconds": self.expire_seconds,
            "kwargs": dict(self.kwargs),
        }


def fingerprint(declaration: dict) -> str:
    return hashlib.sha256(json.dumps(declaration, sort_keys=True).encode()).hexdigest()


MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
WEEK = timedelta(days=7)


def _job(name: str, cron: Cron, interval: timedelta, grace: timedelta) -> Schedule:
    return Schedule(
        name=name, task=JOB_TASK_PREFIX + name, cron=cron, interval=interval, grace=grace,
        job=name, kwargs=(("trigger", "beat"),),
    )


def _task(name: str, cron: Cron, interval: timedelta) -> Schedule:
    # Runtime tasks run every few minutes; a missed one is simply the next one.
    return Schedule(name=name, task=name, cron=cron, interval=interval, grace=timedelta(0))


SCHEDULES: tuple[Schedule, ...] = (
    _job("cart_cleanup", Cron(minute="*/15"), 15 * MINUTE, grace=10 * MINUTE),
    _job("webhook_health", Cron(minute="*/15"), 15 * MINUTE, grace=10 * MINUTE),
    _job("payment_sync", Cron(minute="*/30"), 30 * MINUTE, grace=20 * MINUTE),
    _job("payment_gateway_health", Cron(minute="5,35"), 30 * MINUTE, grace=20 * MINUTE),
    _job("order_cleanup", Cron(minute="10"), HOUR, grace=45 * MINUTE),
    _job("email_service_health", Cron(minute="20"), HOUR, grace=45 * MINUTE),
    _job("cache_health", Cron(minute="25"), HOUR, grace=45 * MINUTE),
    # Yesterday's report: worth producing late the same day rather than not at all.
    _job("daily_analytics", Cron(minute="0", hour="2"), DAY, grace=12 * HOUR),
    # Backups run at night; one started in business hours would compete with checkout.
    _job("db_backup", Cron(minute="0", hour="2"), DAY, grace=3 * HOUR),
    _job("weekly_analytics", Cron(minute="0", hour="3", day_of_week="0"), WEEK, grace=DAY),
    _job("db_cleanup", Cron(minute="30", hour="3", day_of_week="0"), WEEK, grace=6 * HOUR),
    _task("ops.outbox_relay", Cron(), MINUTE),
    _task("ops.alerts_evaluate", Cron(minute="*/5"), 5 * MINUTE),
)


def _check(declared: tuple[Schedule, ...]) -> None:
    names = [s.name for s in declared]
    if len(names) != len(set(names)):
        raise ValueError("a schedule name is declared twice")
    for s in declared:
        if s.grace > s.interval:
            # A catch-up later than one interval would collide with the next regular slot.
            raise ValueError(f"schedule {s.name}: grace {s.grace} is longer than its interval {s.interval}")


_check(SCHEDULES)


def declared() -> tuple[Schedule, ...]:
    return SCHEDULES


def for_name(name: str) -> Schedule | None:
    return next((s for s in SCHEDULES if s.name == name), None)


def for_job(job: str) -> Schedule | None:
    return next((s for s in SCHEDULES if s.job == job), None)


def schedule_zone() -> str:
    return settings.CHECKOUT_TIME_ZONE


# --- when a crontab fires --------------------------------------------------------


def _parsed(cron: Cron) -> celery_schedules.crontab:
    return celery_schedules.crontab(
        minute=cron.minute, hour=cron.hour, day_of_week=cron.day_of_week,
        day_of_month=cron.day_of_month, month_of_year=cron.month_of_year,
    )


def _day_fires(parsed, day: date, zone: ZoneInfo) -> list[datetime]:
    """The UTC instants at which the crontab fires on local `day`, sorted."""
    if (
        day.month not in parsed.month_of_year
        or day.day not in parsed.day_of_month
        or day.isoweekday() % 7 not in parsed.day_of_week
    ):
        return []
    every_hour = len(parsed.hour) == 24
    instants = set()
    for hour in parsed.hour:
        for minute in parsed.minute:
            wall = datetime.combine(day, time(hour, minute))
            # fold=0 maps a skipped wall time to the instant after the jump, and a
            # repeated one to its first occurrence.
            instants.add(wall.replace(tzinfo=zone).astimezone(dt_timezone.utc))
            if every_hour:
                instants.add(wall.replace(tzinfo=zone, fold=1).astimezone(dt_timezone.utc))
    return sorted(instants)


def iter_fires(cron: Cron, zone: ZoneInfo | str, after: datetime) -> Iterator[datetime]:
    """Every instant (aware, UTC) strictly after `after` at which the crontab fires, in order."""
    zone = ZoneInfo(zone) if isinstance(zone, str) else zone
    parsed = _parsed(cron)
    # A day before, for the rare slot of the previous local day that DST moved past midnight.
    day = after.astimezone(zone).date() - timedelta(days=1)
    empty_days = 0
    # A crontab silent for five years (30 February...) is taken as never firing.
    while empty_days < 5 * 366:
        fires = [t for t in _day_fires(parsed, day, zone) if t > after]
        if fires:
            empty_days = 0
            yield from fires
        else:
            empty_days += 1
        day += timedelta(days=1)


def next_fire(cron: Cron, zone: ZoneInfo | str, after: datetime) -> datetime | None:
    return next(iter_fires(cron, zone, after), None)


def missed_fires(cron: Cron, zone: ZoneInfo | str, after: datetime, until: datetime) -> tuple[int, datetime | None]:
    """How many slots fell in (after, until], and the last of them."""
    count, last = 0, None
    for instant in iter_fires(cron, zone, after):
        if instant > until:
            break
        count, last = count + 1, instant
    return count, last
