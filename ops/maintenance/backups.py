"""Database backups: written, checked, restorable and pruned.

PostgreSQL is dumped by `pg_dump --format=custom`; SQLite is copied with its
online backup API. Files go to settings.BACKUP_DIR (directory 0700, files 0600)
under a temporary name and are renamed only once complete and verified, so a
file with a final name is always a whole, readable backup. The password
reaches pg_dump/pg_restore through PGPASSWORD in the child's environment, never
on a command line or in a log line.

Restore (documented in ops/maintenance/RESTORE.md): `manage.py restore_backup ID
--database NAME` checks the file's SHA-256, restores into a new database and
compares the row counts recorded at backup time. A restored database is marked as
such (PostgreSQL: its comment; SQLite: its header's application id and user version),
so that a later restore may replace it while it is still that backup's copy, and
nothing else without the operator typing its name.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from django.apps import apps
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.utils import timezone

from checkout import db
from checkout.timezones import local_zone
from ops.maintenance.models import Backup

log = logging.getLogger(__name__)

# The tables whose row counts a restore must give back.
MAIN_MODELS = (
    "auth.User",
    "orders.Internship",
    "carts.Cart",
    "orders.Order",
    "orders.Enrollment",
    "payments.Payment",
    "payments.WebhookEvent",
    "ops.JobRun",
)
PARTIAL_PREFIX = ".partial-"
# How a restore marks the database it made: PostgreSQL's comment on the database (followed by
# the backup's id), and in SQLite's header an application id of our own ("CHKR") with the id
# in user_version. Neither changes a table, so the restored rows stay the backup's.
RESTORED_MARK = "restored by restore_backup from backup "
SQLITE_RESTORED_APPLICATION_ID = 0x43484B52


class BackupError(Exception):
    """A backup, its verification or a restore did not succeed (the message says why)."""


def backup_dir() -> Path:
    path = Path(settings.BACKUP_DIR)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # An existing directory is tightened too: backups hold every customer's data.
    os.chmod(path, 0o700)
    return path


def backup_path(backup: Backup) -> Path:
    return Path(settings.BACKUP_DIR) / backup.filename


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def main_tables() -> dict[str, str]:
    """Model label -> table name of the tables compared after a restore."""
    return {label: apps.get_model(label)._meta.db_table for label in MAIN_MODELS}


def _database_name() -> str:
    return str(connections[DEFAULT_DB_ALIAS].settings_dict["NAME"])


def _count_rows(cursor, quote) -> dict[str, int]:
    tables = main_tables()
    # One round trip for every table.
    cursor.execute(
        "SELECT " + ", ".join(f"(SELECT count(*) FROM {quote(table)})" for table in tables.values())
    )
    return dict(zip(tables, (int(n) for n in cursor.fetchone())))


# --- PostgreSQL -------------------------------------------------------------------


def _pg_settings(alias: str = DEFAULT_DB_ALIAS) -> dict:
    return connections[alias].settings_dict


def pg_client_env(alias: str = DEFAULT_DB_ALIAS) -> dict[str, str]:
    """Environment for pg_dump/pg_restore: the password travels here, not in argv."""
    db = _pg_settings(alias)
    env = dict(os.environ)
    env.pop("PGPASSWORD", None)
    if db.get("PASSWORD"):
        env["PGPASSWORD"] = str(db["PASSWORD"])
    env["PGCONNECT_TIMEOUT"] = str(db.get("OPTIONS", {}).get("connect_timeout", 10))
    return env


def pg_connection_args(alias: str = DEFAULT_DB_ALIAS) -> list[str]:
    db = _pg_settings(alias)
    args = ["--no-password"]
    if db.get("HOST"):
        args += ["--host", str(db["HOST"])]
    if db.get("PORT"):
        args += ["--port", str(db["PORT"])]
    if db.get("USER"):
        args += ["--username", str(db["USER"])]
    return args


def pg_dump_command(path: Path, *, snapshot: str | None = None, alias: str = DEFAULT_DB_ALIAS) -> list[str]:
    """The pg_dump command line of a backup (bench/backup.py runs it bare as the baseline)."""
    command = ["pg_dump", "--format=custom", f"--file={path}", *pg_connection_args(alias)]
    if snapshot:
        command.append(f"--snapshot={snapshot}")
    return [*command, _pg_settings(alias)["NAME"]]


def _stderr_tail(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "no output"


def _run_client(command: list[str], *, timeout: float) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(
            command, env=pg_client_env(), capture_output=True, text=True, timeout=timeout,
        )
    except FileNotFoundError:
        raise BackupError(f"{command[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise BackupError(f"{command[0]} did not finish within {timeout:.0f}s") from None
    if done.returncode != 0:
        raise BackupError(f"{command[0]} exited with {done.returncode}: {_stderr_tail(done.stderr)}")
    return done


def _pg_toc_entries(path: Path) -> int:
    """`pg_restore --list`: reads the archive's table of contents; fails on a damaged file."""
    done = _run_client(["pg_restore", "--list", str(path)], timeout=settings.BACKUP_TIMEOUT.total_seconds())
    entries = sum(1 for line in done.stdout.splitlines() if line.strip() and not line.startswith(";"))
    if entries == 0:
        raise BackupError("pg_restore --list found no entries in the archive")
    return entries


