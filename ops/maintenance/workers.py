"""Which Celery workers are alive: each worker's event heartbeat (every 2 s) is noted in Redis.

/health/ and /metrics count the workers seen within WORKER_SEEN_WINDOW, from any
process, without a broadcast to the workers (which would cost a second per request).
"""
from __future__ import annotations

import logging
import time

from redis.exceptions import RedisError

from checkout.redis import get_redis

log = logging.getLogger(__name__)

WORKERS_KEY = "ops:workers:seen"
WORKER_SEEN_WINDOW = 60.0


def note_heartbeat(sender=None, **kwargs) -> None:
    """celery.signals.heartbeat_sent receiver (runs in the worker's main process)."""
    client = get_redis()
    hostname = getattr(getattr(sender, "eventer", None), "hostname", None)
    if client is None or not hostname:
        return
    now = time.time()
    try:
        pipe = client.pipeline(transaction=False)
        pipe.zadd(WORKERS_KEY, {hostname: now})
        # Workers gone for a day are forgotten, so the set stays small.
        pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - 86400)
        pipe.execute()
    except RedisError as exc:
        log.debug("worker heartbeat not noted: %s", exc)


def count_seen_command(pipe, window: float = WORKER_SEEN_WINDOW):
    """Queue the count of recently seen workers on a Redis pipeline (one round trip with the rest)."""
    return pipe.zcount(WORKERS_KEY, time.time() - window, "+inf")
