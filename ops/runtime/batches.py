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
) -> BatchProgress:
    """Call `step(after_id)` in a transaction of its own, batch after batch, until none is left.

    `deadline` is a time.monotonic() instant: the loop stops after the batch during
    which it passed (at least one batch always runs). With `redo_on_conflict`, a
    batch refused by an integrity error (a row referenced by one committed since
    the batch's snapshot) is run once more in a new transaction, which sees it.
    """
    progress = BatchProgress(after_id=after_id)
    while True:
        try:
            with transaction.atomic():
                batch = step(progress.after_id)
        except IntegrityError:
            if not redo_on_conflict:
                raise
            with transaction.atomic():
                batch = step(progress.after_id)
        if batch.after is not None:
            batch.after()
        if batch.last_id is None:
            progress.done = True
            return progress
        progress.after_id = batch.last_id
        progress.rows += batch.rows
        progress.batches += 1
        if batch.tally:
            progress.tally.update(batch.tally)
        if on_batch is not None:
            on_batch(progress)
        if not batch.more:
            progress.done = True
            return progress
        if deadline is not None and time.monotonic() >= deadline:
            return progress
