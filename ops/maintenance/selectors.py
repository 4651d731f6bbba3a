"""Reads for /health/, /metrics and the admin: stored health results, job status, queues, workers."""
from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count
from django.utils import timezone
from kombu.transport.redis import Channel

from checkout.celery import QUEUES
from checkout.redis import get_redis
from ops.maintenance.models import HealthCheck
from ops.maintenance.workers import count_seen_command
from ops.runtime.models import DeadLetter
from ops.runtime.registry import all_jobs
from ops.runtime.status import job_statuses

# Stored results shown by /health/, and the job that produces each.
STORED_SERVICES = {
    "payment_gateway": "payment_gateway_health",
    "email_service": "email_service_health",
    "webhooks": "webhook_health",
    "cache": "cache_health",
}
UNKNOWN = "unknown"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def stored_service_statuses(services, now: datetime | None = None,
                            statuses: dict | None = None) -> dict[str, dict]:
    """The latest stored result of each service: ok/degraded/down, or unknown when missing or stale.

    A result older than twice its job's interval (HEALTH_STALE_AFTER for a service no job checks)
    no longer says anything. `statuses`, the job statuses when the caller has them already,
    saves reading them again.
    """
    now = now or timezone.now()
    if statuses is None:
        statuses = job_statuses(now, names=[job for job in STORED_SERVICES.values() if job in all_jobs()])
    return {service: _stored_status(service, now, statuses) for service in services}


def _stored_status(service: str, now: datetime, statuses: dict) -> dict:
    check = (
        HealthCheck.objects.filter(service=service)
        .values("status", "latency_ms", "checked_at").first()
    )
    if check is None:
        return {"status": UNKNOWN, "checked_at": None, "reason": "never checked"}
    age = now - check["checked_at"]
    entry = {
        "status": check["status"],
        "checked_at": _iso(check["checked_at"]),
        "age_s": round(age.total_seconds()),
        "latency_ms": check["latency_ms"],
    }
    status = statuses.get(STORED_SERVICES.get(service))
    interval = status.interval if status is not None else None
    if age > (2 * interval if interval else settings.HEALTH_STALE_AFTER):
        entry.update(status=UNKNOWN, reason=f"last result is stale ({check['status']})")
    return entry


def dead_letter_counts() -> dict[str, int]:
    counts = dict(DeadLetter.objects.values_list("state").annotate(n=Count("pk")).order_by())
    return {state: counts.get(state, 0) for state in DeadLetter.State.values}


def broker_redis():
    """The broker's Redis when it is the project's Redis (queue lengths are read there)."""
    client = get_redis()
    if client is None or settings.CELERY_BROKER_URL != settings.REDIS_URL:
        return None
    return client


def queue_state() -> dict | None:
    """Queue lengths (None when the broker is not the project's Redis) and workers seen recently,
    in one round trip; None when no Redis is configured. Raises RedisError when Redis does not answer.
    """
    client = get_redis()
    if client is None:
        return None
    broker = broker_redis() is not None
    # kombu keeps a queue's messages of priority > 0 in lists of their own.
    suffixes = [""] + [f"{Channel.sep}{step}" for step in Channel.priority_steps[1:]]
    pipe = client.pipeline(transaction=False)
    if broker:
        for queue in QUEUES:
            for suffix in suffixes:
                pipe.llen(queue + suffix)
    count_seen_command(pipe)
    replies = pipe.execute()
    queues = None
    if broker:
        step = len(suffixes)
        queues = {queue: sum(replies[i * step:(i + 1) * step]) for i, queue in enumerate(QUEUES)}
    return {"queues": queues, "workers": int(replies[-1])}
