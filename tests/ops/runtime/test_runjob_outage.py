"""runjob with the broker or Redis down: the run runs, one line says what is down and what became of
its events and follow-ups, the exit status is the run's, and no traceback.

The faults are real: a redis-server of the test's own (ports 16700-16799) killed with SIGKILL,
and a broker URL pointing at a port nothing listens on.
"""
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.utils import timezone

from ops.runtime.models import JobRun, OutboxEvent
from ops.runtime.outbox import outbox_relay
from tests.conftest import ROOT
from tests.factories import CartFactory
from tests.faults.redis_server import RedisServer, port_is_free

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

PORTS = range(16700, 16800)


def spare_port() -> int:
    return next(port for port in PORTS if port_is_free(port))


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path / "redis", port=spare_port()).start()
    yield server
    server.stop()


def runjob(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "runjob", *args], cwd=ROOT, env={**env, "CELERY_TASK_ALWAYS_EAGER": "false"},
        capture_output=True, text=True, timeout=120,
    )


def outage_lines(done) -> list[str]:
    return [line for line in done.stderr.splitlines() if " down (" in line]


def expired_carts(n: int) -> None:
    now = timezone.now()
    for _ in range(n):
        CartFactory(user=None, created_at=now - timedelta(days=3), updated_at=now - timedelta(days=3))


def test_broker_and_redis_killed_the_run_succeeds_and_its_events_wait_for_the_broker(
        process_env, own_redis, celery_live):
    # given expired carts (cart_cleanup announces a tally per batch), and the run's broker and Redis killed
    expired_carts(5)
    own_redis.kill()
    last = OutboxEvent.objects.order_by("pk").values_list("pk", flat=True).last() or 0

    # when
    done = runjob({**process_env, "REDIS_URL": own_redis.url, "CELERY_BROKER_URL": own_redis.url}, "cart_cleanup")

    # then the run succeeded and said, in one line, that its events wait in the outbox
    waiting = OutboxEvent.objects.filter(pk__gt=last, published_at__isnull=True)
    lines = outage_lines(done)
    print(f"exit {done.returncode}; {waiting.count()} events waiting; {lines}")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert JobRun.objects.get(job="cart_cleanup").status == JobRun.Status.SUCCESS
    assert waiting.count() == 1  # one batch, one tally
    assert lines == [
        f"broker and redis down (Error 111 connecting to 127.0.0.1:{own_redis.port}. Connection refused.): "
        "the run succeeded; its 1 event stays in the outbox and is sent when the broker returns"
    ]

    # and once the broker is back, the relay sends them
    own_redis.start()
    celery_live.conf.broker_url = own_redis.url
    celery_live._after_fork()  # drop pooled connections to the test broker
    try:
        sent = outbox_relay()
    finally:
        celery_live.conf.broker_url = process_env["REDIS_URL"]
        celery_live._after_fork()
    print(f"relayed {sent} events after the broker came back")
    assert not waiting.exists() and sent >= 1


def test_broker_port_closed_follow_ups_are_named_and_async_is_one_line(process_env):
    # given a broker URL nothing listens on (Redis itself answers)
    port = spare_port()
    env = {**process_env, "CELERY_BROKER_URL": f"redis://127.0.0.1:{port}/0"}

    # when a job with a follow-up runs, and another is queued with --async
    with ThreadPoolExecutor(max_workers=2) as pool:
        done, queued = pool.map(lambda args: runjob(env, *args), [("db_cleanup",), ("cart_cleanup", "--async")])

    # then
    print(f"run: exit {done.returncode} {outage_lines(done)}; --async: exit {queued.returncode} {queued.stderr!r}")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert outage_lines(done) == [
        f"broker down (Error 111 connecting to 127.0.0.1:{port}. Connection refused.): "
        "the run succeeded; it wrote no events; follow-up db_monitor not queued"
    ]
    assert queued.returncode == 1 and "Traceback" not in queued.stderr
    assert queued.stderr.splitlines() == [
        f"runjob: broker down (Error 111 connecting to 127.0.0.1:{port}. Connection refused.): "
        "cart_cleanup was not queued; run it without --async, or again when the broker is back"
    ]
    assert not JobRun.objects.filter(job="cart_cleanup").exists()


def test_redis_killed_with_the_broker_up_only_redis_is_named(process_env, own_redis):
    # given expired carts, the broker up (the test Redis) and the run's Redis killed
    expired_carts(3)
    own_redis.kill()
    last = OutboxEvent.objects.order_by("pk").values_list("pk", flat=True).last() or 0

    # when
    done = runjob({**process_env, "REDIS_URL": own_redis.url, "CELERY_BROKER_URL": process_env["REDIS_URL"]},
                  "cart_cleanup")

    # then the broker is not named; the cart tally is deferred (the next relay sends it), and the line says so
    waiting = OutboxEvent.objects.filter(pk__gt=last, published_at__isnull=True)
    print(f"exit {done.returncode}; {waiting.count()} events waiting for the relay; {outage_lines(done)}")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert waiting.count() == 1
    assert outage_lines(done) == [
        f"redis down (Error 111 connecting to 127.0.0.1:{own_redis.port}. Connection refused.): "
        "the run succeeded; its 1 event waits in the outbox for the relay"
    ]
