"""Admin for backups, database snapshots and dependency health results (read-only records).

A backup row is never deleted here: db_cleanup's retention deletes a backup's file with its
row, and a row deleted alone would leave a file nobody accounts for.
"""
from django.contrib import admin, messages
from django.template.defaultfilters import filesizeformat

from checkout.admin import ReadOnlyAdmin

from ops.maintenance.backups import BackupError, backup_verify
from ops.maintenance.models import Backup, DbSnapshot, HealthCheck, JobRunTally
from ops.runtime.admin import link_result

link_result("db_backup", "backup_id", Backup)
link_result("db_monitor", "snapshot_id", DbSnapshot)

# Verifying reads the file and stamps the row's verified_at: a change of the backup row.
VERIFY_PERMISSION = "maintenance.change_backup"


@admin.register(Backup)
class BackupAdmin(ReadOnlyAdmin):
    list_display = ("started_at", "status", "filename", "size", "duration_ms", "verified_at", "restore_ok")
    list_filter = ("status", "vendor")
    search_fields = ("filename", "sha256")
    date_hierarchy = "started_at"
    actions = ["verify"]

    @admin.display(description="size", ordering="size_bytes")
    def size(self, obj):
        return filesizeformat(obj.size_bytes) if obj.size_bytes is not None else "-"

    @admin.display(description="restore check", boolean=True)
    def restore_ok(self, obj):
        return obj.restore_check.get("ok") if obj.restore_check else None

    def has_verify_permission(self, request) -> bool:
        return request.user.has_perm(VERIFY_PERMISSION)

    @admin.action(description="Verify the selected backups (checksum and archive)", permissions=["verify"])
    def verify(self, request, queryset):
        for backup in queryset:
            try:
                entries = backup_verify(backup)
            except BackupError as exc:
                self.log_change(request, backup, f"Verification failed: {exc}")
                self.message_user(request, str(exc), messages.ERROR)
            else:
                self.log_change(request, backup, f"Verified: size and SHA-256 as recorded, {entries} archive entries read")
                self.message_user(request, f"Backup {backup.pk} verified", messages.SUCCESS)


@admin.register(DbSnapshot)
class DbSnapshotAdmin(ReadOnlyAdmin):
    list_display = ("taken_at", "vendor", "database_size", "connections", "max_connections", "breach_count")
    date_hierarchy = "taken_at"

    @admin.display(description="database size", ordering="database_bytes")
    def database_size(self, obj):
        return filesizeformat(obj.database_bytes) if obj.database_bytes is not None else "-"

    @admin.display(description="thresholds passed")
    def breach_count(self, obj):
        return len(obj.breaches)


@admin.register(HealthCheck)
class HealthCheckAdmin(ReadOnlyAdmin):
    list_display = ("checked_at", "service", "status", "latency_ms")
    list_filter = ("service", "status")
    date_hierarchy = "checked_at"


@admin.register(JobRunTally)
class JobRunTallyAdmin(ReadOnlyAdmin):
    list_display = ("job", "status", "runs", "finished", "duration_ms")
    list_filter = ("status",)
    search_fields = ("job",)
