"""Health checks of the dependencies every app shares (SMTP, Redis); each stores its result with health_record."""
from __future__ import annotations

import smtplib
import ssl
import time
import uuid

from django.conf import settings
from redis.exceptions import RedisError

from checkout.redis import get_redis
from ops.maintenance.models import HealthCheck
from ops.maintenance.services import health_record

# A healthy dependency answers well within this share of the check's timeout.
SLOW_SHARE = 0.5
# Redis memory use above this share of maxmemory starts evicting soon.
REDIS_MEMORY_SHARE_MAX = 0.9


def _elapsed_ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)


def _slow(latency_ms: float) -> bool:
    return latency_ms > settings.HEALTH_CHECK_TIMEOUT * 1000 * SLOW_SHARE


def email_service_check() -> HealthCheck:
    """SMTP: connect, EHLO (STARTTLS when configured), NOOP, within HEALTH_CHECK_TIMEOUT."""
    timeout = settings.HEALTH_CHECK_TIMEOUT
    started = time.monotonic()
    detail: dict = {"tls": bool(settings.EMAIL_USE_TLS), "ssl": bool(settings.EMAIL_USE_SSL)}
    try:
        smtp_class = smtplib.SMTP_SSL if settings.EMAIL_USE_SSL else smtplib.SMTP
        with smtp_class(settings.EMAIL_HOST, settings.EMAIL_PORT, timeout=timeout) as smtp:
            code, _ = smtp.ehlo()
            if code != 250:
                raise smtplib.SMTPResponseException(code, b"EHLO refused")
            if settings.EMAIL_USE_TLS:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            code, _ = smtp.noop()
            if code != 250:
                raise smtplib.SMTPResponseException(code, b"NOOP refused")
    except (OSError, smtplib.SMTPException) as exc:
        latency = _elapsed_ms(started)
        detail["error"] = f"{type(exc).__name__}: {exc}"[:500]
        return health_record(service="email_service", status="down", latency_ms=latency, detail=detail)
    latency = _elapsed_ms(started)
    status = "degraded" if _slow(latency) else "ok"
    return health_record(service="email_service", status=status, latency_ms=latency, detail=detail)


def cache_check() -> HealthCheck | None:
    """Redis: PING, a SET/GET/DEL round trip, memory against maxmemory, evictions since the last check.

    None when no Redis is configured (nothing to check).
    """
    client = get_redis()
    if client is None:
        return None
    started = time.monotonic()
    key = f"health:cache:{uuid.uuid4().hex}"
    try:
        client.ping()
        ping_ms = _elapsed_ms(started)
        round_trip = time.monotonic()
        pipe = client.pipeline(transaction=False)
        pipe.set(key, "1", ex=60)
        pipe.get(key)
        pipe.delete(key)
        _, value, _ = pipe.execute()
        round_trip_ms = _elapsed_ms(round_trip)
        memory = client.info("memory")
        stats = client.info("stats")
    except RedisError as exc:
        return health_record(
            service="cache", status="down", latency_ms=_elapsed_ms(started),
            detail={"error": f"{type(exc).__name__}: {exc}"[:500]},
        )
    latency = _elapsed_ms(started)
    used = int(memory.get("used_memory", 0))
    maximum = int(memory.get("maxmemory", 0))
    evicted = int(stats.get("evicted_keys", 0))
    previous = HealthCheck.objects.filter(service="cache").values_list("detail", flat=True).first() or {}
    evicted_since = max(0, evicted - int(previous.get("evicted_keys", evicted)))
    problems = []
    if value != b"1":
        problems.append("round trip returned a different value")
    if maximum and used / maximum > REDIS_MEMORY_SHARE_MAX:
        problems.append(f"memory {used / maximum:.0%} of maxmemory")
    if evicted_since:
        problems.append(f"{evicted_since} keys evicted since the last check")
    if _slow(latency):
        problems.append("slow")
    return health_record(
        service="cache", status="degraded" if problems else "ok", latency_ms=latency,
        detail={
            "ping_ms": ping_ms, "round_trip_ms": round_trip_ms, "used_memory": used,
            "maxmemory": maximum, "evicted_keys": evicted, "evicted_since_last": evicted_since,
            "problems": problems,
        },
    )