def _dump_postgres(path: Path) -> dict[str, int]:
    """Dump into `path`; return the main tables' row counts at the dump's own snapshot.

    A repeatable-read transaction exports its snapshot, pg_dump dumps that very
    snapshot, and the counts are taken in the same transaction while pg_dump
    runs: they are exactly what a restore must give back.
    """
    conn = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        conn.ensure_connection()
        conn.set_autocommit(False)
        with conn.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cursor.execute("SELECT pg_export_snapshot()")
            snapshot = cursor.fetchone()[0]
            try:
                dump = subprocess.Popen(
                    pg_dump_command(path, snapshot=snapshot), env=pg_client_env(),
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                )
            except FileNotFoundError:
                raise BackupError("pg_dump is not installed") from None
            try:
                counts = _count_rows(cursor, conn.ops.quote_name)
                _, stderr = dump.communicate(timeout=settings.BACKUP_TIMEOUT.total_seconds())
            except BaseException:
                dump.kill()
                dump.wait()
                raise
        if dump.returncode != 0:
            raise BackupError(f"pg_dump exited with {dump.returncode}: {_stderr_tail(stderr)}")
        return counts
    except subprocess.TimeoutExpired:
        raise BackupError(f"pg_dump did not finish within {settings.BACKUP_TIMEOUT}") from None
    except DatabaseError as exc:
        raise BackupError(f"cannot read the database for the backup: {exc}".strip()) from None
    finally:
        conn.close()


def _admin_connection():
    """A fresh autocommit connection: CREATE/DROP DATABASE refuse to run in a transaction."""
    conn = connections.create_connection(DEFAULT_DB_ALIAS)
    conn.ensure_connection()
    conn.set_autocommit(True)
    return conn


def _pg_drop_database(name: str) -> None:
    conn = _admin_connection()
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {conn.ops.quote_name(name)} WITH (FORCE)")
    finally:
        conn.close()


def _pg_connect_to(database: str):
    target = connections.create_connection(DEFAULT_DB_ALIAS)
    target.settings_dict = {**target.settings_dict, "NAME": database}
    return target


def _pg_restore(path: Path, database: str, *, replace: bool) -> dict[str, int]:
    conn = _admin_connection()
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database])
            if cursor.fetchone():
                if not replace:
                    raise BackupError(f"database {database!r} already exists (restore into a new one)")
                cursor.execute(f"DROP DATABASE {conn.ops.quote_name(database)} WITH (FORCE)")
            cursor.execute(f"CREATE DATABASE {conn.ops.quote_name(database)} TEMPLATE template0")
    finally:
        conn.close()
    _run_client(
        ["pg_restore", "--exit-on-error", "--no-owner", "--no-privileges", "--single-transaction",
         *pg_connection_args(), f"--dbname={database}", str(path)],
        timeout=settings.BACKUP_TIMEOUT.total_seconds(),
    )
    target = _pg_connect_to(database)
    try:
        with target.cursor() as cursor:
            return _count_rows(cursor, target.ops.quote_name)
    finally:
        target.close()


