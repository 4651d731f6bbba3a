"""The beat scheduler: django-celery-beat's DatabaseScheduler, run by any number of beats of which one sends.

Set as CELERY_BEAT_SCHEDULER. Schedules still live in the database (admin edits
reach the leader through PeriodicTasks.changed, as with the stock scheduler);
what changes is who sends, and when:

- every beat ticks every BEAT_TICK seconds; the one holding the lease
  (ops.runtime.beat) renews it and sends, the others take it over within a tick
  of its expiry, so two or three beats on different hosts leave no single point
  of failure;
- a schedule is a series of slots (crontab fire instants from
  `ops.runtime.schedules`, correct across DST; interval rows on a fixed grid),
  decided due by the database's clock, and each slot is claimed durably before
  its task is sent: one send per slot, through failovers, restarts and clock skew;
  a slot whose beat died between its claim and the broker's confirmation is sent
  again by the next leader under the same task id, and a worker drops a copy whose
  task id already ran (ops.runtime.tasks): one run per slot;
- a beat taking the lead first deals with the slots missed since each schedule's
  last claim: the last missed slot of a declared schedule runs once (trigger
  `catch_up`) if it is within the schedule's grace, and is recorded as a skipped
  run with the reason otherwise. The stock scheduler would run every overdue job
  once, however late; rows that code does not declare keep that behaviour.
"""
from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime, timedelta
from typing import Callable, Iterable
from zoneinfo import ZoneInfo

from celery.schedules import BaseSchedule, schedstate
from django.conf import settings
from django.db import DatabaseError, InterfaceError, close_old_connections
from django.db.models import F
from django.utils import timezone
from django_celery_beat.models import PeriodicTask, PeriodicTasks
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry

from checkout.celery import app as celery_app
from ops.runtime import beat, schedules
from ops.runtime.ledger import run_skipped
from ops.runtime.locks import holder_id
from ops.runtime.models import BeatSlot, JobRun
from ops.runtime.sweep import runs_sweep

log = logging.getLogger(__name__)

# Seconds between two sweeps of lost runs by the leading beat (each is one indexed query).
SWEEP_EVERY = 5.0

# A new leader sends again the unconfirmed slots claimed this recently (older ones are left to the
# schedule's next slot: a day covers a daily job's slot).
UNCONFIRMED_HORIZON = timedelta(days=1)

# A standby wakes this long after the lease's expiry, so that its takeover finds it expired.
_AFTER_EXPIRY_S = 0.01


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


class SlotEntry(ModelEntry):
    """A beat row with its slots and, when code declares it, its declaration (grace, job)."""

    def __init__(self, model, app=None) -> None:
        # ModelEntry fills an empty last_run_at in with date_changed; catch-up needs to know
        # whether the row ever ran.
        self.ran_at = model.last_run_at
        super().__init__(model, app=app)
        if model.crontab_id is not None:
            crontab = model.crontab
            self.schedule = LocalCrontab(
                schedules.Cron.from_row(crontab), ZoneInfo(str(crontab.timezone)), app=self.app
            )
        self.slots = beat.slots_of(model)
        self.declared = schedules.for_name(model.name)


def publish(app, entry: SlotEntry, kwargs: dict, task_id: str, producer=None) -> None:
    """Send the entry's task as beat does (the row's queue, expiry and headers), under `task_id`."""
    options = dict(entry.options)
    options["headers"] = {**options.get("headers", {}), "celery_beat_task": True}
    task = app.tasks.get(entry.task)
    if task is not None:
        task.apply_async(entry.args, kwargs, task_id=task_id, producer=producer, **options)
    else:
        app.send_task(entry.task, entry.args, kwargs, task_id=task_id, producer=producer, **options)


