"""Writes of the job runtime: syncing the declared schedules into django-celery-beat."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask, PeriodicTasks

from checkout.celery import app
from ops.runtime.dispatch import TASK_QUEUES
from ops.runtime import schedules
from ops.runtime.models import ManagedSchedule
from ops.runtime.registry import all_jobs


@dataclass
class SyncReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # unchanged in code; the row (maybe edited in the admin) stays
    disabled: list[str] = field(default_factory=list)
    unregistered: list[str] = field(default_factory=list)  # declared, but no such job/task in this build

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.disabled)


def _queue_of(schedule: schedules.Schedule) -> str:
    if schedule.job:
        return all_jobs()[schedule.job].queue
    return TASK_QUEUES.get(schedule.task, "default")


def _is_registered(schedule: schedules.Schedule) -> bool:
    if schedule.job:
        return schedule.job in all_jobs()
    return schedule.task in app.tasks


def _crontab(schedule: schedules.Schedule, zone: str) -> CrontabSchedule:
    cron = schedule.cron
    crontab, _ = CrontabSchedule.objects.get_or_create(
        minute=cron.minute, hour=cron.hour, day_of_week=cron.day_of_week,
        day_of_month=cron.day_of_month, month_of_year=cron.month_of_year, timezone=zone,
    )
    return crontab


def _apply(row: PeriodicTask, schedule: schedules.Schedule, declaration: dict, zone: str) -> None:
    row.task = schedule.task
    row.crontab = _crontab(schedule, zone)
    row.interval = row.solar = row.clocked = None
    row.queue = declaration["queue"]
    row.expire_seconds = declaration["expire_seconds"]
    row.expires = None
    row.kwargs = json.dumps(declaration["kwargs"])
    row.args = "[]"
    row.one_off = False
    row.enabled = True
    row.no_changes = False
    row.description = (
        f"Declared in ops/runtime/schedules.py ({schedule.cron}, {zone}). "
        "Admin edits are kept until the declaration changes."
    )
    row.save()


@transaction.atomic
def schedules_sync(*, dry_run: bool = False) -> SyncReport:
    """Make django-celery-beat's rows match ops.runtime.schedules, keeping admin edits of unchanged declarations.

    Rows are upserted by name. A row is overwritten only when the declaration's
    fingerprint differs from the one stored at the last sync; rows this project
    created whose declaration is gone are disabled once. Running it twice changes nothing.
    """
    zone = schedules.schedule_zone()
    report = SyncReport()
    now = timezone.now()
    managed = {m.name: m for m in ManagedSchedule.objects.select_for_update()}
    rows = {r.name: r for r in PeriodicTask.objects.filter(
        name__in=[s.name for s in schedules.declared()] + list(managed)
    )}

    for schedule in schedules.declared():
        if not _is_registered(schedule):
            report.unregistered.append(schedule.name)
            continue
        declaration = schedule.declaration(queue=_queue_of(schedule), zone=zone)
        print_ = schedules.fingerprint(declaration)
        record = managed.get(schedule.name)
        row = rows.get(schedule.name)
        if row is not None and record is not None and record.fingerprint == print_:
            report.kept.append(schedule.name)
            continue
        (report.created if row is None else report.updated).append(schedule.name)
        if dry_run:
            continue
        _apply(row or PeriodicTask(name=schedule.name), schedule, declaration, zone)
        ManagedSchedule.objects.update_or_create(
            name=schedule.name,
            defaults={"fingerprint": print_, "declared": declaration, "synced_at": now},
            create_defaults={"fingerprint": print_, "declared": declaration, "synced_at": now, "created_at": now},
        )

    declared_names = {s.name for s in schedules.declared()}
    for name, record in managed.items():
        if name in declared_names or not record.fingerprint:
            continue  # still declared, or already retired (an admin may have re-enabled it since)
        report.disabled.append(name)
        if dry_run:
            continue
        row = rows.get(name)
        if row is not None and row.enabled:
            row.enabled = False
            row.no_changes = False
            row.save()
        ManagedSchedule.objects.filter(name=name).update(fingerprint="", synced_at=now)

    if report.changed and not dry_run:
        # A running beat reloads its schedule when this timestamp moves. save() moves it
        # only for rows whose no_changes flag is clear; beat sets that flag on the rows it saves.
        PeriodicTasks.update_changed()
    return report
