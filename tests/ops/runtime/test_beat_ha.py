"""Any number of beats: the lease, the slots, their claims, and three real beats through a kill -9 and a SIGSTOP."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone as dt_timezone
from pathlib import Path

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from checkout.celery import app
from ops.maintenance.upkeep import database_cleanup
from ops.runtime import beat, schedules
from ops.runtime.models import BeatLease, BeatSlot, JobRun
from ops.runtime.scheduler import CatchUpScheduler, SlotEntry, SlotSender
from tests.conftest import ROOT, wait_for

pytestmark = [pytest.mark.postgres]

UTC = dt_timezone.utc
T0 = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=5)


def utc(*args):
    return datetime(*args, tzinfo=UTC)


def interval_row(name, seconds, *, task=None, **fields):
    return PeriodicTask.objects.create(
        name=name, task=task or f"jobs.{name}", kwargs=json.dumps({"trigger": "beat"}),
        interval=IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)[0],
        **fields,
    )


def entry(name) -> SlotEntry:
    row = PeriodicTask.objects.select_related("crontab", "interval").get(name=name)
    return SlotEntry(row, app=app)


# --- the slot claim ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_of_many_concurrent_claims_of_one_slot_exactly_one_wins():
    # given eight beats that all believe the same slot is theirs to send
    barrier = threading.Barrier(8)
    won = []

    def claim(n):
        try:
            barrier.wait(timeout=10)
            if beat.slot_claim(beat.Claimant(f"beat-{n}"), schedule="s", slot=T0, task="t",
                               outcome=BeatSlot.Outcome.SENT, now=timezone.now(), task_id=f"task-{n}"):
                won.append(n)
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # then one insert won, and the row is the winner's
    assert len(won) == 1
    row = BeatSlot.objects.get(schedule="s", slot=T0)
    assert row.holder == f"beat-{won[0]}" and row.task_id == f"task-{won[0]}"


@pytest.mark.django_db
def test_a_second_claim_of_a_slot_loses_and_changes_nothing():
    first = beat.slot_claim(beat.Claimant("a"), schedule="s", slot=T0, task="t", outcome="sent", now=T0)
    second = beat.slot_claim(beat.Claimant("b"), schedule="s", slot=T0, task="t", outcome="skipped", now=T0)
    other_slot = beat.slot_claim(beat.Claimant("b"), schedule="s", slot=T0 + LEASE, task="t", outcome="sent", now=T0)

    assert (first, second, other_slot) == (True, False, True)
    assert BeatSlot.objects.get(schedule="s", slot=T0).holder == "a"
    assert beat.last_claimed("s") == T0 + LEASE


# --- the lease --------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_lease_is_taken_renewed_and_lost_once_another_term_holds_it():
    # a takes the free lease in term 1; b, a standby, is told who leads
    a = beat.lease_hold("a", None, T0, LEASE)
    assert (a.mine, a.term, a.expires_at) == (True, 1, T0 + LEASE)
    assert beat.lease_hold("b", None, T0 + timedelta(seconds=1), LEASE) == beat.Lead("a", 1, T0 + LEASE, mine=False)

    # a renews at each tick: its lease moves on, in the same term
    a = beat.lease_hold("a", 1, T0 + timedelta(seconds=2), LEASE)
    assert (a.mine, a.term, a.expires_at) == (True, 1, T0 + timedelta(seconds=7))
    assert not beat.lease_hold("b", None, T0 + timedelta(seconds=6), LEASE).mine  # not expired yet

    # a stops renewing (killed, frozen); once the lease expires b takes it, with the next term
    b = beat.lease_hold("b", None, T0 + timedelta(seconds=7), LEASE)
    assert (b.mine, b.term) == (True, 2)

    # a wakes up: its renewal names term 1, which is gone, and it finds out it lost
    a = beat.lease_hold("a", 1, T0 + timedelta(seconds=8), LEASE)
    assert (a.mine, a.holder, a.term) == (False, "b", 2)
    assert BeatLease.objects.get().holder == "b"


@pytest.mark.django_db
def test_a_released_lease_is_taken_over_at_once():
    beat.lease_hold("a", None, T0, LEASE)
    beat.lease_release("a", 1, T0 + timedelta(seconds=1))
    assert beat.lease_hold("b", None, T0 + timedelta(seconds=1), LEASE).mine


@pytest.mark.django_db
def test_a_beat_that_lost_the_lease_claims_nothing_even_before_it_notices():
    beat.lease_hold("a", None, T0, LEASE)
    assert beat.slot_claim(beat.Claimant("a", 1), schedule="s", slot=T0, task="t", outcome="sent", now=T0)
    # b takes over while a is frozen between its renewal and its next claim
    assert beat.lease_hold("b", None, T0 + timedelta(seconds=6), LEASE).term == 2

    slot = T0 + timedelta(seconds=6)
    assert not beat.slot_claim(beat.Claimant("a", 1), schedule="s", slot=slot, task="t", outcome="sent", now=slot)
    assert not BeatSlot.objects.filter(slot=slot).exists()
    assert beat.slot_claim(beat.Claimant("b", 2), schedule="s", slot=slot, task="t", outcome="sent", now=slot)


# --- slots ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_interval_slots_lie_on_a_fixed_grid_whatever_the_now():
    every_5 = beat.slots_of(interval_row("every 5 s", 5))
    last_claimed = utc(2026, 6, 10, 12, 0, 5)
    # two beats looking 3.7 s apart, both after the 12:00:10 slot
    assert every_5.due(last_claimed, utc(2026, 6, 10, 12, 0, 10, 400000)) == (1, utc(2026, 6, 10, 12, 0, 10))
    assert every_5.due(last_claimed, utc(2026, 6, 10, 12, 0, 14, 100000)) == (1, utc(2026, 6, 10, 12, 0, 10))
    assert every_5.next_after(utc(2026, 6, 10, 12, 0, 7, 123)) == utc(2026, 6, 10, 12, 0, 10)
    # after a failover of 12 s, the slots since the last claim are counted, not guessed from "now"
    assert every_5.due(last_claimed, utc(2026, 6, 10, 12, 0, 17)) == (2, utc(2026, 6, 10, 12, 0, 15))

    # a row with a start_time counts its grid from there
    anchored = beat.slots_of(interval_row("every 5 s from :02", 5, start_time=utc(2026, 6, 10, 12, 0, 2)))
    assert anchored.next_after(utc(2026, 6, 10, 11, 0)) == utc(2026, 6, 10, 12, 0, 2)
    assert anchored.due(utc(2026, 6, 10, 12, 0, 2), utc(2026, 6, 10, 12, 0, 13)) == (2, utc(2026, 6, 10, 12, 0, 12))


@pytest.mark.django_db
def test_crontab_slots_are_the_fire_instants_whatever_the_now():
    quarterly = beat.slots_of(PeriodicTask.objects.create(
        name="every 15 min", task="jobs.ops_test_job",
        crontab=CrontabSchedule.objects.create(minute="*/15", timezone="Asia/Kolkata"),
    ))
    last_claimed = utc(2026, 6, 10, 11, 45)  # 17:15 IST
    slot = utc(2026, 6, 10, 12, 0)  # 17:30 IST
    assert quarterly.due(last_claimed, utc(2026, 6, 10, 12, 0, 1)) == (1, slot)
    assert quarterly.due(last_claimed, utc(2026, 6, 10, 12, 0, 5, 500000)) == (1, slot)
    assert quarterly.next_after(last_claimed) == slot


# --- the catch-up policy at a failover, in one process ----------------------------------


@pytest.fixture
def declared_graces(monkeypatch):
    """ops_test_tick every 2 s (grace 1 s) and ops_test_undated every 3 s (grace 3 s) are declared."""
    declared = (
        schedules._job("ops_test_tick", schedules.Cron(), schedules.MINUTE, grace=timedelta(seconds=1)),
        schedules._job("ops_test_undated", schedules.Cron(), schedules.MINUTE, grace=timedelta(seconds=3)),
    )
    monkeypatch.setattr(schedules, "SCHEDULES", declared)


@pytest.mark.django_db
def test_a_new_leader_catches_up_within_the_grace_and_records_the_rest_as_skipped(declared_graces):
    # given three rows, and a leader (term 1) that sent their slots of 12:00:00 and then died
    for name, seconds in (("ops_test_tick", 2), ("ops_test_undated", 3)):
        interval_row(name, seconds)
    interval_row("not declared", 5, task="jobs.ops_test_job")
    names = ("ops_test_tick", "ops_test_undated", "not declared")
    beat.lease_hold("a", None, T0, LEASE)
    first = SlotSender(beat.Claimant("a", 1), since=T0 - timedelta(minutes=1), stall=LEASE, app=app)
    for name in names:
        first.cursors[name] = T0 - timedelta(seconds=1)
        assert first.settle(entry(name), T0 + timedelta(milliseconds=200))["action"] == "sent"

    # when b takes the lead (term 2) at 12:00:09.5 and makes its first pass
    taken_at = T0 + timedelta(seconds=9, milliseconds=500)
    assert beat.lease_hold("b", None, taken_at, LEASE).term == 2
    second = SlotSender(beat.Claimant("b", 2), since=taken_at, stall=LEASE, app=app)
    done = {d["schedule"]: d for name in names if (d := second.settle(entry(name), taken_at))}

    # then each row's last missed slot is claimed once, the earlier ones superseded by it
    slots = {s.schedule: s for s in BeatSlot.objects.filter(term=2)}
    # every 2 s, grace 1 s: 12:00:08 is 1.5 s late, past the grace: a skipped run with the reason
    assert (slots["ops_test_tick"].slot, slots["ops_test_tick"].outcome) == (T0 + timedelta(seconds=8), "skipped")
    assert slots["ops_test_tick"].superseded == 3 and done["ops_test_tick"]["missed"] == 4
    skipped = JobRun.objects.get(job="ops_test_tick", trigger="catch_up")
    assert skipped.status == "skipped" and skipped.params == {"missed_slot": "2026-06-10T12:00:08+00:00", "missed": 4}
    assert "missed 4 slot(s)" in skipped.error and "is 1.5 s late, past the grace of 1 s" in skipped.error
    # every 3 s, grace 3 s: 12:00:09 runs once, as a catch-up
    undated = slots["ops_test_undated"]
    assert (undated.slot, undated.outcome) == (T0 + timedelta(seconds=9), "caught_up")
    run = JobRun.objects.get(task_id=undated.task_id)
    assert (run.job, run.status, run.trigger) == ("ops_test_undated", "success", "catch_up")
    # not declared: as the stock scheduler, the latest slot is sent however late
    assert (slots["not declared"].slot, slots["not declared"].outcome) == (T0 + timedelta(seconds=5), "sent")
    assert JobRun.objects.get(task_id=slots["not declared"].task_id).trigger == "beat"
    assert all(s.sent_at is not None for s in slots.values() if s.outcome != "skipped")

    # and the dead leader's sender, were it to wake up, would claim nothing
    assert all(first.settle(entry(name), taken_at + timedelta(seconds=1)) is None for name in names)
    assert not BeatSlot.objects.filter(term=1, slot__gt=T0).exists()


@pytest.mark.django_db(transaction=True)
def test_slots_a_dead_leader_claimed_but_never_saw_confirmed_are_sent_again_and_run_once():
    # given a leader (term 1) that claimed two slots and died before the broker's answer was recorded:
    # the first one's message had gone (a worker ran it), the second one's never left
    interval_row("ops_test_undated", 3)
    beat.lease_hold("a", None, T0, LEASE)
    dead = beat.Claimant("a", 1)
    went, never = str(uuid.uuid4()), str(uuid.uuid4())
    for slot, task_id in ((T0, went), (T0 + timedelta(seconds=3), never)):
        assert beat.slot_claim(dead, schedule="ops_test_undated", slot=slot, task="jobs.ops_test_undated",
                               outcome="sent", now=slot, task_id=task_id)
    app.tasks["jobs.ops_test_undated"].apply_async(kwargs={"trigger": "beat"}, task_id=went)  # runs in-process

    # when the next leader (term 2) sends again what its predecessors left unconfirmed
    taken_at = T0 + timedelta(seconds=9)
    assert beat.lease_hold("b", None, taken_at, LEASE).term == 2
    second = SlotSender(beat.Claimant("b", 2), since=taken_at, stall=LEASE, app=app)
    unconfirmed = beat.slots_unconfirmed(2, since=taken_at - timedelta(days=1))
    resent = second.resend_unconfirmed(unconfirmed, {"ops_test_undated": entry("ops_test_undated")})

    # then both slots are confirmed and each ran once: the copy of the one that had run was dropped
    runs = Counter(JobRun.objects.values_list("task_id", flat=True))
    print(f"unconfirmed={len(unconfirmed)} resent={resent} runs by task={dict(runs)}")
    assert [c.task_id for c in unconfirmed] == [went, never] and resent == 2
    assert runs == {went: 1, never: 1}
    assert not BeatSlot.objects.filter(sent_at__isnull=True).exists()
    assert beat.slots_unconfirmed(3, since=taken_at - timedelta(days=1)) == []
    # and each says in the admin which leader sent it again
    assert all(reason.startswith("sent again in term 2 by b: the beat that claimed it in term 1 stopped")
               for reason in BeatSlot.objects.values_list("reason", flat=True))


@pytest.mark.django_db
def test_the_admin_shows_the_lease_and_the_claimed_slots_read_only(admin_client):
    beat.lease_hold("a", None, T0, LEASE)
    beat.slot_claim(beat.Claimant("a", 1), schedule="s", slot=T0, task="t", outcome="skipped", now=T0,
                    reason="missed 2 slot(s)")
    for model, title in (("beatlease", b"Select beat lease to view"), ("beatslot", b"Select beat slot to view")):
        page = admin_client.get(reverse(f"admin:ops_{model}_changelist"))
        assert page.status_code == 200 and title in page.content
    unconfirmed = admin_client.get(reverse("admin:ops_beatslot_changelist"), {"sent_at__isempty": "1"})
    assert b"missed 2 slot(s)" in unconfirmed.content


@pytest.mark.django_db
def test_slots_older_than_the_retention_are_pruned_by_db_cleanup(settings):
    settings.RETENTION_BEAT_SLOTS = timedelta(days=30)
    now = timezone.now()
    for n, age in enumerate((31, 40, 29, 1)):
        beat.slot_claim(beat.Claimant("a"), schedule="s", slot=T0 + timedelta(seconds=n), task="t",
                        outcome="sent", now=now - timedelta(days=age))
    deleted, finished = database_cleanup(batch=1)
    assert finished and deleted["beat_slots"] == 2
    assert BeatSlot.objects.count() == 2


@pytest.mark.django_db
def test_beats_decide_with_the_database_clock_not_their_own(settings):
    # given a beat whose own clock runs 30 s fast
    settings.BEAT_CLOCK_OFFSET = 30.0
    assert abs((beat.local_now() - timezone.now()).total_seconds() - 30) < 1
    # then the clock it decides with is still the server's
    assert abs((beat.db_now() - timezone.now()).total_seconds()) < 1


# --- the scheduler: a frozen leader that wakes up ---------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.redis
def test_a_frozen_leader_that_wakes_up_finds_it_lost_the_lead_and_sends_nothing():
    interval_row("ops_test_job", 1, last_run_at=timezone.now() - timedelta(seconds=3))
    first, second = CatchUpScheduler(app=app), CatchUpScheduler(app=app)
    try:
        # the first beat leads and sends; the second stands by
        first.tick()
        second.tick()
        assert first.leading and not second.leading
        assert BeatSlot.objects.filter(holder=first.holder).exists()

        # when the first is frozen past its lease, the second takes over with the next term
        BeatLease.objects.update(expires_at=beat.db_now() - timedelta(seconds=1))
        second.tick()
        assert second.leading and second.lead.term == 2

        # then the first, waking up, finds it lost the lead at its renewal and claims nothing more
        claimed = BeatSlot.objects.filter(holder=first.holder).count()
        time.sleep(1.1)  # a slot of the 1 s row falls due meanwhile
        first.tick()
        assert not first.leading and first.lead.holder == second.holder
        assert BeatSlot.objects.filter(holder=first.holder).count() == claimed
    finally:
        first.close()
        second.close()
        connection.close()


# --- three real beats, two real workers ---------------------------------------------------


@dataclass(frozen=True)
class Row:
    name: str
    job: str
    every: int  # seconds
    grace: float | None  # declared grace in seconds; None: not declared in code


ROWS = (
    Row("ops_test_tick", "ops_test_tick", 2, 1.0),
    Row("ops_test_undated", "ops_test_undated", 3, 3.0),
    Row("not declared: ops_test_job", "ops_test_job", 5, None),
)
GRACES = ",".join(f"{r.name}={r.grace}" for r in ROWS if r.grace is not None)
TICK = 1.0
# A leader wakes at each slot's instant: a slot it sends later than this was not sent on time.
ON_TIME = timedelta(seconds=TICK + 0.75)
STEADY_S = 14


class BeatProcess:
    """A `celery beat` of its own, in a session of its own so that signals reach it alone."""

    def __init__(self, name: str, env: dict, tmp_path: Path) -> None:
        self.name = name
        self.log_path = tmp_path / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "checkout", "beat", "-l", "INFO",
             "--pidfile", str(tmp_path / f"{name}.pid"), "--schedule", str(tmp_path / f"{name}-schedule")],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def send(self, sig) -> None:
        os.kill(self.proc.pid, sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.send(signal.SIGCONT)
            self.send(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.send(signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


def leader_after(beats, term: int):
    """The beat that leads in a term after `term` and has sent a slot in it, if any."""
    lease = BeatLease.objects.filter(name=beat.LEASE, term__gt=term).first()
    if lease is None or not BeatSlot.objects.filter(term=lease.term, sent_at__isnull=False).exists():
        return None
    pid = int(lease.holder.rsplit(":", 2)[1])
    leader = next((b for b in beats if b.proc.pid == pid), None)
    return (leader, lease) if leader is not None else None


def audit_when_run() -> tuple[list, dict, list]:
    """The claimed slots of ROWS, once the workers have run every one sent: (claims, figures, problems)."""
    claims = list(BeatSlot.objects.filter(schedule__in=[r.name for r in ROWS]).order_by("schedule", "slot"))
    sent = {c.task_id for c in claims if c.task_id}
    jobs = [r.job for r in ROWS]
    wait_for(lambda: sent <= set(JobRun.objects.filter(job__in=jobs).values_list("task_id", flat=True)), 30,
             "the workers to run every slot sent")
    figures, problems = audit(claims, list(JobRun.objects.filter(job__in=jobs)))
    return claims, figures, problems


def audit(claims: list[BeatSlot], runs: list[JobRun]) -> tuple[dict, list[str]]:
    """The figures, and every way the claims and runs break "each slot once, misses only by the policy"."""
    problems: list[str] = []
    rows = {r.name: r for r in ROWS}
    by_schedule = defaultdict(list)
    for claim in claims:
        by_schedule[claim.schedule].append(claim)
    runs_by_task = Counter(run.task_id for run in runs if run.task_id)
    skipped_runs = {(run.job, run.params.get("missed_slot")) for run in runs
                    if run.status == "skipped" and run.trigger == "catch_up" and not run.task_id}
    claimed_tasks = {c.task_id for c in claims if c.task_id}
    late_on_time = timedelta(0)
    for name, series in by_schedule.items():
        row = rows[name]
        every = timedelta(seconds=row.every)
        for previous, claim in zip([None, *series], series):
            # sent_at is the database's clock at the send; claimed_at, the deciding beat's "now". A slot
            # whose claimer died before the broker confirmed it is sent again by the next leader: its
            # claimer decided it on time, and the next leader's send comes with the failover.
            resent = claim.reason.startswith(beat.SENT_AGAIN)
            late = (claim.claimed_at if resent or not claim.sent_at else claim.sent_at) - claim.slot
            where = (f"{name} @ {claim.slot:%H:%M:%S} (term {claim.term}, {claim.outcome}, "
                     f"late {late.total_seconds():.2f} s)")
            if late < timedelta(0):
                problems.append(f"{where}: sent before its instant by the database clock")
            if previous is not None:
                if (claim.slot - previous.slot) != every * (claim.superseded + 1):
                    problems.append(f"{where}: slots between it and the previous claim are unaccounted for")
                if claim.term < previous.term:
                    problems.append(f"{where}: claimed in an older term than the slot before it")
            first_of_term = previous is None or previous.term != claim.term
            if not first_of_term:
                # a leader that keeps the lead sends every slot, at its time
                if claim.outcome != "sent" or claim.superseded or late > ON_TIME:
                    problems.append(f"{where}: missed while a leader held the lease")
                late_on_time = max(late_on_time, late)
            elif row.grace is not None:
                grace = timedelta(seconds=row.grace)
                # The grace is judged when the beat decides (claimed_at); sending takes a moment after.
                decided = claim.claimed_at - claim.slot
                if claim.outcome == "sent" and late > ON_TIME:
                    problems.append(f"{where}: missed but sent as if on time")
                if claim.outcome == "caught_up" and decided > grace:
                    problems.append(f"{where}: caught up past the grace (decided {decided.total_seconds():.2f} s late)")
                if claim.outcome == "skipped" and decided <= grace:
                    problems.append(f"{where}: skipped within the grace")
            if claim.outcome == "skipped":
                if row.grace is None or (row.job, claim.slot.isoformat()) not in skipped_runs:
                    problems.append(f"{where}: skipped without its skipped run in the ledger")
            else:
                if claim.sent_at is None:
                    problems.append(f"{where}: the broker never confirmed it")
                if runs_by_task[claim.task_id] != 1:
                    problems.append(f"{where}: ran {runs_by_task[claim.task_id]} times")
    by_id = {run.task_id: run for run in runs if run.task_id}
    for claim in claims:
        run = by_id.get(claim.task_id)
        if run is not None and run.status != "success":
            problems.append(f"{claim.schedule} @ {claim.slot:%H:%M:%S}: its run ended {run.status}: {run.error}")
    unclaimed = [run for run in runs if run.task_id and run.task_id not in claimed_tasks]
    problems += [f"run {run.pk} of {run.job} ({run.trigger}) was sent for no claimed slot" for run in unclaimed]
    outcomes = Counter(c.outcome for c in claims)
    figures = {
        "slots": sum(1 + c.superseded for c in claims),
        "claimed": len(claims),
        "sent": outcomes["sent"],
        "caught_up": outcomes["caught_up"],
        "skipped": outcomes["skipped"],
        "superseded": sum(c.superseded for c in claims),
        "sent_again_by_next_leader": sum(1 for c in claims if c.reason.startswith(beat.SENT_AGAIN)),
        "runs": sum(runs_by_task[c.task_id] for c in claims if c.task_id),
        "duplicates": sum(n - 1 for task, n in runs_by_task.items() if task in claimed_tasks) + len(unclaimed),
        "missed_beyond_policy": sum(1 for p in problems if "missed" in p or "unaccounted" in p),
        "latest_on_time_send_s": round(late_on_time.total_seconds(), 3),
    }
    return figures, problems


def first_send_after(term: int) -> BeatSlot:
    return BeatSlot.objects.filter(term__gt=term, sent_at__isnull=False).order_by("claimed_at").first()


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("offsets", [(0.0, 0.0, 0.0), (-3.0, 0.0, 3.5)],
                         ids=["clocks in step", "clocks up to 6.5 s apart"])
def test_three_beats_send_every_slot_once_through_a_kill_and_a_freeze(
    offsets, celery_worker_factory, process_env, tmp_path, capsys,
):
    # given three interval rows (two declared in code with a grace, one not) and two workers
    for row in ROWS:
        interval_row(row.name, row.every, task=f"jobs.{row.job}")
    celery_worker_factory(queues="default", concurrency=2)
    celery_worker_factory(queues="default", concurrency=2)
    started = time.monotonic()

    # when three beats run, each with its own clock offset
    beats = [
        BeatProcess(f"beat-{n}", {**process_env, "OPS_TEST_BEAT_GRACE": GRACES, "BEAT_TICK": str(TICK),
                                   "BEAT_LEASE": "5s", "BEAT_CLOCK_OFFSET": str(offset)}, tmp_path)
        for n, offset in enumerate(offsets)
    ]
    try:
        killed, lease = wait_for(lambda: leader_after(beats, 0), 60, "a first leader to send")
        killed_term = lease.term
        time.sleep(STEADY_S)  # the wall time the leader keeps the schedule through
        # the leader is killed without a chance to hand over
        killed.send(signal.SIGKILL)
        killed_at = beat.db_now()
        frozen, lease = wait_for(lambda: leader_after(beats, killed_term), 30, "a leader after the kill")
        frozen_term = lease.term
        time.sleep(STEADY_S)
        # the next leader is frozen: it cannot renew, and it will wake up later
        frozen.send(signal.SIGSTOP)
        frozen_at = beat.db_now()
        wait_for(lambda: leader_after(beats, frozen_term), 30, "a leader after the freeze")
        time.sleep(STEADY_S)
        frozen.send(signal.SIGCONT)
        wait_for(lambda: "lost the lead" in frozen.log(), 15, f"the woken beat to see it lost\n{frozen.log()[-3000:]}")
        time.sleep(STEADY_S / 2)
    finally:
        for process in beats:
            process.stop()

    # then every claimed slot runs, once
    claims, figures, problems = audit_when_run()
    after_kill, after_freeze = first_send_after(killed_term), first_send_after(frozen_term)
    figures["failover_after_kill_s"] = round((after_kill.claimed_at - killed_at).total_seconds(), 2)
    figures["failover_after_freeze_s"] = round((after_freeze.claimed_at - frozen_at).total_seconds(), 2)
    figures["terms"] = sorted(set(c.term for c in claims))
    figures["wall_s"] = round(time.monotonic() - started, 1)
    with capsys.disabled():
        print(f"\nbeat HA, clock offsets {offsets}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))

    assert not problems, "\n".join(problems)
    assert figures["duplicates"] == 0 and figures["missed_beyond_policy"] == 0
    # three terms at least: the first leader's, the one after the kill, the one after the freeze
    assert len(figures["terms"]) >= 3 and {killed_term, frozen_term} <= set(figures["terms"])
    # the woken beat sent nothing in its old term once the next began
    assert not BeatSlot.objects.filter(term=frozen_term, claimed_at__gte=after_freeze.claimed_at).exists()
    # a standby takes over within a tick of the lease's expiry (5 s), plus the time to notice it
    assert figures["failover_after_kill_s"] < 5 + 2 * TICK
    assert figures["failover_after_freeze_s"] < 5 + 2 * TICK
    assert figures["caught_up"] + figures["skipped"] >= 2  # the policy did apply at the failovers


@pytest.mark.django_db(transaction=True)
def test_the_leading_beat_sweeps_runs_whose_worker_was_lost(settings):
    # given a scheduled run whose heartbeat stopped 40 s ago (its worker was killed)
    settings.CELERY_TASK_ALWAYS_EAGER = True
    stale = timezone.now() - timedelta(seconds=40)
    lost = JobRun.objects.create(job="ops_test_undated", trigger="beat", status="running",
                                 started_at=stale, heartbeat_at=stale, host="gone", pid=1)
    leader = CatchUpScheduler(app=app)
    try:
        # when the beat leads for a tick
        leader.tick()
        assert leader.leading
    finally:
        leader.close()
        connection.close()
    # then the run is failed as lost and its job ran again (inline here)
    lost.refresh_from_db()
    assert lost.status == "failed" and lost.error.startswith("worker lost")
    assert JobRun.objects.filter(job="ops_test_undated", trigger="retry", status="success").exists()