def _pg_mark_restored(database: str, backup_id: int) -> None:
    conn = _admin_connection()
    try:
        with conn.cursor() as cursor:
            # COMMENT takes no bind parameters; the text is ours and holds no quote.
            cursor.execute(f"COMMENT ON DATABASE {conn.ops.quote_name(database)} IS '{RESTORED_MARK}{backup_id}'")
    finally:
        conn.close()


def _pg_target(database: str) -> RestoreTarget | None:
    conn = _admin_connection()
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT pg_database_size(oid), shobj_description(oid, 'pg_database') FROM pg_database "
                "WHERE datname = %s", [database],
            )
            row = cursor.fetchone()
    finally:
        conn.close()
    if row is None:
        return None
    size, comment = row
    mark = re.fullmatch(re.escape(RESTORED_MARK) + r"(\d+)", comment or "")
    target = _pg_connect_to(database)
    try:
        with target.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
            )
            tables = cursor.fetchone()[0]
            counts = _counts_or_none(cursor, target.ops.quote_name) if mark else None
    except DatabaseError as exc:
        raise BackupError(f"cannot read the database {database!r}: {exc}".strip()) from None
    finally:
        target.close()
    return RestoreTarget(
        f"database {database!r}", size, tables, int(mark.group(1)) if mark else None, counts,
    )


# --- SQLite -----------------------------------------------------------------------


def _copy_sqlite(path: Path) -> dict[str, int]:
    source = sqlite3.connect(_database_name(), timeout=20)
    target = sqlite3.connect(path)
    try:
        # One step: the copy is a consistent snapshot even while others write.
        source.backup(target)
    finally:
        source.close()
        target.close()
    return _sqlite_counts(path)


def _sqlite_quote(name: str) -> str:
    return '"%s"' % name.replace('"', '""')


def _sqlite_counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return _count_rows(conn.cursor(), _sqlite_quote)
    finally:
        conn.close()


def _sqlite_mark_restored(path: Path, backup_id: int) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute(f"PRAGMA application_id = {SQLITE_RESTORED_APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {int(backup_id)}")
        conn.commit()
    finally:
        conn.close()


def _sqlite_target(path: Path) -> RestoreTarget | None:
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        restored_from = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        mark = application_id == SQLITE_RESTORED_APPLICATION_ID
        counts = _counts_or_none(conn.cursor(), _sqlite_quote) if mark else None
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} is not a readable SQLite database: {exc}") from None
    finally:
        conn.close()
    return RestoreTarget(f"file {str(path)!r}", path.stat().st_size, tables, restored_from if mark else None, counts)


def _sqlite_check(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchall()
        tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"not a readable SQLite database: {exc}") from None
    finally:
        conn.close()
    if result != [("ok",)]:
        raise BackupError(f"SQLite integrity check failed: {result[0][0]}")
    return tables


# --- the backup lifecycle -----------------------------------------------------------


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_file(path: Path, vendor: str) -> int:
    if vendor == db.POSTGRESQL:
        return _pg_toc_entries(path)
    return _sqlite_check(path)


