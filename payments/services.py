"""Payment state changes: what the gateway says, applied to our payments and orders.

Every path that learns a payment's state at Razorpay (payment_sync, order_cleanup,
the capture task, webhooks) ends in `payment_apply_observations`, which moves
payments only forward (a stale observation never undoes a newer one), marks the
order paid in the same transaction as its payment's capture and writes the
`order.paid` event to the outbox there too. Gateway calls are made only under a
claim (`Payment.claimed_until`), so two workers never act on one payment, and
never inside a database transaction.
"""
from __future__ import annotations

import logging
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from itertools import repeat
from typing import Callable, Iterable, Sequence

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Q, Sum
from django.utils import timezone

from ops.bulk import update_by_pk
from ops.outbox import outbox_add_many
from orders.models import Order, OrderStatus
from payments import gateway
from payments.models import Payment, PaymentReport, PaymentStatus

log = logging.getLogger(__name__)

CREATED, AUTHORIZED, CAPTURED = PaymentStatus.CREATED, PaymentStatus.AUTHORIZED, PaymentStatus.CAPTURED
FAILED, REFUNDED, CANCELLED = PaymentStatus.FAILED, PaymentStatus.REFUNDED, PaymentStatus.CANCELLED
UNSETTLED = (CREATED, AUTHORIZED)

# The local statuses a gateway status may move a payment from. Only forward: Razorpay
# never un-captures, but a failed payment can turn authorized late, and a payment we
# cancelled locally can still be paid by the customer (then the money is real).
TRANSITIONS: dict[str, frozenset[str]] = {
    AUTHORIZED: frozenset({CREATED, FAILED, CANCELLED}),
    CAPTURED: frozenset({CREATED, AUTHORIZED, FAILED, CANCELLED}),
    FAILED: frozenset({CREATED}),
    # Seen only once refunded: an authorization we never heard of, released since.
    REFUNDED: frozenset({CREATED, AUTHORIZED, CAPTURED, FAILED, CANCELLED}),
}
# Which attempt of a Razorpay order speaks for it when there are several.
_RANK = {CAPTURED: 5, AUTHORIZED: 4, REFUNDED: 3, FAILED: 2, CREATED: 1}
# A captured payment makes these orders paid; any other order state needs a human.
PAYABLE_ORDER_STATUSES = (OrderStatus.PENDING, OrderStatus.EXPIRED)

# Razorpay refunds a payment left authorized for 3 to 5 days; capture only well before the earliest.
AUTO_REFUND_AFTER = timedelta(days=3)
CAPTURE_MARGIN = timedelta(hours=6)
CLAIM_LEASE = timedelta(minutes=5)
SYNC_CHUNK = 500


@dataclass(frozen=True)
class GatewayPayment:
    """The part of a Razorpay payment entity the money logic uses."""

    id: str
    status: str
    amount: int
    currency: str
    amount_refunded: int = 0
    error_code: str = ""
    error_description: str = ""
    created_at: int = 0

    @classmethod
    def from_entity(cls, entity: dict) -> "GatewayPayment":
        status = entity.get("status")
        if status not in _RANK:
            raise ValueError(f"payment {entity.get('id')!r} has an unknown status {status!r}")
        return cls(
            id=str(entity["id"]), status=status, amount=int(entity["amount"]),
            currency=str(entity["currency"]), amount_refunded=int(entity.get("amount_refunded") or 0),
            error_code=str(entity.get("error_code") or "")[:64],
            error_description=str(entity.get("error_description") or "")[:255],
            created_at=int(entity.get("created_at") or 0),
        )

    @property
    def authorized_since(self) -> datetime | None:
        return datetime.fromtimestamp(self.created_at, tz=dt_timezone.utc) if self.created_at else None


def pick_attempt(entities: Iterable[dict]) -> GatewayPayment | None:
    """The attempt of a Razorpay order that decides its fate: captured first, then authorized..."""
    attempts = [GatewayPayment.from_entity(e) for e in entities]
    if not attempts:
        return None
    return max(attempts, key=lambda p: (_RANK[p.status], p.created_at))


