"""What a job body is given: its run, its checked parameters, and the means to report progress.

A job body is a plain function `func(ctx) -> dict | None`. It counts what it did
with `ctx.add(...)`, reports progress with `ctx.progress(...)`, stops between
batches once `ctx.deadline` has passed, and asks for a follow-up chunk with
`ctx.continue_later(...)`; the runtime queues that chunk, counts it and caps it.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Callable

from django.utils import timezone

from ops.runtime.models import JobRun
from ops.runtime.registry import Job

ProgressCallback = Callable[[int, int | None, str], None]
# Seconds between two heartbeats of a running job (each is one UPDATE of its ledger row).
HEARTBEAT_EVERY = 5.0


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
    _last_heartbeat: float = field(default_factory=time.monotonic, repr=False)

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger(f"ops.jobs.{self.job.name}")

    def add(self, key: str, n: int = 1) -> None:
        """Count something the run did (deleted=…, captured=…); stored in the ledger."""
        self.counts[key] += n

    def progress(self, done: int, total: int | None = None, label: str = "") -> None:
        """Report progress (a bar for runjob) and, every HEARTBEAT_EVERY seconds, leave a heartbeat."""
        if self.on_progress is not None:
            self.on_progress(done, total, label)
        self.heartbeat()

    def heartbeat(self, *, force: bool = False) -> None:
        """Store `heartbeat_at` and the counts so far on the run's row, at most every HEARTBEAT_EVERY
        seconds: a run that dies keeps what it did in the ledger, and a live one shows it is alive."""
        now = time.monotonic()
        if not force and now - self._last_heartbeat < HEARTBEAT_EVERY:
            return
        self._last_heartbeat = now
        JobRun.objects.filter(pk=self.run.pk).update(heartbeat_at=timezone.now(), counts=dict(self.counts))

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
