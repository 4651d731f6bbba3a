"""Stored results of the dependency health jobs (read by /health/ instead of calling out)."""
from django.db import models
from django.utils import timezone


class HealthCheck(models.Model):
    class Status(models.TextChoices):
        OK = "ok"
        DEGRADED = "degraded"
        DOWN = "down"

    service = models.CharField(max_length=32)  # payment_gateway, email_service, cache, webhooks
    status = models.CharField(max_length=16, choices=Status.choices)
    latency_ms = models.FloatField(null=True, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    checked_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-checked_at"]
        indexes = [models.Index(fields=["service", "-checked_at"], name="healthcheck_service_idx")]

    def __str__(self) -> str:
        return f"{self.service} {self.status} at {self.checked_at:%Y-%m-%d %H:%M}"


class Backup(models.Model):
    """One database backup file written by db_backup, with what was checked about it."""

    class Status(models.TextChoices):
        RUNNING = "running"
        OK = "ok"
        FAILED = "failed"

    filename = models.CharField(max_length=255, blank=True)  # inside settings.BACKUP_DIR
    vendor = models.CharField(max_length=16)  # postgresql, sqlite
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    size_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveBigIntegerField(null=True, blank=True)
    # Rows of the main tables at the backup's snapshot: what a restore must give back.
    row_counts = models.JSONField(default=dict, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    toc_entries = models.PositiveIntegerField(null=True, blank=True)
    restore_checked_at = models.DateTimeField(null=True, blank=True)
    restore_check = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["status", "-started_at"], name="backup_status_started_idx")]

    def __str__(self) -> str:
        return f"{self.filename or 'backup'} ({self.status})"


class DbSnapshot(models.Model):
    """What db_monitor saw: sizes, dead tuples, connections, long queries, thresholds passed."""

    taken_at = models.DateTimeField(default=timezone.now, db_index=True)
    vendor = models.CharField(max_length=16)
    database_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    connections = models.PositiveIntegerField(null=True, blank=True)
    max_connections = models.PositiveIntegerField(null=True, blank=True)
    long_queries = models.JSONField(default=list, blank=True)
    tables = models.JSONField(default=list, blank=True)
    breaches = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-taken_at"]

    def __str__(self) -> str:
        return f"database snapshot {self.taken_at:%Y-%m-%d %H:%M}"


class JobRunTally(models.Model):
    """Job runs that db_cleanup pruned from the ledger, by job and status.

    /metrics adds these to the ledger's own counts, so its job counters never go
    down when old runs are pruned (Prometheus would read that as a reset).
    """

    job = models.CharField(max_length=64)
    status = models.CharField(max_length=16)
    runs = models.PositiveBigIntegerField(default=0)
    finished = models.PositiveBigIntegerField(default=0)
    duration_ms = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "status"], name="jobruntally_job_status_uniq")]

    def __str__(self) -> str:
        return f"{self.job} {self.status}: {self.runs} pruned runs"
