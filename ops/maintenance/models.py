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
