"""The process's Redis client (cache keys, locks, counters), or None when not configured."""
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
