"""Background-task metrics shared by every process through Redis.

Jobs are measured from the run ledger (durable, exact); background tasks, which
can run thousands of times an hour, are counted here: totals by outcome, the sum
of durations (a true mean), the last 1,000 durations (p95), last run and last
success. Metrics never break a task: without Redis they are simply not kept (an outage is
logged once when it starts and once when it ends, not once per task).
"""
from __future__ import annotations

import logging
import time

from redis.exceptions import RedisError

from checkout.redis import RedisOutageLog, get_redis

log = logging.getLogger(__name__)
_outage = RedisOutageLog(log, "task metrics", "tasks run without their counters and redelivery counts")

TASK_KEY = "metrics:task:{}"
TASK_DURATIONS_KEY = "metrics:task:{}:durations"
TASK_NAMES_KEY = "metrics:tasks"
REDELIVERY_KEY = "tasks:redelivered:{}"
DURATION_SAMPLES = 1000


def record_task(name: str, outcome: str, duration_s: float) -> None:
    client = get_redis()
    if client is None:
        return
    now = time.time()
    key = TASK_KEY.format(name)
    try:
        pipe = client.pipeline(transaction=False)
        pipe.sadd(TASK_NAMES_KEY, name)
        pipe.hincrby(key, "total", 1)
        pipe.hincrby(key, outcome, 1)
        pipe.hincrbyfloat(key, "duration_sum", duration_s)
        pipe.hset(key, "last_run", now)
        if outcome == "succeeded":
            pipe.hset(key, "last_success", now)
        pipe.lpush(TASK_DURATIONS_KEY.format(name), duration_s)
        pipe.ltrim(TASK_DURATIONS_KEY.format(name), 0, DURATION_SAMPLES - 1)
        pipe.execute()
    except RedisError as exc:
        _outage.failed(exc)
        return
    _outage.ok()


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = max(0, -(-95 * len(ordered) // 100) - 1)  # nearest-rank
    return ordered[index]


def task_stats() -> dict[str, dict]:
    """Per task: total, succeeded, failed, mean and p95 duration (s), last run, last success (epoch s)."""
    client = get_redis()
    if client is None:
        return {}
    names = sorted(n.decode() for n in client.smembers(TASK_NAMES_KEY))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(TASK_KEY.format(name))
        pipe.lrange(TASK_DURATIONS_KEY.format(name), 0, -1)
    replies = pipe.execute()
    stats = {}
    for i, name in enumerate(names):
        raw = {k.decode(): float(v) for k, v in replies[2 * i].items()}
        durations = [float(v) for v in replies[2 * i + 1]]
        total = int(raw.get("total", 0))
        stats[name] = {
            "total": total,
            "succeeded": int(raw.get("succeeded", 0)),
            "failed": int(raw.get("failed", 0)),
            "mean_s": raw.get("duration_sum", 0.0) / total if total else None,
            "p95_s": _p95(durations),
            "last_run": raw.get("last_run"),
            "last_success": raw.get("last_success"),
        }
    return stats


def redelivery_count(task_id: str) -> int:
    """Count one more delivery of a message the broker gave back (its worker died, or stopped before
    acknowledging it); how many so far. 0 without Redis: the count is then not kept."""
    client = get_redis()
    if client is None:
        return 0
    key = REDELIVERY_KEY.format(task_id)
    try:
        pipe = client.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 7 * 86400)
        count, _ = pipe.execute()
    except RedisError as exc:
        _outage.failed(exc)
        return 0
    _outage.ok()
    return int(count)


def redelivery_forget(task_id: str) -> None:
    """The message was finally handled: forget its redeliveries."""
    client = get_redis()
    if client is None:
        return
    try:
        client.delete(REDELIVERY_KEY.format(task_id))
    except RedisError as exc:
        _outage.failed(exc)
        return
    _outage.ok()
