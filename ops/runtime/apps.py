from importlib import import_module

from django.apps import AppConfig
from django.conf import settings
from django.utils.module_loading import autodiscover_modules


class RuntimeConfig(AppConfig):
    """The job runtime. Its label stays `ops`: the tables, permissions and admin URLs are ops_*."""

    name = "ops.runtime"
    label = "ops"
    verbose_name = "Operations"

    def ready(self) -> None:
        # The Celery side first: it watches the registry and makes each job's task as the job registers.
        import_module("ops.runtime.tasks")
        # Every app's tasks.py declares its background tasks and their outbox subscriptions,
        # and its jobs.py registers its jobs (and so their Celery tasks).
        autodiscover_modules("tasks", "jobs")
        for module in settings.CHECKOUT_EXTRA_JOB_MODULES:
            import_module(module)
