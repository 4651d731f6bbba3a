"""Chunks of a run that fans out, taken by workers on three hosts: the work spreads, every unit is done
once, the run's row holds the sum of its chunks, and a chunk whose worker is killed -9 mid-way is
redone by another worker and counted once."""
import signal
import time
import uuid
from collections import Counter
from datetime import date, timedelta

import pytest
from django.db import connection
from django.utils import timezone

from analytics.models import DailyReport
from ops.runtime import ledger
from ops.runtime.dispatch import enqueue_job
from ops.runtime.models import JobChunk, JobRun
from ops.runtime.runner import run_chunk, run_job
from ops.runtime.sweep import CHUNK_MAX_LOST, RUN_LOST_AFTER, runs_sweep
from tests.conftest import wait_for
from tests.ops.jobs_for_tests import UNIT_TABLE, blpop_patiently

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

UNITS, PER_CHUNK = 600, 25
HOSTS = ("w1@hostA", "w2@hostB", "w3@hostC")
# Longer than a live chunk's heartbeat interval (5 s), so only the killed worker's chunk is lost.
LOST_AFTER = timedelta(seconds=6)


@pytest.fixture
def unit_table(transactional_db):
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {UNIT_TABLE}")
        cursor.execute(f"CREATE TABLE {UNIT_TABLE} (unit integer NOT NULL, part integer NOT NULL, attempt integer NOT NULL)")
    yield UNIT_TABLE
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {UNIT_TABLE}")