@dataclass
class Applied:
    """What one `payment_apply_observations` call changed."""

    counts: Counter = field(default_factory=Counter)
    paid_order_ids: list[int] = field(default_factory=list)
    captured_paise: int = 0


def capture_allowed(*, order_status: str, order_created_at: datetime, authorized_since: datetime | None,
                    now: datetime) -> bool:
    """Capture only for an order still on sale to its buyer, and before Razorpay's auto-refund."""
    if order_status != OrderStatus.PENDING or now >= order_created_at + settings.ORDER_TTL:
        return False
    return authorized_since is None or now < authorized_since + AUTO_REFUND_AFTER - CAPTURE_MARGIN


def _mismatch(row: dict, gp: GatewayPayment) -> str:
    if gp.status not in (AUTHORIZED, CAPTURED, REFUNDED):
        return ""
    if gp.amount != row["amount_paise"] or gp.currency != row["currency"]:
        return (f"gateway {gp.id} has {gp.amount} {gp.currency}, "
                f"ours is {row['amount_paise']} {row['currency']}")
    return ""


def plan(row: dict, gp: GatewayPayment | None) -> str:
    """What an observation does to a payment in `row`: a target status, 'mismatch', 'refund_progress' or ''."""
    if gp is None:
        return ""
    if _mismatch(row, gp):
        return "mismatch" if not row.get("mismatch") else ""
    if gp.status == row["status"]:
        if gp.status == CAPTURED and gp.amount_refunded > row["refunded_paise"]:
            return "refund_progress"
        return ""
    if row["status"] in TRANSITIONS.get(gp.status, ()):
        return gp.status
    return ""


_LOCK_FIELDS = ("pk", "status", "order_id", "amount_paise", "currency", "refunded_paise", "mismatch")


def payment_apply_observations(
    *, observations: Sequence[tuple[int, GatewayPayment | None]], request_capture: bool = True,
    release_claims: bool = True, now: datetime | None = None,
) -> Applied:
    """Apply what the gateway said about these payments (by our pk) in one transaction.

    Re-reads each payment under its row lock and moves it only along TRANSITIONS, so
    concurrent appliers (sync, webhook, capture task) agree. A capture marks the order
    paid and announces `order.paid` in the same transaction; an authorization asks
    for a capture through `payment.authorized` (the payment_retry task).
    """
    now = now or timezone.now()
    by_pk = {pk: gp for pk, gp in observations}
    applied = Applied()
    if not by_pk:
        return applied
    with transaction.atomic():
        rows = {
            r["pk"]: r for r in Payment.objects.select_for_update(of=("self",))
            .filter(pk__in=by_pk).values(*_LOCK_FIELDS)
        }
        groups: dict[str, dict[int, GatewayPayment]] = {}
        still_authorized = []
        for pk, row in rows.items():
            gp = by_pk[pk]
            action = plan(row, gp)
            if action:
                groups.setdefault(action, {})[pk] = gp
            elif gp is not None and gp.status == AUTHORIZED == row["status"] and not row["mismatch"]:
                still_authorized.append(pk)

        touched = {"last_synced_at": now}
        if release_claims:
            touched["claimed_until"] = None
        Payment.objects.filter(pk__in=rows).update(**touched)

        _apply_mismatch(groups.get("mismatch", {}), rows, now, applied)
        _apply_captured(groups.get(CAPTURED, {}), rows, now, applied)
        _apply_authorized(groups.get(AUTHORIZED, {}), now, applied, request_capture)
        _apply_failed(groups.get(FAILED, {}), rows, now, applied)
        _apply_refunded(groups.get(REFUNDED, {}), rows, now, applied)
        _apply_refund_progress(groups.get("refund_progress", {}), rows, now, applied)

        if request_capture and still_authorized:
            transaction.on_commit(lambda: request_captures(still_authorized))
            applied.counts["capture_requested"] += len(still_authorized)
    return applied


def _apply_mismatch(group, rows, now, applied: Applied) -> None:
    if not group:
        return
    update_by_pk(Payment, {"mismatch": {pk: _mismatch(rows[pk], gp)[:255] for pk, gp in group.items()}},
                 updated_at=now)
    for pk in group:
        log.warning("payment %s flagged: %s", pk, _mismatch(rows[pk], group[pk]))
    applied.counts["mismatched"] += len(group)


