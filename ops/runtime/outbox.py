"""Transactional outbox: events stored with the change they announce, published after commit.

`outbox_add` must be called inside the transaction that makes the change. After
commit the event is handed to its subscribers' Celery tasks; if the broker is
down then, the event stays unpublished and `outbox_relay` (every minute, and at
the start of the money jobs) sends it later. Subscribers are idempotent, so the
rare double send (published, then the mark failed) changes nothing.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from checkout.celery import app
from ops.runtime.models import OutboxEvent

log = logging.getLogger(__name__)

# topic -> names of Celery tasks called with the event's payload as keyword arguments
_SUBSCRIBERS: dict[str, list[str]] = {}
RELAY_BATCH = 500
# Up to this many events of one transaction are sent right after commit by the
# committing process; more are handed to the relay task on a worker.
DIRECT_PUBLISH_MAX = 50


def subscribe(topic: str, task_name: str) -> None:
    names = _SUBSCRIBERS.setdefault(topic, [])
    if task_name not in names:
        names.append(task_name)


def subscribers(topic: str) -> list[str]:
    return list(_SUBSCRIBERS.get(topic, []))


def outbox_add(topic: str, payload: dict, *, key: str | None = None, deferred: bool = False) -> int | None:
    """Store an event in the current transaction; returns its id, or None if `key` was already announced."""
    ids = outbox_add_many([(topic, payload, key)], deferred=deferred)
    return ids[0] if ids else None


def outbox_add_many(events: Iterable[tuple[str, dict, str | None]], *, deferred: bool = False) -> list[int]:
    """Store (topic, payload, key) events in the current transaction with one INSERT per 500.

    The insert is `ON CONFLICT (key) DO NOTHING`, so two transactions announcing
    the same fact at once store it once and neither fails; returns the ids of the
    events stored now (not of those already announced).

    `deferred` events are not published at commit but by the next relay (every
    minute, or at once with `outbox_relay_request`): for figures nobody waits for,
    written from a bulk loop whose every transaction would otherwise pay for a publish.
    """
    connection = transaction.get_connection()
    table = connection.ops.quote_name(OutboxEvent._meta.db_table)
    payload_field = OutboxEvent._meta.get_field("payload")
    now = timezone.now()
    rows = [
        (topic, payload_field.get_db_prep_value(payload, connection), key, now)
        for topic, payload, key in events
    ]
    ids: list[int] = []
    for start in range(0, len(rows), RELAY_BATCH):
        chunk = rows[start:start + RELAY_BATCH]
        values = ", ".join(["(%s, %s, %s, %s, 0, '')"] * len(chunk))
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (topic, payload, key, created_at, attempts, last_error) "
                f"VALUES {values} ON CONFLICT (key) DO NOTHING RETURNING id",
                [value for row in chunk for value in row],
            )
            ids.extend(row[0] for row in cursor.fetchall())
    if ids and not deferred:
        _pending.__dict__.setdefault("ids", []).extend(ids)
        # The first callback of the transaction to run publishes everything this
        # thread has pending in one batch; later ones find nothing left to do.
        transaction.on_commit(_publish_pending)
    return ids


# Ids written by this thread and not yet handed to the publisher. Ids of rolled
# back rows may linger here; publishing them finds no row and does nothing.
_pending = threading.local()


def _publish_pending() -> None:
    ids = _pending.__dict__.pop("ids", None)
    if not ids:
        return
    if len(ids) > DIRECT_PUBLISH_MAX:
        # A bulk change (a sync chunk) hands its events to a worker's relay with one
        # message, instead of sending each from this process, whose threads are busy.
        outbox_relay_request()
        return
    _publish_ids(ids)


def outbox_relay_request() -> None:
    """Ask a worker to relay the unpublished events now (one message); if the broker is down,
    the scheduled relay sends them later."""
    try:
        app.tasks["ops.outbox_relay"].apply_async()
    except Exception as exc:
        log.warning("outbox: relay not requested: %s", exc)


def _send(event: OutboxEvent, producer) -> None:
    for task_name in subscribers(event.topic):
        app.tasks[task_name].apply_async(kwargs=event.payload, producer=producer)


def _publish_ids(ids: list[int]) -> int:
    """Publish these events in batches, each batch under row locks so two relays never both send one."""
    published = 0
    ordered = sorted(set(ids))
    for start in range(0, len(ordered), RELAY_BATCH):
        chunk = ordered[start:start + RELAY_BATCH]
        sent: list[int] = []
        failure: Exception | None = None
        try:
            with transaction.atomic():
                events = list(
                    OutboxEvent.objects.select_for_update(skip_locked=True)
                    .filter(pk__in=chunk, published_at__isnull=True).order_by("pk")
                )
                try:
                    with app.producer_or_acquire() as producer:
                        for event in events:
                            _send(event, producer)
                            sent.append(event.pk)
                except Exception as exc:  # broker down: what was sent is marked, the rest waits
                    failure = exc
                if sent:
                    OutboxEvent.objects.filter(pk__in=sent).update(
                        published_at=timezone.now(), attempts=F("attempts") + 1
                    )
        except Exception as exc:  # the database itself failed: the relay will try again
            log.warning("outbox batch of %s events not published: %s", len(chunk), exc)
            return published
        published += len(sent)
        if failure is not None:
            unsent = [pk for pk in chunk if pk not in set(sent)]
            OutboxEvent.objects.filter(pk__in=unsent, published_at__isnull=True).update(
                attempts=F("attempts") + 1, last_error=f"{type(failure).__name__}: {failure}"[:2000]
            )
            log.warning("outbox: %s events not published, broker error: %s", len(unsent), failure)
            return published
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
