from django.apps import AppConfig


class MaintenanceConfig(AppConfig):
    """Database upkeep (backups, optimize, cleanup, monitor) and dependency health results."""

    name = "ops.maintenance"
    label = "maintenance"
    verbose_name = "Maintenance and health"
