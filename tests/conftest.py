"""Real-service fixtures: PostgreSQL, Redis, and real Celery worker processes."""
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from tests import brokers
from tests.services import in_ci

ROOT = Path(__file__).resolve().parent.parent


def _services():
    from tests import settings as test_settings

    return test_settings.SERVICES


def pytest_configure(config):
    missing = [name for name, up in _services().items() if not up]
    if missing and in_ci():
        raise pytest.UsageError(
            f"CI=true but {', '.join(missing)} did not answer: start it (see .ci/run); "
            "under CI a missing service is a failure, not a skip"
        )


def pytest_collection_modifyitems(config, items):
    services = _services()
    reasons = {
        "postgres": "PostgreSQL does not answer at DATABASE_URL (or 127.0.0.1:5432)",
        "redis": "Redis does not answer at REDIS_URL (or 127.0.0.1:6379)",
    }
    for item in items:
        for name, reason in reasons.items():
            if item.get_closest_marker(name) and not services[name]:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def redis_client():
    """The test Redis database, emptied before the test."""
    from checkout.redis import get_redis

    client = get_redis()
    if client is None:
        pytest.skip("Redis is not configured")
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture(scope="session", autouse=True)
def no_session_left_on_the_test_database(django_db_setup, django_db_blocker):
    """After the session: name any connection still open on the test database (a process or thread some
    test left behind, which could hold a job's lock), then end it so that the database can be dropped."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid, application_name, backend_start, state, left(query, 160) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            left = cursor.fetchall()
            for pid, application, since, state, query in left:
                print(f"\nsession left on the test database: pid {pid} {application!r} since {since:%H:%M:%S} "
                      f"{state}: {query!r}", file=sys.stderr)
            if left:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
        connection.close()


@pytest.fixture
def test_database_url(django_db_setup):
    """A URL for the test database, for processes started by a test."""
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


@pytest.fixture(scope="session")
def rabbitmq_vhost():
    """A RabbitMQ virtual host of this test session's own (its URL), deleted after the session."""
    reason = brokers.rabbitmq_unavailable()
    if reason and in_ci():
        pytest.fail(f"CI=true but {reason}: start it (see .ci/run); under CI a missing broker is a failure")
    if reason:
        pytest.skip(reason)
    name, url = brokers.vhost_create()
    yield url
    brokers.vhost_delete(name)


@pytest.fixture
def broker(request):
    """The broker of worker processes and `celery_live`: Redis, or RabbitMQ when a test is
    parametrized with `@pytest.mark.parametrize("broker", brokers.BROKERS, indirect=True)`.
    RabbitMQ's queues are emptied before and after each test (its virtual host lives for the session)."""
    if getattr(request, "param", "redis") == "redis":
        yield brokers.Broker("redis", settings.CELERY_BROKER_URL)
        return
    rabbitmq = brokers.Broker("rabbitmq", request.getfixturevalue("rabbitmq_vhost"))
    rabbitmq.purge()
    yield rabbitmq
    rabbitmq.purge()


@pytest.fixture
def process_env(test_database_url, broker):
    """Environment for a child process that must see the test database, Redis and the broker."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=test_database_url,
        DJANGO_SETTINGS_MODULE="checkout.settings",
        CELERY_TASK_ALWAYS_EAGER="false",
        PYTHONPATH=str(ROOT),
    )
    if broker.name == "rabbitmq":
        env["CELERY_BROKER_URL"] = broker.url
    if settings.REDIS_URL:
        env["REDIS_URL"] = settings.REDIS_URL
    return env


class WorkerProcess:
    def __init__(self, env, tmp_path: Path, queues: str, concurrency: int, extra_args=()):
        self.name = f"test-{uuid.uuid4().hex[:8]}@%h"
        self.log_path = tmp_path / f"worker-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "checkout", "worker", "-Q", queues,
             "-c", str(concurrency), "-n", self.name, "--without-gossip", "--without-mingle",
             "-l", "INFO", *extra_args],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            if b"ready." in self.log_path.read_bytes():
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-20000:]

    def stop(self, sig=signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture
def celery_worker_factory(process_env, redis_client, tmp_path):
    """Start real Celery workers (separate processes) against the test database and Redis.

    Tests using it need `@pytest.mark.django_db(transaction=True)` so that their
    data is committed and visible to the worker.
    """
    workers = []

    def start(queues: str = "high,default,maintenance", concurrency: int = 2, env=None, extra_args=()):
        worker = WorkerProcess(env or process_env, tmp_path, queues, concurrency, extra_args)
        workers.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def celery_live(settings, broker):
    """Send tasks to the real broker (the `broker` fixture's) instead of running them inline."""
    from checkout.celery import app

    previous, previous_url = app.conf.task_always_eager, app.conf.broker_url
    app.conf.task_always_eager = False
    if broker.name == "rabbitmq":
        brokers.app_use_broker(app, broker.url)
        settings.CELERY_BROKER_URL = broker.url
    yield app
    app.conf.task_always_eager = previous
    if broker.name == "rabbitmq":
        brokers.app_use_broker(app, previous_url)


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    """Poll for what another process brings about (there is no event to block on); its truthy value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
