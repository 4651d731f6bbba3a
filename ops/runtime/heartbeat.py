"""The heartbeat of running jobs: each ledger row's `heartbeat_at` and counts so far, every few seconds.

One daemon thread per process beats for every run in progress there, whatever the
job bodies are doing (a pg_dump, a VACUUM, a long query), so a run whose heartbeat
stops belongs to a process that died or froze: `ops.runtime.sweep` fails such runs
within a minute. Starting and stopping a run's heartbeat is a dictionary update, so
a run of a few milliseconds pays nothing for it.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import Counter

from django.db import connection
from django.utils import timezone

from ops.runtime.models import JobChunk, JobRun

log = logging.getLogger(__name__)

# Seconds between two heartbeats of a run (each is one UPDATE of its row).
HEARTBEAT_EVERY = 5.0


def _snapshot(counts: Counter) -> dict:
    # The job's thread may add a key while this one copies: try again, it is a tiny dict.
    for _ in range(5):
        try:
            return dict(counts)
        except RuntimeError:
            continue
    return {}


class _Beater:
    """The process's heartbeat thread and the runs it beats for (run pk -> their counts)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.runs: dict[int | tuple[str, int], Counter] = {}  # a run's pk, or chunk_key(chunk pk)
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="job-heartbeat", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            self.wake.wait(HEARTBEAT_EVERY)
            self.wake.clear()
            with self.lock:
                runs = list(self.runs.items())
            if not runs:
                connection.close()  # nothing to beat for: hold no connection while idle
                continue
            for run_pk, counts in runs:
                try:
                    if isinstance(run_pk, tuple):
                        beat_chunk(run_pk[1], counts)
                    else:
                        beat(run_pk, counts)
                except Exception as exc:  # the database may be away for a moment: the next beat tries again
                    log.warning("heartbeat of run %s not written: %s", run_pk, exc)
                    connection.close()


_beater: _Beater | None = None
_beater_lock = threading.Lock()


def _the_beater() -> _Beater:
    global _beater
    with _beater_lock:
        # A forked child inherits the object but not the thread: it starts its own.
        if _beater is None or _beater.pid != os.getpid():
            _beater = _Beater()
        return _beater


def beat(run_pk: int, counts: Counter) -> None:
    """Write one heartbeat of a run now: the time and the counts so far (only while it is running)."""
    JobRun.objects.filter(pk=run_pk, status=JobRun.Status.RUNNING).update(
        heartbeat_at=timezone.now(), counts=_snapshot(counts),
    )


def beat_chunk(chunk_pk: int, counts: Counter) -> None:
    """One heartbeat of a chunk in progress (see ops.runtime.ledger.chunk_claim)."""
    JobChunk.objects.filter(pk=chunk_pk, status=JobChunk.Status.RUNNING).update(
        heartbeat_at=timezone.now(), counts=_snapshot(counts),
    )


def chunk_key(chunk_pk: int) -> tuple[str, int]:
    """What a chunk's heartbeat is started and stopped under (a run's is its pk)."""
    return ("chunk", chunk_pk)


def heartbeat_start(run_pk: int | tuple[str, int], counts: Counter) -> None:
    beater = _the_beater()
    with beater.lock:
        beater.runs[run_pk] = counts


def heartbeat_stop(run_pk: int | tuple[str, int]) -> None:
    beater = _the_beater()
    with beater.lock:
        beater.runs.pop(run_pk, None)
