"""The cart_cleanup job: expired carts and their cache keys, abandoned carts, cart statistics.

Given `chunk_rows`, a run splits the carts to clean into id ranges of about that many carts
and hands them to chunk tasks that workers on any host take; each range is deleted and
flagged batch by batch with its progress stored in each batch's transaction, and the
closing step records the statistics of the whole run.
"""
from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta

import redis
from django.conf import settings
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from carts.selectors import cart_cleanup_preview, cleanup_id_ranges, pending_cache_delete_count
from carts.services import (
    BATCH_SIZE,
    CacheKeyRemover,
    cart_flag_abandoned,
    cart_purge_expired,
    cart_snapshot_record,
    pending_cache_delete_flush,
)
from carts.tasks import cache_cleanup
from ops.runtime import params
from ops.runtime.batches import BatchProgress
from ops.runtime.context import JobContext
from ops.runtime.outbox import outbox_relay_request
from ops.runtime.registry import job, job_close

log = logging.getLogger(__name__)

TIME_LIMIT = timedelta(minutes=14)
# Work stops after this and continues in a follow-up chunk, well inside the time
# limit and the 15-minute schedule; each chunk resumes from the primary key reached.
TIME_BUDGET = 600.0
# A backlog larger than this many chunks is left to the next scheduled run (the runtime's cap).
MAX_CHUNKS = 48
CACHE_CLEANUP_DELAY = 60
STEPS = ("expire", "abandon")


def _reached(ctx: JobContext, key: str, rows: int, label: str) -> None:
    # The count so far goes in the run's counts as each batch commits: the heartbeat stores it, so a
    # run whose worker dies still shows in the ledger what it had done.
    ctx.counts[key] = rows
    ctx.progress(rows, None, label)


def _flush_cache_backlog() -> int:
    try:
        return pending_cache_delete_flush()
    except redis.RedisError as exc:
        log.warning("stored cache keys not flushed, redis unavailable: %s", exc)
        return 0


def _enqueue_cache_cleanup() -> None:
    try:
        cache_cleanup.apply_async(countdown=CACHE_CLEANUP_DELAY)
    except BrokerError as exc:  # the broker is often the Redis that is down; the next run flushes
        log.warning("cache_cleanup not queued: %s", exc)


@job("cart_cleanup", queue="default", time_limit=TIME_LIMIT, max_chunks=MAX_CHUNKS, params={
    "step": params.choice("expire", STEPS),
    "after_id": params.integer(0, low=0),
    "batch_size": params.integer(BATCH_SIZE, low=1, high=100_000),
    "time_budget": params.number(TIME_BUDGET, low=0, high=TIME_LIMIT.total_seconds() - 60),
    # 0: one process does the run (in follow-up chunks past its time budget). Else the run fans out to
    # chunk tasks of about this many carts each, for the workers of every host.
    "chunk_rows": params.integer(0, low=0, high=10_000_000),
})
def cart_cleanup(ctx: JobContext) -> dict:
    """Delete expired carts with their cache keys, flag abandoned carts, record cart statistics."""
    options = ctx.params
    if ctx.part is not None:
        return _cleanup_part(ctx)
    now = timezone.now()
    expire_cutoff = now - settings.CART_TTL
    idle_cutoff = now - settings.CART_ABANDON_AFTER

    if ctx.dry_run:
        preview = cart_cleanup_preview(expire_cutoff=expire_cutoff, idle_cutoff=idle_cutoff)
        for key, n in preview.items():
            ctx.add(key, n)
        return {**preview, "cache_keys_pending": pending_cache_delete_count()}

    ctx.add("cache_keys_flushed", _flush_cache_backlog())
    if options["chunk_rows"] and options["step"] == "expire" and not options["after_id"]:
        ranges = cleanup_id_ranges(expire_cutoff=expire_cutoff, idle_cutoff=idle_cutoff, rows=options["chunk_rows"])
        # Every part uses the cutoffs of the run, whenever a worker takes it.
        ctx.fan_out([{"after_id": lo, "last_id": hi, "now": now.isoformat()} for lo, hi in ranges])
        return {"expire_cutoff": expire_cutoff.isoformat(), "idle_cutoff": idle_cutoff.isoformat()}
    deadline = ctx.deadline(options["time_budget"])
    cache = CacheKeyRemover()
    expired = BatchProgress(done=True)
    if options["step"] == "expire":
        expired = cart_purge_expired(
            cutoff=expire_cutoff, batch_size=options["batch_size"], after_id=options["after_id"],
            deadline=deadline, cache=cache, on_batch=lambda p: _reached(ctx, "deleted", p.rows, "expired carts deleted"),
        )
    flagged = BatchProgress()
    if expired.done:
        flagged = cart_flag_abandoned(
            idle_cutoff=idle_cutoff, now=now, batch_size=options["batch_size"],
            after_id=options["after_id"] if options["step"] == "abandon" else 0, deadline=deadline,
            on_batch=lambda p: _reached(ctx, "flagged_abandoned", p.rows, "carts flagged abandoned"),
        )
    ctx.counts["deleted"] = expired.rows
    ctx.counts["flagged_abandoned"] = flagged.rows
    ctx.add("cache_keys_stored", cache.stored)

    if expired.rows:
        outbox_relay_request()  # the batches' tallies of expired carts, in one message
    snapshot = cart_snapshot_record(run=ctx.run, deleted=expired.tally, flagged=flagged.tally)
    if snapshot.cache_keys_pending:
        _enqueue_cache_cleanup()

    unfinished = not (expired.done and flagged.done)
    if unfinished:
        resume = ("expire", expired.after_id) if not expired.done else ("abandon", flagged.after_id)
        ctx.continue_later(
            step=resume[0], after_id=resume[1], batch_size=options["batch_size"],
            time_budget=options["time_budget"],
        )
    return {
        "deleted": expired.rows,
        "flagged_abandoned": flagged.rows,
        "batches": expired.batches + flagged.batches,
        "finished": not unfinished,
        "snapshot_id": snapshot.pk,
        "live": {"active": snapshot.active, "abandoned": snapshot.abandoned, "converted": snapshot.converted},
        "cache_keys_pending": snapshot.cache_keys_pending,
        "expire_cutoff": expire_cutoff.isoformat(),
        "idle_cutoff": idle_cutoff.isoformat(),
    }


