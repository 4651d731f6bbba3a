"""Bounded batch loops: the one way bulk jobs walk a table.

A job's bulk work is a sequence of batches by primary key, each in its own
transaction, with nothing but a cursor (the last key reached) carried between
them, so memory stays one batch whatever the table's size and a crash loses at
most the batch in flight. The loop stops when a batch comes back short (or
empty), or between batches once a deadline has passed; then `after_id` is where
a follow-up chunk resumes (see JobContext.continue_later).
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from django.db import IntegrityError, transaction
from django.db.models import Max


@dataclass
class Batch:
    """What one batch did: rows changed, the last primary key it covered (None: nothing was left),
    and whether more may follow (False when it came back short)."""

    rows: int
    last_id: int | None
    more: bool = True
    tally: Counter | None = None  # per-key counts the caller wants summed (carts per internship...)
    # Called once the batch's transaction has closed without error: effects outside the database
    # (cache entries) that must follow only a batch that stands, never one refused and redone.
    after: Callable[[], None] | None = None


@dataclass
class BatchProgress:
    rows: int = 0
    batches: int = 0
    after_id: int = 0
    done: bool = False
    tally: Counter = field(default_factory=Counter)


def run_batches(
    step: Callable[[int], Batch], *, after_id: int = 0, deadline: float | None = None,
    on_batch: Callable[[BatchProgress], None] | None = None, redo_on_conflict: bool = False,
    checkpoint: Callable[[BatchProgress], None] | None = None,
) -> BatchProgress:
    """Call `step(after_id)` in a transaction of its own, batch after batch, until none is left.

    `deadline` is a time.monotonic() instant: the loop stops after the batch during
    which it passed (at least one batch always runs). With `redo_on_conflict`, a
    batch refused by an integrity error (a row referenced by one committed since
    the batch's snapshot) is run once more in a new transaction, which sees it.
    `checkpoint(progress)` is called inside each batch's transaction with the progress
    that batch reaches (a chunk stores it there: see JobContext.checkpoint); what it
    raises rolls the batch back and ends the loop.
    """
    progress = BatchProgress(after_id=after_id)

    def attempt() -> tuple[Batch, BatchProgress]:
        with transaction.atomic():
            batch = step(progress.after_id)
            reached = _advanced(progress, batch)
            if checkpoint is not None and batch.last_id is not None:
                checkpoint(reached)
        return batch, reached

    while True:
        try:
            batch, reached = attempt()
        except IntegrityError:
            if not redo_on_conflict:
                raise
            batch, reached = attempt()
        if batch.after is not None:
            batch.after()
        if batch.last_id is None:
            progress.done = True
            return progress
        progress = reached
        if on_batch is not None:
            on_batch(progress)
        if not batch.more:
            progress.done = True
            return progress
        if deadline is not None and time.monotonic() >= deadline:
            return progress


def _advanced(progress: BatchProgress, batch: Batch) -> BatchProgress:
    """The progress once `batch` stands (a new object: the batch may still roll back)."""
    if batch.last_id is None:
        return progress
    tally = Counter(progress.tally)
    if batch.tally:
        tally.update(batch.tally)
    return BatchProgress(
        rows=progress.rows + batch.rows, batches=progress.batches + 1, after_id=batch.last_id, tally=tally,
    )


def id_ranges(queryset, rows: int) -> list[tuple[int, int]]:
    """Primary-key ranges (after_id, last_id] of about `rows` rows of `queryset` each, covering them all:
    the parts a run fans out to (JobContext.fan_out). One keyset step on the primary key per range."""
    if rows < 1:
        raise ValueError("rows must be positive")
    ranges, after_id = [], 0
    while True:
        last_id = queryset.filter(pk__gt=after_id).order_by("pk").values("pk")[:rows].aggregate(last=Max("pk"))["last"]
        if last_id is None:
            return ranges
        ranges.append((after_id, last_id))
        after_id = last_id
