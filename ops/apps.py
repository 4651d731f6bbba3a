from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class OpsConfig(AppConfig):
    name = "ops"
    verbose_name = "Operations"

    def ready(self) -> None:
        # Every app's jobs.py registers its jobs (and their Celery tasks).
        autodiscover_modules("jobs")
