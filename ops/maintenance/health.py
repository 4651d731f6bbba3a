"""The /health/ report: live pings of the database and Redis, stored results of the rest.

The database-backed parts (stored results, job status, dead letters) are
recomputed at most every HEALTH_CACHE_SECONDS per process, so a monitor polling
hard costs two pings per request. Nothing in the body names a host, a user or
a secret: errors are reported by exception class only.
"""
from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.utils import timezone

from ops.maintenance import selectors
from ops.maintenance.workers import WORKER_SEEN_WINDOW

log = logging.getLogger(__name__)

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
REPORTED_SERVICES = ("payment_gateway", "email_service", "webhooks")

_cache_lock = threading.Lock()
_cache: dict = {"expires": 0.0, "value": None}


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)


def _ping_database() -> dict:
    started = time.monotonic()
    try:
        conn = connections[DEFAULT_DB_ALIAS]
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any failure of the database is "down", never a 500
        try:
            connections[DEFAULT_DB_ALIAS].close()
        except Exception:
            pass
        return {"status": "down", "error": type(exc).__name__, "latency_ms": _ms(started)}
    return {"status": "ok", "latency_ms": _ms(started)}


def _ping_redis() -> tuple[dict, dict | None]:
    started = time.monotonic()
    try:
        live = selectors.redis_live()
    except Exception as exc:
        return {"status": "down", "error": type(exc).__name__, "latency_ms": _ms(started)}, None
    if not live["configured"]:
        return {"status": "not_configured"}, None
    return {"status": "ok", "latency_ms": _ms(started)}, live


def _stored_parts() -> dict:
    now = timezone.now()
    return {
        "services": {name: selectors.stored_service_status(name, now) for name in REPORTED_SERVICES},
        "cron_jobs": selectors.job_overview(now),
        "dead_letters": selectors.dead_letter_counts(),
    }


def _cached_stored_parts() -> dict:
    ttl = settings.HEALTH_CACHE_SECONDS
    now = time.monotonic()
    with _cache_lock:
        if ttl > 0 and _cache["value"] is not None and now < _cache["expires"]:
            return _cache["value"]
    value = _stored_parts()
    with _cache_lock:
        _cache.update(value=value, expires=now + ttl)
    return value


def clear_cache() -> None:
    with _cache_lock:
        _cache.update(value=None, expires=0.0)


def health_report(*, strict: bool = False) -> tuple[int, dict]:
    """(HTTP status, body) of /health/.

    503 when the database or Redis is down; with strict, also when anything
    else is not healthy. Otherwise 200, with status healthy or degraded.
    """
    database = _ping_database()
    redis_status, live = _ping_redis()
    services = {"database": database, "redis": redis_status}
    body = {"status": HEALTHY, "timestamp": timezone.now().isoformat(), "services": services}
    problems = []

    stored = None
    if database["status"] == "ok":
        try:
            stored = _cached_stored_parts()
        except Exception as exc:  # the database failed between the ping and the reads
            log.warning("health: stored results unreadable: %s", type(exc).__name__)
            database.update(status="down", error=type(exc).__name__)
    for name in REPORTED_SERVICES:
        services[name] = stored["services"][name] if stored else {"status": selectors.UNKNOWN}
        if services[name]["status"] != "ok":
            problems.append(name)

    body["cron_jobs"] = stored["cron_jobs"] if stored else None
    late = sorted(name for name, job in (body["cron_jobs"] or {}).items() if job["late"])
    problems += [f"job {name} late" for name in late]

    workers = live["workers"] if live else None
    body["background_jobs"] = {
        "queues": live["queues"] if live else None,
        "dead_letters": stored["dead_letters"] if stored else None,
        "workers": {"seen": workers, "window_s": int(WORKER_SEEN_WINDOW)},
    }
    # With tasks sent to a broker, nothing runs them unless a worker is alive.
    if live and live["queues"] is not None and not settings.CELERY_TASK_ALWAYS_EAGER and not workers:
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