def _cleanup_part(ctx: JobContext) -> dict:
    """One id range of a run that fanned out: delete its expired carts, then flag its idle ones.

    Each batch stores, in its own transaction, the step and id reached and the carts it did per
    internship: an attempt taking the range over from a lost worker resumes there, and the run's
    counts and statistics hold every cart once.
    """
    part = ctx.part
    now = datetime.fromisoformat(part["now"])
    state = {"step": "expire", "after_id": part["after_id"], "deleted": {}, "flagged": {}, **ctx.resume}
    cache = CacheKeyRemover()

    def checkpointer(step: str, key: str, count: str):
        rows_before, tally_before = ctx.counts[count], Counter(state[key])

        def checkpoint(reached) -> None:
            ctx.counts[count] = rows_before + reached.rows
            tally = tally_before + Counter({str(k): n for k, n in reached.tally.items()})
            ctx.checkpoint(**{**state, "step": step, "after_id": reached.after_id, key: dict(tally)})
            state.update(step=step, after_id=reached.after_id, **{key: dict(tally)})

        return checkpoint

    if state["step"] == "expire":
        cart_purge_expired(
            cutoff=now - settings.CART_TTL, batch_size=ctx.params["batch_size"], after_id=state["after_id"],
            last_id=part["last_id"], cache=cache, checkpoint=checkpointer("expire", "deleted", "deleted"),
        )
        state.update(step="abandon", after_id=part["after_id"])
    cart_flag_abandoned(
        idle_cutoff=now - settings.CART_ABANDON_AFTER, now=now, batch_size=ctx.params["batch_size"],
        after_id=state["after_id"], last_id=part["last_id"],
        checkpoint=checkpointer("abandon", "flagged", "flagged_abandoned"),
    )
    ctx.add("cache_keys_stored", cache.stored)
    return {}


@job_close("cart_cleanup")
def cart_cleanup_close(ctx: JobContext) -> dict:
    """Once every range is done: announce the tallies, record the statistics of the whole run."""
    deleted, flagged = Counter(), Counter()
    for state in ctx.part_states():
        deleted.update({int(k): n for k, n in (state.get("deleted") or {}).items()})
        flagged.update({int(k): n for k, n in (state.get("flagged") or {}).items()})
    if ctx.counts["deleted"]:
        outbox_relay_request()
    snapshot = cart_snapshot_record(run=ctx.run, deleted=deleted, flagged=flagged)
    if snapshot.cache_keys_pending:
        _enqueue_cache_cleanup()
    return {
        "deleted": ctx.counts["deleted"],
        "flagged_abandoned": ctx.counts["flagged_abandoned"],
        "finished": True,
        "snapshot_id": snapshot.pk,
        "live": {"active": snapshot.active, "abandoned": snapshot.abandoned, "converted": snapshot.converted},
        "cache_keys_pending": snapshot.cache_keys_pending,
    }