def units_done() -> tuple[int, int, int]:
    """(rows, distinct units, units done more than once)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*), count(DISTINCT unit) FROM {UNIT_TABLE}")
        rows, distinct = cursor.fetchone()
        cursor.execute(f"SELECT count(*) FROM (SELECT unit FROM {UNIT_TABLE} GROUP BY unit HAVING count(*) > 1) AS twice")
        return rows, distinct, cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_a_run_that_fans_out_keeps_single_flight_until_its_last_chunk_ends(celery_live, redis_client, unit_table):
    # given a run that fanned out three chunks (sent to a broker no worker reads here)
    run = run_job("ops_test_spread", params={"units": 30, "per_chunk": 10})
    chunks = list(JobChunk.objects.filter(run=run).order_by("index"))
    assert run.status == "running" and [c.status for c in chunks] == ["pending"] * 3

    # when another run is asked for while they are open, it is skipped: one run of the job at a time
    again = run_job("ops_test_spread", params={"units": 30, "per_chunk": 10})
    assert (again.status, again.error) == ("skipped", ledger.CHUNKS_OPEN)

    # then each chunk adds its counts to the run as it ends, a second message for a chunk does nothing,
    # and the last one closes the run with the sum
    run_chunk(chunks[0].pk, worker="w1@hostA")
    run_chunk(chunks[1].pk, worker="w2@hostB")
    assert run_chunk(chunks[0].pk, worker="w3@hostC") is None
    run.refresh_from_db()
    assert run.status == "running" and run.counts == {"parts": 3, "units": 20}
    run_chunk(chunks[2].pk, worker="w3@hostC")
    run.refresh_from_db()
    assert run.status == "success" and run.counts == {"parts": 3, "units": 30} and run.finished_at
    assert run.result["workers"] == {"w1@hostA": 1, "w2@hostB": 1, "w3@hostC": 1}
    assert units_done() == (30, 30, 0)
    # and the job runs again once they are over
    assert run_job("ops_test_spread", params={"units": 0}).status == "success"


@pytest.mark.django_db(transaction=True)
def test_the_closing_step_runs_once_after_the_last_chunk_and_its_failure_fails_the_run(
    celery_live, redis_client, unit_table,
):
    # given a run of two chunks, the first done
    run = run_job("ops_test_spread", params={"units": 20, "per_chunk": 10})
    first, last = JobChunk.objects.filter(run=run).order_by("index")
    run_chunk(first.pk, worker="w1@hostA")
    run.refresh_from_db()
    assert run.status == "running" and "closed_with_units" not in run.result

    # when the last one ends, its process runs the closing step with the summed counts
    run_chunk(last.pk, worker="w2@hostB")
    run.refresh_from_db()
    assert run.status == "success" and run.result["closed_with_units"] == 20 and run.result["chunks"] == 2

    # and a closing step that fails fails its run, with the chunks' work and counts kept
    failing = run_job("ops_test_spread", params={"units": 10, "per_chunk": 10, "fail_close": True})
    run_chunk(JobChunk.objects.get(run=failing).pk, worker="w1@hostA")
    failing.refresh_from_db()
    assert failing.status == "failed" and failing.counts == {"parts": 1, "units": 10}
    assert failing.error == "closing step: JobError: the closing step was asked to fail"
    assert units_done()[0] == 30  # each run's units once (both runs number theirs from 0)


@pytest.mark.django_db(transaction=True)
def test_a_run_whose_closer_died_holds_single_flight_until_the_sweep_fails_it(celery_live, redis_client, unit_table):
    # given a run whose last chunk ended but whose process died before the closing step ran
    run = run_job("ops_test_spread", params={"units": 10, "per_chunk": 10})
    chunk = ledger.chunk_claim(JobChunk.objects.get(run=run).pk, worker="w1@hostA")
    counted, closing = ledger.chunk_finish(chunk, status="done", counts={"units": 10}, closes=True)
    assert counted and closing.status == "running"

    # then no other run starts while it may still be closing
    assert run_job("ops_test_spread", params={"units": 0}).error == ledger.CHUNKS_OPEN
    # until the sweep finds its heartbeat stopped and fails it; then the job runs again
    assert runs_sweep(now=timezone.now() + RUN_LOST_AFTER * 2)["lost"] == 1
    run.refresh_from_db()
    assert run.status == "failed" and run.error.startswith("worker lost") and run.counts == {"parts": 1, "units": 10}
    assert run_job("ops_test_spread", params={"units": 0}).status == "success"


@pytest.mark.django_db(transaction=True)
def test_a_lost_chunk_is_handed_back_and_fails_its_run_when_lost_too_often(celery_live, redis_client, unit_table):
    # given a run of two chunks, one of them claimed by a worker that then stops beating
    run = run_job("ops_test_spread", params={"units": 20, "per_chunk": 10})
    lost, other = JobChunk.objects.filter(run=run).order_by("index")
    later = timezone.now()
    for turn in range(1, CHUNK_MAX_LOST + 1):
        claimed = ledger.chunk_claim(lost.pk, worker=f"w{turn}@host")
        assert claimed.attempt == turn
        later += RUN_LOST_AFTER * 2

        # when the sweep runs after its heartbeat stopped
        found = runs_sweep(now=later)

        # then it is handed back for another worker (the run, waiting without a heartbeat, is not lost)
        assert found["lost"] == 0 and found["chunks_lost"] == 1
        lost.refresh_from_db()
        if turn < CHUNK_MAX_LOST:
            assert (lost.status, lost.lost) == ("pending", turn)
    # until it was lost CHUNK_MAX_LOST times: then it fails, and the run fails once its last chunk ends
    assert (lost.status, lost.lost) == ("failed", CHUNK_MAX_LOST)
    run_chunk(other.pk, worker="w9@host")
    run.refresh_from_db()
    print(f"run={run.status} error={run.error!r} counts={run.counts}")
    assert run.status == "failed" and run.error.startswith("1 of 2 chunks failed; chunk 0: worker lost")
    assert run.counts == {"parts": 2, "units": 10}


@pytest.mark.django_db(transaction=True)
def test_an_attempt_whose_chunk_was_handed_to_another_worker_is_not_counted(celery_live, redis_client, unit_table):
    # given a chunk whose first worker froze: the sweep handed it back and a second worker did it
    run = run_job("ops_test_spread", params={"units": 10, "per_chunk": 10})
    chunk = JobChunk.objects.get(run=run)
    frozen = ledger.chunk_claim(chunk.pk, worker="w1@hostA")
    assert runs_sweep(now=timezone.now() + RUN_LOST_AFTER * 2)["chunks_lost"] == 1
    run_chunk(chunk.pk, worker="w2@hostB")
    run.refresh_from_db()
    assert run.status == "success" and run.counts == {"parts": 1, "units": 10}

    # when the frozen worker wakes up and ends its attempt
    counted, closed = ledger.chunk_finish(frozen, status="done", counts={"units": 10})

    # then nothing of it is counted: the run keeps the second attempt's counts
    run.refresh_from_db()
    assert (counted, closed) == (False, None) and run.counts == {"parts": 1, "units": 10}
    assert JobChunk.objects.get(pk=chunk.pk).worker == "w2@hostB"


@pytest.mark.django_db
def test_a_backfill_given_chunk_days_is_built_in_chunks_summed_into_its_run():
    # given ten days to report, in chunks of four days (tasks run in-process here, one after the other)
    first = date.today() - timedelta(days=20)
    last = first + timedelta(days=9)

    # when daily_analytics runs over the range
    run = run_job("daily_analytics", params={"from": first.isoformat(), "to": last.isoformat(), "chunk_days": 4})

    # then three chunks built the ten days, once each, and the run holds their sum
    chunks = list(JobChunk.objects.filter(run=run).order_by("index"))
    assert [(c.params["from"], c.params["to"], c.counts["days"]) for c in chunks] == [
        (first.isoformat(), (first + timedelta(days=4)).isoformat(), 4),
        ((first + timedelta(days=4)).isoformat(), (first + timedelta(days=8)).isoformat(), 4),
        ((first + timedelta(days=8)).isoformat(), (last + timedelta(days=1)).isoformat(), 2),
    ]
    assert run.status == "success" and run.counts["days"] == 10 and run.counts["reports_written"] == 10
    assert DailyReport.objects.filter(date__range=(first, last)).count() == 10


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_chunks_spread_over_hosts_and_a_killed_workers_chunk_is_redone_once(
    celery_worker_factory, celery_live, redis_client, unit_table,
):
    # given three workers of distinct host names, one process each
    workers = {host: celery_worker_factory(queues="default", concurrency=1, extra_args=("-n", host)) for host in HOSTS}
    key = f"spread-{uuid.uuid4().hex[:8]}"

    # when a run fans out 24 chunks, the first of which holds its worker until that worker is killed -9
    started = time.monotonic()
    enqueue_job("ops_test_spread", params={
        "units": UNITS, "per_chunk": PER_CHUNK, "hold_part": 0, "hold_key": key, "pause_ms": 100,
    })
    assert blpop_patiently(redis_client, f"{key}:started", 30), "the held chunk never started"
    held = wait_for(lambda: JobChunk.objects.filter(index=0, status="running").first(), what="the held chunk's row")
    victim = held.worker
    workers[victim].stop(sig=signal.SIGKILL)
    # the sweep (the leading beat's, every few seconds) hands the lost chunk to another worker
    wait_for(lambda: runs_sweep(lost_after=LOST_AFTER, resend_after=LOST_AFTER).get("chunks_lost"),
             timeout=30, what="the killed worker's chunk found lost")
    run = wait_for(lambda: JobRun.objects.filter(job="ops_test_spread").exclude(status="running").first(),
                   timeout=30, what="the run closed")
    elapsed = time.monotonic() - started

    # then every unit was done exactly once: the killed attempt's units went with its transaction
    chunks = list(JobChunk.objects.filter(run=run).order_by("index"))
    per_host = Counter(chunk.worker for chunk in chunks)
    redone = [chunk for chunk in chunks if chunk.lost]
    rows, distinct, twice = units_done()
    print(f"chunks={len(chunks)} per host={dict(sorted(per_host.items()))} killed={victim} "
          f"redone={[(c.index, c.attempt, c.worker) for c in redone]} units rows={rows} distinct={distinct} "
          f"twice={twice} run={run.status} counts={run.counts} time={elapsed:.1f}s")
    assert run.status == "success", run.error
    assert (rows, distinct, twice) == (UNITS, UNITS, 0)
    # the work spread over more than one host, and the held chunk was redone by another worker, once
    assert len(per_host) >= 2
    assert [(c.index, c.attempt, c.lost) for c in redone] == [(0, 2, 1)]
    assert redone[0].worker != victim
    assert run.result["chunks_redone"] == 1 and sum(run.result["workers"].values()) == len(chunks)
    # and the run's row holds the sum of its chunks' counts (with its own), nothing counted twice
    assert all(chunk.status == "done" for chunk in chunks) and len(chunks) == UNITS // PER_CHUNK
    assert sum(chunk.counts["units"] for chunk in chunks) == UNITS
    assert run.counts == {"units": UNITS, "parts": len(chunks)}
