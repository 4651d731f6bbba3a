"""Claims on payments: leased from the moment they are taken, renewed and released only by their holder,
given back when a run stops, and work held by another run shown in the ledger."""
from collections import Counter
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from payments.models import Payment
from payments.services.claims import CLAIM_LEASE, claim_chunk, claims_renew, payment_claim, payment_release
from payments.services.settle import SETTLE_FIELDS, payment_sync_pending, payments_settle
from payments.services.state import GatewayPayment, payment_apply_observations
from tests.factories import PaymentFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def pending(n=3, **fields):
    old = timezone.now() - timedelta(hours=2)
    return [PaymentFactory(created_at=old, updated_at=old, **fields) for _ in range(n)]


def test_a_claim_runs_from_when_it_is_taken_not_from_when_the_run_began():
    payments = pending(2)
    later = timezone.now() + timedelta(minutes=20)  # deep into a long sync
    with time_machine.travel(later, tick=False):
        rows, token = claim_chunk(Payment.objects.all(), size=10, fields=SETTLE_FIELDS)
    assert {r["pk"] for r in rows} == {p.pk for p in payments}
    assert token == later + CLAIM_LEASE
    assert set(Payment.objects.values_list("claimed_until", flat=True)) == {later + CLAIM_LEASE}


def test_a_holder_whose_claim_lapsed_neither_renews_nor_clears_the_claim_taken_since():
    (payment,) = pending(1)
    # given a claim that lapsed, and another worker's claim on the same payment since
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        old = payment_claim(payment_id=payment.pk, statuses=("created",))
    with time_machine.travel(start + CLAIM_LEASE + timedelta(seconds=1), tick=False):
        theirs = payment_claim(payment_id=payment.pk, statuses=("created",))
    assert old and theirs and theirs != old

    # when the first holder renews, releases and applies what it saw, with its own token
    claims_renew(payment_ids=[payment.pk], token=old)
    assert payment_release(payment_ids=[payment.pk], token=old) == 0
    payment_apply_observations(observations=[(payment.pk, None)], claim_token=old)

    # then the other worker's claim stands
    assert Payment.objects.get(pk=payment.pk).claimed_until == theirs
    # and its holder renews and releases it
    renewed = claims_renew(payment_ids=[payment.pk], token=theirs)
    assert Payment.objects.get(pk=payment.pk).claimed_until == renewed
    assert payment_release(payment_ids=[payment.pk], token=renewed) == 1


def test_a_run_that_stops_gives_its_claims_back_at_once():
    pending(6)

    class Stop(Exception):
        pass

    def apply(observations, counts, token):
        raise Stop("the worker is shutting down")

    with pytest.raises(Stop):
        payments_settle(Payment.objects.all(), probe=lambda row: None, apply=apply, dry_run=False,
                        concurrency=2, chunk_size=2)

    # every chunk it had claimed (the one applied and the one queued behind it) is free again
    assert not Payment.objects.filter(claimed_until__isnull=False).exists()


def test_payments_held_by_another_run_are_counted_not_silently_passed_over(fake_gateway):
    held = pending(2)
    pending(1)
    for payment in held:
        assert payment_claim(payment_id=payment.pk, statuses=("created",))

    counts: Counter = payment_sync_pending(concurrency=1)

    assert counts["skipped_claimed"] == 2 and counts["seen"] == 1
