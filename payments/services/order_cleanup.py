"""order_cleanup's work: settle and close orders left pending past ORDER_TTL.

It lives with the payments because every step is decided by an order's payments:
their state at the gateway, whether money is still in flight, whether a payment
was ever started. The order side (the expiration email, once) is the orders app's
notification, announced through the outbox.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Callable

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from checkout.timezones import local_date
from ops.runtime.batches import Batch, run_batches
from ops.runtime.outbox import outbox_add_many
from orders.models import Order, OrderStatus
from orders.services import ORDER_EXPIRED
from payments.models import Payment, PaymentStatus
from payments.services.settle import Observation, payments_settle, probe_order_payments, release_failed_calls
from payments.services.capture import refund_authorized
from payments.services.state import PAYABLE_ORDER_STATUSES, UNSETTLED, payment_apply_observations

BATCH = 500
# The steps of a range, in order (a part taken over from a lost worker starts at the step it had reached).
PHASES = ("settle", "statuses", "close")
# Called inside each transaction that commits work, with the counts so far including that transaction's.
Mark = Callable[[Counter], None]


def overdue_orders(now: datetime):
    """Orders left pending past ORDER_TTL at `now`: what order_cleanup settles and closes."""
    return Order.objects.filter(status=OrderStatus.PENDING, created_at__lt=now - settings.ORDER_TTL)


def order_cleanup_overdue(*, dry_run: bool = False, concurrency: int = 4, batch_size: int = BATCH,
                          now: datetime | None = None, id_range: tuple[int, int] | None = None,
                          checkpoint: Callable[[str, Counter], None] | None = None,
                          start_phase: str = PHASES[0]) -> Counter:
    """Settle orders left pending past ORDER_TTL (those with after_id < id <= last_id when `id_range`
    is given).

    1. Their unsettled payments are looked up at Razorpay (claimed first): an authorized
       one is refunded (never captured), a captured one makes the order paid, one that
       never got a gateway payment is cancelled locally. A gateway error leaves the
       order for the next run.
    2. Order status follows payment status (captured → paid, refunded → refunded).
    3. Orders with no money left in flight are closed. The orphan rule: an order with
       no user, no internship, or no payment ever started is `cancelled` without an
       email (there is no one to tell, or nothing they began to pay); every other one
       is `expired` and its buyer gets the expiration email once.

    `checkpoint(phase, counts)` is called inside every transaction that commits work, with the step
    (one of PHASES) and the counts so far including that transaction's: a chunk stores them there.
    `start_phase` skips the steps before it (a range taken over where its lost attempt had got to;
    each step only finds what is still to do, so a step begun again does nothing twice).
    """
    if start_phase not in PHASES:
        raise ValueError(f"unknown order_cleanup step {start_phase!r}: one of {', '.join(PHASES)}")
    now = now or timezone.now()
    cutoff = now - settings.ORDER_TTL
    counts: Counter = Counter()

    def marker(phase: str) -> Mark | None:
        if checkpoint is None:
            return None

        def mark(so_far: Counter) -> None:
            total = Counter(counts)
            total.update(so_far)
            checkpoint(phase, total)
        return mark

    steps = {
        "settle": lambda mark: _settle_overdue_payments(
            cutoff=cutoff, now=now, concurrency=concurrency, batch_size=batch_size, dry_run=dry_run,
            id_range=id_range, mark=mark),
        "statuses": lambda mark: order_sync_payment_status(
            now=now, batch_size=batch_size, dry_run=dry_run, id_range=id_range, mark=mark),
        "close": lambda mark: _close_overdue(
            cutoff=cutoff, now=now, batch_size=batch_size, dry_run=dry_run, id_range=id_range, mark=mark),
    }
    for phase in PHASES[PHASES.index(start_phase):]:
        counts.update(steps[phase](marker(phase)))
    return counts


def _in_range(queryset, id_range: tuple[int, int] | None, field: str = "pk"):
    if id_range is None:
        return queryset
    return queryset.filter(**{f"{field}__gt": id_range[0], f"{field}__lte": id_range[1]})


def _release_probe(row: dict):
    gp = probe_order_payments(row)
    if gp is not None and gp.status == PaymentStatus.AUTHORIZED:
        gp = refund_authorized(gp)
    return gp


def _never_paid(o: Observation) -> bool:
    return not o.error and (o.payment is None or o.payment.status == PaymentStatus.CREATED)


def _reported(settle_counts: Counter) -> Counter:
    """The settle loop's tallies under the names order_cleanup reports (its own bookkeeping left out)."""
    return Counter({k: v for k, v in settle_counts.items() if k != "seen" and not k.startswith("gateway_error.")})


