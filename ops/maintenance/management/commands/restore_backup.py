"""Restore a recorded backup into a new database and check its row counts.

    python manage.py restore_backup            # lists the backups
    python manage.py restore_backup 42 --database checkout_restored
    python manage.py restore_backup 42 --database /tmp/restored.sqlite3   (SQLite)

The file's SHA-256 is checked first; the restored main tables must hold the row
counts recorded when the backup was taken. See ops/maintenance/RESTORE.md.

`--replace` drops what is at --database first, without asking only when it is a copy
an earlier restore made of this same backup and nobody has written to since; any other
database is named with its size and left alone unless `--yes-destroy <its name>` is given.
Exit status: 0 restored, 1 the restore failed, 2 usage error or a refused target.
"""
from django.core.management.base import CommandError
from django.utils import timezone

from checkout import commands
from checkout.commands import UsageError, add_destroy_confirmation, refuse_destruction
from ops.maintenance.backups import BackupError, backup_restore, is_live_database, restore_target
from ops.maintenance.models import Backup


class Command(commands.Command):
    help = "Restore backup ID into a new database (PostgreSQL) or file (SQLite) and compare row counts."

    def add_arguments(self, parser):
        parser.add_argument("backup_id", nargs="?", type=int, help="id of the Backup row (omit to list)")
        parser.add_argument("--database", help="the new database name (PostgreSQL) or file path (SQLite)")
        parser.add_argument(
            "--replace", action="store_true",
            help="drop the target first if it exists: a copy this command restored from the same backup, "
                 "untouched since; anything else needs --yes-destroy too",
        )
        add_destroy_confirmation(parser, what="--replace")

    def handle(self, *args, backup_id=None, database=None, replace=False, yes_destroy=None, **options):
        if backup_id is None:
            if database or replace or yes_destroy:
                raise UsageError("name the backup to restore (restore_backup with no arguments lists them)")
            for backup in Backup.objects.filter(status=Backup.Status.OK)[:50]:
                self.stdout.write(
                    f"{backup.pk:>6}  {timezone.localtime(backup.started_at):%Y-%m-%d %H:%M %Z}  {backup.size_bytes:>12}  {backup.filename}"
                )
            return
        if not database:
            raise UsageError("--database is required: the new database (or file) to restore into")
        if yes_destroy is not None and not replace:
            raise UsageError("--yes-destroy goes with --replace")
        backup = Backup.objects.filter(pk=backup_id).first()
        if backup is None:
            raise UsageError(f"no backup with id {backup_id} (restore_backup with no arguments lists them)")
        if backup.status != Backup.Status.OK:
            raise UsageError(f"backup {backup.pk} is {backup.status}, not a usable backup")
        if is_live_database(database, backup.vendor):
            raise UsageError(f"{database!r} is the live database; restore into a new one")
        try:
            self._make_room(backup, database, replace=replace, confirmation=yes_destroy)
            restored = backup_restore(backup, database=database, replace=replace)
        except BackupError as exc:
            raise CommandError(str(exc)) from None
        mismatched = {
            label: (expected, restored.get(label))
            for label, expected in backup.row_counts.items() if restored.get(label) != expected
        }
        for label, count in restored.items():
            self.stdout.write(f"{label:<28} {count:>12}")
        if mismatched:
            raise CommandError(f"restored, but row counts differ from the backup's: {mismatched}")
        self.stdout.write(self.style.SUCCESS(f"backup {backup.pk} restored into {database}; row counts match"))

    def _make_room(self, backup: Backup, database: str, *, replace: bool, confirmation: str | None) -> None:
        """Say what is at the target and whether it goes; refuse (UsageError) what may not."""
        target = restore_target(database, backup.vendor)
        if target is None:
            return
        if not replace:
            raise UsageError(f"{target.describe()} already exists; restore into a new one, or add --replace")
        if target.is_copy_of(backup):
            self.stdout.write(f"replacing {target.describe()}: restored from backup {backup.pk}, unchanged since")
            return
        if target.restored_from is not None:
            why = f"it was restored from backup {target.restored_from} and " + (
                "has been written to since" if target.restored_from == backup.pk else "is not this backup's copy"
            )
        else:
            why = "restore_backup did not make it"
        refuse_destruction(confirmation, database=database, damage=f"--replace would drop {target.describe()}", why=why)
        self.stdout.write(f"dropping {target.describe()}, as --yes-destroy confirms")
