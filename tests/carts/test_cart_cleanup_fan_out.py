"""cart_cleanup given chunk_rows: id ranges done as chunk tasks, summed into one run, statistics of the
whole run, progress stored batch by batch so that a range taken over from a lost worker counts every
cart once (the process test with workers on three hosts is test_cart_cleanup_across_hosts)."""
from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from carts.jobs import _cleanup_part
from carts.models import Cart, CartDayTally, CartSnapshot, CartStatus
from ops.runtime import ledger
from ops.runtime.context import JobContext
from ops.runtime.errors import ChunkTakenOver
from ops.runtime.models import JobChunk
from ops.runtime.params import read_params
from ops.runtime.registry import get_job
from ops.runtime.runner import run_chunk, run_job
from ops.runtime.sweep import RUN_LOST_AFTER, runs_sweep
from tests.factories import InternshipFactory

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

H = timedelta(hours=1)


@pytest.fixture
def backlog(make_cart):
    """23 expired carts and 7 idle active ones over two internships, interleaved by id."""
    other = InternshipFactory()
    expired, idle = [], []
    for n in range(30):
        internship = other if n % 3 == 0 else None
        extra = {"internship": internship} if internship else {}
        if n % 4 == 1 and len(idle) < 7:
            idle.append(make_cart(age=3 * H, idle=2 * H, **extra))
        else:
            expired.append(make_cart(age=30 * H, **extra))
    young = make_cart(age=H, idle=timedelta(minutes=5))
    return expired, idle, young


def _tally_total() -> int:
    return sum(CartDayTally.objects.values_list("created_deleted", flat=True))


@pytest.mark.django_db
def test_a_run_given_chunk_rows_cleans_every_range_and_records_the_whole_run(backlog, redis_client):
    expired, idle, young = backlog

    # when cart_cleanup runs with ranges of 5 carts, 2 per batch (the chunk tasks run in-process here)
    run = run_job("cart_cleanup", params={"chunk_rows": 5, "batch_size": 2})

    # then six ranges did the 30 carts, and the run holds their sum
    chunks = list(JobChunk.objects.filter(run=run).order_by("index"))
    print(f"chunks={len(chunks)} counts={run.counts} result={run.result}")
    assert run.status == "success", run.error
    assert len(chunks) == 6 and all(chunk.status == "done" for chunk in chunks)
    assert [(c.params["after_id"], c.params["last_id"]) for c in chunks][0][0] == 0
    assert all(a.params["last_id"] == b.params["after_id"] for a, b in zip(chunks, chunks[1:]))
    assert run.counts["deleted"] == 23 and run.counts["flagged_abandoned"] == 7
    assert sum(chunk.counts.get("deleted", 0) for chunk in chunks) == 23
    assert not Cart.objects.filter(pk__in=[c.pk for c in expired]).exists()
    assert set(Cart.objects.filter(pk__in=[c.pk for c in idle]).values_list("status", flat=True)) == {
        CartStatus.ABANDONED
    }
    assert Cart.objects.get(pk=young.pk).status == CartStatus.ACTIVE
    assert not any(redis_client.exists(c.cache_key) for c in expired)
    assert redis_client.exists(young.cache_key)
    # and one snapshot of the whole run, per internship, matching what was done
    snapshot = CartSnapshot.objects.get(pk=run.result["snapshot_id"])
    assert (snapshot.deleted, snapshot.flagged, snapshot.active, snapshot.abandoned) == (23, 7, 1, 7)
    per_internship = {line.internship_id: (line.deleted, line.flagged) for line in snapshot.lines.all()}
    wanted_deleted = Counter(c.internship_id for c in expired)
    wanted_flagged = Counter(c.internship_id for c in idle)
    assert per_internship == {
        i: (wanted_deleted[i], wanted_flagged[i]) for i in set(wanted_deleted) | set(wanted_flagged)
        | {young.internship_id}
    }
    assert _tally_total() == 23 and run.result["chunks"] == 6 and run.result["chunks_failed"] == 0

    # when it runs again there is nothing left to do: no chunk, a snapshot all the same
    again = run_job("cart_cleanup", params={"chunk_rows": 5, "batch_size": 2})
    assert again.status == "success" and again.counts.get("deleted", 0) == 0
    assert not JobChunk.objects.filter(run=again).exists() and again.result["snapshot_id"] != snapshot.pk


