"""Queue priority with a real worker: high work starts before a backlog of default work drains."""
import time
import uuid

import pytest

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
def test_high_work_goes_first_while_default_work_is_backlogged(celery_worker_factory, celery_live, redis_client):
    from tests.ops.jobs_for_tests import backlog, urgent

    # given one worker process consuming both queues, as the README runs it
    celery_worker_factory(queues="high,default", concurrency=1)
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
    redis_client.delete("default")  # the rest of the backlog is not this test's business

    print(f"\n{BACKLOG} default tasks queued in {queued_in:.2f} s")
    print(f"one high task's wait: {idle_wait * 1000:.0f} ms idle, {busy_wait * 1000:.0f} ms behind the backlog "
          f"({done_before} of {BACKLOG} default tasks had run)")
    print(f"a burst of {BURST} high tasks drained in {float(last_started) - burst_sent:.2f} s; "
          f"{interleaved} default tasks ran in between")
    # then a high task runs long before the backlog drains, and a burst of them is not made to
    # take turns with it: at most the default task in hand runs before the burst is done
    assert done_before < BACKLOG / 2, f"the high task waited for {done_before} default tasks"
    assert interleaved <= 2, f"{interleaved} default tasks ran while {BURST} high tasks waited"
