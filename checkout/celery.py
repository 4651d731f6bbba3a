"""The Celery application: JSON only, late acks, three queues.

`high` carries what a customer waits for (enrollments, notifications, payment
retries), `default` the rest of the background work, `maintenance` the long
database jobs, so a VACUUM never delays a payment.
"""
import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "checkout.settings")

app = Celery("checkout")
app.config_from_object("django.conf:settings", namespace="CELERY")

QUEUES = ("high", "default", "maintenance")
VISIBILITY_TIMEOUT = 3 * 60 * 60

app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_queues=[Queue(name) for name in QUEUES],
    task_default_queue="default",
    # Each task's queue is declared with the task (ops.runtime.tasks.background_task, @job).
    task_routes=("ops.runtime.dispatch.route_task",),
    # A task is acknowledged after it finishes, and given back to the queue when
    # the worker running it dies, so a killed worker loses nothing.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # No STARTED state: storing it happens before the task body, so a database that is
    # down then would fail, and so drop, a task that never ran. The run ledger says what runs.
    task_track_started=False,
    task_time_limit=60 * 60,
    task_soft_time_limit=55 * 60,
    worker_prefetch_multiplier=1,
    worker_send_task_events=True,
    # Redis redelivers unacknowledged messages after this: longer than any task's hard
    # time limit (the runtime refuses a job whose limit does not fit), so a slow run is
    # never delivered a second time while it still runs. A worker that died is noticed
    # much sooner by its runs' heartbeats (ops.runtime.sweep).
    # Queues are read in the order a worker lists them (-Q high,default): what a customer waits
    # for goes first, all of it. Redis otherwise reads round-robin, so a burst of high work would
    # take turns with a backlog of default work and drain at half speed.
    broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT, "queue_order_strategy": "priority"},
    broker_connection_retry_on_startup=True,
    result_expires=None,  # db_cleanup prunes results
)
app.autodiscover_tasks()