def _settle_overdue_payments(*, cutoff, now, concurrency, batch_size, dry_run, id_range=None,
                             mark: Mark | None = None) -> Counter:
    overdue = _in_range(Payment.objects.filter(
        status__in=UNSETTLED, order__status=OrderStatus.PENDING, order__created_at__lt=cutoff,
    ), id_range, "order_id")

    def apply(observations: list[Observation], counts: Counter, token: datetime | None) -> None:
        if dry_run:
            for o in observations:
                if o.payment is not None and o.payment.status == PaymentStatus.AUTHORIZED:
                    counts["would_refund"] += 1
                elif _never_paid(o):
                    counts["would_cancel_payment"] += 1
            return
        never_paid = [o.row["pk"] for o in observations if _never_paid(o)]
        with transaction.atomic():
            applied = payment_apply_observations(
                observations=[(o.row["pk"], o.payment) for o in observations if not o.error],
                request_capture=False, claim_token=token,
            )
            cancelled = Payment.objects.filter(pk__in=never_paid, status=PaymentStatus.CREATED).update(
                status=PaymentStatus.CANCELLED, updated_at=now, claimed_until=None
            )
            done = Counter({f"payments_{k}": v for k, v in applied.counts.items()})
            done["payments_cancelled"] += cancelled
            if mark is not None:
                so_far = _reported(counts)
                so_far.update(done)
                mark(so_far)
        counts.update(done)
        release_failed_calls(observations, token)

    counts = payments_settle(
        overdue, probe=probe_order_payments if dry_run else _release_probe, apply=apply, dry_run=dry_run,
        concurrency=concurrency, chunk_size=batch_size, label="overdue-orders",
    )
    return _reported(counts)


def order_sync_payment_status(*, now: datetime | None = None, batch_size: int = BATCH,
                              dry_run: bool = False, id_range: tuple[int, int] | None = None,
                              mark: Mark | None = None) -> Counter:
    """Orders whose status disagrees with their payments: captured → paid (announced), refunded → refunded.
    `mark(counts so far)` is called inside each batch's transaction."""
    now = now or timezone.now()
    counts: Counter = Counter()
    captured = Payment.objects.filter(order=OuterRef("pk"), status=PaymentStatus.CAPTURED, mismatch="")
    orders = _in_range(Order.objects.all(), id_range)
    unpaid = orders.filter(status__in=PAYABLE_ORDER_STATUSES).filter(Exists(captured))
    refunded = orders.filter(status=OrderStatus.PAID).filter(
        Exists(Payment.objects.filter(order=OuterRef("pk"), status=PaymentStatus.REFUNDED))
    ).exclude(Exists(Payment.objects.filter(order=OuterRef("pk"), status=PaymentStatus.CAPTURED)))
    if dry_run:
        counts["would_mark_paid"] = unpaid.count()
        counts["would_mark_refunded"] = refunded.count()
        return counts

    def mark_paid(after_id: int) -> Batch:
        ids = list(unpaid.filter(pk__gt=after_id).select_for_update(skip_locked=True, of=("self",))
                   .order_by("pk").values_list("pk", flat=True)[:batch_size])
        Order.objects.filter(pk__in=ids).update(
            status=OrderStatus.PAID, updated_at=now,
            paid_at=Coalesce(Subquery(captured.order_by("captured_at").values("captured_at")[:1]), now),
        )
        outbox_add_many(("order.paid", {"order_id": pk}, f"order.paid:{pk}") for pk in ids)
        counts["orders_marked_paid"] += len(ids)
        return Batch(len(ids), ids[-1] if ids else None, more=len(ids) == batch_size)

    def mark_refunded(after_id: int) -> Batch:
        ids = list(refunded.filter(pk__gt=after_id).select_for_update(skip_locked=True, of=("self",))
                   .order_by("pk").values_list("pk", flat=True)[:batch_size])
        Order.objects.filter(pk__in=ids).update(status=OrderStatus.REFUNDED, refunded_at=now, updated_at=now)
        counts["orders_marked_refunded"] += len(ids)
        return Batch(len(ids), ids[-1] if ids else None, more=len(ids) == batch_size)

    counts.update(orders_marked_paid=0, orders_marked_refunded=0)
    stored = None if mark is None else (lambda _: mark(counts))
    run_batches(mark_paid, checkpoint=stored)
    run_batches(mark_refunded, checkpoint=stored)
    return counts


