"""The /health/ report: live pings of the database, Redis and the broker, stored results of the rest.

Pings are shared by every request of a process. Each target (the database, Redis, a
broker of its own) has at most one ping in flight, on a thread of its own; a request
waits for it at most HEALTH_CHECK_TIMEOUT, and its answer, ok, failed or timed out, is
reused for HEALTH_PING_SECONDS after it came (0: a new ping for every request that
finds none in flight). So a burst of probes, or many monitors, cannot turn /health/
into load on a dependency, nor stack timeouts against one that hangs. The database is
pinged on a connection of its own in non-blocking mode under that deadline: a database
that accepts connections and never answers costs a probe HEALTH_CHECK_TIMEOUT, never a
worker stuck on Django's connection. The rest (stored results, job status, dead letters,
queue lengths, workers) is read only behind a dependency that answered, and recomputed
at most every HEALTH_CACHE_SECONDS per process. Nothing in the body names a host, a user
or a secret: errors are reported by exception class only.
"""
from __future__ import annotations

import json
import logging
import select
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache, partial

import psycopg2
import psycopg2.extensions
import redis
from kombu import Connection
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DEFAULT_DB_ALIAS, connections
from django.utils import timezone

from checkout.db import is_postgres
from checkout.redis import get_redis
from ops.maintenance import selectors
from ops.maintenance.workers import WORKER_SEEN_WINDOW
from ops.runtime.status import job_statuses

log = logging.getLogger(__name__)

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
REPORTED_SERVICES = ("payment_gateway", "email_service", "webhooks")
# Pinged dependencies whose failure makes /health/ answer 503.
CRITICAL = ("database", "redis", "broker")

_lock = threading.Lock()
_cache: dict[str, tuple[float, object]] = {}
_answers: dict[tuple, tuple[float, dict]] = {}
_flights: dict[tuple, "_Flight"] = {}
# The database ping's own connections (opened at, connection) by target, used by one flight at a time.
_ping_connections: dict[tuple, tuple[float, object]] = {}
_encoded: dict[str, tuple[object, str]] = {}


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)


@dataclass
class _Flight:
    deadline: float
    done: threading.Event = field(default_factory=threading.Event)
    answer: dict | None = None


def _timed_out(timeout: float) -> dict:
    return {"status": "down", "error": "TimeoutError", "latency_ms": round(timeout * 1000, 2)}


def _remember(key: tuple, answer: dict) -> None:
    """Keep `answer` for HEALTH_PING_SECONDS from now (the caller holds _lock)."""
    ttl = settings.HEALTH_PING_SECONDS
    if ttl > 0:
        _answers[key] = (time.monotonic() + ttl, answer)


def _fly(key: tuple, ping, flight: _Flight, timeout: float) -> None:
    """Run one ping (it raises when the target is down) and hand its answer to every waiter."""
    started = time.monotonic()
    try:
        ping(flight.deadline)
        answer = {"status": "ok", "latency_ms": _ms(started)}
    except Exception as exc:  # any failure of the target is "down", never a 500
        answer = {"status": "down", "error": type(exc).__name__, "latency_ms": _ms(started)}
    if time.monotonic() > flight.deadline:
        answer = _timed_out(timeout)
    with _lock:
        if _flights.get(key) is flight:
            del _flights[key]
        _remember(key, answer)
    flight.answer = answer
    flight.done.set()


def _ping_all(targets: dict[str, tuple[tuple, object]]) -> dict[str, dict]:
    """The answer of each target {name: (key, ping)}: a fresh one reused, else the ping in flight
    joined or a new one started; all wait together, each at most HEALTH_CHECK_TIMEOUT from its start."""
    timeout = settings.HEALTH_CHECK_TIMEOUT
    answers: dict[str, dict] = {}
    waiting: dict[str, tuple[tuple, _Flight]] = {}
    started: list[threading.Thread] = []
    now = time.monotonic()
    with _lock:
        for name, (key, ping) in targets.items():
            hit = _answers.get(key)
            if hit is not None and now < hit[0]:
                answers[name] = dict(hit[1])
                continue
            flight = _flights.get(key)
            if flight is None:
                flight = _flights[key] = _Flight(deadline=now + timeout)
                started.append(threading.Thread(
                    target=_fly, args=(key, ping, flight, timeout), name=f"health-ping-{name}", daemon=True,
                ))
            waiting[name] = (key, flight)
    for thread in started:
        thread.start()
    for name, (key, flight) in waiting.items():
        if flight.done.wait(max(0.0, flight.deadline - time.monotonic())):
            answers[name] = dict(flight.answer)
            continue
        answer = _timed_out(timeout)
        with _lock:
            _remember(key, answer)
        answers[name] = dict(answer)
    return answers


# --- the pings ------------------------------------------------------------------------------

def _pg_wait(connection, deadline: float) -> None:
    """Drive a non-blocking psycopg2 connection until its current step is done, or TimeoutError."""
    poller = select.poll()
    while True:
        state = connection.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the database did not answer in time")
        wanted = select.POLLIN if state == psycopg2.extensions.POLL_READ else select.POLLOUT
        poller.register(connection.fileno(), wanted)
        poller.poll(remaining * 1000)
        poller.unregister(connection.fileno())


