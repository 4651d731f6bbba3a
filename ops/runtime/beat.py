"""Many beats, one sender: the leader's lease, the slots of a schedule, and their durable claims.

Any number of `celery beat` processes run. The one holding the lease row sends;
the others look at the row every tick and take it once it has expired, with the
next term. Each due slot of a schedule (its fire instant, the same whichever beat
computes it) is claimed by inserting its row before it is sent; the insert names
the claimant's term and does nothing on conflict, so a slot goes out once even
while two beats both believe they lead. Time is the database's, so beats whose
clocks disagree still agree on what is due and on when a lease has expired.

Everything here is a single statement on an ordinary connection (no session
state, no advisory lock): it works through a transaction-pooling PgBouncer and on
SQLite alike.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone as dt_timezone

from django.conf import settings
from django.db import connection
from django.db.models.functions import Now
from django.utils import timezone

from checkout.db import is_postgres
from ops.runtime import schedules
from ops.runtime.models import BeatLease, BeatSlot

log = logging.getLogger(__name__)

LEASE = "beat"
# Interval rows without a start_time count their slots from here, so every beat draws the same grid.
EPOCH = datetime(1970, 1, 1, tzinfo=dt_timezone.utc)


# --- clocks ------------------------------------------------------------------------


def local_now() -> datetime:
    """This process's clock (shifted by BEAT_CLOCK_OFFSET)."""
    return timezone.now() + timedelta(seconds=settings.BEAT_CLOCK_OFFSET)


def db_now() -> datetime:
    """The clock every beat agrees on: the database server's.

    SQLite has no server: its beats share one host, and so one clock.
    """
    if not is_postgres():
        return local_now()
    with connection.cursor() as cursor:
        # statement_timestamp(), not now(): inside a transaction now() stands still.
        cursor.execute("SELECT statement_timestamp()")
        return cursor.fetchone()[0]


# --- the lease ---------------------------------------------------------------------


@dataclass(frozen=True)
class Lead:
    """The lease as one beat saw it at a tick: who holds it, in which term, until when."""

    holder: str
    term: int
    expires_at: datetime
    mine: bool


def lease_hold(holder: str, term: int | None, now: datetime, length: timedelta) -> Lead:
    """Renew the lease if `holder` still leads in `term`; otherwise take it if it has expired.

    The renewal is an UPDATE conditional on holder and term: a leader that was
    frozen past its expiry and replaced learns it here, before it sends anything.
    A takeover moves the term on by one, conditional on the term it replaces.
    """
    expires = now + length
    if term is not None:
        if BeatLease.objects.filter(name=LEASE, holder=holder, term=term).update(
            renewed_at=now, expires_at=expires,
        ):
            return Lead(holder, term, expires, mine=True)
    current = BeatLease.objects.filter(name=LEASE).first()
    if current is None:
        BeatLease.objects.bulk_create(
            [BeatLease(name=LEASE, holder=holder, term=1, acquired_at=now, renewed_at=now, expires_at=expires)],
            ignore_conflicts=True,
        )
        current = BeatLease.objects.get(name=LEASE)
        return Lead(current.holder, current.term, current.expires_at, mine=current.holder == holder)
    if current.expires_at > now:
        # Holder ids are unique to a process: a row naming this one is a takeover whose answer was
        # lost (the connection dropped after the commit); nothing was sent in that term yet.
        return Lead(current.holder, current.term, current.expires_at, mine=current.holder == holder)
    taken = BeatLease.objects.filter(name=LEASE, term=current.term, expires_at__lte=now).update(
        holder=holder, term=current.term + 1, acquired_at=now, renewed_at=now, expires_at=expires,
    )
    if taken:
        return Lead(holder, current.term + 1, expires, mine=True)
    # Another standby took it between our read and our update.
    current = BeatLease.objects.get(name=LEASE)
    return Lead(current.holder, current.term, current.expires_at, mine=False)


def lease_release(holder: str, term: int, now: datetime) -> None:
    """Let a standby take over at its next tick instead of at expiry (a beat stopping cleanly)."""
    BeatLease.objects.filter(name=LEASE, holder=holder, term=term).update(expires_at=now)


# --- slots -------------------------------------------------------------------------


class Slots:
    """The instants at which a beat row is due: its slots, whoever computes them and whenever."""

    def next_after(self, instant: datetime) -> datetime | None:
        raise NotImplementedError

    def due(self, after: datetime, until: datetime) -> tuple[int, datetime | None]:
        """How many slots fall in (after, until], and the last of them."""
        count, last = 0, None
        slot = self.next_after(after)
        while slot is not None and slot <= until:
            count, last = count + 1, slot
            slot = self.next_after(slot)
        return count, last


class CronSlots(Slots):
    """A crontab's fire instants in its zone, DST included (ops.runtime.schedules)."""

    def __init__(self, cron: schedules.Cron, zone: str) -> None:
        self.cron = cron
        self.zone = zone

    def next_after(self, instant: datetime) -> datetime | None:
        return schedules.next_fire(self.cron, self.zone, instant)

    def due(self, after: datetime, until: datetime) -> tuple[int, datetime | None]:
        return schedules.missed_fires(self.cron, self.zone, after, until)


