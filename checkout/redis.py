"""The process's Redis client (cache keys, locks, counters), or None when not configured; and the
once-per-outage log of the callers that carry on without it."""
import logging
import threading
import time
from functools import lru_cache

import redis
from django.conf import settings


@lru_cache(maxsize=None)
def _client(url: str, timeout: float) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )


def get_redis() -> redis.Redis | None:
    if not settings.REDIS_URL:
        return None
    return _client(settings.REDIS_URL, settings.REDIS_SOCKET_TIMEOUT)


class RedisOutageLog:
    """What a caller that falls back without Redis logs: one warning when a call first fails, one info
    line when a call succeeds again (how long it lasted, how many calls fell back), nothing in between.

    Per process and thread-safe; `ok()` costs one attribute read while Redis answers.
    """

    def __init__(self, logger: logging.Logger, what: str, fallback: str):
        self._log = logger
        self._what = what
        self._fallback = fallback
        self._lock = threading.Lock()
        self._since: float | None = None
        self._calls = 0

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, exc: Exception) -> None:
        with self._lock:
            self._calls += 1
            if self._since is not None:
                return
            self._since = time.monotonic()
        self._log.warning("%s: Redis unavailable (%s); %s until it answers again", self._what, exc, self._fallback)

    def ok(self) -> None:
        if self._since is None:
            return
        with self._lock:
            if self._since is None:
                return
            seconds, calls = time.monotonic() - self._since, self._calls
            self._since, self._calls = None, 0
        self._log.info("%s: Redis answers again after %.1f s; %s calls fell back meanwhile", self._what, seconds, calls)
