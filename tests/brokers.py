"""The brokers the worker process tests run against, chosen by the `broker` fixture (tests/conftest.py).

`redis` is the test Redis database, the suite's default. `rabbitmq` is a virtual host of this test
session's own on the RabbitMQ at RABBITMQ_TEST_URL (default amqp://guest:guest@127.0.0.1:5672/),
made with `rabbitmqctl` and deleted after, so that test runs side by side never share a queue.
A test runs on both with `@pytest.mark.parametrize("broker", BROKERS, indirect=True)`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from amqp.exceptions import NotFound
from kombu import Connection, pools
from kombu.transport.native_delayed_delivery import MAX_LEVEL, level_name

from checkout.celery import QUEUES, broker_settings
from tests.services import answers

BROKERS = ("redis", "rabbitmq")
RABBITMQ_URL = os.environ.get("RABBITMQ_TEST_URL", "amqp://guest:guest@127.0.0.1:5672/")
# Where countdowns wait on RabbitMQ (native delayed delivery); emptied with the task queues.
DELAY_QUEUES = tuple(level_name(level) for level in range(MAX_LEVEL + 1))
RABBITMQCTL_TIMEOUT_S = 60


@dataclass(frozen=True)
class Broker:
    name: str
    url: str

    def queue_kinds(self) -> dict[str, tuple[str, bool]]:
        """RabbitMQ's own word on each queue of the virtual host: name -> (type, durable)."""
        listed = _rabbitmqctl("list_queues", "-p", _vhost(self.url), "name", "type", "durable", "--formatter", "json")
        return {row["name"]: (row["type"], row["durable"]) for row in json.loads(listed)}

    def purge(self) -> None:
        """Drop every message waiting in the task queues (and, on RabbitMQ, in the delay queues)."""
        names = QUEUES + DELAY_QUEUES if self.name == "rabbitmq" else QUEUES
        with Connection(self.url) as connection:
            for name in names:
                channel = connection.channel()
                try:
                    channel.queue_purge(name)
                except NotFound:  # not declared yet in this virtual host: nothing waits there
                    pass
                finally:
                    channel.close()


def rabbitmq_unavailable() -> str | None:
    """Why this session cannot have a RabbitMQ virtual host of its own; None when it can."""
    if not answers(RABBITMQ_URL, 5672):
        return "RabbitMQ does not answer at RABBITMQ_TEST_URL (or 127.0.0.1:5672)"
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed, so no virtual host can be made for this test session"
    return None


def _rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=RABBITMQCTL_TIMEOUT_S,
    )
    if done.returncode:
        raise RuntimeError(f"rabbitmqctl {args[0]} failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def _vhost(url: str) -> str:
    return unquote(urlsplit(url).path[1:])


def vhost_create() -> tuple[str, str]:
    """A new virtual host that the test user may use fully; its name and its broker URL."""
    name = f"checkout_test{os.environ.get('CHECKOUT_TEST_DB_SUFFIX', '')}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    parts = urlsplit(RABBITMQ_URL)
    _rabbitmqctl("add_vhost", name)
    _rabbitmqctl("set_permissions", "-p", name, parts.username or "guest", ".*", ".*", ".*")
    return name, parts._replace(path="/" + quote(name, safe="")).geturl()


def vhost_delete(name: str) -> None:
    _rabbitmqctl("delete_vhost", name)


def app_use_broker(app, url: str) -> None:
    """Point this process's Celery app at the broker at `url`, with that broker's settings.

    The app's queues, router and connections were made for the broker it had, so they are
    dropped (kombu's shared pools with them) and made again on next use.
    """
    app.conf.update(broker_url=url, **broker_settings(url))
    pools.reset()
    app._pool = None
    app.__dict__.pop("amqp", None)
