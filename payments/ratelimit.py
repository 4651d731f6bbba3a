"""A request-rate limit shared by every worker and thread, kept in Redis (GCRA).

Each call reserves the next free slot on a schedule spaced 1/rate apart (with a small burst
allowance) in one atomic script using Redis' clock, so processes on different hosts agree.
A caller whose slot is more than `max_wait` away reserves nothing and gets RateLimitExceeded
with the time to wait, to retry later with a countdown instead of blocking a worker. Without
Redis (or while it fails) the same schedule is kept per process, which bounds each process
rather than the fleet; an outage is logged once when it starts and once when it ends.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from functools import lru_cache

import redis

from checkout.redis import RedisOutageLog, get_redis

log = logging.getLogger(__name__)
_outage = RedisOutageLog(log, "rate limiter", "each process keeps its own request schedule")

# KEYS[1]: theoretical arrival time (µs) of the next request.
# ARGV: interval µs, burst tolerance µs, max wait µs. Returns {reserved 0|1, wait µs}.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local slot = tat - tonumber(ARGV[2])
if slot < now then slot = now end
local wait = slot - now
if wait > tonumber(ARGV[3]) then
  return {0, wait}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, wait}
"""


class RateLimitExceeded(Exception):
    def __init__(self, retry_after: float):
        super().__init__(f"no request slot within the wait bound; retry after {retry_after:.2f}s")
        self.retry_after = retry_after


class _LocalSchedule:
    """The same GCRA schedule kept in this process (monotonic clock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tat: dict[str, float] = {}

    def reserve(self, key: str, interval: float, tolerance: float, max_wait: float) -> tuple[bool, float]:
        with self._lock:
            now = time.monotonic()
            tat = max(self._tat.get(key, 0.0), now)
            wait = max(tat - tolerance, now) - now
            if wait > max_wait:
                return False, wait
            self._tat[key] = tat + interval
            return True, wait


_local_schedule = _LocalSchedule()


def burst_for(rate: float) -> int:
    """Calls allowed at once above the steady rate: a tenth of a second's worth, at least one."""
    return max(1, math.floor(rate / 10))


def acquire(key: str, *, rate: float, max_wait: float) -> float:
    """Wait (at most `max_wait` seconds) for a request slot under `rate` per second; returns the wait.

    rate <= 0 means no limit. Raises RateLimitExceeded when the slot is further away.
    """
    if rate <= 0:
        return 0.0
    interval = 1.0 / rate
    tolerance = (burst_for(rate) - 1) * interval
    reserved, wait = _reserve(key, interval, tolerance, max_wait)
    if not reserved:
        raise RateLimitExceeded(wait)
    if wait > 0:
        time.sleep(wait)
    return wait


@lru_cache(maxsize=8)
def _script(client: redis.Redis):
    return client.register_script(_GCRA)


def _reserve(key: str, interval: float, tolerance: float, max_wait: float) -> tuple[bool, float]:
    client = get_redis()
    if client is not None:
        try:
            reserved, wait_us = _script(client)(
                keys=[f"ratelimit:{key}"],
                args=[int(interval * 1e6), int(tolerance * 1e6), int(max_wait * 1e6)],
            )
        except redis.RedisError as exc:
            _outage.failed(exc)
        else:
            _outage.ok()
            return bool(reserved), wait_us / 1e6
    return _local_schedule.reserve(key, interval, tolerance, max_wait)
