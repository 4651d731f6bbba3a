"""Claims on payments: a lease in the row (`Payment.claimed_until`), taken with a conditional
UPDATE or `SELECT … FOR UPDATE SKIP LOCKED`, so two workers never ask the gateway about,
or act on, the same payment at once, and a crashed holder's claims lapse by themselves."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Sequence

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from payments.models import Payment

CLAIM_LEASE = timedelta(minutes=5)


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
