"""The settle loop: claim payments, ask the gateway about them concurrently, apply the answers.

`payments_settle` is the one loop behind payment_sync (payments pending too long)
and order_cleanup (payments of orders past their TTL). Chunks of payments are
claimed in pk order (skipping rows other workers hold) and every payment's
gateway call is queued on `concurrency` threads. The next chunk is claimed and
queued before this one is applied (in one transaction, on the calling thread),
so the calls never stop while the database work and the publishing run. A
payment whose call failed is released at once for the next run to try again; a
run that stops releases what it still holds; a chunk that waits long renews its claims.
"""
from __future__ import annotations

import logging
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Sequence

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from payments import gateway
from payments.models import Payment
from payments.services.claims import CLAIM_LEASE, claim_chunk, claimed_by_others, claims_renew, payment_release
from payments.services.state import (
    AMOUNT_FIELDS,
    UNSETTLED,
    GatewayPayment,
    capture_in_flight,
    payment_apply_observations,
    pick_attempt,
    plan,
)

log = logging.getLogger("payments.services")

SYNC_CHUNK = 500
# What the loop reads of each claimed payment (a probe and `plan` use these).
SETTLE_FIELDS = ("razorpay_order_id", "razorpay_payment_id", "status", "refunded_paise", "mismatch",
                 "error_code", "order_id", *AMOUNT_FIELDS)

Probe = Callable[[dict], "GatewayPayment | None"]
Apply = Callable[[list["Observation"], Counter, "datetime | None"], None]
Progress = Callable[[int, int | None, str], None]


@dataclass
class Observation:
    row: dict
    payment: GatewayPayment | None = None
    error: str = ""


def _observe_one(row: dict, probe: Probe) -> Observation:
    try:
        return Observation(row, probe(row))
    except gateway.GatewayError as exc:
        return Observation(row, None, type(exc).__name__)
    except ValueError as exc:  # an answer we cannot read (unknown status...): this payment only
        log.warning("payment %s: unreadable gateway answer: %s", row["pk"], exc)
        return Observation(row, None, "UnreadableAnswer")


def probe_order_payments(row: dict) -> GatewayPayment | None:
    """The deciding attempt among the Razorpay order's payments (finds retries the customer made)."""
    return pick_attempt(gateway.fetch_order_payments(row["razorpay_order_id"]))


@dataclass
class _Chunk:
    futures: list[Future]
    ids: list[int]
    token: datetime | None  # the claims' token; None in a dry run


def payments_settle(
    pending, *, probe: Probe, apply: Apply, dry_run: bool, concurrency: int, chunk_size: int = SYNC_CHUNK,
    on_progress: Progress | None = None, label: str = "payments",
) -> Counter:
    """Settle the payments of queryset `pending`: claim, `probe(row)` on the pool, `apply(observations, counts, token)`.

    `apply` runs once per chunk on this thread; it must release (with the token) what it did not settle.
    A dry run claims nothing (it reads without locking) and `apply` must write nothing.
    """
    if concurrency < 1 or chunk_size < 1:
        raise ValueError("concurrency and chunk_size must be positive")
    total = pending.count()
    counts: Counter = Counter()
    # Work someone else holds now is not this run's: the ledger says so instead of an empty success.
    counts["skipped_claimed"] = claimed_by_others(pending)
    queued: deque[_Chunk] = deque()
    after, exhausted = 0, False
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"settle-{label}") as pool:
        def queue_next() -> None:
            nonlocal after, exhausted
            rows, token = claim_chunk(pending.filter(pk__gt=after), size=chunk_size, fields=SETTLE_FIELDS,
                                      claim=not dry_run)
            exhausted = len(rows) < chunk_size
            if rows:
                after = rows[-1]["pk"]
                queued.append(_Chunk([pool.submit(_observe_one, row, probe) for row in rows],
                                     [row["pk"] for row in rows], token))

        try:
            queue_next()
            while queued:
                # Two chunks queued: the pool works through the next one while this one is applied.
                if not exhausted and len(queued) < 2:
                    queue_next()
                chunk = queued[0]
                if chunk.token is not None and chunk.token - timezone.now() < CLAIM_LEASE / 2:
                    chunk.token = claims_renew(payment_ids=chunk.ids, token=chunk.token)
                observations = [f.result() for f in chunk.futures]
                errors = Counter(o.error for o in observations if o.error)
                for name, n in errors.items():
                    counts[f"gateway_error.{name}"] += n
                counts["gateway_errors"] += sum(errors.values())
                counts["seen"] += len(observations)
                apply(observations, counts, chunk.token)
                queued.popleft()  # applied: its claims are released (or settled) now
                if on_progress:
                    on_progress(counts["seen"], total, label)
        except BaseException:
            # No more gateway calls for a run that stops, and its claims go back at once.
            pool.shutdown(cancel_futures=True)
            for chunk in queued:
                if chunk.token is not None:
                    payment_release(payment_ids=chunk.ids, token=chunk.token)
            raise
    return counts


def release_failed_calls(observations: Sequence[Observation], token: datetime | None) -> None:
    """Free the payments whose gateway call failed: the next run (or another worker) tries again."""
    failed = [o.row["pk"] for o in observations if o.error]
    if failed and token is not None:
        payment_release(payment_ids=failed, token=token)


def payments_to_sync(now: datetime):
    """The payments a sync at `now` asks the gateway about: left created/authorized longer than
    PAYMENT_SYNC_AFTER. A payment flagged as a mismatch waits for a human, not for the next sync; one
    whose capture chain may still run is the chain's (it fetches before acting): claiming it would
    only make the chain wait."""
    return Payment.objects.filter(
        status__in=UNSETTLED, updated_at__lt=now - settings.PAYMENT_SYNC_AFTER, mismatch=""
    ).exclude(capture_in_flight(now))


def payment_sync_pending(
    *, dry_run: bool = False, concurrency: int = 8, chunk_size: int = SYNC_CHUNK,
    now: datetime | None = None, on_progress: Progress | None = None, id_range: tuple[int, int] | None = None,
    checkpoint: Callable[[int, Counter], None] | None = None,
) -> Counter:
    """Reconcile payments left created/authorized longer than PAYMENT_SYNC_AFTER with Razorpay
    (those with after_id < id <= last_id when `id_range` is given).

    `checkpoint(last_id, counts)` is called inside the transaction that applies each chunk of
    answers, with the last payment id the chunk covered and the counts so far (a chunk task stores
    its progress there: see JobContext.checkpoint).
    """
    now = now or timezone.now()
    pending = payments_to_sync(now)
    if id_range is not None:
        pending = pending.filter(pk__gt=id_range[0], pk__lte=id_range[1])

    def apply(observations: list[Observation], counts: Counter, token: datetime | None) -> None:
        if dry_run:
            for o in observations:
                action = plan(o.row, o.payment)
                if action:
                    counts[f"would_{action}"] += 1
            return
        with transaction.atomic():
            applied = payment_apply_observations(
                observations=[(o.row["pk"], o.payment) for o in observations if not o.error], claim_token=token,
            )
            counts.update(applied.counts)
            counts["captured_paise"] += applied.captured_paise
            if checkpoint is not None:
                checkpoint(observations[-1].row["pk"], counts)
        release_failed_calls(observations, token)

    return payments_settle(
        pending, probe=probe_order_payments, apply=apply, dry_run=dry_run, concurrency=concurrency,
        chunk_size=chunk_size, on_progress=on_progress,
    )
