"""What a job body is given: its run, its checked parameters, and the means to report progress.

A job body is a plain function `func(ctx) -> dict | None`. It counts what it did
with `ctx.add(...)`, reports progress with `ctx.progress(...)`, stops between
batches once `ctx.deadline` has passed, and asks for a follow-up chunk with
`ctx.continue_later(...)`; the runtime queues that chunk, counts it and caps it.
A body may instead split its work into bounded parts with `ctx.fan_out([...])`:
each part runs as a chunk task on any worker, where the same body sees it in
`ctx.part` (ops.runtime.runner.run_chunk). A part that commits batch by batch calls
`ctx.checkpoint(...)` inside each batch's transaction: an attempt that takes the part
over from a lost worker resumes from `ctx.resume` with the counts of what was committed.
The job's closing step (registry.job_close) runs once every part is done.
While the body runs, its process's heartbeat stores the counts so far (ops.runtime.heartbeat).
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Callable

from ops.runtime.errors import ChunkTakenOver
from ops.runtime.ledger import chunk_checkpoint, chunk_states
from ops.runtime.models import JobRun
from ops.runtime.registry import Job

ProgressCallback = Callable[[int, int | None, str], None]


@dataclass
class JobContext:
    job: Job
    run: JobRun
    trigger: str
    dry_run: bool = False
    date: date | None = None
    params: dict = field(default_factory=dict)
    # 0 for a run started by beat or by hand; n for the n-th follow-up chunk of it.
    chunk: int = 0
    counts: Counter = field(default_factory=Counter)
    on_progress: ProgressCallback | None = None
    continuation: dict | None = None
    started: float = field(default_factory=time.monotonic)
    # In a chunk task: the part this body is to do (the dict given to fan_out), and which claim of it
    # this is (1, then 2 when a lost worker's chunk is taken over). None in the run that fans out.
    part: dict | None = None
    attempt: int = 0
    parts: list[dict] | None = None
    # In a chunk task: the chunk's row, and where an earlier attempt's last committed batch left the
    # part (the state given to `checkpoint`; empty on a first attempt).
    chunk_pk: int | None = None
    resume: dict = field(default_factory=dict)

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger(f"ops.jobs.{self.job.name}")

    def add(self, key: str, n: int = 1) -> None:
        """Count something the run did (deleted=…, captured=…); stored in the ledger."""
        self.counts[key] += n

    def progress(self, done: int, total: int | None = None, label: str = "") -> None:
        if self.on_progress is not None:
            self.on_progress(done, total, label)

    def deadline(self, budget_s: float) -> float:
        """The monotonic instant `budget_s` seconds after the run started: bulk work stops between batches then."""
        return self.started + budget_s

    def continue_later(self, countdown: float = 0, **params) -> None:
        """Ask for a follow-up chunk with these parameters (any worker may take it) once this run has
        released the lock. The runtime numbers the chunks and stops at the job's max_chunks."""
        self.continuation = {"countdown": countdown, "params": params}

    @property
    def last_chunk(self) -> bool:
        """True when a follow-up asked for now would be past the job's cap (and would not be queued)."""
        return self.chunk + 1 >= self.job.max_chunks

    def fan_out(self, parts: list[dict]) -> None:
        """Hand the work to chunk tasks, one per part (a dict of plain values: an id range, a day),
        that any worker on any host may take once this body has returned. The run stays "running"
        until the last chunk ends, with the chunks' counts added to its own."""
        if self.part is not None:
            raise ValueError("a chunk does not fan out again")
        self.parts = [dict(part) for part in parts]

    def part_states(self) -> list[dict]:
        """In the closing step: the last state each done part stored with `checkpoint` ({} for a part
        that committed no batch), in part order: what the parts did, for the run's own account."""
        return chunk_states(self.run.pk)

    def checkpoint(self, **state) -> None:
        """In a chunk, inside the transaction of a batch: store where the part has got to (`state`,
        plain values) and the counts so far, with the batch. Raises ChunkTakenOver when the chunk was
        handed to another worker meanwhile: the batch then rolls back and this attempt stops, so no row
        is done by two attempts. Does nothing outside a chunk."""
        if self.chunk_pk is None:
            return
        if not chunk_checkpoint(self.chunk_pk, self.attempt, state=state, counts=dict(self.counts)):
            raise ChunkTakenOver(
                f"chunk {self.chunk_pk} attempt {self.attempt} was handed to another worker; this attempt stops"
            )
