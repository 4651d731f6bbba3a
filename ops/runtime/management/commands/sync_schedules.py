"""Copy the schedules declared in ops/runtime/schedules.py into django-celery-beat's tables (run on deploy)."""
from checkout import commands
from ops.runtime.services import schedules_sync


class Command(commands.Command):
    help = "Upsert the declared job schedules into django-celery-beat, keeping admin edits of unchanged ones."

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="report what would change, change nothing")

    def handle(self, *args, dry_run: bool = False, **options):
        report = schedules_sync(dry_run=dry_run)
        verb = "would be" if dry_run else ""
        for label, names in (
            ("created", report.created), ("updated", report.updated), ("disabled", report.disabled),
        ):
            for name in names:
                self.stdout.write(f"{name}: {verb + ' ' if verb else ''}{label}")
        for name in report.unregistered:
            self.stderr.write(self.style.WARNING(
                f"{name}: declared but not registered in this build; its row is left as it is"
            ))
        summary = (
            f"{len(report.created)} created, {len(report.updated)} updated, "
            f"{len(report.disabled)} disabled, {len(report.kept)} unchanged"
        )
        if not report.changed:
            self.stdout.write(f"Schedules already in sync: nothing changed ({len(report.kept)} unchanged).")
        else:
            self.stdout.write(("Dry run: " if dry_run else "") + summary + ".")