def _close_overdue(*, cutoff, now, batch_size, dry_run, id_range=None, mark: Mark | None = None) -> Counter:
    counts: Counter = Counter()
    in_flight = Payment.objects.filter(
        order=OuterRef("pk"),
        status__in=(PaymentStatus.CREATED, PaymentStatus.AUTHORIZED, PaymentStatus.CAPTURED),
    )
    overdue = (
        _in_range(Order.objects.filter(status=OrderStatus.PENDING, created_at__lt=cutoff), id_range)
        .exclude(Exists(in_flight))
        .annotate(started=Exists(Payment.objects.filter(order=OuterRef("pk"))))
    )
    if dry_run:
        orphan = Q(user__isnull=True) | Q(internship__isnull=True) | Q(started=False)
        counts["would_cancel_orphaned"] = overdue.filter(orphan).count()
        counts["would_expire"] = overdue.exclude(orphan).count()
        return counts

    def close(after_id: int) -> Batch:
        batch = list(
            overdue.filter(pk__gt=after_id).select_for_update(skip_locked=True, of=("self",))
            .order_by("pk").values("pk", "user_id", "internship_id", "started")[:batch_size]
        )
        orphans = {o["pk"] for o in batch if not (o["user_id"] and o["internship_id"] and o["started"])}
        expired = [o["pk"] for o in batch if o["pk"] not in orphans]
        Order.objects.filter(pk__in=orphans).update(status=OrderStatus.CANCELLED, cancelled_at=now, updated_at=now)
        Order.objects.filter(pk__in=expired).update(status=OrderStatus.EXPIRED, expired_at=now, updated_at=now)
        events = [
            ("order.expired", {"kind": ORDER_EXPIRED, "object_id": pk}, f"order.expired:{pk}") for pk in expired
        ]
        if batch:
            # Counted by whoever keeps figures (the reports), on the local day of the closing.
            # An order leaves pending once, so the batch's first id names it for good.
            key = f"orders.closed:{batch[0]['pk']}"
            events.append(("orders.closed.tally", {
                "key": key, "day": local_date(now).isoformat(), "subject": "orders",
                "counters": {"expired": len(expired), "cancelled_orphaned": len(orphans)},
            }, key))
        outbox_add_many(events)
        counts["orders_cancelled_orphaned"] += len(orphans)
        counts["orders_expired"] += len(expired)
        return Batch(len(batch), batch[-1]["pk"] if batch else None, more=len(batch) == batch_size)

    run_batches(close, checkpoint=None if mark is None else (lambda _: mark(counts)))
    return counts
