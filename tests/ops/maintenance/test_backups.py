"""db_backup: verified files, restore into a scratch database, corruption, retention, the restore path,
and what `restore_backup --replace` may drop: its own untouched copy, anything else only with its name typed."""
import hashlib
import os
import stat
from datetime import datetime, timedelta
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from ops.maintenance import backups
from ops.maintenance.backups import BackupError
from ops.maintenance.models import Backup
from ops.runtime.models import JobRun
from ops.runtime.runner import run_job
from tests.factories import CartFactory, EnrollmentFactory, PaymentFactory

pytestmark = pytest.mark.postgres


def seed_checkout():
    CartFactory.create_batch(5)
    PaymentFactory.create_batch(3)
    EnrollmentFactory.create_batch(2)


def source_counts():
    with connection.cursor() as cursor:
        return backups._count_rows(cursor, connection.ops.quote_name)


def drop_database(name):
    backups._pg_drop_database(name)


@pytest.mark.django_db(transaction=True)
def test_backup_is_private_verified_and_restores_to_the_same_row_counts(backup_dir):
    # given
    seed_checkout()
    expected = source_counts()

    # when
    run = run_job("db_backup", params={"restore_check": True}, enqueue_followups=False)

    # then
    assert run.status == JobRun.Status.SUCCESS, run.error
    backup = Backup.objects.get()
    path = backup_dir / backup.filename
    assert backup.status == Backup.Status.OK
    assert stat.S_IMODE(os.stat(backup_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert backup.size_bytes == path.stat().st_size
    assert backup.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert backup.toc_entries > 10
    # the backup holds the run's own ledger row, written before the dump started
    assert backup.row_counts == {**expected, "ops.JobRun": 1}
    assert expected["carts.Cart"] == 5 and expected["payments.Payment"] == 3
    assert backup.restore_check["ok"] is True
    assert backup.restore_check["rows"] == sum(expected.values()) + 1
    # nothing but the finished file is left behind, and the scratch database is gone
    assert [p.name for p in backup_dir.iterdir()] == [backup.filename]
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_database WHERE datname LIKE %s", ["%_restore_check"])
        assert cursor.fetchone()[0] == 0


@pytest.mark.django_db(transaction=True)
def test_restore_backup_command_restores_into_a_new_database(backup_dir, capsys):
    # given
    seed_checkout()
    backup = backups.backup_create()
    target = connection.settings_dict["NAME"] + "_restored"
    try:
        # when
        call_command("restore_backup", str(backup.pk), "--database", target, "--replace")
        # then
        out = capsys.readouterr().out
        assert "row counts match" in out
        assert "carts.Cart" in out
    finally:
        drop_database(target)


@pytest.fixture
def restore_target_name():
    """A database name for restores, dropped after the test whatever it holds."""
    name = connection.settings_dict["NAME"] + "_target"
    drop_database(name)
    yield name
    drop_database(name)


def restore(backup, database, **options) -> str:
    out = StringIO()
    call_command("restore_backup", str(backup.pk), "--database", database, stdout=out, **options)
    return out.getvalue()


def sql_in(database: str, sql: str):
    conn = backups._pg_connect_to(database)
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchone() if cursor.description else None
    finally:
        conn.commit()
        conn.close()


@pytest.mark.django_db(transaction=True)
def test_replace_refuses_a_database_restore_did_not_make_until_its_name_is_typed(backup_dir, restore_target_name):
    # given a database someone else made, holding a row
    seed_checkout()
    backup = backups.backup_create()
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {connection.ops.quote_name(restore_target_name)}")
    sql_in(restore_target_name, "CREATE TABLE precious (id int); INSERT INTO precious VALUES (1)")

    # when --replace is asked without the name
    with pytest.raises(CommandError) as refused:
        restore(backup, restore_target_name, replace=True)

    # then one line names the database and its size, and it is left as it was
    message = str(refused.value)
    print(message)
    assert refused.value.returncode == 2 and "\n" not in message
    assert message.startswith(f"--replace would drop database {restore_target_name!r} (")
    assert " MB, 1 table)" in message and "restore_backup did not make it" in message
    assert message.endswith(f"to do it anyway add --yes-destroy {restore_target_name}")
    assert sql_in(restore_target_name, "SELECT count(*) FROM precious") == (1,)

    # when the name is typed
    out = restore(backup, restore_target_name, replace=True, yes_destroy=restore_target_name)

    # then it said what it dropped, and the backup is there instead
    assert out.startswith(f"dropping database {restore_target_name!r} (") and "row counts match" in out
    assert sql_in(restore_target_name, "SELECT to_regclass('precious')") == (None,)


@pytest.mark.django_db(transaction=True)
def test_replace_takes_its_own_untouched_copy_but_not_one_written_to_since(backup_dir, restore_target_name):
    # given a copy restore_backup made of a backup
    seed_checkout()
    backup = backups.backup_create()
    restore(backup, restore_target_name)

    # when it is replaced by the same backup
    out = restore(backup, restore_target_name, replace=True)

    # then no name is needed: the backup holds all it held
    assert out.startswith(f"replacing database {restore_target_name!r} (")
    assert "restored from backup" in out and "unchanged since" in out

    # given the copy is then written to
    sql_in(restore_target_name, "DELETE FROM orders_enrollment WHERE id = (SELECT min(id) FROM orders_enrollment)")

    # then replacing it needs its name again
    with pytest.raises(CommandError) as refused:
        restore(backup, restore_target_name, replace=True)
    assert refused.value.returncode == 2
    assert f"it was restored from backup {backup.pk} and has been written to since" in str(refused.value)


@pytest.mark.django_db(transaction=True)
def test_restore_refuses_the_live_database(backup_dir):
    backup = backups.backup_create()
    with pytest.raises(BackupError, match="live database"):
        backups.backup_restore(backup, database=connection.settings_dict["NAME"])


@pytest.mark.django_db(transaction=True)
def test_a_corrupted_backup_is_detected(backup_dir):
    # given a good backup whose file is then damaged in the middle
    seed_checkout()
    backup = backups.backup_create()
    path = backup_dir / backup.filename
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    # when / then
    with pytest.raises(BackupError, match="SHA-256 differs"):
        backups.backup_verify(backup)
    with pytest.raises(CommandError, match="SHA-256 differs"):
        call_command("restore_backup", str(backup.pk), "--database", "never_created")


@pytest.mark.django_db(transaction=True)
def test_a_file_that_is_not_an_archive_fails_the_archive_check(backup_dir):
    # given a damaged file whose recorded checksum was (wrongly) updated to match it
    backup = backups.backup_create()
    path = backup_dir / backup.filename
    path.write_bytes(b"PGDMP" + b"\x00garbage" * 100)
    backup.size_bytes = path.stat().st_size
    backup.sha256 = backups.file_sha256(path)

    # when / then: pg_restore --list refuses it
    with pytest.raises(BackupError, match="pg_restore exited"):
        backups.backup_verify(backup)


@pytest.mark.django_db(transaction=True)
def test_a_failed_dump_is_recorded_and_leaves_no_file(backup_dir, monkeypatch, tmp_path):
    # given a machine where pg_dump cannot be found
    monkeypatch.setenv("PATH", str(tmp_path))

    # when
    with pytest.raises(BackupError, match="pg_dump is not installed"):
        backups.backup_create()

    # then
    failed = Backup.objects.get()
    assert failed.status == Backup.Status.FAILED
    assert "pg_dump is not installed" in failed.error
    assert list(backup_dir.iterdir()) == []


def test_the_password_goes_through_the_environment_not_the_command_line(monkeypatch):
    monkeypatch.setitem(connection.settings_dict, "PASSWORD", "s3cret-pw")
    command = backups.pg_dump_command(backups.Path("/tmp/x.dump"))
    assert not any("s3cret-pw" in part for part in command)
    assert "--no-password" in command
    assert backups.pg_client_env()["PGPASSWORD"] == "s3cret-pw"


@pytest.mark.django_db
def test_retention_keeps_the_newest_backup_of_each_recent_day_and_week(backup_dir, settings):
    # given two backups a day (10:00 and 22:00 local) over 30 days ending Wed 2026-03-25
    settings.BACKUP_KEEP_DAILY = 3
    settings.BACKUP_KEEP_WEEKLY = 3
    zone = ZoneInfo(settings.CHECKOUT_TIME_ZONE)
    backups.backup_dir()
    made = {}
    last_day = datetime(2026, 3, 25, tzinfo=zone)
    for days_ago in range(30):
        for hour in (10, 22):
            at = (last_day - timedelta(days=days_ago)).replace(hour=hour)
            name = f"b-{at:%m%d-%H}.dump"
            (backup_dir / name).write_bytes(b"x" * 10)
            made[name] = Backup.objects.create(
                filename=name, vendor="postgresql", status=Backup.Status.OK, started_at=at, size_bytes=10,
            )
    failed = Backup.objects.create(vendor="postgresql", status=Backup.Status.FAILED, started_at=last_day)
    stale_partial = backup_dir / (backups.PARTIAL_PREFIX + "crashed")
    stale_partial.write_bytes(b"half")
    old = (datetime.now() - timedelta(days=1)).timestamp()
    os.utime(stale_partial, (old, old))

    # when
    report = backups.backup_prune()

    # then: daily = the 22:00 backups of Mar 25, 24, 23; weekly = the newest of the ISO weeks
    # of Mar 23-29 (Mar 25), Mar 16-22 (Mar 22) and Mar 9-15 (Mar 15)
    kept = set(Backup.objects.filter(status=Backup.Status.OK).values_list("filename", flat=True))
    assert kept == {"b-0325-22.dump", "b-0324-22.dump", "b-0323-22.dump", "b-0322-22.dump", "b-0315-22.dump"}
    assert {p.name for p in backup_dir.iterdir()} == kept
    assert report == {"backups_pruned": 55, "bytes_freed": 550, "partials_removed": 1}
    assert Backup.objects.filter(pk=failed.pk).exists()

    # and a second run changes nothing
    assert backups.backup_prune() == {"backups_pruned": 0, "bytes_freed": 0, "partials_removed": 0}


@pytest.mark.django_db
def test_retention_dry_run_deletes_nothing(backup_dir, settings):
    settings.BACKUP_KEEP_DAILY = 1
    settings.BACKUP_KEEP_WEEKLY = 0
    backups.backup_dir()
    for name, days_ago in (("new.dump", 0), ("old.dump", 1)):
        (backup_dir / name).write_bytes(b"x")
        Backup.objects.create(
            filename=name, vendor="postgresql", status=Backup.Status.OK, size_bytes=1,
            started_at=datetime.now(ZoneInfo("UTC")) - timedelta(days=days_ago),
        )
    assert backups.backup_prune(dry_run=True)["backups_pruned"] == 1
    assert Backup.objects.count() == 2 and len(list(backup_dir.iterdir())) == 2