def _attempt_context(chunk: JobChunk) -> JobContext:
    """The context the chunk task gives the job's body for this claim of the chunk."""
    job = get_job("cart_cleanup")
    return JobContext(
        job=job, run=chunk.run, trigger=chunk.run.trigger, part=dict(chunk.params), attempt=chunk.attempt,
        chunk_pk=chunk.pk, params=read_params(job.name, job.params, chunk.run.params),
    )


@pytest.mark.django_db(transaction=True)
def test_a_range_taken_over_after_its_worker_died_keeps_the_counts_of_what_was_committed(
    celery_live, backlog, redis_client,
):
    expired, idle, _ = backlog
    # given a run in one range whose first attempt deleted and flagged it all, batch by batch, and died
    # before it could end the chunk
    run = run_job("cart_cleanup", params={"chunk_rows": 100, "batch_size": 4})
    chunk = JobChunk.objects.get(run=run)
    first = ledger.chunk_claim(chunk.pk, worker="w1@hostA")
    _cleanup_part(_attempt_context(first))
    assert not Cart.objects.filter(pk__in=[c.pk for c in expired]).exists()
    stored = JobChunk.objects.get(pk=chunk.pk).progress
    assert stored["counts"]["deleted"] == 23 and stored["state"]["step"] == "abandon"

    # when the sweep hands it to another worker, which takes it over
    assert runs_sweep(now=timezone.now() + RUN_LOST_AFTER * 2)["chunks_lost"] == 1
    run_chunk(chunk.pk, worker="w2@hostB")

    # then the run counts every cart once: the lost attempt's committed batches are not forgotten
    run.refresh_from_db()
    chunk.refresh_from_db()
    print(f"chunk attempt={chunk.attempt} lost={chunk.lost} counts={chunk.counts} run={run.counts}")
    assert run.status == "success", run.error
    assert (chunk.attempt, chunk.lost, chunk.worker) == (2, 1, "w2@hostB")
    assert run.counts["deleted"] == 23 and run.counts["flagged_abandoned"] == 7
    snapshot = CartSnapshot.objects.get(pk=run.result["snapshot_id"])
    assert (snapshot.deleted, snapshot.flagged) == (23, 7) and _tally_total() == 23


@pytest.mark.django_db(transaction=True)
def test_an_attempt_that_wakes_after_its_range_was_handed_over_changes_nothing(celery_live, backlog, redis_client):
    expired, idle, _ = backlog
    # given a range claimed by a worker that froze before its first batch, and handed back by the sweep
    run = run_job("cart_cleanup", params={"chunk_rows": 100, "batch_size": 4})
    chunk = JobChunk.objects.get(run=run)
    frozen = _attempt_context(ledger.chunk_claim(chunk.pk, worker="w1@hostA"))
    assert runs_sweep(now=timezone.now() + RUN_LOST_AFTER * 2)["chunks_lost"] == 1

    # when the frozen worker wakes and goes on with the range
    with pytest.raises(ChunkTakenOver):
        _cleanup_part(frozen)

    # then its first batch rolled back with its progress: every cart is still there for the next attempt
    assert Cart.objects.count() == 31 and _tally_total() == 0
    assert JobChunk.objects.get(pk=chunk.pk).progress == {}
    # and the attempt that takes the range over does it all, once
    run_chunk(chunk.pk, worker="w2@hostB")
    run.refresh_from_db()
    assert run.status == "success" and run.counts["deleted"] == 23 and run.counts["flagged_abandoned"] == 7
    assert _tally_total() == 23
