"""Why DATABASE_POOLING=transaction exists: what session state does behind PgBouncer's transaction pooling.

Each test shows the session-bound mechanism failing through the pooler, then the one
the project uses there holding: session advisory locks against lease rows, server-side
cursors against DISABLE_SERVER_SIDE_CURSORS, and beat leadership (rows already) through
a killed leader.
"""
import signal
import time
import uuid

import pytest
from django.db import DatabaseError, connection, connections

from ops.runtime import beat
from ops.runtime.ledger import LOCK_HELD
from ops.runtime.models import BeatLease, JobLease, JobRun
from tests.conftest import wait_for
from tests.ops.jobs_for_tests import blpop_patiently
from tests.ops.runtime.test_beat_ha import (
    GRACES, ROWS, TICK, BeatProcess, audit_when_run, first_send_after, interval_row, leader_after,
)
from tests.ops.runtime.test_processes import runjob

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ADVISORY_KEY = 868_001


def scalar(client, sql: str, params=()):
    """One value from `client`: a psycopg2 connection through the pooler, or Django's own."""
    with client.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


def test_one_client_moves_between_server_sessions_so_its_advisory_lock_is_not_its_own(pgbouncer):
    # given two clients of the pooler, and one of them taking a session advisory lock
    holder, other = pgbouncer.connect(), pgbouncer.connect()
    try:
        sessions = {scalar(holder, "SELECT pg_backend_pid()") for _ in range(6)}
        assert scalar(holder, "SELECT pg_try_advisory_lock(%s)", [ADVISORY_KEY])

        # when the other client asks for the same lock a few times
        attempts = 6
        acquired = sum(bool(scalar(other, "SELECT pg_try_advisory_lock(%s)", [ADVISORY_KEY])) for _ in range(attempts))
        # and the holder tries to let it go
        unlocked = sum(bool(scalar(holder, "SELECT pg_advisory_unlock(%s)", [ADVISORY_KEY])) for _ in range(attempts))
    finally:
        holder.close()
        other.close()
    print(f"\nthrough transaction pooling: one client's transactions ran on {len(sessions)} server sessions; "
          f"another client got the 'held' advisory lock {acquired}/{attempts} times; "
          f"the holder's unlock succeeded {unlocked}/{attempts} times")

    # then the lock belonged to whichever server session ran the statement, not to the client
    assert len(sessions) == 2
    assert acquired >= 1
    assert unlocked < attempts


def test_server_side_cursors_are_lost_between_transactions_unless_disabled(through_pgbouncer):
    # given rows read with .iterator(), a chunk at a time, on an autocommit connection through the pooler
    JobLease.objects.bulk_create([JobLease(job=f"job-{n}", holder="h", expires_at=beat.db_now()) for n in range(3)])
    database = connection.settings_dict

    # when the cursor is a server-side one (Django's default on PostgreSQL)
    database["DISABLE_SERVER_SIDE_CURSORS"] = False
    try:
        with pytest.raises(DatabaseError) as lost:
            list(JobLease.objects.order_by("job").iterator(chunk_size=1))
    finally:
        database["DISABLE_SERVER_SIDE_CURSORS"] = True
        connections.close_all()  # its connection may be left mid-error

    # then its next fetch ran on another server session, which has no such cursor;
    # with DATABASE_POOLING=transaction's setting the rows come in one go instead
    read = [lease.job for lease in JobLease.objects.order_by("job").iterator(chunk_size=1)]
    print(f"\nserver-side cursor through transaction pooling: {str(lost.value).strip().splitlines()[0]!r}; "
          f"with DISABLE_SERVER_SIDE_CURSORS: {len(read)} rows")
    assert "does not exist" in str(lost.value)
    assert read == ["job-0", "job-1", "job-2"]