def _apply_captured(group, rows, now, applied: Applied) -> None:
    if not group:
        return
    update_by_pk(
        Payment,
        {"razorpay_payment_id": {pk: gp.id for pk, gp in group.items()},
         "refunded_paise": {pk: gp.amount_refunded for pk, gp in group.items()}},
        status=CAPTURED, captured_at=now, updated_at=now, error_code="", error_description="",
    )
    applied.counts["captured"] += len(group)
    applied.captured_paise += sum(gp.amount for gp in group.values())
    order_ids = {rows[pk]["order_id"] for pk in group}
    payable = set(
        Order.objects.select_for_update()
        .filter(pk__in=order_ids, status__in=PAYABLE_ORDER_STATUSES).values_list("pk", flat=True)
    )
    if payable:
        Order.objects.filter(pk__in=payable).update(status=OrderStatus.PAID, paid_at=now, updated_at=now)
    outbox_add_many(
        ("order.paid", {"order_id": order_id}, f"order.paid:{order_id}") for order_id in sorted(payable)
    )
    applied.paid_order_ids.extend(sorted(payable))
    applied.counts["orders_paid"] += len(payable)
    # Money taken for an order already paid, cancelled or refunded: never silently kept.
    stray = {pk: f"captured for order {rows[pk]['order_id']}, which was not payable: refund or honour by hand"
             for pk in group if rows[pk]["order_id"] not in payable}
    if stray:
        update_by_pk(Payment, {"mismatch": stray})
        for pk, text in stray.items():
            log.error("payment %s %s", pk, text)
        applied.counts["captured_unpayable"] += len(stray)


def _apply_authorized(group, now, applied: Applied, request_capture: bool) -> None:
    if not group:
        return
    update_by_pk(
        Payment, {"razorpay_payment_id": {pk: gp.id for pk, gp in group.items()}},
        status=AUTHORIZED, authorized_at=now, updated_at=now, error_code="", error_description="",
    )
    applied.counts["authorized"] += len(group)
    if request_capture:
        outbox_add_many(
            ("payment.authorized", {"payment_id": pk}, f"payment.authorized:{pk}:{group[pk].id}")
            for pk in sorted(group)
        )
        applied.counts["capture_requested"] += len(group)


def _apply_failed(group, rows, now, applied: Applied) -> None:
    if not group:
        return
    update_by_pk(
        Payment,
        {"razorpay_payment_id": {pk: gp.id for pk, gp in group.items()},
         "error_code": {pk: gp.error_code for pk, gp in group.items()},
         "error_description": {pk: gp.error_description for pk, gp in group.items()}},
        status=FAILED, updated_at=now,
    )
    outbox_add_many(
        ("payment.failed", {"payment_id": pk, "order_id": rows[pk]["order_id"]},
         f"payment.failed:{pk}:{group[pk].id}")
        for pk in sorted(group)
    )
    applied.counts["failed"] += len(group)


def _refund_updates(group, rows) -> dict[int, int]:
    # Never more than the payment's amount (the table's check constraint says so too).
    return {pk: min(gp.amount_refunded or rows[pk]["amount_paise"], rows[pk]["amount_paise"])
            for pk, gp in group.items()}


def _apply_refunded(group, rows, now, applied: Applied) -> None:
    if not group:
        return
    amounts = _refund_updates(group, rows)
    update_by_pk(
        Payment, {"razorpay_payment_id": {pk: gp.id for pk, gp in group.items()}, "refunded_paise": amounts},
        status=REFUNDED, refunded_at=now, updated_at=now,
    )
    applied.counts["refunded"] += len(group)
    refunded_orders = [rows[pk]["order_id"] for pk, gp in group.items() if rows[pk]["status"] == CAPTURED]
    if refunded_orders:
        applied.counts["orders_refunded"] += Order.objects.filter(
            pk__in=refunded_orders, status=OrderStatus.PAID
        ).update(status=OrderStatus.REFUNDED, refunded_at=now, updated_at=now)


