"""Fixtures of the fault suite: real processes and real faults, never mocks.

Fixtures (their names are stable; fault tests next to these use them):

- `fault_redis`: a redis-server of the suite's own (tests/faults/redis_server.py) on a port of
  16400-16499, without persistence. While the test runs it is the test process's broker and
  REDIS_URL, and tasks are sent to it (not run inline). `fault_redis.kill()` is kill -9,
  `fault_redis.start()` brings it back empty on the same port, `fault_redis.restart()` does both.
- `db_proxy`: a TcpProxy (tests/faults/proxy.py) in front of the test database's PostgreSQL;
  `db_proxy.cut()` closes every connection through it and refuses new ones (`cut(blackhole=True)`:
  accepts and never answers), `db_proxy.restore()` lets them through again. The test process
  itself talks to PostgreSQL directly; workers started with `fault_env` go through the proxy.
- `smtp_sink`: a real SMTP server (aiosmtpd) that keeps every message it accepts:
  `smtp_sink.recipients()` counts them by recipient.
- `fault_env`: the environment of a worker process: the test database through `db_proxy`,
  `fault_redis` as broker and REDIS_URL, `smtp_sink` as SMTP, the fake Razorpay (`fake_gateway`,
  shared with the payments tests) with its keys, and short grace periods (FAULT_GRACE).
- `fault_worker`: `fault_worker(queues="high,default", concurrency=2, **env)` starts a real Celery
  worker with `fault_env` (plus `env` overrides) and returns it once ready (tests.conftest.WorkerProcess).

Tests using them need `@pytest.mark.django_db(transaction=True)`: their rows must be committed for
the workers to see them. `effects_census(smtp_sink)` counts every customer effect of the paid orders
(enrollments, confirmations, stored and received emails, duplicates); `converged(census)` says whether
each is done exactly once; `wait_converged(smtp_sink, timeout)` polls until it is.
"""
from __future__ import annotations

import email
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from aiosmtpd.controller import Controller
from django.conf import settings as django_settings
from django.db.models import Count

from tests.faults.proxy import TcpProxy
from tests.faults.redis_server import RedisServer, spare_port
from tests.payments.conftest import fake_gateway, make_payment  # noqa: F401  (the fixtures, shared)

# Grace before a customer effect not done is re-driven, in the workers of the fault tests: long
# enough for the normal path to finish first, short enough for a test to wait it out.
FAULT_GRACE = timedelta(seconds=2)


def _first_that_starts(start, attempts: int = 5):
    """start() again on another spare port if the one it chose was taken meanwhile (another suite)."""
    for attempt in range(attempts):
        try:
            return start()
        except (OSError, RuntimeError):
            if attempt == attempts - 1:
                raise


@pytest.fixture
def fault_redis(tmp_path, settings, celery_live):
    """A redis-server of the test's own: the broker and REDIS_URL of the test process while it runs."""
    server = _first_that_starts(lambda: RedisServer(tmp_path / "redis").start())
    previous = celery_live.conf.broker_url
    settings.REDIS_URL = server.url
    settings.CELERY_BROKER_URL = server.url
    celery_live.conf.broker_url = server.url
    celery_live._after_fork()  # drop pooled broker connections to the old broker
    try:
        yield server
    finally:
        celery_live.conf.broker_url = previous
        celery_live._after_fork()
        server.stop()


@pytest.fixture
def db_proxy(fault_redis):
    """A TcpProxy in front of the test database's server, on a port of its own."""
    db = django_settings.DATABASES["default"]
    if "postgresql" not in db["ENGINE"]:
        pytest.skip("the database proxy needs PostgreSQL")
    target = (db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432))
    proxy = _first_that_starts(lambda: TcpProxy(target, skip_ports=(fault_redis.port,)).start())
    yield proxy
    proxy.stop()


