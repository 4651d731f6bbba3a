"""Payment state: what the gateway says about a payment, applied to our payments and orders.

Every path that learns a payment's state at Razorpay (payment_sync, order_cleanup,
the capture task, webhooks) ends in `payment_apply_observations`, which moves
payments only forward (a stale observation never undoes a newer one), marks the
order paid in the same transaction as its payment's capture and writes the
`order.paid` event to the outbox there too.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from functools import reduce
from operator import or_
from typing import Iterable, Sequence

from django.conf import settings
from django.db import transaction
from django.db.models import CharField, Exists, OuterRef, Q, Value
from django.db.models.functions import Cast, Concat
from django.utils import timezone

from checkout.timezones import local_date
from ops.runtime.bulk import update_by_pk
from ops.runtime.models import OutboxEvent
from ops.runtime.outbox import outbox_add_many
from orders.models import Order, OrderStatus
from orders.services import orders_refunded
from payments.models import Payment, PaymentStatus

log = logging.getLogger("payments.services")

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
# The error code of a payment whose capture the gateway refused while it stayed authorized.
CAPTURE_REFUSED = "CAPTURE_REFUSED"
# Which attempt of a Razorpay order speaks for it when there are several.
_RANK = {CAPTURED: 5, AUTHORIZED: 4, REFUNDED: 3, FAILED: 2, CREATED: 1}
# A captured payment makes these orders paid; any other order state needs a human.
PAYABLE_ORDER_STATUSES = (OrderStatus.PENDING, OrderStatus.EXPIRED)

# Razorpay refunds a payment left authorized for 3 to 5 days; capture only well before the earliest.
AUTO_REFUND_AFTER = timedelta(days=3)
CAPTURE_MARGIN = timedelta(hours=6)

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
            id=str(entity["id"]), status=status, amount=_paise("amount", entity["amount"]),
            currency=str(entity["currency"]), amount_refunded=_paise("amount_refunded", entity.get("amount_refunded") or 0),
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


def _paise(name: str, value) -> int:
    """An amount in paise exactly as the gateway states it: a whole number, never rounded into one."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} {value!r} is not a whole number of paise")
    if value < 0:
        raise ValueError(f"{name} {value!r} is negative")
    return value


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


# What a row needs for the amount check: the payment's amount and its order's.
AMOUNT_FIELDS = ("amount_paise", "currency", "order__amount_paise", "order__currency")


def mismatch(row: dict, gp: GatewayPayment) -> str:
    """Why the gateway's money disagrees with ours ('' when it agrees): the payment row's amount and
    currency, and the order's, which is what the buyer was asked to pay."""
    if gp.status not in (AUTHORIZED, CAPTURED, REFUNDED):
        return ""
    if gp.amount != row["amount_paise"] or gp.currency != row["currency"]:
        return (f"gateway {gp.id} has {gp.amount} {gp.currency}, "
                f"ours is {row['amount_paise']} {row['currency']}")
    if gp.amount != row["order__amount_paise"] or gp.currency != row["order__currency"]:
        return (f"gateway {gp.id} has {gp.amount} {gp.currency}, "
                f"its order is {row['order__amount_paise']} {row['order__currency']}")
    return ""


def plan(row: dict, gp: GatewayPayment | None) -> str:
    """What an observation does to a payment in `row`: a target status, 'mismatch', 'refund_progress' or ''."""
    if gp is None:
        return ""
    if mismatch(row, gp):
        return "mismatch" if not row.get("mismatch") else ""
    if row.get("mismatch") and gp.status == FAILED:
        # Flagged, so the gateway showed this payment authorized or captured, which never fails after:
        # the failure is a stale event, and failing the row would hide money taken from the person.
        return ""
    if gp.status == row["status"]:
        if gp.status == CAPTURED and gp.amount_refunded > row["refunded_paise"]:
            return "refund_progress"
        return ""
    if row["status"] == AUTHORIZED and gp.status == FAILED:
        # The authorized attempt itself failed (the bank refused its capture): only that attempt's
        # word counts, never a stale failure of another attempt of the same Razorpay order.
        return FAILED if gp.id == row.get("razorpay_payment_id") else ""
    if row["status"] == FAILED and row.get("error_code") == CAPTURE_REFUSED and gp.status == AUTHORIZED:
        return ""  # we stopped trying to capture it; Razorpay's auto-refund releases the money
    if row["status"] in TRANSITIONS.get(gp.status, ()):
        return gp.status
    return ""


_LOCK_FIELDS = ("pk", "status", "order_id", "razorpay_payment_id", "refunded_paise", "mismatch", "error_code",
                *AMOUNT_FIELDS)
# A payment still authorized at a sync is asked again for its capture at most once per this
# period, and never sooner than this after its last ask (its authorization's own included):
# longer than the capture task's retries last, so one capture chain runs at a time.
CAPTURE_ASK_EVERY = 3600


