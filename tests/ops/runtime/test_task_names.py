"""Snapshot of every registered Celery task name.

Queued messages and beat rows refer to tasks by name: a rename strands them. This
list is the contract; a new task or job is added to it on purpose.
"""
from checkout.celery import app
from ops.runtime.registry import JOB_TASK_PREFIX, all_jobs

TASK_NAMES = {
    # jobs (ops.runtime.registry: "jobs.<name>")
    "jobs.cache_health",
    "jobs.cart_cleanup",
    "jobs.daily_analytics",
    "jobs.db_backup",
    "jobs.db_cleanup",
    "jobs.db_monitor",
    "jobs.db_optimize",
    "jobs.email_service_health",
    "jobs.order_cleanup",
    "jobs.payment_gateway_health",
    "jobs.payment_sync",
    "jobs.webhook_health",
    "jobs.weekly_analytics",
    # background tasks (ops.runtime.tasks.background_task)
    "analytics_track",
    "cache_cleanup",
    "email_send",
    "enrollment_create",
    "notification_send",
    "payment_failure_notify",
    "payment_retry",
    "webhook_event_process",
    # the runtime's own
    "ops.alerts_evaluate",
    "ops.job_chunk",
    "ops.outbox_relay",
}



def _defined_in_tests(name: str) -> bool:
    """Jobs and tasks that test modules register for themselves are not part of the contract."""
    if name.startswith(JOB_TASK_PREFIX):
        job = all_jobs().get(name[len(JOB_TASK_PREFIX):])
        module = job.func.__module__ if job else ""
    else:
        module = getattr(app.tasks[name].run, "__module__", "")
    return module.startswith("tests.")


def test_registered_task_names_match_the_snapshot():
    app.loader.import_default_modules()
    registered = {
        name for name in app.tasks if not name.startswith("celery.") and not _defined_in_tests(name)
    }

    added = sorted(registered - TASK_NAMES)
    gone = sorted(TASK_NAMES - registered)
    message = []
    if added:
        message.append(
            "new task names are registered; if that is intended, add these lines to TASK_NAMES in "
            "tests/ops/runtime/test_task_names.py:\n" + "\n".join(f'    "{name}",' for name in added)
        )
    if gone:
        message.append(
            "these task names are no longer registered; messages already queued or beat rows that "
            "use them would be stranded. Restore the names, or (after draining queues and syncing "
            "schedules) remove these lines from TASK_NAMES in tests/ops/runtime/test_task_names.py:\n"
            + "\n".join(f'    "{name}",' for name in gone)
        )
    assert not message, "\n\n".join(message)