class IntervalSlots(Slots):
    """Every `every` from `anchor`: a fixed grid, so "due" never depends on when a beat looked."""

    def __init__(self, every: timedelta, anchor: datetime) -> None:
        if every <= timedelta(0):
            raise ValueError(f"an interval must be positive, not {every}")
        self.every = every
        self.anchor = anchor

    def _index(self, instant: datetime) -> int:
        # timedelta // timedelta is exact integer arithmetic on microseconds, and floors.
        return (instant - self.anchor) // self.every

    def next_after(self, instant: datetime) -> datetime:
        return self.anchor + max(self._index(instant) + 1, 0) * self.every

    def due(self, after: datetime, until: datetime) -> tuple[int, datetime | None]:
        first, last = max(self._index(after) + 1, 0), self._index(until)
        if last < first:
            return 0, None
        return last - first + 1, self.anchor + last * self.every


class EstimatedSlots(Slots):
    """Solar and clocked rows: celery's own estimate of the next event, asked as of `instant`."""

    def __init__(self, schedule) -> None:
        self.schedule = schedule

    def next_after(self, instant: datetime) -> datetime | None:
        pinned = copy.copy(self.schedule)
        pinned.nowfun = lambda: instant
        following = instant + pinned.remaining_estimate(instant)
        return following if following > instant else None


def slots_of(row) -> Slots | None:
    """The slots of a django-celery-beat PeriodicTask row (None for a row without a schedule)."""
    if row.crontab_id is not None:
        crontab = row.crontab
        return CronSlots(schedules.Cron.from_row(crontab), str(crontab.timezone) or settings.CHECKOUT_TIME_ZONE)
    if row.interval_id is not None:
        every = timedelta(**{row.interval.period: row.interval.every})
        return IntervalSlots(every, row.start_time or EPOCH)
    if row.solar_id is not None or row.clocked_id is not None:
        return EstimatedSlots(row.schedule)
    return None


# --- claims ------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimant:
    """Who claims slots: a beat process, and the term in which it leads (None: outside any lease)."""

    holder: str
    term: int | None = None


def slot_claim(
    claimant: Claimant, *, schedule: str, slot: datetime, task: str, outcome: str, now: datetime,
    superseded: int = 0, reason: str = "", task_id: str = "",
) -> bool:
    """Insert the slot's row unless it exists; True when this call inserted it, and so owns the slot.

    With a term, the insert happens only if that term still holds the lease, in
    the same statement: a beat that lost the lead since its renewal claims nothing.
    Whatever the terms, the (schedule, slot) key lets one insert win.
    """
    meta = BeatSlot._meta
    quote = connection.ops.quote_name
    fields = ["schedule", "slot", "task", "outcome", "superseded", "reason", "task_id", "holder", "term",
              "claimed_at"]
    values = [schedule, slot, task, outcome, superseded, reason, task_id, claimant.holder, claimant.term or 0, now]
    params = [meta.get_field(name).get_db_prep_save(value, connection) for name, value in zip(fields, values)]
    if is_postgres():
        # A SELECT list's untyped literals would be text; each value is cast to its column's type.
        selected = ", ".join(f"%s::{meta.get_field(name).db_type(connection)}" for name in fields)
    else:
        selected = ", ".join(["%s"] * len(fields))
    fence = "1 = 1"  # SQLite parses INSERT ... SELECT ... ON CONFLICT only when the SELECT has a WHERE
    if claimant.term is not None:
        fence = (f"EXISTS (SELECT 1 FROM {quote(BeatLease._meta.db_table)}"
                 " WHERE name = %s AND holder = %s AND term = %s)")
        params += [LEASE, claimant.holder, claimant.term]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(name) for name in fields)}) "
            f"SELECT {selected} WHERE {fence} ON CONFLICT (schedule, slot) DO NOTHING",
            params,
        )
        return cursor.rowcount == 1


SENT_AGAIN = "sent again in term "  # how the reason of a slot a later leader sent again begins


def sent_again_reason(claimant: Claimant, claimed_term: int) -> str:
    """The reason recorded on a slot that `claimant` sends again for a leader of `claimed_term`."""
    return (f"{SENT_AGAIN}{claimant.term} by {claimant.holder}: the beat that claimed it in term "
            f"{claimed_term} stopped before the broker confirmed it")


def slot_sent(schedule: str, slot: datetime, *, note: str = "") -> None:
    """Note that the broker took the slot's message (at the database's time), and `note` as the
    slot's reason when there is one (a slot sent again by a later leader says so)."""
    changes = {"sent_at": Now(), **({"reason": note} if note else {})}
    BeatSlot.objects.filter(schedule=schedule, slot=slot, sent_at__isnull=True).update(**changes)


def last_claimed(schedule: str) -> datetime | None:
    """The latest slot of `schedule` claimed by any beat (an index lookup on the unique key)."""
    return BeatSlot.objects.filter(schedule=schedule).order_by("-slot").values_list("slot", flat=True).first()


def slots_unconfirmed(term: int, *, since: datetime) -> list[BeatSlot]:
    """Slots claimed to be sent before `term` (and since `since`) whose send was never confirmed: their
    beat died between the claim and the broker's answer, so the message may or may not exist."""
    return list(BeatSlot.objects.filter(
        term__lt=term, claimed_at__gte=since, sent_at__isnull=True,
        outcome__in=[BeatSlot.Outcome.SENT, BeatSlot.Outcome.CAUGHT_UP],
    ).order_by("claimed_at"))
