"""Single flight: at most one running instance of a job across processes and hosts.

On PostgreSQL reached as one session per connection, a job holds a session
advisory lock on a connection of its own (in workers, one per thread kept open
between runs so a run does not pay for a new connection); if the process dies, the
server drops the connection and the lock with it.

Where a session cannot be relied on (SQLite; PostgreSQL behind PgBouncer in
transaction pooling, DATABASE_POOLING=transaction) the lock is a row in JobLease:
a lease that a thread of the holder renews every third of JOB_LOCK_LEASE, each
statement its own transaction, times taken from the database's clock so hosts
whose clocks disagree agree on expiry. A lease whose holder died expires by
itself, or sooner, when the sweep fails the holder's lost run.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
import zlib
from datetime import timedelta

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, transaction
from django.db.models.functions import Now

from checkout.db import is_postgres, session_locks_hold, skip_commit_flush
from ops.runtime.models import JobLease

log = logging.getLogger(__name__)

# First half of the two-int advisory lock key: this project's namespace.
_ADVISORY_NAMESPACE = zlib.crc32(b"checkout-operations-jobs") - 2**31

_local = threading.local()
# Worker processes keep one lock connection per thread between runs (see
# keep_lock_connections); elsewhere each run opens its own and closes it after.
_keep_connections = False


def keep_lock_connections() -> None:
    """Reuse this process's lock connection across runs: for long-lived workers running many jobs.

    Not the default, because a connection left open keeps the database busy (a test
    database could not be dropped, for instance).
    """
    global _keep_connections
    _keep_connections = True


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


# The server probes an idle lock session after this many seconds, then every interval,
# and ends it after `count` probes go unanswered: a lock held by a host that vanished
# (power, network) is freed in about 25 s instead of the kernel's two hours.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 10, 5, 3


def _new_connection():
    # Separate from the ORM's connection, so that a job's own transactions, or
    # Django closing its connection between requests, never drop the lock.
    conn = connections.create_connection(DEFAULT_DB_ALIAS)
    conn.ensure_connection()
    if is_postgres():
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('tcp_keepalives_idle', %s, false),"
                " set_config('tcp_keepalives_interval', %s, false),"
                " set_config('tcp_keepalives_count', %s, false)",
                [str(KEEPALIVE_IDLE), str(KEEPALIVE_INTERVAL), str(KEEPALIVE_COUNT)],
            )
    return conn


def _kept_connection():
    """This thread's long-lived lock connection, (re)opened when missing or broken."""
    pid, conn = getattr(_local, "conn", (None, None))
    if pid == os.getpid() and conn is not None and conn.is_usable():
        return conn
    if pid == os.getpid():
        _close(conn)
    # else: none yet, or inherited through fork (that socket is the parent's session).
    conn = _new_connection()
    _local.conn = (os.getpid(), conn)
    return conn


def _close(conn) -> None:
    if conn is None:
        return
    try:
        conn.close()
    except Exception:  # already broken; the server has dropped its locks
        pass


def _held() -> set[str]:
    pid, held = getattr(_local, "held", (None, None))
    if pid != os.getpid():
        held = set()
        _local.held = (os.getpid(), held)
    return held


class AdvisoryLock(JobLock):
    def __init__(self, name: str, conn, kept: bool) -> None:
        self.name = name
        self._conn = conn
        self._kept = kept

    def release(self) -> None:
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        _held().discard(self.name)
        if not self._kept:
            _close(conn)  # ends the session, which releases the lock
            return
        try:
            with conn.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_advisory_unlock(%s, %s)", [_ADVISORY_NAMESPACE, advisory_key(self.name)]
                )
                released = cursor.fetchone()[0]
            if not released:
                raise RuntimeError("the lock was not held by this session")
        except Exception as exc:
            # Ending the session is the one release that cannot fail.
            log.warning("advisory unlock of %s failed (%s); closing its connection", self.name, exc)
            _local.conn = (None, None)
            _close(conn)


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
                try:
                    renewed = JobLease.objects.filter(job=self.name, holder=self.holder).update(
                        expires_at=Now() + self.lease
                    )
                except Exception as exc:  # the database is away for a moment: the next turn tries again
                    log.warning("lease of job %s not renewed: %s", self.name, exc)
                    connection.close()
                    continue
                if not renewed:
                    self.lost = True
                    log.error("lease of job %s was lost by %s", self.name, self.holder)
                    return
        finally:
            connection.close()

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with transaction.atomic():
            _skip_flush()
            JobLease.objects.filter(job=self.name, holder=self.holder).delete()


def _skip_flush() -> None:
    # Taking and freeing a lease need not wait for the WAL flush. A database crash could lose
    # the last such commit: a lost lease is what an advisory lock suffers in the same crash
    # (the server's sessions end), and a lost release only waits for the lease's expiry.
    with connection.cursor() as cursor:
        skip_commit_flush(cursor)


def try_advisory(name: str) -> AdvisoryLock | None:
    if name in _held():
        # Session advisory locks are re-entrant; a second run in this thread must still lose.
        return None
    kept = _keep_connections
    conn = _kept_connection() if kept else _new_connection()
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", [_ADVISORY_NAMESPACE, advisory_key(name)]
            )
            acquired = cursor.fetchone()[0]
    except Exception:
        if kept:
            _local.conn = (None, None)
        _close(conn)
        raise
    if not acquired:
        if not kept:
            _close(conn)
        return None
    _held().add(name)
    return AdvisoryLock(name, conn, kept)


def try_lease(name: str, lease: timedelta, holder: str | None = None) -> LeaseLock | None:
    holder = holder or holder_id()
    try:
        with transaction.atomic():
            _skip_flush()
            JobLease.objects.create(job=name, holder=holder, acquired_at=Now(), expires_at=Now() + lease)
    except IntegrityError:
        # Take over only a lease whose holder stopped renewing it.
        taken = JobLease.objects.filter(job=name, expires_at__lt=Now()).update(
            holder=holder, acquired_at=Now(), expires_at=Now() + lease
        )
        if not taken:
            return None
    return LeaseLock(name, holder, lease)


def try_acquire(name: str, lease: timedelta | None = None, holder: str | None = None) -> JobLock | None:
    """Take the job's lock without waiting; None when another run holds it.

    `lease` (default JOB_LOCK_LEASE) is how long a lease row lasts unrenewed where
    the lock is one; an advisory lock lasts as long as its session.
    """
    if session_locks_hold():
        return try_advisory(name)
    return try_lease(name, lease or settings.JOB_LOCK_LEASE, holder)
