"""The heartbeat of a running job: its ledger row's `heartbeat_at` and counts so far, every few seconds.

A thread of the process running the job writes it, whatever the job body is doing
(a pg_dump, a VACUUM, a long query), so a run whose heartbeat stops belongs to a
process that died or froze: `ops.runtime.sweep` fails such runs within a minute.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter

from django.db import connection
from django.utils import timezone

from ops.runtime.models import JobRun

log = logging.getLogger(__name__)

# Seconds between two heartbeats (each is one UPDATE of the run's row).
HEARTBEAT_EVERY = 5.0


def _snapshot(counts: Counter) -> dict:
    # The job's thread may add a key while this one copies: try again, it is a tiny dict.
    for _ in range(5):
        try:
            return dict(counts)
        except RuntimeError:
            continue
    return {}


class Heartbeat:
    """Beats for one run from a daemon thread until stopped; a beat that fails is logged and retried."""

    def __init__(self, run_pk: int, counts: Counter, every: float | None = None) -> None:
        self.run_pk = run_pk
        self.counts = counts
        self.every = HEARTBEAT_EVERY if every is None else every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-run-{run_pk}", daemon=True)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def beat(self) -> None:
        JobRun.objects.filter(pk=self.run_pk, status=JobRun.Status.RUNNING).update(
            heartbeat_at=timezone.now(), counts=_snapshot(self.counts),
        )

    def _beat(self) -> None:
        try:
            while not self._stop.wait(self.every):
                try:
                    self.beat()
                except Exception as exc:  # the database may be away for a moment: the next beat tries again
                    log.warning("heartbeat of run %s not written: %s", self.run_pk, exc)
                    connection.close()
        finally:
            connection.close()