def _apply_refund_progress(group, rows, now, applied: Applied) -> None:
    if not group:
        return
    update_by_pk(Payment, {"refunded_paise": _refund_updates(group, rows)}, refunded_at=now, updated_at=now)
    applied.counts["partially_refunded"] += len(group)


def request_captures(payment_ids: Sequence[int]) -> int:
    """Queue a payment_retry task per payment; a broker outage is logged, the next sync asks again."""
    from checkout.celery import app

    sent = 0
    for pk in payment_ids:
        try:
            app.tasks["payment_retry"].apply_async(kwargs={"payment_id": pk})
            sent += 1
        except Exception as exc:  # the broker is down: the payment stays authorized and is asked for again
            log.warning("capture of payment %s not queued: %s", pk, exc)
            break
    return sent


# --- claims ------------------------------------------------------------------------------------

def _unclaimed(now: datetime) -> Q:
    return Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)


def payment_claim(*, payment_id: int, statuses: Sequence[str], now: datetime | None = None) -> bool:
    """Take the payment's lease if it is in `statuses` and nobody holds it (a conditional UPDATE)."""
    now = now or timezone.now()
    return bool(
        Payment.objects.filter(pk=payment_id, status__in=statuses).filter(_unclaimed(now))
        .update(claimed_until=now + CLAIM_LEASE)
    )


def payment_release(*, payment_ids: Sequence[int]) -> None:
    Payment.objects.filter(pk__in=payment_ids).update(claimed_until=None)


def claim_chunk(queryset, *, size: int, now: datetime, fields: Sequence[str], claim: bool = True) -> list[dict]:
    """Claim up to `size` payments of `queryset` (in pk order) that no one else holds or is locking."""
    queryset = queryset.filter(_unclaimed(now)).order_by("pk")
    if not claim:  # a dry run looks without locking or writing
        return list(queryset.values("pk", *fields)[:size])
    with transaction.atomic():
        rows = list(queryset.select_for_update(skip_locked=True, of=("self",)).values("pk", *fields)[:size])
        if rows:
            Payment.objects.filter(pk__in=[r["pk"] for r in rows]).update(claimed_until=now + CLAIM_LEASE)
    return rows


# --- observing the gateway concurrently --------------------------------------------------------

@dataclass
class Observation:
    row: dict
    payment: GatewayPayment | None = None
    error: str = ""


def _observe_one(row: dict, probe: Callable[[dict], GatewayPayment | None]) -> Observation:
    try:
        return Observation(row, probe(row))
    except gateway.GatewayError as exc:
        return Observation(row, None, type(exc).__name__)
    except ValueError as exc:  # an answer we cannot read (unknown status...): this payment only
        log.warning("payment %s: unreadable gateway answer: %s", row["pk"], exc)
        return Observation(row, None, "UnreadableAnswer")


def observe(rows: Sequence[dict], probe: Callable[[dict], GatewayPayment | None],
            pool: ThreadPoolExecutor) -> list[Observation]:
    """Run `probe(row)` for every row on the pool; a gateway error is recorded on its row, not raised."""
    return list(pool.map(_observe_one, rows, repeat(probe)))


def probe_order_payments(row: dict) -> GatewayPayment | None:
    """The deciding attempt among the Razorpay order's payments (finds retries the customer made)."""
    return pick_attempt(gateway.fetch_order_payments(row["razorpay_order_id"]))


# --- payment_sync ------------------------------------------------------------------------------

_SYNC_FIELDS = ("razorpay_order_id", "razorpay_payment_id", "amount_paise", "currency", "status",
                "refunded_paise", "mismatch", "order_id")


