"""Restore a recorded backup into a new database and check its row counts.

    python manage.py restore_backup            # lists the backups
    python manage.py restore_backup 42 --database checkout_restored
    python manage.py restore_backup 42 --database /tmp/restored.sqlite3   (SQLite)

The file's SHA-256 is checked first; the restored main tables must hold the row
counts recorded when the backup was taken. See ops/maintenance/RESTORE.md.
"""
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from ops.maintenance.backups import BackupError, backup_restore
from ops.maintenance.models import Backup


class Command(BaseCommand):
    help = "Restore backup ID into a new database (PostgreSQL) or file (SQLite) and compare row counts."

    def add_arguments(self, parser):
        parser.add_argument("backup_id", nargs="?", type=int, help="id of the Backup row (omit to list)")
        parser.add_argument("--database", help="the new database name (PostgreSQL) or file path (SQLite)")
        parser.add_argument(
            "--replace", action="store_true", help="drop and recreate the target if it exists"
        )

    def handle(self, *args, backup_id=None, database=None, replace=False, **options):
        if backup_id is None:
            for backup in Backup.objects.filter(status=Backup.Status.OK)[:50]:
                self.stdout.write(
                    f"{backup.pk:>6}  {timezone.localtime(backup.started_at):%Y-%m-%d %H:%M %Z}  {backup.size_bytes:>12}  {backup.filename}"
                )
            return
        if not database:
            raise CommandError("--database is required: the new database (or file) to restore into")
        backup = Backup.objects.filter(pk=backup_id).first()
        if backup is None:
            raise CommandError(f"no backup with id {backup_id}")
        try:
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
