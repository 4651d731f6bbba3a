from celery.signals import heartbeat_sent
from django.apps import AppConfig

from ops.maintenance.workers import note_heartbeat


class MaintenanceConfig(AppConfig):
    """Database upkeep (backups, optimize, cleanup, monitor) and dependency health results."""

    name = "ops.maintenance"
    label = "maintenance"
    verbose_name = "Maintenance and health"

    def ready(self) -> None:
        # Connected before any worker starts: celery only sends the signal if it has receivers then.
        heartbeat_sent.connect(note_heartbeat, weak=False, dispatch_uid="maintenance.note_heartbeat")
        from ops.maintenance import alerting  # noqa: F401  (registers the dependency alert rules)