def payment_sync_pending(
    *, dry_run: bool = False, concurrency: int = 8, chunk_size: int = SYNC_CHUNK,
    now: datetime | None = None, on_progress: Callable[[int, int | None, str], None] | None = None,
) -> Counter:
    """Reconcile payments left created/authorized longer than PAYMENT_SYNC_AFTER with Razorpay.

    Chunks of payments are claimed in pk order (skipping rows other workers hold) and
    every payment's gateway call is queued on `concurrency` threads. The next chunk is
    claimed and queued before this one is applied (in one transaction, on this
    thread), so the calls never stop while the database work and the publishing run.
    """
    if concurrency < 1 or chunk_size < 1:
        raise ValueError("concurrency and chunk_size must be positive")
    now = now or timezone.now()
    # A payment flagged as a mismatch waits for a human, not for the next sync.
    pending = Payment.objects.filter(
        status__in=UNSETTLED, updated_at__lt=now - settings.PAYMENT_SYNC_AFTER, mismatch=""
    )
    total = pending.count()
    counts: Counter = Counter()
    queued: deque[list[Future]] = deque()
    after, exhausted = 0, False
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="payment-sync") as pool:
        def queue_next() -> None:
            nonlocal after, exhausted
            rows = claim_chunk(pending.filter(pk__gt=after), size=chunk_size, now=now,
                               fields=_SYNC_FIELDS, claim=not dry_run)
            exhausted = len(rows) < chunk_size
            if rows:
                after = rows[-1]["pk"]
                queued.append([pool.submit(_observe_one, row, probe_order_payments) for row in rows])

        try:
            queue_next()
            while queued:
                # Two chunks queued: the pool works through the next one while this one is applied.
                if not exhausted and len(queued) < 2:
                    queue_next()
                observations = [f.result() for f in queued.popleft()]
                _settle_chunk(observations, counts, dry_run=dry_run)
                counts["seen"] += len(observations)
                if on_progress:
                    on_progress(counts["seen"], total, "payments")
        except BaseException:
            # No more gateway calls for a run that stops; its claims lapse with their lease.
            pool.shutdown(cancel_futures=True)
            raise
    return counts


def _settle_chunk(observations: list[Observation], counts: Counter, *, dry_run: bool) -> None:
    errors = Counter(o.error for o in observations if o.error)
    for name, n in errors.items():
        counts[f"gateway_error.{name}"] += n
    counts["gateway_errors"] += sum(errors.values())
    if dry_run:
        for o in observations:
            action = plan(o.row, o.payment)
            if action:
                counts[f"would_{action}"] += 1
        return
    answered = [(o.row["pk"], o.payment) for o in observations if not o.error]
    applied = payment_apply_observations(observations=answered)
    counts.update(applied.counts)
    counts["captured_paise"] += applied.captured_paise
    failed_calls = [o.row["pk"] for o in observations if o.error]
    if failed_calls:
        # Free them now: the next run (or another worker) tries again.
        payment_release(payment_ids=failed_calls)


def payment_settle_authorized(*, payment_id: int) -> str:
    """Capture an authorized payment while its order may still be bought, else refund it.

    Fetches before acting, so a capture whose answer was lost is seen as captured and
    never repeated; an "already captured" rejection is read the same way. Gateway
    outages raise (the payment_retry task retries them with backoff).
    """
    if not payment_claim(payment_id=payment_id, statuses=(AUTHORIZED,)):
        return "skipped"
    try:
        payment = Payment.objects.select_related("order").get(pk=payment_id)
        gp = GatewayPayment.from_entity(gateway.fetch_payment(payment.razorpay_payment_id))
        outcome = gp.status
        row = {"amount_paise": payment.amount_paise, "currency": payment.currency}
        if gp.status == AUTHORIZED and not _mismatch(row, gp):
            now = timezone.now()
            if capture_allowed(order_status=payment.order.status, order_created_at=payment.order.created_at,
                               authorized_since=gp.authorized_since, now=now):
                gp, outcome = _capture(payment, gp), "captured"
            else:
                gp, outcome = refund_authorized(gp), "refunded"
        payment_apply_observations(observations=[(payment_id, gp)], request_capture=False)
        return outcome
    finally:
        payment_release(payment_ids=[payment_id])


def _capture(payment: Payment, gp: GatewayPayment) -> GatewayPayment:
    try:
        return GatewayPayment.from_entity(
            gateway.capture(payment.razorpay_payment_id, payment.amount_paise, payment.currency)
        )
    except gateway.GatewayRejected as exc:
        now_at_gateway = GatewayPayment.from_entity(gateway.fetch_payment(payment.razorpay_payment_id))
        if now_at_gateway.status == AUTHORIZED:
            raise
        log.info("capture of payment %s rejected (%s); the gateway has it %s",
                 payment.pk, exc.description, now_at_gateway.status)
        return now_at_gateway