class SlotSender:
    """Claims each entry's due slots for one claimant and sends them, under the catch-up policy.

    A slot is missed when it came due before the claimant's term began (no beat was
    sending then) or longer ago than `stall` (the leader was stuck). Of the slots
    due since an entry's last claim only the last is claimed; the earlier ones are
    superseded by it. That last slot is sent, unless it was missed and the schedule
    is declared in code: then it runs with trigger `catch_up` within the grace and
    is recorded as skipped past it.
    """

    def __init__(self, claimant: beat.Claimant, *, since: datetime, stall: timedelta, app,
                 producer: Callable[[], object] = lambda: None) -> None:
        self.claimant = claimant
        self.since = since
        self.stall = stall
        self.app = app
        self.producer = producer
        self.cursors: dict[str, datetime] = {}
        self._upcoming: dict[str, tuple[object, datetime, datetime | None]] = {}
        # Claimed but refused by the broker: sent again at the next tick while the term lasts.
        # (entry, slot, kwargs, task id, note for the slot's row once the broker takes it)
        self.unsent: list[tuple[SlotEntry, datetime, dict, str, str]] = []

    def cursor(self, entry: SlotEntry, *, history_only: bool = False) -> datetime | None:
        """Where the entry's slots are counted from: its last claimed slot, else its row's last run.

        A row that never ran starts from when it was last changed, as with the
        stock scheduler; with `history_only` it is left alone.
        """
        cursor = self.cursors.get(entry.name)
        if cursor is None:
            cursor = beat.last_claimed(entry.name) or entry.ran_at
            if cursor is None and not history_only:
                cursor = entry.last_run_at
            start = entry.model.start_time
            if cursor is not None and start is not None and cursor < start:
                cursor = start - timedelta(microseconds=1)
            if cursor is not None:
                self.cursors[entry.name] = cursor
        return cursor

    def upcoming(self, entry: SlotEntry) -> datetime | None:
        """The entry's first slot after its cursor (None: it has no more)."""
        cursor = self.cursors.get(entry.name)
        if cursor is None or entry.slots is None:
            return None
        cached = self._upcoming.get(entry.name)
        if cached is None or cached[0] is not entry.slots or cached[1] != cursor:
            cached = (entry.slots, cursor, entry.slots.next_after(cursor))
            self._upcoming[entry.name] = cached
        return cached[2]

    def settle(self, entry: SlotEntry, now: datetime, *, history_only: bool = False) -> dict | None:
        """Claim the entry's last slot due by `now`, then send it or record it skipped; what was done."""
        if entry.slots is None or self.cursor(entry, history_only=history_only) is None:
            return None
        following = self.upcoming(entry)
        if following is None or following > now:
            return None
        expires = entry.model.expires
        if expires is not None and following >= expires:
            self._retire(entry, "its expiry has passed")
            return None
        cursor = self.cursors[entry.name]
        count, slot = entry.slots.due(cursor, now)
        declared = entry.declared
        late = now - slot
        missed = slot < self.since or late > self.stall
        kwargs, reason = entry.kwargs, ""
        if not missed or declared is None:
            outcome = BeatSlot.Outcome.SENT
        elif late <= declared.grace:
            outcome = BeatSlot.Outcome.CAUGHT_UP
            if declared.job:
                kwargs = {**entry.kwargs, "trigger": JobRun.Trigger.CATCH_UP}
        else:
            outcome = BeatSlot.Outcome.SKIPPED
            reason = (
                f"missed {count} slot(s) while no beat was sending; the last, at {_local(slot, entry)}, "
                f"is {_words(late)} late, past the grace of {_words(declared.grace)}"
            )
        task_id = "" if outcome == BeatSlot.Outcome.SKIPPED else str(uuid.uuid4())
        won = beat.slot_claim(
            self.claimant, schedule=entry.name, slot=slot, task=entry.task, outcome=outcome, now=now,
            superseded=count - 1, reason=reason, task_id=task_id,
        )
        self.cursors[entry.name] = slot
        if not won:
            # Another beat has it (or this one's term ended since the tick's renewal).
            log.info("slot %s of %s was claimed elsewhere; not sent", slot.isoformat(), entry.name)
            return None
        PeriodicTask.objects.filter(pk=entry.model.pk).update(
            last_run_at=now, total_run_count=F("total_run_count") + 1,
        )
        if outcome == BeatSlot.Outcome.SKIPPED:
            if declared.job:
                run_skipped(declared.job, trigger=JobRun.Trigger.CATCH_UP, reason=reason,
                            params={"missed_slot": slot.isoformat(), "missed": count})
        else:
            self._send(entry, slot, kwargs, task_id)
        if entry.model.one_off:
            self._retire(entry, "it runs once")
        done = {
            "schedule": entry.name, "job": declared.job if declared else None, "action": outcome,
            "missed": count if missed else 0, "superseded": count - 1, "slot": slot.isoformat(),
            "late_s": int(late.total_seconds()), "task_id": task_id,
        }
        log.log(
            logging.INFO if outcome == BeatSlot.Outcome.SENT and not missed else logging.WARNING,
            "slot schedule=%s slot=%s action=%s missed=%s superseded=%s late_s=%.1f term=%s task_id=%s",
            entry.name, slot.isoformat(), outcome, done["missed"], count - 1, late.total_seconds(),
            self.claimant.term, task_id,
        )
        return done

    def settle_all(self, entries: Iterable[SlotEntry], now: datetime, *,
                   history_only: bool = False) -> tuple[list[dict], datetime | None]:
        """Settle every entry; what was done, and the earliest slot still to come."""
        done, earliest = [], None
        for entry in entries:
            try:
                outcome = self.settle(entry, now, history_only=history_only)
                following = self.upcoming(entry)
            except (DatabaseError, InterfaceError):
                raise
            except Exception:  # one row whose slots cannot be computed must not hold up the others
                log.exception("schedule %s left out of this tick: its slots cannot be computed", entry.name)
                continue
            if outcome:
                done.append(outcome)
            if following is not None and (earliest is None or following < earliest):
                earliest = following
        return done, earliest

    def resend_unconfirmed(self, slots: list[BeatSlot], entries: dict[str, SlotEntry]) -> int:
        """Send again, under their own task ids, slots an earlier leader claimed but died before the broker
        confirmed: the message may never have left it. A copy of one that did reach a worker is dropped
        there (a job task whose id already ran does nothing), so each slot runs once."""
        sent = 0
        for claim in slots:
            entry = entries.get(claim.schedule)
            if entry is None:
                log.error("slot %s of %s was claimed in term %s, whose beat stopped before the broker confirmed "
                          "it; its schedule is gone, so it is not sent again (task %s)",
                          claim.slot.isoformat(), claim.schedule, claim.term, claim.task_id)
                continue
            kwargs = entry.kwargs
            if claim.outcome == BeatSlot.Outcome.CAUGHT_UP and entry.declared is not None and entry.declared.job:
                kwargs = {**entry.kwargs, "trigger": JobRun.Trigger.CATCH_UP}
            log.warning("slot %s of %s was claimed in term %s, whose beat stopped before the broker confirmed it: "
                        "sent again as task %s (run once: a copy that already ran is dropped)",
                        claim.slot.isoformat(), claim.schedule, claim.term, claim.task_id)
            self._send(entry, claim.slot, kwargs, claim.task_id,
                       note=beat.sent_again_reason(self.claimant, claim.term))
            sent += 1
        return sent

    def resend(self) -> None:
        """Send again what the broker refused at an earlier tick of this term."""
        unsent, self.unsent = self.unsent, []
        for entry, slot, kwargs, task_id, note in unsent:
            self._send(entry, slot, kwargs, task_id, note=note)

    def _send(self, entry: SlotEntry, slot: datetime, kwargs: dict, task_id: str, *, note: str = "") -> None:
        try:
            publish(self.app, entry, kwargs, task_id, producer=self.producer())
        except Exception:  # the broker may be down: the claim stays ours, and is sent at the next tick
            log.exception("could not send slot %s of %s (task %s); trying again", slot.isoformat(), entry.name, task_id)
            self.unsent.append((entry, slot, kwargs, task_id, note))
            return
        beat.slot_sent(entry.name, slot, note=note)

    def _retire(self, entry: SlotEntry, why: str) -> None:
        # As the stock scheduler does; the change makes every beat reload its schedule.
        PeriodicTask.objects.filter(pk=entry.model.pk).update(enabled=False)
        PeriodicTasks.update_changed()
        log.info("schedule %s disabled: %s", entry.name, why)


