"""The Celery application: JSON only, late acks, three queues.

`high` carries what a customer waits for (enrollments, notifications, payment
retries), `default` the rest of the background work, `maintenance` the long
database jobs, so a VACUUM never delays a payment. The broker is Redis or RabbitMQ,
whichever CELERY_BROKER_URL names; `broker_settings` holds what differs between them.
"""
import logging
import math
import os

import django
from celery import Celery, bootsteps
from celery.loaders.app import AppLoader
from kombu import Exchange, Queue
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
)

from checkout.env import stop_on_bad_configuration

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "checkout.settings")
log = logging.getLogger(__name__)


class Loader(AppLoader):
    """Celery's loader, with a bad setting stopping `celery worker` or `beat` with one line and exit 2.

    Celery reads the settings on first use of its configuration, and loads the apps (whose start-up
    imports what settings name) before importing task modules; both are done here under the guard.
    The apps are loaded before the Django fixup would load them inside a signal, which would log
    the error with a traceback first.
    """

    def config_from_object(self, obj, silent=False):
        with stop_on_bad_configuration():
            return super().config_from_object(obj, silent)

    def import_default_modules(self):
        with stop_on_bad_configuration():
            django.setup()
        return super().import_default_modules()


class Checkout(Celery):
    """Celery, with countdowns that work on RabbitMQ from any process.

    RabbitMQ delays a message by passing it through queues whose time to live is a power of two
    seconds (native delayed delivery, used with quorum queues): a delay is whole seconds there,
    and Celery refuses one under a second, so a retry's jittered countdown is rounded up. Those
    queues, their exchanges and their bindings to every queue of the app are declared by each
    worker before it consumes (DeclareQueues) and by any process before its first countdown, so
    that neither depends on another having started first on a new virtual host.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._declared_on: set[str] = set()  # broker URLs

    def send_task(self, name, args=None, kwargs=None, countdown=None, eta=None, **options):
        if countdown and uses_rabbitmq(self.conf.broker_url):
            countdown = math.ceil(countdown)
            if self.conf.broker_url not in self._declared_on:
                self.rabbitmq_declare()
        return super().send_task(name, args, kwargs, countdown=countdown, eta=eta, **options)

    def rabbitmq_declare(self) -> None:
        """Declare every queue of the app and the delay queues, and bind the one to the other.

        A worker's own set-up declares only the queues it reads (-Q), and fails to bind the
        others to the delay exchanges while no process has declared them.
        """
        with self.connection_for_write() as connection:
            declare_native_delayed_delivery_exchanges_and_queues(
                connection, self.conf.broker_native_delayed_delivery_queue_type
            )
            for queue in self.amqp.queues.values():
                queue(connection.default_channel).declare()
                bind_queue_to_native_delayed_delivery_exchange(connection, queue)
        self._declared_on.add(self.conf.broker_url)


class DeclareQueues(bootsteps.StartStopStep):
    """A worker on RabbitMQ declares every queue of the app before it starts consuming."""

    def start(self, worker):
        if not uses_rabbitmq(worker.app.conf.broker_url):
            return
        try:
            worker.app.rabbitmq_declare()
        except Exception as exc:  # the broker does not answer yet: the consumer waits for it (and a first
            # countdown declares what the consumer does not)
            log.warning("could not declare the queues on RabbitMQ yet: %s", exc)


app = Checkout("checkout", loader=f"{__name__}:Loader")
app.steps["worker"].add(DeclareQueues)
app.config_from_object("django.conf:settings", namespace="CELERY")

QUEUES = ("high", "default", "maintenance")
# How long a message may stay unacknowledged before the broker gives it to another worker:
# longer than any task's hard time limit (the runtime refuses a job whose limit does not fit),
# so a slow run is never delivered a second time while it still runs. A worker that died is
# noticed much sooner by its runs' heartbeats (ops.runtime.sweep). Redis is told here;
# RabbitMQ 3.10 takes it only from its own configuration (`consumer_timeout` in rabbitmq.conf,
# in milliseconds; the README's "Which broker" says so).
VISIBILITY_TIMEOUT = 3 * 60 * 60
RABBITMQ_SCHEMES = ("amqp://", "amqps://", "pyamqp://")


def uses_rabbitmq(url: str) -> bool:
    return url.startswith(RABBITMQ_SCHEMES)


def broker_settings(url: str) -> dict:
    """The settings that differ between the brokers, for the broker at `url`.

    RabbitMQ: every queue is a quorum queue (durable and replicated; the broker counts each
    message's deliveries), its messages are persistent and each publish waits for the broker's
    confirm, so a task the sender was told is queued survives a broker restart. Each queue has a
    topic exchange of its own name, which native delayed delivery needs to route a countdown's
    message back to its queue. Celery turns global QoS off for quorum queues (they have none), so
    a worker's prefetch of one counts per queue it consumes. RabbitMQ delivers from every queue a
    worker consumes, so the order of -Q means nothing there: `high` has workers of its own.

    Redis: queues are read in the order a worker lists them (-Q high,default), so what a customer
    waits for goes first, all of it. Redis otherwise reads round-robin, and a burst of high work
    would take turns with a backlog of default work and drain at half speed. A message not
    acknowledged within VISIBILITY_TIMEOUT is given to another worker.
    """
    if uses_rabbitmq(url):
        return {
            "task_queues": [
                Queue(name, Exchange(name, type="topic"), routing_key=name, queue_arguments={"x-queue-type": "quorum"})
                for name in QUEUES
            ],
            "task_default_delivery_mode": "persistent",
            "broker_transport_options": {"confirm_publish": True},
        }
    return {
        "task_queues": [Queue(name) for name in QUEUES],
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT, "queue_order_strategy": "priority"},
    }


@app.on_after_configure.connect
def _configure_broker(sender, source, **_) -> None:
    # The broker's URL is known once the settings are read, which Celery does on first use.
    source.update(broker_settings(source.broker_url))


app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
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
    broker_connection_retry_on_startup=True,
    result_expires=None,  # db_cleanup prunes results
)
app.autodiscover_tasks()