def _select_1(pg, deadline: float) -> None:
    try:
        cursor = pg.cursor()
        cursor.execute("SELECT 1")
        _pg_wait(pg, deadline)
        cursor.fetchone()
    except BaseException:
        pg.close()
        raise


def _ping_postgresql(key: tuple, conn, deadline: float) -> None:
    """SELECT 1 on the ping's own connection (with the settings of Django's `conn`), kept for
    CONN_MAX_AGE like Django's own.

    A kept connection that fails (the server restarted, or dropped it while idle) is
    replaced once within the same deadline, so only a database that refuses a new
    connection too is reported down.
    """
    max_age = conn.settings_dict.get("CONN_MAX_AGE", 0)
    with _lock:
        held = _ping_connections.pop(key, None)
    if held is not None:
        opened, pg = held
        if not pg.closed and (max_age is None or time.monotonic() - opened < max_age):
            try:
                _select_1(pg, deadline)
            except psycopg2.Error:
                pass
            else:
                with _lock:
                    _ping_connections[key] = held
                return
        pg.close()
    params = conn.get_connection_params()
    params.pop("cursor_factory", None)
    opened = time.monotonic()
    pg = psycopg2.connect(**params, async_=1)
    try:
        _pg_wait(pg, deadline)
    except BaseException:
        pg.close()
        raise
    _select_1(pg, deadline)
    if max_age == 0:
        pg.close()
        return
    with _lock:
        _ping_connections[key] = (opened, pg)


def _ping_django_database(alias: str, deadline: float) -> None:
    """SELECT 1 through Django on this thread's own connection (SQLite: a local file, nothing to hang on)."""
    conn = connections[alias]
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        conn.close()


def _database_target() -> tuple[tuple, object]:
    conn = connections[DEFAULT_DB_ALIAS]
    db = conn.settings_dict
    key = ("database", db.get("HOST"), db.get("PORT"), db.get("NAME"))
    if not is_postgres(DEFAULT_DB_ALIAS):
        return key, partial(_ping_django_database, DEFAULT_DB_ALIAS)
    return key, partial(_ping_postgresql, key, conn)


@lru_cache(maxsize=4)
def _broker_client(url: str, timeout: float) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def separate_broker_url() -> str | None:
    """The broker's URL when it is RabbitMQ or a Redis other than REDIS_URL (pinged on its own), else None."""
    url = settings.CELERY_BROKER_URL
    if url == settings.REDIS_URL or not url.startswith(("redis://", "rediss://", "amqp://", "amqps://")):
        return None
    return url


def _ping_amqp(url: str, deadline: float) -> None:
    """Open and close an AMQP connection: the broker accepted us and finished the handshake."""
    timeout = max(0.1, deadline - time.monotonic())
    with Connection(url, connect_timeout=timeout, transport_options={"max_retries": 0}) as conn:
        conn.connect()


def dependency_pings() -> dict[str, dict]:
    """{"database": …, "redis": …[, "broker": …]}: each {"status": ok|down|not_configured, …}."""
    targets = {"database": _database_target()}
    if settings.REDIS_URL:
        targets["redis"] = (("redis", settings.REDIS_URL), lambda deadline: get_redis().ping())
    broker = separate_broker_url()
    if broker and broker.startswith(("amqp://", "amqps://")):
        targets["broker"] = (("broker", broker), partial(_ping_amqp, broker))
    elif broker:
        client = _broker_client(broker, settings.HEALTH_CHECK_TIMEOUT)
        targets["broker"] = (("broker", broker), lambda deadline: client.ping())
    answers = _ping_all(targets)
    answers.setdefault("redis", {"status": "not_configured"})
    return answers


# --- the report -----------------------------------------------------------------------------

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
    with _lock:
        hit = _cache.get(key)
    if ttl > 0 and hit is not None and now < hit[0]:
        return hit[1]
    value = compute()
    with _lock:
        _cache[key] = (now + ttl, value)
    return value


def clear_cache() -> None:
    with _lock:
        _cache.clear()
        _answers.clear()
        _encoded.clear()
        held = list(_ping_connections.values())
        _ping_connections.clear()
    for _, pg in held:
        pg.close()


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

    503 when the database, Redis or a broker of its own is down; with strict, also when
    anything else is not healthy. Otherwise 200, with status healthy or degraded.
    `problems` names each thing that is wrong once: a dependency that is down, not the
    stored results it hides.
    """
    services = dependency_pings()
    database, redis_status = services["database"], services["redis"]
    body = {"status": HEALTHY, "timestamp": timezone.now().isoformat(), "services": services}

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

    problems = [name for name in CRITICAL if services.get(name, {}).get("status") == "down"]
    for name in REPORTED_SERVICES:
        if stored is None:
            services[name] = {"status": selectors.UNKNOWN, "reason": "database down"}
            continue
        services[name] = stored["services"][name]
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

    critical = any(services.get(name, {}).get("status") == "down" for name in CRITICAL)
    if critical:
        body["status"] = UNHEALTHY
    elif problems:
        body["status"] = DEGRADED
    if problems:
        body["problems"] = problems
    code = 503 if critical or (strict and problems) else 200
    return code, body
