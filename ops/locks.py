"""Single flight: at most one running instance of a job across processes and hosts.

On PostgreSQL a job holds a session advisory lock on a connection of its own;
if the process dies, the server drops the connection and the lock with it.
Elsewhere (SQLite) a row in JobLease is a lease that a heartbeat thread renews;
a lease whose holder died simply expires.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
import zlib
from datetime import timedelta

from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, transaction
from django.utils import timezone

from ops.models import JobLease

log = logging.getLogger(__name__)

# First half of the two-int advisory lock key: this project's namespace.
_ADVISORY_NAMESPACE = zlib.crc32(b"checkout-operations-jobs") - 2**31


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def advisory_key(name: str) -> int:
    return zlib.crc32(name.encode()) - 2**31


class JobLock:
    def release(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class AdvisoryLock(JobLock):
    def __init__(self, name: str, conn) -> None:
        self.name = name
        self._conn = conn

    def release(self) -> None:
        if self._conn is None:
            return
        try:
            with self._conn.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_advisory_unlock(%s, %s)", [_ADVISORY_NAMESPACE, advisory_key(self.name)]
                )
        except Exception:  # closing the connection releases it anyway
            log.warning("advisory unlock of %s failed; closing its connection", self.name)
        finally:
            self._conn.close()
            self._conn = None


class LeaseLock(JobLock):
    def __init__(self, name: str, holder: str, lease: timedelta) -> None:
        self.name = name
        self.holder = holder
        self.lease = lease
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"lease-{name}", daemon=True
        )
        self._thread.start()

    def _beat(self) -> None:
        interval = max(self.lease.total_seconds() / 3, 0.5)
        try:
            while not self._stop.wait(interval):
                renewed = JobLease.objects.filter(job=self.name, holder=self.holder).update(
                    expires_at=timezone.now() + self.lease
                )
                if not renewed:
                    self.lost = True
                    log.error("lease of job %s was lost by %s", self.name, self.holder)
                    return
        finally:
            connection.close()

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        JobLease.objects.filter(job=self.name, holder=self.holder).delete()


def _is_postgres(alias: str = DEFAULT_DB_ALIAS) -> bool:
    return connections[alias].vendor == "postgresql"


def try_acquire(name: str, lease: timedelta, holder: str | None = None) -> JobLock | None:
    """Take the job's lock without waiting; None when another run holds it."""
    if _is_postgres():
        conn = connections.create_connection(DEFAULT_DB_ALIAS)
        conn.ensure_connection()
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", [_ADVISORY_NAMESPACE, advisory_key(name)]
            )
            acquired = cursor.fetchone()[0]
        if not acquired:
            conn.close()
            return None
        return AdvisoryLock(name, conn)

    holder = holder or holder_id()
    now = timezone.now()
    try:
        with transaction.atomic():
            JobLease.objects.create(job=name, holder=holder, acquired_at=now, expires_at=now + lease)
    except IntegrityError:
        taken = JobLease.objects.filter(job=name, expires_at__lt=now).update(
            holder=holder, acquired_at=now, expires_at=now + lease
        )
        if not taken:
            return None
    return LeaseLock(name, holder, lease)