def capture_in_flight(now: datetime) -> Q:
    """Payments authorized whose capture was asked for less than CAPTURE_ASK_EVERY ago (by the event of
    their authorization, or an ask since): their capture chain may still be retrying, and it settles them.

    A period key alone lets a second chain start beside a running one: at the turn of a period, or when
    a sync finds authorized again a payment whose first chain is still in its backoff.
    """
    period = int(now.timestamp()) // CAPTURE_ASK_EVERY
    pk = Cast(OuterRef("pk"), CharField())
    keys = [Concat(Value("payment.authorized:"), pk, Value(":"), OuterRef("razorpay_payment_id"),
                   output_field=CharField())]
    keys += [Concat(Value("payment.capture_ask:"), pk, Value(f":{p}"), output_field=CharField())
             for p in (period - 1, period)]
    recent = OutboxEvent.objects.filter(created_at__gt=now - timedelta(seconds=CAPTURE_ASK_EVERY))
    return Q(status=AUTHORIZED) & reduce(or_, (Q(Exists(recent.filter(key=key))) for key in keys))


def payment_apply_observations(
    *, observations: Sequence[tuple[int, GatewayPayment | None]], request_capture: bool = True,
    claim_token: datetime | None = None, now: datetime | None = None,
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

        Payment.objects.filter(pk__in=rows).update(last_synced_at=now)
        if claim_token is not None:
            # Only our claims: a row claimed by another worker since ours lapsed keeps its claim.
            Payment.objects.filter(pk__in=rows, claimed_until=claim_token).update(claimed_until=None)

        _apply_mismatch(groups.get("mismatch", {}), rows, now, applied)
        _apply_captured(groups.get(CAPTURED, {}), rows, now, applied)
        _apply_authorized(groups.get(AUTHORIZED, {}), now, applied, request_capture)
        _apply_failed(groups.get(FAILED, {}), rows, now, applied)
        _apply_refunded(groups.get(REFUNDED, {}), rows, now, applied)
        _apply_refund_progress(groups.get("refund_progress", {}), rows, now, applied)

        if request_capture and still_authorized:
            # Asked again until the capture task settles it, but not while its last chain may still
            # be retrying; the key lets one ask per period through.
            asks = sorted(set(still_authorized) - set(
                Payment.objects.filter(capture_in_flight(now), pk__in=still_authorized).values_list("pk", flat=True)
            ))
            period = int(now.timestamp()) // CAPTURE_ASK_EVERY
            outbox_add_many(
                ("payment.authorized", {"payment_id": pk}, f"payment.capture_ask:{pk}:{period}") for pk in asks
            )
            applied.counts["capture_requested"] += len(asks)
    return applied


def _apply_mismatch(group, rows, now, applied: Applied) -> None:
    if not group:
        return
    update_by_pk(Payment, {"mismatch": {pk: mismatch(rows[pk], gp)[:255] for pk, gp in group.items()}},
                 updated_at=now)
    for pk in group:
        log.warning("payment %s flagged: %s", pk, mismatch(rows[pk], group[pk]))
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
    # The order's own record of it, in this transaction: the orders app tells the customer once from
    # it (and re-drives that until done), unless another attempt pays the order first.
    Order.objects.filter(pk__in={rows[pk]["order_id"] for pk in group}, status=OrderStatus.PENDING).update(
        payment_failed_at=now
    )
    events = [
        ("payment.failed", {"payment_id": pk, "order_id": rows[pk]["order_id"]},
         f"payment.failed:{pk}:{group[pk].id}")
        for pk in sorted(group)
    ]
    # Counted by whoever keeps figures (the reports), on the local day of the failure. A
    # payment fails once (only from created), so its lowest id names the group for good.
    key = f"payments.failed:{min(group)}"
    events.append(("payments.failed.tally", {
        "key": key, "day": local_date(now).isoformat(), "subject": "payments", "counters": {"failed": len(group)},
    }, key))
    outbox_add_many(events)
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
        # A second payment taken for an order (refunded as a duplicate) leaves it paid by the one still captured.
        still_paid = set(Payment.objects.filter(order_id__in=refunded_orders, status=CAPTURED)
                         .values_list("order_id", flat=True))
        refunded_orders = [order_id for order_id in refunded_orders if order_id not in still_paid]
    if refunded_orders:
        # Enrollments revoked and the customer's email queued with it (orders_refunded).
        applied.counts["orders_refunded"] += len(orders_refunded(order_ids=refunded_orders, now=now))


def _apply_refund_progress(group, rows, now, applied: Applied) -> None:
    if not group:
        return
    update_by_pk(Payment, {"refunded_paise": _refund_updates(group, rows)}, refunded_at=now, updated_at=now)
    applied.counts["partially_refunded"] += len(group)
