"""Receiving Razorpay webhooks: verify the signature, dedupe on the event id, store, hand over.

A delivery is stored once per `x-razorpay-event-id` and announced on the outbox topic
`webhook.received` ({"event_id": <WebhookEvent pk>}) in the same transaction, so processing
on a worker (`webhook_event_process`, subscribed by the processing side) survives a broker
outage.

Refused deliveries change nothing. Anyone can send them, so each costs one Redis round trip
(a count per reason and minute, kept two hours, read by webhook_health), never a row: at most
one refused delivery per reason a minute is kept as a WebhookRejection row with its detail
(and logged), a sample for the admin. Without Redis only those samples are kept.

Dispute events (`payment.dispute.*`) record the dispute against its payment (payments.Dispute),
which the admin shows and the `payments:dispute` alert pages about while one needs an answer.

Event types we do not handle are stored already processed and acknowledged with 200: they
are genuine (signed) and Razorpay retries non-2xx answers for 24 h and then disables the
webhook, which would also stop the events we do handle.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone as dt_timezone

from django.conf import settings
from django.db import DatabaseError, DataError, transaction
from django.db.models import F, Q
from django.utils import timezone
from redis.exceptions import RedisError

from checkout.redis import RedisOutageLog, get_redis
from ops.runtime.outbox import outbox_add
from payments.models import Dispute, DisputeStatus, Payment, WebhookEvent, WebhookRejection
from payments.services.state import GatewayPayment, payment_apply_observations

log = logging.getLogger(__name__)

# Razorpay's dispute events, and the status each one gives the dispute.
DISPUTE_EVENTS = {
    "payment.dispute.created": DisputeStatus.OPEN,
    "payment.dispute.action_required": DisputeStatus.ACTION_REQUIRED,
    "payment.dispute.under_review": DisputeStatus.UNDER_REVIEW,
    "payment.dispute.won": DisputeStatus.WON,
    "payment.dispute.lost": DisputeStatus.LOST,
    "payment.dispute.closed": DisputeStatus.CLOSED,
}
HANDLED_EVENTS = frozenset({
    "payment.authorized", "payment.captured", "payment.failed", "order.paid", "refund.processed",
    *DISPUTE_EVENTS,
})
WEBHOOK_TOPIC = "webhook.received"
MAX_BODY_BYTES = 1024 * 1024
EVENT_ID_MAX_LENGTH = WebhookEvent._meta.get_field("event_id").max_length
EVENT_NAME_MAX_LENGTH = WebhookEvent._meta.get_field("event").max_length
# Refused deliveries: a Redis hash of counts by reason per minute, and a flag per reason while its sample is fresh.
REJECTIONS_KEY = "webhooks:rejected:{}"
REJECTION_SAMPLE_KEY = "webhooks:rejected:sampled:{}"
REJECTION_BUCKET_SECONDS = 60
REJECTIONS_KEPT_SECONDS = 2 * 3600

_sample_lock = threading.Lock()
_sampled_until: dict[str, float] = {}
_outage = RedisOutageLog(log, "refused webhook counts", "each process keeps one refused delivery per reason a minute")


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


def _rejection_counted(reason: str) -> bool:
    """Count one refused delivery; True when it is the reason's sample for this minute."""
    client = get_redis()
    if client is not None:
        bucket = REJECTIONS_KEY.format(int(time.time() // REJECTION_BUCKET_SECONDS))
        try:
            pipe = client.pipeline(transaction=False)
            pipe.hincrby(bucket, reason, 1)
            pipe.expire(bucket, REJECTIONS_KEPT_SECONDS)
            pipe.set(REJECTION_SAMPLE_KEY.format(reason), 1, nx=True, ex=REJECTION_BUCKET_SECONDS)
            sampled = pipe.execute()[-1]
        except RedisError as exc:
            _outage.failed(exc)
        else:
            _outage.ok()
            return bool(sampled)
    # No Redis to share the minute with: this process keeps its own.
    now = time.monotonic()
    with _sample_lock:
        if now < _sampled_until.get(reason, 0.0):
            return False
        _sampled_until[reason] = now + REJECTION_BUCKET_SECONDS
    return True


def webhook_rejection_record(*, reason: str, detail: str = "") -> None:
    """Count a refused delivery; keep it as a sample row (and log it) when it is its reason's first this minute."""
    if not _rejection_counted(reason):
        return
    log.warning("razorpay webhook refused reason=%s detail=%s (the first this minute; all are counted)", reason, detail)
    try:
        WebhookRejection.objects.create(reason=reason, detail=detail[:255])
    except DatabaseError as exc:  # the delivery is refused all the same
        log.warning("refused webhook sample not stored: %s", type(exc).__name__)


def webhook_rejection_counts(window_seconds: int) -> dict[str, int] | None:
    """Refused deliveries by reason in the last `window_seconds` (whole minutes), from the Redis counts;
    None when they cannot be read (no Redis, or it does not answer)."""
    client = get_redis()
    if client is None:
        return None
    last = int(time.time() // REJECTION_BUCKET_SECONDS)
    first = last - window_seconds // REJECTION_BUCKET_SECONDS + 1
    try:
        pipe = client.pipeline(transaction=False)
        for bucket in range(first, last + 1):
            pipe.hgetall(REJECTIONS_KEY.format(bucket))
        replies = pipe.execute()
    except RedisError as exc:
        log.warning("refused webhook counts unreadable: %s", type(exc).__name__)
        return None
    counts: dict[str, int] = {}
    for reply in replies:
        for reason, n in reply.items():
            counts[reason.decode()] = counts.get(reason.decode(), 0) + int(n)
    return counts


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
    and stamped processed_at in the transaction that applies it. A value the database
    refuses (an amount past its range) is a malformed event like any other: recorded as
    the event's error, never a task that fails again on every retry.
    """
    with transaction.atomic():
        event = WebhookEvent.objects.select_for_update().filter(pk=event_id).first()
        if event is None:
            return "missing"
        if event.processed_at is not None:
            return "already_processed"
        try:
            with transaction.atomic():
                outcome = _apply_event(event)
        except DataError as exc:
            outcome = f"payment entity refused by the database: {str(exc).strip()}"[:255]
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
    if event.event in DISPUTE_EVENTS:
        return _apply_dispute(event)
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


def _apply_dispute(event) -> str:
    """Record what a `payment.dispute.*` event says of its dispute (payload.dispute.entity), flagging the
    payment it disputes; a delivery older than the last one applied (by the event's time) changes nothing."""
    entity = _dig(event.payload, "payload", "dispute", "entity")
    if not isinstance(entity, dict):
        return "no dispute entity in the payload"
    dispute_id, amount, currency = entity.get("id"), entity.get("amount"), entity.get("currency")
    if not isinstance(dispute_id, str) or not dispute_id.startswith("disp_") or len(dispute_id) > 64:
        return f"unreadable dispute entity: id {dispute_id!r}"[:255]
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        return f"unreadable dispute entity: amount {amount!r} is not a whole number of paise"[:255]
    if not isinstance(currency, str) or len(currency) != 3:
        return f"unreadable dispute entity: currency {currency!r}"[:255]
    payment_id = entity.get("payment_id") or _dig(event.payload, "payload", "payment", "entity", "id")
    pk = (Payment.objects.filter(razorpay_payment_id=payment_id).values_list("pk", flat=True).first()
          if isinstance(payment_id, str) and payment_id else None)
    if pk is None:
        return f"no payment for dispute {dispute_id} ({payment_id!r})"[:255]
    deducted = entity.get("amount_deducted")
    fields = {
        "payment_id": pk, "status": DISPUTE_EVENTS[event.event], "amount_paise": amount, "currency": currency,
        "amount_deducted_paise": deducted if isinstance(deducted, int) and not isinstance(deducted, bool)
        and deducted >= 0 else 0,
        "reason_code": _text(entity.get("reason_code"), 64),
        "reason": _text(entity.get("reason_description") or entity.get("reason_code"), 255),
        "phase": _text(entity.get("phase"), 32),
        "respond_by": _when(entity.get("respond_by")),
        "event_at": _when(_dig(event.payload, "created_at")) or event.received_at,
    }
    now = timezone.now()
    dispute = Dispute.objects.select_for_update().filter(razorpay_dispute_id=dispute_id).first()
    if dispute is None:
        Dispute.objects.create(razorpay_dispute_id=dispute_id, created_at=now, updated_at=now, **fields)
    elif dispute.event_at <= fields["event_at"]:
        Dispute.objects.filter(pk=dispute.pk).update(updated_at=now, **fields)
    else:
        log.info("dispute %s: %s of %s is older than what was applied, kept as it is",
                 dispute_id, event.event, fields["event_at"])
        return "applied"
    level = logging.WARNING if fields["status"] in (DisputeStatus.OPEN, DisputeStatus.ACTION_REQUIRED) else logging.INFO
    log.log(level, "payment %s disputed: %s %s (%s paise %s, respond by %s)", pk, dispute_id, fields["status"],
            amount, currency, fields["respond_by"])
    return "applied"


def _text(value, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _when(value):
    """A Unix time from the gateway as an aware UTC datetime; None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**32:
        return None
    return datetime.fromtimestamp(value, tz=dt_timezone.utc)
