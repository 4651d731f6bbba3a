"""The /health/ report: live pings of the database and Redis, stored results of the rest.

The database and Redis are pinged live: at most once per HEALTH_PING_SECONDS per
process and target (1 s by default; 0 pings on every request), so a burst of
probes, or many monitors, cannot turn /health/ into load on the database, nor
stack connection timeouts against one that is down. The rest (stored results,
job status, dead letters, queue lengths, workers) is recomputed at most every
HEALTH_CACHE_SECONDS per process. Nothing in the body names a host, a user or
a secret: errors are reported by exception class only.
"""
from __future__ import annotations

import json
import logging
import threading
import time

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DEFAULT_DB_ALIAS, connections
from django.utils import timezone

from checkout.redis import get_redis
from ops.maintenance import selectors
from ops.maintenance.workers import WORKER_SEEN_WINDOW
from ops.runtime.status import job_statuses

log = logging.getLogger(__name__)

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
REPORTED_SERVICES = ("payment_gateway", "email_service", "webhooks")

_cache_lock = threading.Lock()
_cache: dict[str, tuple[float, object]] = {}
_pings: dict[tuple, tuple[float, dict]] = {}
_encoded: dict[str, tuple[object, str]] = {}


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)


def _ping_database() -> dict:
    started = time.monotonic()
    conn = connections[DEFAULT_DB_ALIAS]
    try:
        # is_usable() is one bare SELECT 1; a cursor would add Django's own health check first.
        conn.ensure_connection()
        if not conn.is_usable():
            conn.close()
            conn.ensure_connection()  # raises when the database does not answer
    except Exception as exc:  # any failure of the database is "down", never a 500
        try:
            conn.close()
        except Exception:
            pass
        return {"status": "down", "error": type(exc).__name__, "latency_ms": _ms(started)}
    return {"status": "ok", "latency_ms": _ms(started)}


def _ping_redis() -> dict:
    client = get_redis()
    if client is None:
        return {"status": "not_configured"}
    started = time.monotonic()
    try:
        client.ping()
    except Exception as exc:
        return {"status": "down", "error": type(exc).__name__, "latency_ms": _ms(started)}
    return {"status": "ok", "latency_ms": _ms(started)}


def _pinged(key: tuple, ping) -> dict:
    """ping() at most every HEALTH_PING_SECONDS for this target; its answer, ok or not, is reused meanwhile."""
    ttl = settings.HEALTH_PING_SECONDS
    now = time.monotonic()
    with _cache_lock:
        hit = _pings.get(key)
    if ttl > 0 and hit is not None and now < hit[0]:
        return dict(hit[1])
    result = ping()
    with _cache_lock:
        _pings[key] = (now + ttl, result)
    return dict(result)


def _database_key() -> tuple:
    db = connections[DEFAULT_DB_ALIAS].settings_dict
    return ("database", db.get("HOST"), db.get("PORT"), db.get("NAME"))


def _stored_parts() -> dict:
    now = timezone.now()
    statuses = job_statuses(now)
    return {
        "services": selectors.stored_service_statuses(REPORTED_SERVICES, now, statuses),
        "cron_jobs": {name: status.as_dict() for name, status in statuses.items()},
        "dead_letters": selectors.dead_letter_counts(),
    }


def _cached(key: str, compute):
    """compute() at most every HEALTH_CACHE_SECONDS in this process; a failure is not cached."""
    ttl = settings.HEALTH_CACHE_SECONDS
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(key)
    if ttl > 0 and hit is not None and now < hit[0]:
        return hit[1]
    value = compute()
    with _cache_lock:
        _cache[key] = (now + ttl, value)
    return value


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
        _pings.clear()
        _encoded.clear()


def _encoded_part(name: str, value) -> str:
    """The JSON of `value`, encoded once for as long as it is the same object (one cache period)."""
    hit = _encoded.get(name)
    if hit is not None and hit[0] is value:
        return hit[1]
    text = json.dumps(value, cls=DjangoJSONEncoder)
    _encoded[name] = (value, text)
    return text


def report_json(body: dict) -> bytes:
    """`body` as JSON bytes. Its largest part, cron_jobs, is the cached object of _stored_parts and
    is encoded once per HEALTH_CACHE_SECONDS instead of on every request."""
    rest = {key: value for key, value in body.items() if key != "cron_jobs"}
    if "cron_jobs" not in body:
        return json.dumps(rest, cls=DjangoJSONEncoder).encode()
    head = json.dumps(rest, cls=DjangoJSONEncoder)[:-1]
    separator = ", " if rest else ""
    return f'{head}{separator}"cron_jobs": {_encoded_part("cron_jobs", body["cron_jobs"])}}}'.encode()


def health_report(*, strict: bool = False) -> tuple[int, dict]:
    """(HTTP status, body) of /health/.

    503 when the database or Redis is down; with strict, also when anything
    else is not healthy. Otherwise 200, with status healthy or degraded.
    """
    database = _pinged(_database_key(), _ping_database)
    redis_status = _pinged(("redis", settings.REDIS_URL), _ping_redis)
    services = {"database": database, "redis": redis_status}
    body = {"status": HEALTHY, "timestamp": timezone.now().isoformat(), "services": services}
    problems = []

    stored = None
    if database["status"] == "ok":
        try:
            stored = _cached("stored", _stored_parts)
        except Exception as exc:  # the database failed between the ping and the reads
            log.warning("health: stored results unreadable: %s", type(exc).__name__)
            database.update(status="down", error=type(exc).__name__)
    queues = None
    if redis_status["status"] == "ok":
        try:
            queues = _cached("queues", selectors.queue_state)
        except Exception as exc:
            log.warning("health: queue state unreadable: %s", type(exc).__name__)
            redis_status.update(status="down", error=type(exc).__name__)

    for name in REPORTED_SERVICES:
        services[name] = stored["services"][name] if stored else {"status": selectors.UNKNOWN}
        if services[name]["status"] != "ok":
            problems.append(name)

    body["cron_jobs"] = stored["cron_jobs"] if stored else None
    late = sorted(name for name, job in (body["cron_jobs"] or {}).items() if job["late"])
    problems += [f"job {name} late" for name in late]

    workers = queues["workers"] if queues else None
    body["background_jobs"] = {
        "queues": queues["queues"] if queues else None,
        "dead_letters": stored["dead_letters"] if stored else None,
        "workers": {"seen": workers, "window_s": int(WORKER_SEEN_WINDOW)},
    }
    # With tasks sent to a broker, nothing runs them unless a worker is alive.
    if queues and queues["queues"] is not None and not settings.CELERY_TASK_ALWAYS_EAGER and not workers:
        problems.append("no worker seen")

    critical = database["status"] != "ok" or redis_status["status"] == "down"
    if critical:
        body["status"] = UNHEALTHY
    elif problems:
        body["status"] = DEGRADED
    if problems:
        body["problems"] = problems
    code = 503 if critical or (strict and problems) else 200
    return code, body
