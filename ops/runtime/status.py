"""Job status: the one definition of last run, last success, schedule, next due, interval and "late".

The admin, /health/, /metrics, `runjob --list` and the alert rules all read
`job_statuses()`. A job is scheduled when an enabled beat row sends its task
(crontab or interval, as edited in the admin), or when a scheduled job chains
to it. Its interval is the longest gap between the schedule's next fires (the
row as it is now, not as code declared it), or for a chained job the shortest
interval of the jobs that start it.

A scheduled job is late when it has not succeeded within twice its interval.
A job that never succeeded is measured from when its schedule first came under
the project's management (`ManagedSchedule.created_at`), never from
`PeriodicTask.date_changed`, which beat itself moves every time it saves a row.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice

from django.conf import settings
from django.db.models import F, Max, Window
from django.db.models.functions import RowNumber
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from ops.runtime import schedules
from ops.runtime.models import JobRun, ManagedSchedule
from ops.runtime.registry import JOB_TASK_PREFIX, all_jobs, chained_from

# Fires looked at to find a crontab's interval: enough to cover a weekday pattern.
_FIRES_SAMPLED = 16


@dataclass(frozen=True)
class Schedule:
    """A beat row as it is now: a crontab in a zone, or a fixed interval."""

    name: str
    enabled: bool
    cron: schedules.Cron | None = None
    zone: str = ""
    every: timedelta | None = None
    last_run_at: datetime | None = None

    def next_due(self, now: datetime) -> datetime | None:
        if not self.enabled:
            return None
        if self.cron is not None:
            return schedules.next_fire(self.cron, self.zone, now)
        if self.every is not None:
            return max(self.last_run_at + self.every, now) if self.last_run_at else now
        return None

    def interval(self, now: datetime) -> timedelta | None:
        if self.every is not None:
            return self.every
        if self.cron is None:
            return None
        fires = list(islice(schedules.iter_fires(self.cron, self.zone, now), _FIRES_SAMPLED))
        if len(fires) < 2:
            return None
        return max(b - a for a, b in zip(fires, fires[1:]))

    def words(self) -> str:
        if self.cron is not None:
            return f"{self.cron} ({self.zone})"
        if self.every is not None:
            return f"every {_duration(self.every)}"
        return "-"


@dataclass(frozen=True)
class JobStatus:
    job: str
    queue: str
    schedule: Schedule | None
    after: tuple[str, ...]  # scheduled jobs whose chain starts this one
    interval: timedelta | None
    last_run_at: datetime | None
    last_status: str | None
    last_success_at: datetime | None
    next_due: datetime | None
    late: bool
    late_since: datetime | None  # what "late" is measured from: the last success, or the schedule's start

    @property
    def scheduled(self) -> bool:
        return (self.schedule is not None and self.schedule.enabled) or bool(self.after)

    def as_dict(self) -> dict:
        """The JSON shape /health/ reports per job."""
        entry = {
            "last_run": _iso(self.last_run_at),
            "status": self.last_status,
            "last_success": _iso(self.last_success_at),
            "next_due": _iso(self.next_due),
            "interval_s": int(self.interval.total_seconds()) if self.interval else None,
            "late": self.late,
        }
        if self.after and self.schedule is None:
            entry["after"] = list(self.after)
        return entry


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def beat_schedules() -> dict[str, Schedule]:
    """The beat rows that send a job's task, by job; an enabled row wins over a disabled one."""
    rows = (
        PeriodicTask.objects.filter(task__startswith=JOB_TASK_PREFIX)
        .select_related("crontab", "interval").order_by("enabled", "name")
    )
    found: dict[str, Schedule] = {}
    for row in rows:
        if row.crontab is not None:
            schedule = Schedule(
                row.name, row.enabled, cron=schedules.Cron.from_row(row.crontab),
                zone=str(row.crontab.timezone) or settings.CHECKOUT_TIME_ZONE, last_run_at=row.last_run_at,
            )
        elif row.interval is not None:
            every = timedelta(**{row.interval.period: row.interval.every})
            schedule = Schedule(row.name, row.enabled, every=every, last_run_at=row.last_run_at)
        else:
            continue  # solar and clocked rows: one-off or astronomical, no interval to be late against
        found[row.task[len(JOB_TASK_PREFIX):]] = schedule  # ordered so that enabled rows come last
    return found


def _last_runs(names: list[str]) -> dict[str, tuple[datetime, str]]:
    ranked = (
        JobRun.objects.filter(job__in=names, dry_run=False)
        .annotate(position=Window(RowNumber(), partition_by=[F("job")], order_by=F("started_at").desc()))
        .filter(position=1).values_list("job", "started_at", "status")
    )
    return {job: (started_at, status) for job, started_at, status in ranked}


def _last_successes(names: list[str]) -> dict[str, datetime]:
    return dict(
        JobRun.objects.filter(job__in=names, dry_run=False, status=JobRun.Status.SUCCESS)
        .values_list("job").annotate(last=Max("finished_at")).order_by()
    )


def job_statuses(now: datetime | None = None, *, names: list[str] | None = None) -> dict[str, JobStatus]:
    """Status of every registered job (or of `names`), in name order; four queries whatever the count."""
    now = now or timezone.now()
    jobs = all_jobs()
    names = sorted(names if names is not None else jobs)
    beat = beat_schedules()
    managed_since = dict(
        ManagedSchedule.objects.filter(name__in=[s.name for s in beat.values()])
        .values_list("name", "created_at")
    )
    last_runs = _last_runs(names)
    last_successes = _last_successes(names)

    intervals: dict[str, timedelta | None] = {}

    def interval_of(name: str, seen: frozenset = frozenset()) -> timedelta | None:
        if name in intervals:
            return intervals[name]
        schedule = beat.get(name)
        own = schedule.interval(now) if schedule is not None and schedule.enabled else None
        if own is None and name not in seen:
            parents = [interval_of(p, seen | {name}) for p in _scheduled_parents(name, beat)]
            own = min((p for p in parents if p is not None), default=None)
        intervals[name] = own
        return own

    def since_of(name: str, seen: frozenset = frozenset()) -> datetime | None:
        schedule = beat.get(name)
        if schedule is not None and schedule.enabled:
            return managed_since.get(schedule.name)
        starts = [since_of(p, seen | {name}) for p in _scheduled_parents(name, beat) if p not in seen]
        return min((s for s in starts if s is not None), default=None)

    statuses = {}
    for name in names:
        schedule = beat.get(name)
        after = tuple(_scheduled_parents(name, beat))
        interval = interval_of(name)
        last_run = last_runs.get(name)
        last_success = last_successes.get(name)
        since = last_success or since_of(name)
        scheduled = (schedule is not None and schedule.enabled) or bool(after)
        late = bool(scheduled and interval and since is not None and now - since > 2 * interval)
        statuses[name] = JobStatus(
            job=name, queue=jobs[name].queue if name in jobs else "", schedule=schedule, after=after,
            interval=interval, last_run_at=last_run[0] if last_run else None,
            last_status=last_run[1] if last_run else None, last_success_at=last_success,
            next_due=schedule.next_due(now) if schedule is not None else None,
            late=late, late_since=since,
        )
    return statuses


def _scheduled_parents(name: str, beat: dict[str, Schedule]) -> list[str]:
    """The jobs that chain to `name` and are themselves scheduled (directly or through their own parents)."""
    parents = []
    for parent in chained_from(name):
        schedule = beat.get(parent)
        if (schedule is not None and schedule.enabled) or _scheduled_parents(parent, beat):
            parents.append(parent)
    return parents
