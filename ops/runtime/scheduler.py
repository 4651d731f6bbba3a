"""The beat scheduler: django-celery-beat's DatabaseScheduler, plus DST-correct crontabs and catch-up.

Set as CELERY_BEAT_SCHEDULER. Schedules still live in the database (admin edits
take effect through PeriodicTasks.changed, as with the stock scheduler), with two
changes:

- crontab rows fire at the instants `ops.runtime.schedules.iter_fires` computes, so an
  hourly job keeps running every hour through a DST fall-back;
- at start-up, a job whose slot passed while beat was down runs once
  (trigger `catch_up`) if that slot is within the job's grace, and is recorded
  as a skipped run with the reason otherwise. Without this the stock scheduler
  would run every overdue job once, however late.
"""
from __future__ import annotations

import logging
from datetime import datetime
from zoneinfo import ZoneInfo

from celery.schedules import BaseSchedule, schedstate
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry

from ops.runtime import schedules
from ops.runtime.dispatch import enqueue_job
from ops.runtime.ledger import run_skipped
from ops.runtime.models import JobRun
from ops.runtime.registry import UnknownJob, get_job

log = logging.getLogger(__name__)


class LocalCrontab(BaseSchedule):
    """A crontab in a time zone whose due times come from ops.runtime.schedules."""

    def __init__(self, cron: schedules.Cron, zone: ZoneInfo, nowfun=None, app=None) -> None:
        super().__init__(nowfun=nowfun, app=app)
        self.cron = cron
        self.zone = zone

    def now(self) -> datetime:
        return (self.nowfun or timezone.now)()

    def remaining_estimate(self, last_run_at: datetime):
        return schedules.next_fire(self.cron, self.zone, last_run_at) - self.now()

    def is_due(self, last_run_at: datetime) -> schedstate:
        now = self.now()
        due = schedules.next_fire(self.cron, self.zone, last_run_at)
        if due is None:
            return schedstate(False, 24 * 3600)
        if due <= now:
            following = schedules.next_fire(self.cron, self.zone, now)
            wait = (following - now).total_seconds() if following else 24 * 3600
            return schedstate(True, max(wait, 1.0))
        return schedstate(False, (due - now).total_seconds())

    def __eq__(self, other) -> bool:
        if isinstance(other, LocalCrontab):
            return (self.cron, self.zone) == (other.cron, other.zone)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.cron, self.zone))

    def __repr__(self) -> str:
        return f"<LocalCrontab {self.cron} {self.zone}>"


class LocalCrontabEntry(ModelEntry):
    def __init__(self, model, app=None) -> None:
        super().__init__(model, app=app)
        if model.crontab_id is not None:
            crontab = model.crontab
            self.schedule = LocalCrontab(
                schedules.Cron.from_row(crontab), ZoneInfo(str(crontab.timezone)), app=self.app
            )


def catch_up_missed(now: datetime | None = None) -> list[dict]:
    """Deal once with every scheduled job's slots missed while beat was down.

    For each enabled crontab row of a declared, registered job whose last run is
    older than its latest slot: enqueue one catch-up run if that slot is within the
    job's grace, record a skipped run otherwise. The row's last_run_at moves to
    now (claimed with a conditional update), so the regular schedule resumes with
    the next slot instead of firing the overdue one again.
    """
    now = now or timezone.now()
    by_name = {s.name: s for s in schedules.declared() if s.job}
    rows = PeriodicTask.objects.filter(
        name__in=by_name, enabled=True, crontab__isnull=False, last_run_at__isnull=False,
    ).select_related("crontab")
    outcomes = []
    for row in rows:
        declared = by_name[row.name]
        try:
            get_job(declared.job)
        except UnknownJob:
            continue
        missed, slot = schedules.missed_fires(
            schedules.Cron.from_row(row.crontab), ZoneInfo(str(row.crontab.timezone)), row.last_run_at, now
        )
        if not missed:
            continue
        claimed = PeriodicTask.objects.filter(pk=row.pk, last_run_at=row.last_run_at).update(last_run_at=now)
        if not claimed:
            continue
        late = now - slot
        outcome = {"job": declared.job, "missed": missed, "slot": slot.isoformat(), "late_s": int(late.total_seconds())}
        if late <= declared.grace:
            outcome["task_id"] = enqueue_job(
                declared.job, trigger=JobRun.Trigger.CATCH_UP, expires=declared.expire_seconds
            )
            outcome["action"] = "caught_up"
        else:
            reason = (
                f"missed {missed} slot(s) while the scheduler was down; the last, at "
                f"{slot.astimezone(ZoneInfo(str(row.crontab.timezone))):%Y-%m-%d %H:%M %Z}, is "
                f"{_words(late)} late, past the grace of {_words(declared.grace)}"
            )
            run_skipped(
                declared.job, trigger=JobRun.Trigger.CATCH_UP, reason=reason,
                params={"missed_slot": slot.isoformat(), "missed": missed},
            )
            outcome["action"] = "skipped"
        log.info("catch-up job=%s action=%s missed=%s slot=%s", declared.job, outcome["action"], missed, slot)
        outcomes.append(outcome)
    return outcomes


def _words(delta) -> str:
    minutes = int(delta.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


class CatchUpScheduler(DatabaseScheduler):
    Entry = LocalCrontabEntry

    def setup_schedule(self) -> None:
        try:
            catch_up_missed()
        except Exception:  # beat must start even if catch-up cannot be done
            log.exception("catch-up of missed runs failed")
        super().setup_schedule()