def _local(slot: datetime, entry: SlotEntry) -> str:
    """The slot in its schedule's zone, to the second only where it has seconds (interval rows)."""
    zone = str(entry.model.crontab.timezone) if entry.model.crontab_id is not None else settings.CHECKOUT_TIME_ZONE
    local = slot.astimezone(ZoneInfo(zone))
    return f"{local:%Y-%m-%d %H:%M:%S %Z}" if local.second or local.microsecond else f"{local:%Y-%m-%d %H:%M %Z}"


def _words(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds < 60:
        return f"{round(seconds, 1):g} s"
    hours, minutes = divmod(int(seconds) // 60, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def enabled_rows():
    # Every enabled row: the stock scheduler's query leaves out crontabs not due within two
    # hours, whose missed slots the catch-up must still see.
    return PeriodicTask.objects.enabled().select_related("crontab", "interval", "solar", "clocked")


def catch_up_missed(now: datetime | None = None, *, sender: SlotSender | None = None,
                    entries: Iterable[SlotEntry] | None = None) -> list[dict]:
    """Deal once with the slots every enabled row missed since its last claim or run; what was done.

    What a beat does first on taking the lead (with its own sender and entries);
    without them, as a one-off outside any lease. Rows that never ran are left to
    the regular ticks.
    """
    now = now or beat.db_now()
    if sender is None:
        sender = SlotSender(beat.Claimant(holder_id()), since=now, stall=settings.BEAT_LEASE, app=celery_app)
    entries = [SlotEntry(row, app=sender.app) for row in enabled_rows()] if entries is None else entries
    return sender.settle_all(entries, now, history_only=True)[0]


class CatchUpScheduler(DatabaseScheduler):
    """The scheduler of every beat process: leads on the lease, or stands by to take it over."""

    Entry = SlotEntry

    def __init__(self, *args, **kwargs) -> None:
        self.holder = holder_id()
        self.lead: beat.Lead | None = None
        self.sender: SlotSender | None = None
        self.lease = settings.BEAT_LEASE
        self._last_sweep = float("-inf")
        super().__init__(*args, **kwargs)
        # The leader renews at every tick: a tick as long as the lease would lose it in between.
        self.max_interval = min(self.max_interval, self.lease.total_seconds() / 3)

    def enabled_models_qs(self):
        return enabled_rows()

    @property
    def leading(self) -> bool:
        return self.lead is not None and self.lead.mine

    def tick(self, *args, **kwargs) -> float:
        try:
            return self._tick()
        except (DatabaseError, InterfaceError):
            # Nobody can tell who leads without the database: send nothing, keep the term (a
            # renewal at the next tick says whether it still holds), and reconnect.
            log.exception("beat tick failed; nothing sent")
            close_old_connections()
            return self.max_interval

    def _tick(self) -> float:
        now = beat.db_now()
        term = self.lead.term if self.leading else None
        self.lead = beat.lease_hold(self.holder, term, now, self.lease)
        if not self.lead.mine:
            if term is not None:
                self._lost(term)
            return max(min(self.max_interval, (self.lead.expires_at - now).total_seconds() + _AFTER_EXPIRY_S),
                       _AFTER_EXPIRY_S)
        if term is None:
            self._took_over(now)
        else:
            self.sender.resend()
        _, following = self.sender.settle_all(list(self.schedule.values()), now)
        self._sweep_lost_runs()
        wait = self.max_interval if following is None else min(self.max_interval, (following - now).total_seconds())
        return max(wait, _AFTER_EXPIRY_S)

    def _sweep_lost_runs(self) -> None:
        """The leader fails runs whose worker was lost, every few seconds: noticed within RUN_LOST_AFTER
        plus SWEEP_EVERY of the worker's death, not at the job's next run."""
        started = time.monotonic()
        if started - self._last_sweep < SWEEP_EVERY:
            return
        self._last_sweep = started
        try:
            found = runs_sweep()
        except (DatabaseError, InterfaceError):
            log.exception("sweep of lost runs failed; the next tick tries again")
            return
        if found["lost"]:
            log.warning("lost runs swept: %s", found)

    def _took_over(self, now: datetime) -> None:
        term = self.lead.term
        log.info("beat %s leads: term %s", self.holder, term)
        self.sender = SlotSender(
            beat.Claimant(self.holder, term), since=now, stall=self.lease, app=self.app,
            producer=lambda: self.producer,
        )
        # A standby's copy of the schedule may be old: read every row afresh.
        self._initial_read = True
        self._last_timestamp = None
        unconfirmed = beat.slots_unconfirmed(term, since=now - UNCONFIRMED_HORIZON)
        if unconfirmed:
            self.sender.resend_unconfirmed(unconfirmed, dict(self.schedule))
        done = catch_up_missed(now, sender=self.sender, entries=list(self.schedule.values()))
        if done:
            log.warning("term %s caught up: %s", term, ", ".join(f"{d['schedule']}={d['action']}" for d in done))

    def _lost(self, term: int) -> None:
        log.warning("beat %s lost the lead (term %s) to %s (term %s); sending nothing",
                    self.holder, term, self.lead.holder, self.lead.term)
        for entry, slot, _, task_id, _ in self.sender.unsent if self.sender else ():
            log.error("slot %s of %s was claimed but never sent (task %s)", slot.isoformat(), entry.name, task_id)
        self.sender = None

    def close(self) -> None:
        if self.leading:
            try:
                beat.lease_release(self.holder, self.lead.term, beat.db_now())
                log.warning("beat %s handed over the lead (term %s)", self.holder, self.lead.term)
            except (DatabaseError, InterfaceError):
                log.exception("could not hand over the lead; it expires by itself")
        super().close()