@pytest.mark.slow
@pytest.mark.redis
def test_two_runs_of_a_job_race_through_pgbouncer_both_run_on_advisory_locks_one_on_leases(
    pgbouncer_factory, process_env, redis_client,
):
    # given a pooler with one server connection, which every client's transactions share
    bouncer = pgbouncer_factory(pool_size=1)
    outcomes = {}
    for pooling in ("session", "transaction"):
        env = bouncer.env(process_env, pooling=pooling)
        key = f"hold:{uuid.uuid4().hex}"
        # when a runjob holds ops_test_job and a second one runs it meanwhile
        holder = runjob({**env, "OPS_TEST_HOLD_KEY": key}, "ops_test_job")
        try:
            assert blpop_patiently(redis_client, f"{key}:started", 30), f"the holder never started ({pooling})"
            second = runjob(env, "ops_test_job")
            second.communicate(timeout=60)
        finally:
            redis_client.rpush(f"{key}:release", 1)
            _, holder_err = holder.communicate(timeout=60)
        assert holder.returncode == 0, holder_err
        second_run = JobRun.objects.get(job="ops_test_job", pid=second.pid)
        outcomes[pooling] = (second.returncode, second_run.status, second_run.error)
    leftover_advisory = scalar(  # on this process's own connection, straight to PostgreSQL
        connection, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    print(f"\nsecond run of a held job through transaction pooling: advisory locks -> exit {outcomes['session'][0]} "
          f"({outcomes['session'][1]}); lease rows -> exit {outcomes['transaction'][0]} ({outcomes['transaction'][1]}: "
          f"{outcomes['transaction'][2]}); advisory locks still held by the pool's server session after both "
          f"holders exited: {leftover_advisory}")

    # then on session advisory locks the second run took the "held" lock (the one server session
    # already held it) and ran beside the first, and the lock outlived both of its holders
    assert outcomes["session"][:2] == (0, JobRun.Status.SUCCESS)
    assert leftover_advisory >= 1
    # and with DATABASE_POOLING=transaction the lease row kept it out, exit 3
    assert outcomes["transaction"] == (3, JobRun.Status.SKIPPED, LOCK_HELD)


STEADY_S = 5


@pytest.mark.slow
@pytest.mark.redis
def test_beats_through_pgbouncer_hand_over_the_lead_at_a_kill_and_send_each_slot_once(
    celery_worker_factory, process_env, tmp_path, capsys,
):
    # given the beat tests' interval rows and a worker, all through the pooler
    for row in ROWS:
        interval_row(row.name, row.every, task=f"jobs.{row.job}")
    celery_worker_factory(queues="default", concurrency=2)
    started = time.monotonic()

    # when two beats run through it and the leader is killed without a chance to hand over
    beats = [
        BeatProcess(f"beat-{n}", {**process_env, "OPS_TEST_BEAT_GRACE": GRACES, "BEAT_TICK": str(TICK),
                                   "BEAT_LEASE": "5s"}, tmp_path)
        for n in range(2)
    ]
    try:
        killed, lease = wait_for(lambda: leader_after(beats, 0), 60, "a first leader to send")
        killed_term = lease.term
        time.sleep(STEADY_S)
        killed.send(signal.SIGKILL)
        killed_at = beat.db_now()
        wait_for(lambda: leader_after(beats, killed_term), 30, "a leader after the kill")
        time.sleep(STEADY_S)
    finally:
        for process in beats:
            process.stop()

    # then every claimed slot ran once, and the standby took over within a tick of the lease's expiry
    claims, figures, problems = audit_when_run()
    figures["failover_after_kill_s"] = round((first_send_after(killed_term).claimed_at - killed_at).total_seconds(), 2)
    figures["terms"] = sorted(set(c.term for c in claims))
    figures["wall_s"] = round(time.monotonic() - started, 1)
    with capsys.disabled():
        print("\nbeats through transaction pooling: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    assert not problems, "\n".join(problems)
    assert figures["duplicates"] == 0 and figures["missed_beyond_policy"] == 0
    assert len(figures["terms"]) >= 2 and BeatLease.objects.get().term > killed_term
    assert figures["failover_after_kill_s"] < 5 + 2 * TICK
