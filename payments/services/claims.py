"""Claims on payments: a lease in the row (`Payment.claimed_until`), taken with a conditional
UPDATE or `SELECT … FOR UPDATE SKIP LOCKED`, so two workers never ask the gateway about,
or act on, the same payment at once, and a crashed holder's claims lapse by themselves.

A claim runs from the moment it is taken, and its `claimed_until` value is its token: the
holder renews and releases only rows that still carry it, so a holder whose lease ran out
never renews or clears the claim another worker has taken since.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Sequence

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from payments.models import Payment

CLAIM_LEASE = timedelta(minutes=5)


class PaymentBusy(Exception):
    """Another worker holds the payment's claim now; the work is still to do, later."""


def _unclaimed(now: datetime) -> Q:
    return Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)


def _token() -> datetime:
    return timezone.now() + CLAIM_LEASE


def payment_claim(*, payment_id: int, statuses: Sequence[str]) -> datetime | None:
    """Take the payment's lease if it is in `statuses` and nobody holds it; its token, or None."""
    token = _token()
    claimed = (
        Payment.objects.filter(pk=payment_id, status__in=statuses).filter(_unclaimed(timezone.now()))
        .update(claimed_until=token)
    )
    return token if claimed else None


def payment_release(*, payment_ids: Sequence[int], token: datetime) -> int:
    """Give back the claims this holder still has on these payments."""
    return Payment.objects.filter(pk__in=payment_ids, claimed_until=token).update(claimed_until=None)


def claims_renew(*, payment_ids: Sequence[int], token: datetime) -> datetime:
    """Extend the claims this holder still has on these payments; the new token."""
    renewed = _token()
    Payment.objects.filter(pk__in=payment_ids, claimed_until=token).update(claimed_until=renewed)
    return renewed


def claimed_by_others(queryset) -> int:
    """How many payments of `queryset` someone else holds right now (work this run will not do)."""
    return queryset.filter(claimed_until__gte=timezone.now()).count()


def claim_chunk(queryset, *, size: int, fields: Sequence[str],
                claim: bool = True) -> tuple[list[dict], datetime | None]:
    """Claim up to `size` payments of `queryset` (in pk order) that no one else holds or is locking.

    Returns the rows and the claim's token (None for a dry run, which looks without locking or writing).
    """
    queryset = queryset.filter(_unclaimed(timezone.now())).order_by("pk")
    if not claim:
        return list(queryset.values("pk", *fields)[:size]), None
    with transaction.atomic():
        rows = list(queryset.select_for_update(skip_locked=True, of=("self",)).values("pk", *fields)[:size])
        token = _token()
        if rows:
            Payment.objects.filter(pk__in=[r["pk"] for r in rows]).update(claimed_until=token)
    return rows, token
