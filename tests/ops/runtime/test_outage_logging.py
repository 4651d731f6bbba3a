"""A Redis outage is logged once when it starts and once when it ends by the callers that carry on without
Redis (the Razorpay rate limiter, the task counters every tracked batch's task writes), not once per call;
what they do meanwhile is unchanged. Redis here is a redis-server of the test's own, killed with -9 and
started again (empty, as a Redis without persistence comes back)."""
import logging
import time

import pytest

from analytics.models import DailyCounter
from analytics.tasks import analytics_track
from checkout.redis import _client
from ops.runtime import metrics
from payments import ratelimit
from tests.faults.redis_server import RedisServer, port_is_free

pytestmark = [pytest.mark.redis]

PORTS = range(16500, 16600)
CALLS = 100
OUTAGES = 2


@pytest.fixture
def own_redis(settings, tmp_path):
    port = next(p for p in PORTS if port_is_free(p))
    server = RedisServer(tmp_path / "redis", port=port).start()
    settings.REDIS_URL = server.url
    _client.cache_clear()
    yield server
    server.stop()
    _client.cache_clear()


def lines(caplog, logger: str) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == logger]


def through_outages(server, caplog, logger: str, calls) -> list[dict]:
    """`calls()` while Redis is up, then OUTAGES times: killed, `calls()`, started, `calls()`; the lines
    `logger` wrote in each phase."""
    calls()  # Redis answers: a previous test's outage, if any, ends here
    caplog.clear()
    phases = []
    for outage in range(OUTAGES):
        server.kill()
        started = time.monotonic()
        calls()
        down = lines(caplog, logger)
        caplog.clear()
        server.start()
        calls()
        back = lines(caplog, logger)
        caplog.clear()
        phases.append({"down_s": round(time.monotonic() - started, 2), "down": down, "back": back})
        print(f"outage {outage + 1}: {CALLS} calls down, {CALLS} after; {len(down)} line(s) while down "
              f"{[m for _, m in down]}, {len(back)} line(s) after {[m for _, m in back]}")
    return phases


def assert_one_line_each_way(phases):
    for phase in phases:
        assert [level for level, _ in phase["down"]] == [logging.WARNING], phase
        assert "Redis unavailable" in phase["down"][0][1]
        assert [level for level, _ in phase["back"]] == [logging.INFO], phase
        assert f"{CALLS} calls fell back" in phase["back"][0][1]


def test_the_rate_limiter_logs_an_outage_once_and_keeps_a_schedule_per_process(own_redis, caplog):
    caplog.set_level(logging.INFO, logger="payments.ratelimit")
    waits = []

    def calls():
        for _ in range(CALLS):
            waits.append(ratelimit.acquire("outage-test", rate=100_000, max_wait=1.0))

    phases = through_outages(own_redis, caplog, "payments.ratelimit", calls)

    # then one warning when Redis went, one info line when it came back, per outage
    assert_one_line_each_way(phases)
    # and every call got its slot meanwhile (from this process' schedule), as before
    assert len(waits) == CALLS * (1 + 2 * OUTAGES) and max(waits) < 1.0
    # and the schedule is the shared one again once Redis is back
    assert own_redis.client().exists("ratelimit:outage-test")


@pytest.mark.postgres
@pytest.mark.django_db
def test_tracked_counts_go_on_through_an_outage_and_their_task_counters_log_it_once(own_redis, caplog):
    caplog.set_level(logging.INFO, logger="ops.runtime.metrics")
    sent = []

    def calls():
        for _ in range(CALLS):
            key = f"outage:{len(sent)}"
            analytics_track.apply(kwargs={"key": key, "day": "2024-06-10", "subject": "outage", "counters": {"n": 1}})
            sent.append(key)

    phases = through_outages(own_redis, caplog, "ops.runtime.metrics", calls)

    assert_one_line_each_way(phases)
    # every announced batch was counted, in PostgreSQL, outage or not
    assert DailyCounter.objects.get(subject="outage", name="n").value == len(sent) == CALLS * (1 + 2 * OUTAGES)
    # the task's counters start again in the Redis that came back (empty): the calls after the last outage
    assert metrics.task_stats()["analytics_track"]["total"] == CALLS
