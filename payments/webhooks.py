"""Receiving Razorpay webhooks: verify the signature, dedupe on the event id, store, hand over.

A delivery is stored once per `x-razorpay-event-id` and announced on the outbox topic
`webhook.received` ({"event_id": <WebhookEvent pk>}) in the same transaction, so processing
on a worker (`webhook_event_process`, subscribed by the processing side) survives a broker
outage. Refused deliveries change nothing but leave a WebhookRejection row for webhook_health.

Event types we do not handle are stored already processed and acknowledged with 200: they
are genuine (signed) and Razorpay retries non-2xx answers for 24 h and then disables the
webhook, which would also stop the events we do handle.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from ops.runtime.outbox import outbox_add
from payments.models import Payment, WebhookEvent, WebhookRejection
from payments.services.state import GatewayPayment, payment_apply_observations

log = logging.getLogger(__name__)

HANDLED_EVENTS = frozenset({
    "payment.authorized", "payment.captured", "payment.failed", "order.paid", "refund.processed",
})
WEBHOOK_TOPIC = "webhook.received"
MAX_BODY_BYTES = 1024 * 1024
EVENT_ID_MAX_LENGTH = WebhookEvent._meta.get_field("event_id").max_length
EVENT_NAME_MAX_LENGTH = WebhookEvent._meta.get_field("event").max_length


class WebhookNotConfigured(Exception):
    """No RAZORPAY_WEBHOOK_SECRET: nothing can be verified, so nothing is accepted."""


class WebhookRefused(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class WebhookReceipt:
    event: WebhookEvent
    created: bool
    handled: bool

    @property
    def outcome(self) -> str:
        if not self.created:
            return "duplicate"
        return "stored" if self.handled else "ignored"


def webhook_signature(body: bytes, secret: str) -> str:
    """Razorpay's X-Razorpay-Signature: hex HMAC-SHA256 of the raw body keyed by the webhook secret."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_rejection_record(*, reason: str, detail: str = "") -> WebhookRejection:
    log.warning("razorpay webhook refused reason=%s detail=%s", reason, detail)
    return WebhookRejection.objects.create(reason=reason, detail=detail[:255])


def webhook_receive(*, body: bytes, signature: str | None, event_id: str | None) -> WebhookReceipt:
    """Verify, dedupe and store one delivery; refusals are recorded and raised as WebhookRefused."""
    secret = settings.RAZORPAY_WEBHOOK_SECRET
    if not secret:
        raise WebhookNotConfigured("RAZORPAY_WEBHOOK_SECRET is not set")
    try:
        event_name, payload, event_id = _verified(body, signature, event_id, secret)
    except WebhookRefused as refused:
        webhook_rejection_record(reason=refused.reason, detail=refused.detail)
        raise

    handled = event_name in HANDLED_EVENTS
    with transaction.atomic():
        event, created = WebhookEvent.objects.get_or_create(
            event_id=event_id,
            defaults={
                "event": event_name, "payload": payload,
                "processed_at": None if handled else timezone.now(),
            },
        )
        if created and handled:
            outbox_add(WEBHOOK_TOPIC, {"event_id": event.pk}, key=f"webhook:{event_id}")
    receipt = WebhookReceipt(event=event, created=created, handled=handled)
    log.info("razorpay webhook event=%s id=%s pk=%s outcome=%s", event_name, event_id, event.pk, receipt.outcome)
    return receipt


def _verified(body: bytes, signature: str | None, event_id: str | None, secret: str) -> tuple[str, dict, str]:
    if not signature:
        raise WebhookRefused("bad_signature", "X-Razorpay-Signature header missing")
    expected = webhook_signature(body, secret)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode("utf-8", "replace")):
        raise WebhookRefused("bad_signature", f"signature does not match the body (event id {event_id!r:.80})")
    if not event_id:
        raise WebhookRefused("no_event_id", "x-razorpay-event-id header missing")
    if len(event_id) > EVENT_ID_MAX_LENGTH:
        raise WebhookRefused("bad_event_id", f"event id longer than {EVENT_ID_MAX_LENGTH} characters")
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WebhookRefused("bad_json", f"body is not JSON ({type(exc).__name__}), event id {event_id}") from None
    event_name = payload.get("event") if isinstance(payload, dict) else None
    if not isinstance(event_name, str) or not event_name or len(event_name) > EVENT_NAME_MAX_LENGTH:
        raise WebhookRefused("bad_json", f"body has no event name, event id {event_id}")
    return event_name, payload, event_id


# --- applying a stored event (the webhook_event_process task) ------------------------------

def webhook_event_apply(*, event_id: int) -> str:
    """Apply one stored Razorpay webhook event, once.

    The payload is trusted as the gateway's word: its HMAC signature was verified on
    receipt, and applying it through the forward-only transitions makes late or
    reordered deliveries harmless; anything it cannot settle (a capture to make) goes
    through the same claimed, fetch-first path as the sync. The event row is locked
    and stamped processed_at in the transaction that applies it.
    """
    with transaction.atomic():
        event = WebhookEvent.objects.select_for_update().filter(pk=event_id).first()
        if event is None:
            return "missing"
        if event.processed_at is not None:
            return "already_processed"
        outcome = _apply_event(event)
        WebhookEvent.objects.filter(pk=event_id).update(
            processed_at=timezone.now(), attempts=F("attempts") + 1,
            error="" if outcome in ("applied", "ignored") else outcome,
        )
    return outcome


def _dig(value, *keys):
    """value[k1][k2]... where every step is an object; None as soon as one is not (a signed but malformed body)."""
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _apply_event(event) -> str:
    if event.event not in HANDLED_EVENTS:
        return "ignored"
    entity = _dig(event.payload, "payload", "payment", "entity")
    if not isinstance(entity, dict):
        return "no payment entity in the payload"
    try:
        gp = GatewayPayment.from_entity(entity)
    except (KeyError, TypeError, ValueError) as exc:
        return f"unreadable payment entity: {exc}"[:255]
    match = Q(razorpay_payment_id=gp.id)
    if isinstance(entity.get("order_id"), str) and entity["order_id"]:
        match |= Q(razorpay_order_id=entity["order_id"])
    pk = Payment.objects.filter(match).order_by("pk").values_list("pk", flat=True).first()
    if pk is None:
        return f"no payment for {gp.id}"
    payment_apply_observations(observations=[(pk, gp)])
    return "applied"
