"""cart_cleanup fanned out over three workers of distinct host names, one of them frozen and killed -9
in the middle of a range: the ranges spread over the hosts, the killed worker's range is taken over and
resumes from its last committed batch, and every cart is deleted, tallied and counted exactly once."""
import os
import signal
import time
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from carts.models import Cart, CartDayTally, CartSnapshot, CartStatus
from ops.runtime.dispatch import enqueue_job
from ops.runtime.models import JobChunk, JobRun
from ops.runtime.sweep import runs_sweep
from tests.conftest import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

HOSTS = ("w1@hostA", "w2@hostB", "w3@hostC")
EXPIRED, IDLE = 60_000, 6_000
CHUNK_ROWS, BATCH = 11_000, 100
# Longer than a live range's heartbeat interval (5 s), so only the killed worker's range is lost.
LOST_AFTER = timedelta(seconds=6)


def insert_carts(internship_id: int, n: int, *, age: timedelta, idle: timedelta) -> None:
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Cart._meta.db_table} (token, internship_id, created_at, updated_at, status)"
            " SELECT gen_random_uuid(), %s, %s, %s, 'active' FROM generate_series(1, %s)",
            [internship_id, now - age, now - idle, n],
        )


def freeze_a_worker_mid_range(workers: dict) -> tuple[JobChunk, str]:
    """Stop (SIGSTOP) the worker of a range that has committed batches and is still running."""
    for _ in range(50):
        chunk = wait_for(
            lambda: JobChunk.objects.filter(status="running").exclude(progress={}).first(),
            timeout=60, what="a range with committed batches",
        )
        worker = workers[chunk.worker]
        os.killpg(worker.proc.pid, signal.SIGSTOP)
        chunk.refresh_from_db()
        if chunk.status == "running":
            return chunk, chunk.worker
        os.killpg(worker.proc.pid, signal.SIGCONT)  # it ended as we looked: take another
    raise AssertionError("no range could be caught running")


@pytest.mark.django_db(transaction=True)
def test_cart_cleanup_spreads_over_hosts_and_a_killed_workers_range_resumes_counting_each_cart_once(
    celery_worker_factory, celery_live, redis_client, internship,
):
    # given expired carts and idle ones, and three workers (one process each) on three hosts
    insert_carts(internship.pk, EXPIRED, age=timedelta(hours=30), idle=timedelta(hours=30))
    insert_carts(internship.pk, IDLE, age=timedelta(hours=3), idle=timedelta(hours=2))
    workers = {host: celery_worker_factory(queues="default", concurrency=1, extra_args=("-n", host)) for host in HOSTS}

    # when a run fans out to ranges of 11,000 carts, and the worker of a range half done is frozen, then killed
    started = time.monotonic()
    enqueue_job("cart_cleanup", params={"chunk_rows": CHUNK_ROWS, "batch_size": BATCH})
    held, victim = freeze_a_worker_mid_range(workers)
    frozen = held.progress
    workers[victim].stop(sig=signal.SIGKILL)
    wait_for(lambda: runs_sweep(lost_after=LOST_AFTER, resend_after=LOST_AFTER).get("chunks_lost"),
             timeout=30, what="the killed worker's range found lost")
    run = wait_for(lambda: JobRun.objects.filter(job="cart_cleanup").exclude(status="running").first(),
                   timeout=120, what="the run closed")
    elapsed = time.monotonic() - started

    # then every cart was done once, and the run counts each once
    chunks = list(JobChunk.objects.filter(run=run).order_by("index"))
    redone = JobChunk.objects.get(pk=held.pk)
    per_host = Counter(chunk.worker for chunk in chunks)
    tallied = sum(CartDayTally.objects.values_list("created_deleted", flat=True))
    print(f"chunks={len(chunks)} per host={dict(sorted(per_host.items()))} killed={victim} at "
          f"{frozen['state']['step']} id {frozen['state']['after_id']} with {frozen['counts']}; redone by "
          f"{redone.worker} attempt {redone.attempt}: {redone.counts}; run={run.status} counts={run.counts} "
          f"tallied={tallied} time={elapsed:.1f}s")
    assert run.status == "success", run.error
    assert not Cart.objects.filter(status=CartStatus.ACTIVE).exists()
    assert Cart.objects.filter(status=CartStatus.ABANDONED).count() == IDLE and Cart.objects.count() == IDLE
    assert run.counts["deleted"] == EXPIRED and run.counts["flagged_abandoned"] == IDLE
    assert tallied == EXPIRED
    snapshot = CartSnapshot.objects.get(pk=run.result["snapshot_id"])
    assert (snapshot.deleted, snapshot.flagged, snapshot.abandoned) == (EXPIRED, IDLE, IDLE)
    # the ranges spread over the hosts; the killed one was taken over once, by another worker, from
    # where its last committed batch had left it
    assert len(per_host) >= 2 and all(chunk.status == "done" for chunk in chunks)
    assert (redone.attempt, redone.lost) == (2, 1) and redone.worker != victim
    assert run.result["chunks_redone"] == 1
    frozen_rows = frozen["counts"].get("deleted", 0) + frozen["counts"].get("flagged_abandoned", 0)
    done_rows = redone.counts.get("deleted", 0) + redone.counts.get("flagged_abandoned", 0)
    assert 0 < frozen_rows <= done_rows
