"""Queue priority with real workers: high work starts before a backlog of default work drains.

Redis: one worker reads its queues in order (-Q high,default). RabbitMQ pushes from every queue a
worker consumes, so there high work has a worker of its own, as the README runs it."""
import time
import uuid

import pytest

from tests.brokers import BROKERS
from tests.conftest import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

BACKLOG = 3000
BURST = 200


def _urgent_wait(client, counter: str) -> tuple[float, int]:
    """Send one high task; seconds until it started, and how many backlog tasks had run by then."""
    from tests.ops.jobs_for_tests import urgent

    stamp = f"prio:{uuid.uuid4().hex}"
    sent = time.time()
    urgent.delay(counter, stamp)
    raw = wait_for(lambda: client.lpop(stamp), timeout=60, what="the high task to start")
    started, done = raw.decode().split()
    return float(started) - sent, int(done)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker", BROKERS, indirect=True)
def test_high_work_goes_first_while_default_work_is_backlogged(
    celery_worker_factory, celery_live, broker, redis_client
):
    from tests.ops.jobs_for_tests import backlog, urgent

    # given the workers the README runs: on Redis one process consuming both queues in order,
    # on RabbitMQ one process for each queue
    if broker.name == "redis":
        high_worker = celery_worker_factory(queues="high,default", concurrency=1)
    else:
        high_worker = celery_worker_factory(queues="high", concurrency=1)
        celery_worker_factory(queues="default", concurrency=1)
    counter = f"prio:{uuid.uuid4().hex}:done"
    idle_wait, _ = _urgent_wait(redis_client, counter)

    # when thousands of default tasks are queued and the worker is busy with them
    began = time.monotonic()
    for _ in range(BACKLOG):
        backlog.delay(counter)
    queued_in = time.monotonic() - began
    wait_for(lambda: int(redis_client.get(counter) or 0) >= 20, timeout=60, what="the backlog to start")
    busy_wait, done_before = _urgent_wait(redis_client, counter)

    # and then a burst of high work arrives
    stamp = f"prio:{uuid.uuid4().hex}:burst"
    at_burst = int(redis_client.get(counter) or 0)
    burst_sent = time.time()
    for _ in range(BURST):
        urgent.delay(counter, stamp)
    wait_for(lambda: redis_client.llen(stamp) >= BURST, timeout=120, what="the burst to run")
    last_started, done_at_last = redis_client.lindex(stamp, -1).decode().split()
    interleaved = int(done_at_last) - at_burst
    broker.purge()  # the rest of the backlog is not this test's business

    print(f"\n{broker.name}: {BACKLOG} default tasks queued in {queued_in:.2f} s")
    print(f"one high task's wait: {idle_wait * 1000:.0f} ms idle, {busy_wait * 1000:.0f} ms behind the backlog "
          f"({done_before} of {BACKLOG} default tasks had run)")
    where = "in between" if broker.name == "redis" else "meanwhile, on their own worker"
    print(f"a burst of {BURST} high tasks drained in {float(last_started) - burst_sent:.2f} s; "
          f"{interleaved} default tasks ran {where}")
    # then a high task runs long before the backlog drains
    assert done_before < BACKLOG / 2, f"the high task waited for {done_before} default tasks"
    if broker.name == "redis":
        # and a burst of them is not made to take turns with it: at most the default task in
        # hand runs before the burst is done
        assert interleaved <= 2, f"{interleaved} default tasks ran while {BURST} high tasks waited"
    else:
        # and the burst never waits for default work: the default worker goes on with it meanwhile,
        # the high worker takes none of it, and the burst is done while the backlog still waits
        assert "ops_test.backlog[" not in high_worker.log_path.read_text(errors="replace")
        assert int(done_at_last) < BACKLOG, "the burst waited for the whole backlog"
