"""Transactional outbox: events stored with the change they announce, published after commit.

`outbox_add` must be called inside the transaction that makes the change. After
commit the event is handed to its subscribers' Celery tasks; if the broker is
down then, the event stays unpublished and `outbox_relay` (every minute, and at
the start of the money jobs) sends it later. Subscribers are idempotent, so the
rare double send (published, then the mark failed) changes nothing.
"""
from __future__ import annotations

import logging
from functools import partial

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from ops.models import OutboxEvent

log = logging.getLogger(__name__)

# topic -> names of Celery tasks called with the event's payload as keyword arguments
_SUBSCRIBERS: dict[str, list[str]] = {}
RELAY_BATCH = 500


def subscribe(topic: str, task_name: str) -> None:
    names = _SUBSCRIBERS.setdefault(topic, [])
    if task_name not in names:
        names.append(task_name)


def subscribers(topic: str) -> list[str]:
    return list(_SUBSCRIBERS.get(topic, []))


def outbox_add(topic: str, payload: dict, *, key: str | None = None) -> OutboxEvent | None:
    """Store an event in the current transaction; returns None if `key` was already announced."""
    if key is not None and OutboxEvent.objects.filter(key=key).exists():
        return None
    event = OutboxEvent.objects.create(topic=topic, payload=payload, key=key)
    transaction.on_commit(partial(_publish_ids, [event.pk]))
    return event


def _send(event: OutboxEvent) -> None:
    from checkout.celery import app

    for task_name in subscribers(event.topic):
        app.tasks[task_name].apply_async(kwargs=event.payload)


def _publish_ids(ids: list[int]) -> int:
    """Publish these events, each under its row lock so two relays never both send it."""
    published = 0
    for pk in sorted(ids):
        try:
            with transaction.atomic():
                event = (
                    OutboxEvent.objects.select_for_update(skip_locked=True)
                    .filter(pk=pk, published_at__isnull=True).first()
                )
                if event is None:
                    continue
                _send(event)
                OutboxEvent.objects.filter(pk=pk).update(
                    published_at=timezone.now(), attempts=F("attempts") + 1
                )
        except Exception as exc:  # broker (or database) down: the relay will try again
            try:
                OutboxEvent.objects.filter(pk=pk).update(
                    attempts=F("attempts") + 1, last_error=f"{type(exc).__name__}: {exc}"[:2000]
                )
            except Exception:
                pass
            log.warning("outbox event %s not published: %s", pk, exc)
            break
        published += 1
    return published


def outbox_relay(batch: int = RELAY_BATCH) -> int:
    """Publish every unpublished event, oldest first; returns how many were published."""
    total = 0
    while True:
        ids = list(
            OutboxEvent.objects.filter(published_at__isnull=True)
            .order_by("pk").values_list("pk", flat=True)[:batch]
        )
        if not ids:
            return total
        published = _publish_ids(ids)
        total += published
        if published < len(ids):
            return total
