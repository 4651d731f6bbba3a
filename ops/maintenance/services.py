"""Writes of the maintenance app."""
from ops.maintenance.models import HealthCheck


def health_record(*, service: str, status: str, latency_ms: float | None = None, detail: dict | None = None) -> HealthCheck:
    """Store one health result of an external dependency; /health/ reads the latest per service."""
    if status not in HealthCheck.Status.values:
        raise ValueError(f"unknown health status {status!r}")
    return HealthCheck.objects.create(
        service=service, status=status, latency_ms=latency_ms, detail=detail or {}
    )