def backup_create(*, restore_check: bool = False) -> Backup:
    """Write, verify and record a backup of the default database; BackupError when any step fails.

    The Backup row is written first and marked failed on error, so a failed
    night is visible in the admin too.
    """
    vendor = db.vendor()
    if vendor not in db.SUPPORTED:
        raise BackupError(f"no backup method for {vendor}")
    backup = Backup.objects.create(vendor=vendor, status=Backup.Status.RUNNING)
    started = time.monotonic()
    directory = backup_dir()
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=PARTIAL_PREFIX)  # created 0600
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        counts = _dump_postgres(tmp) if vendor == db.POSTGRESQL else _copy_sqlite(tmp)
        os.chmod(tmp, 0o600)
        _fsync(tmp)
        entries = _check_file(tmp, vendor)
        stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
        suffix = "dump" if vendor == db.POSTGRESQL else "sqlite3"
        final = directory / f"{_database_label()}-{stamp}-{backup.pk}.{suffix}"
        os.replace(tmp, final)
        _fsync(directory)
        backup.filename = final.name
        backup.size_bytes = final.stat().st_size
        backup.sha256 = file_sha256(final)
        backup.row_counts = counts
        backup.toc_entries = entries
        backup.verified_at = timezone.now()
        backup.status = Backup.Status.OK
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        backup.status = Backup.Status.FAILED
        backup.error = f"{type(exc).__name__}: {exc}"[:4000]
        raise
    finally:
        backup.finished_at = timezone.now()
        backup.duration_ms = int((time.monotonic() - started) * 1000)
        backup.save()
    log.info(
        "backup=%s file=%s bytes=%s sha256=%s toc_entries=%s",
        backup.pk, backup.filename, backup.size_bytes, backup.sha256, backup.toc_entries,
    )
    if restore_check:
        backup_restore_check(backup)
    return backup


def _database_label() -> str:
    name = Path(_database_name()).stem if db.is_sqlite() else _database_name()
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:64] or "database"


def backup_verify(backup: Backup) -> int:
    """Check a stored backup: file present, size and SHA-256 as recorded, archive readable."""
    if backup.status != Backup.Status.OK or not backup.filename:
        raise BackupError(f"backup {backup.pk} is {backup.status}, not a usable backup")
    path = backup_path(backup)
    if not path.is_file():
        raise BackupError(f"backup {backup.pk}: file {backup.filename} is missing")
    size = path.stat().st_size
    if size != backup.size_bytes:
        raise BackupError(f"backup {backup.pk}: size {size} differs from the recorded {backup.size_bytes}")
    if file_sha256(path) != backup.sha256:
        raise BackupError(f"backup {backup.pk}: SHA-256 differs from the recorded one (file corrupted)")
    entries = _check_file(path, backup.vendor)
    Backup.objects.filter(pk=backup.pk).update(verified_at=timezone.now())
    return entries


@dataclass(frozen=True)
class RestoreTarget:
    """A database (or SQLite file) that exists where a restore was asked to go."""

    label: str  # "database 'x'" or "file '/path'"
    size_bytes: int
    tables: int
    # The backup it was restored from, when a restore made it; its main tables' row counts now.
    restored_from: int | None = None
    counts: dict[str, int] | None = None

    def describe(self) -> str:
        return f"{self.label} ({self.size_bytes / 1e6:,.1f} MB, {self.tables} table{'' if self.tables == 1 else 's'})"

    def is_copy_of(self, backup: Backup | None) -> bool:
        """A restore of that backup nobody has written to since: replacing it loses nothing the file lacks."""
        return (
            backup is not None and self.restored_from == backup.pk and self.counts is not None
            and self.counts == backup.row_counts
        )


def _counts_or_none(cursor, quote) -> dict[str, int] | None:
    try:
        return _count_rows(cursor, quote)
    except (DatabaseError, sqlite3.DatabaseError):  # not the project's schema: not a copy of a backup
        return None


def is_live_database(database: str, vendor: str) -> bool:
    live = _database_name()
    if vendor == db.POSTGRESQL:
        return database == live
    return Path(database).resolve() == Path(live).resolve()


def restore_target(database: str, vendor: str) -> RestoreTarget | None:
    """What is at `database` now (None when nothing is), for a restore of a `vendor` backup there."""
    if vendor == db.POSTGRESQL:
        return _pg_target(database)
    return _sqlite_target(Path(database))