def refund_authorized(gp: GatewayPayment) -> GatewayPayment:
    """Release an authorized payment that may no longer be captured (in full, as Razorpay requires)."""
    try:
        refund = gateway.refund(gp.id)
    except gateway.GatewayRejected:  # refunded meanwhile (auto-refund, an earlier answer lost): ask
        return GatewayPayment.from_entity(gateway.fetch_payment(gp.id))
    return replace(gp, status=REFUNDED, amount_refunded=int(refund.get("amount") or gp.amount))


# --- payment reports ---------------------------------------------------------------------------

REPORT_TOP_FAILURES = 5


def payment_report_write(*, period_end: datetime, sync_counts: dict, job_run_id: int | None = None,
                         default_period: timedelta = timedelta(minutes=30)) -> PaymentReport:
    """The report of the period since the last one: payments changed by status, money moved, why they failed."""
    last_end = PaymentReport.objects.order_by("-period_end").values_list("period_end", flat=True).first()
    period_start = last_end if last_end and last_end < period_end else period_end - default_period
    changed = Payment.objects.filter(updated_at__gte=period_start, updated_at__lt=period_end)
    counts = dict(changed.values_list("status").annotate(n=Count("pk")).order_by("status"))
    amounts: dict[str, dict[str, int]] = {}
    for currency, total in (
        Payment.objects.filter(captured_at__gte=period_start, captured_at__lt=period_end)
        .values_list("currency").annotate(total=Sum("amount_paise")).order_by("currency")
    ):
        amounts.setdefault(currency, {"captured_paise": 0, "refunded_paise": 0})["captured_paise"] = total
    for currency, total in (
        Payment.objects.filter(refunded_at__gte=period_start, refunded_at__lt=period_end)
        .values_list("currency").annotate(total=Sum("refunded_paise")).order_by("currency")
    ):
        amounts.setdefault(currency, {"captured_paise": 0, "refunded_paise": 0})["refunded_paise"] = total
    failures = (
        changed.filter(status=FAILED).values("error_code", "error_description")
        .annotate(n=Count("pk")).order_by("-n", "error_code")[:REPORT_TOP_FAILURES]
    )
    top = [{"reason": f"{f['error_code'] or 'UNKNOWN'}: {f['error_description'] or '-'}", "count": f["n"]}
           for f in failures]
    return PaymentReport.objects.create(
        period_start=period_start, period_end=period_end, job_run_id=job_run_id,
        counts_by_status=counts, amounts=amounts, top_failure_reasons=top, sync_counts=dict(sync_counts),
    )


# --- webhooks ----------------------------------------------------------------------------------

HANDLED_EVENTS = ("payment.authorized", "payment.captured", "payment.failed", "order.paid", "refund.processed")


def webhook_event_apply(*, event_id: int) -> str:
    """Apply one stored Razorpay webhook event, once.

    The payload is trusted as the gateway's word: its HMAC signature was verified on
    receipt, and applying it through the forward-only transitions makes late or
    reordered deliveries harmless; anything it cannot settle (a capture to make) goes
    through the same claimed, fetch-first path as the sync. The event row is locked
    and stamped processed_at in the transaction that applies it.
    """
    from payments.models import WebhookEvent

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


def _apply_event(event) -> str:
    if event.event not in HANDLED_EVENTS:
        return "ignored"
    entity = ((event.payload.get("payload") or {}).get("payment") or {}).get("entity")
    if not isinstance(entity, dict):
        return "no payment entity in the payload"
    try:
        gp = GatewayPayment.from_entity(entity)
    except (KeyError, TypeError, ValueError) as exc:
        return f"unreadable payment entity: {exc}"[:255]
    match = Q(razorpay_payment_id=gp.id)
    if entity.get("order_id"):
        match |= Q(razorpay_order_id=entity["order_id"])
    pk = Payment.objects.filter(match).order_by("pk").values_list("pk", flat=True).first()
    if pk is None:
        return f"no payment for {gp.id}"
    payment_apply_observations(observations=[(pk, gp)], release_claims=False)
    return "applied"