class SmtpSink:
    """Handler of an aiosmtpd server that keeps (recipients, subject) of every message accepted."""

    def __init__(self) -> None:
        self.messages: list[tuple[tuple[str, ...], str]] = []
        self._lock = threading.Lock()
        self.port = 0

    async def handle_DATA(self, server, session, envelope):
        subject = email.message_from_bytes(envelope.content).get("Subject", "")
        with self._lock:
            self.messages.append((tuple(envelope.rcpt_tos), subject))
        return "250 Message accepted"

    def recipients(self) -> Counter:
        with self._lock:
            return Counter(to for tos, _ in self.messages for to in tos)

    def __len__(self) -> int:
        with self._lock:
            return len(self.messages)


@pytest.fixture
def smtp_sink(fault_redis):
    sink = SmtpSink()
    sink.port = spare_port(skip=(fault_redis.port,))
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    yield sink
    controller.stop()


@pytest.fixture
def fault_env(process_env, fault_redis, db_proxy, smtp_sink, fake_gateway, test_database_url):  # noqa: F811
    """Environment of a worker process for the fault tests (see the module docstring)."""
    return {
        **process_env,
        "DATABASE_URL": db_proxy.url_through(test_database_url),
        "DB_CONNECT_TIMEOUT": "2",
        "REDIS_URL": fault_redis.url,
        "CELERY_BROKER_URL": fault_redis.url,
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(smtp_sink.port),
        "EMAIL_TIMEOUT": "5",
        "RAZORPAY_BASE_URL": fake_gateway.base_url,
        "RAZORPAY_KEY_ID": fake_gateway.key_id,
        "RAZORPAY_KEY_SECRET": fake_gateway.key_secret,
        "RAZORPAY_TIMEOUT": "2",
        "RAZORPAY_RATE_LIMIT": "0",
        "PAYMENT_SYNC_AFTER": "1",
        "EFFECTS_REDRIVE_AFTER": str(int(FAULT_GRACE.total_seconds())),
    }


@pytest.fixture
def fault_worker(celery_worker_factory, fault_env):
    def start(queues: str = "high,default", concurrency: int = 2, **env):
        return celery_worker_factory(queues=queues, concurrency=concurrency, env={**fault_env, **env})

    return start


def effects_census(sink: SmtpSink) -> dict[str, int]:
    """Every customer effect of the paid orders, counted from its own rows and from what SMTP received."""
    from orders.models import Enrollment, Order, OrderStatus, OutgoingEmail

    paid = Order.objects.filter(status=OrderStatus.PAID)
    received = sink.recipients()
    expected = Counter(paid.values_list("user__email", flat=True))
    return {
        "paid": paid.count(),
        "enrolled": Enrollment.objects.filter(order__in=paid).count(),
        "enrollments_duplicated": Enrollment.objects.values("order").annotate(n=Count("pk")).filter(n__gt=1).count(),
        "confirmed": Enrollment.objects.filter(confirmation_sent_at__isnull=False).count(),
        "emails_stored": OutgoingEmail.objects.count(),
        "emails_sent": OutgoingEmail.objects.filter(sent_at__isnull=False).count(),
        "mails_received": sum(received.values()),
        "mails_missing": sum((expected - received).values()),
        "mails_duplicated": sum(n - 1 for n in received.values() if n > 1),
    }


def converged(census: dict[str, int]) -> bool:
    """Every paid order enrolled once, confirmed once, its email received once."""
    n = census["paid"]
    return (census["enrolled"] == census["confirmed"] == census["emails_sent"] == census["mails_received"] == n
            and not census["mails_missing"] and not census["mails_duplicated"]
            and not census["enrollments_duplicated"])


def wait_converged(sink: SmtpSink, timeout: float, *, worker=None) -> tuple[float, dict[str, int]]:
    """Poll until every effect is done once; (seconds waited, census). Fails with the census if not."""
    started = time.monotonic()
    census = effects_census(sink)
    while not converged(census):
        if time.monotonic() - started > timeout:
            log = f"\nworker log:\n{worker.log()[-6000:]}" if worker is not None else ""
            raise AssertionError(f"effects not done once after {timeout:.0f} s: {census}{log}")
        time.sleep(0.2)
        census = effects_census(sink)
    return time.monotonic() - started, census