def backup_restore(backup: Backup, *, database: str, replace: bool = False) -> dict[str, int]:
    """Restore `backup` into `database` (a new PostgreSQL database, or a SQLite file path).

    Verifies the file first; returns the restored row counts of the main tables.
    Never restores over the live database. `replace` drops what is at `database`:
    the caller decides whether it may (restore_backup asks the operator).
    """
    backup_verify(backup)
    if is_live_database(database, backup.vendor):
        raise BackupError("refusing to restore over the live database; restore into a new one")
    if backup.vendor == db.POSTGRESQL:
        counts = _pg_restore(backup_path(backup), database, replace=replace)
        _pg_mark_restored(database, backup.pk)
        return counts
    target = Path(database)
    if target.exists() and not replace:
        raise BackupError(f"{target} already exists (restore into a new file)")
    shutil.copyfile(backup_path(backup), target)
    os.chmod(target, 0o600)
    _sqlite_mark_restored(target, backup.pk)
    return _sqlite_counts(target)


def backup_restore_check(backup: Backup) -> dict:
    """Restore into a scratch database and compare the main tables' row counts with the backup's."""
    if backup.vendor == db.POSTGRESQL:
        scratch = f"{_database_name()}_restore_check"[:63]
    else:
        scratch = str(backup_dir() / f"{PARTIAL_PREFIX}restore-check-{backup.pk}.sqlite3")
    started = time.monotonic()
    try:
        restored = backup_restore(backup, database=scratch, replace=True)
    finally:
        if backup.vendor == db.POSTGRESQL:
            _pg_drop_database(scratch)
        else:
            Path(scratch).unlink(missing_ok=True)
    mismatched = {
        label: {"expected": expected, "restored": restored.get(label)}
        for label, expected in backup.row_counts.items()
        if restored.get(label) != expected
    }
    report = {
        "ok": not mismatched,
        "tables": len(restored),
        "rows": sum(restored.values()),
        "mismatched": mismatched,
        "duration_ms": int((time.monotonic() - started) * 1000),
    }
    backup.restore_checked_at = timezone.now()
    backup.restore_check = report
    Backup.objects.filter(pk=backup.pk).update(
        restore_checked_at=backup.restore_checked_at, restore_check=report
    )
    if mismatched:
        raise BackupError(f"backup {backup.pk} restored with different row counts: {mismatched}")
    return report


def backups_to_prune(now: datetime | None = None) -> list[Backup]:
    """Good backups outside the retention: keep the newest of each of the last
    BACKUP_KEEP_DAILY local days that have one, and of each of the last
    BACKUP_KEEP_WEEKLY ISO weeks."""
    zone = local_zone()
    days: set = set()
    weeks: set = set()
    prune = []
    good = Backup.objects.filter(status=Backup.Status.OK, started_at__lte=now or timezone.now())
    for backup in good.order_by("-started_at", "-pk"):
        day = backup.started_at.astimezone(zone).date()
        week = day.isocalendar()[:2]
        keep = False
        if day not in days:
            days.add(day)
            keep = keep or len(days) <= settings.BACKUP_KEEP_DAILY
        if week not in weeks:
            weeks.add(week)
            keep = keep or len(weeks) <= settings.BACKUP_KEEP_WEEKLY
        if not keep:
            prune.append(backup)
    return prune


def backup_prune(*, dry_run: bool = False) -> dict[str, int]:
    """Apply the retention: delete pruned backups' files and rows, and leftovers of crashed runs."""
    prune = backups_to_prune()
    directory = backup_dir()
    cutoff = time.time() - settings.BACKUP_TIMEOUT.total_seconds() * 2
    leftovers = [
        path for path in directory.glob(f"{PARTIAL_PREFIX}*")
        if path.is_file() and path.stat().st_mtime < cutoff
    ]
    freed = sum(path.stat().st_size for path in (backup_path(b) for b in prune) if path.is_file())
    if not dry_run:
        for backup in prune:
            backup_path(backup).unlink(missing_ok=True)
        Backup.objects.filter(pk__in=[b.pk for b in prune]).delete()
        for path in leftovers:
            path.unlink(missing_ok=True)
    return {"backups_pruned": len(prune), "bytes_freed": freed, "partials_removed": len(leftovers)}
