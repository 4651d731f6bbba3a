from importlib import import_module

from django.apps import AppConfig
from django.conf import settings
from django.utils.module_loading import autodiscover_modules


class OpsConfig(AppConfig):
    name = "ops"
    verbose_name = "Operations"

    def ready(self) -> None:
        # Every app's jobs.py registers its jobs (and their Celery tasks).
        autodiscover_modules("jobs")
        for module in settings.CHECKOUT_EXTRA_JOB_MODULES:
            import_module(module)
        # Tasks of the runtime itself (outbox relay, alert evaluation).
        import_module("ops.tasks")
        import_module("ops.alerts")
