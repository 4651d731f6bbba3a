"""ops.runtime.bulk.update_by_pk: per-row values in one statement, the same result as the Case form."""
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from ops.runtime import bulk
from payments.models import Payment
from tests.factories import PaymentFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

FIELDS = ("razorpay_payment_id", "refunded_paise", "error_description", "status", "captured_at", "updated_at")


def per_row_values(payments, tag):
    first, second, third = payments
    return {
        # a NULL, quotes and a non-ASCII text, integers
        "razorpay_payment_id": {first.pk: f"pay_{tag}1", second.pk: None, third.pk: f"pay_{tag}'; DROP TABLE x;--"},
        "refunded_paise": {first.pk: 0, second.pk: 100, third.pk: 499900},
        "error_description": {first.pk: "", second.pk: "Carte refusée", third.pk: 'said "no"'},
    }


def stored(payments):
    return [tuple(getattr(p, f) for f in FIELDS) for p in Payment.objects.filter(pk__in=[p.pk for p in payments])
            .order_by("pk")]


def test_values_statement_matches_the_case_form_field_for_field():
    now = timezone.now().replace(microsecond=123456) - timedelta(days=1)
    by_values = PaymentFactory.create_batch(3)
    by_case = PaymentFactory.create_batch(3)
    untouched = PaymentFactory()

    with CaptureQueriesContext(connection) as queries:
        assert bulk.update_by_pk(Payment, per_row_values(by_values, "A"), status="captured", captured_at=now,
                                 updated_at=now) == 3
    assert len(queries) == 1 and "FROM (VALUES" in queries[0]["sql"]
    assert bulk._update_case(Payment, "default", [p.pk for p in by_case], per_row_values(by_case, "B"),
                             {"status": "captured", "captured_at": now, "updated_at": now}) == 3

    values_rows, case_rows = stored(by_values), stored(by_case)
    assert [row[1:] for row in values_rows] == [row[1:] for row in case_rows]
    assert [row[0] for row in case_rows] == ["pay_B1", None, "pay_B'; DROP TABLE x;--"]
    assert values_rows[0] == ("pay_A1", 0, "", "captured", now, now)
    assert values_rows[1][:3] == (None, 100, "Carte refusée")
    assert values_rows[2][:3] == ("pay_A'; DROP TABLE x;--", 499900, 'said "no"')
    untouched_before = untouched.status, untouched.updated_at
    untouched.refresh_from_db()
    assert (untouched.status, untouched.updated_at) == untouched_before


def test_large_sets_go_in_several_statements(monkeypatch):
    monkeypatch.setattr(bulk, "ROWS_PER_STATEMENT", 2)
    payments = PaymentFactory.create_batch(5)
    with CaptureQueriesContext(connection) as queries:
        updated = bulk.update_by_pk(Payment, {"refunded_paise": {p.pk: 10 * i for i, p in enumerate(payments)}})
    assert updated == 5 and len(queries) == 3
    assert [p.refunded_paise for p in Payment.objects.filter(pk__in=[p.pk for p in payments]).order_by("pk")] == [
        0, 10, 20, 30, 40]


def test_bad_arguments_are_refused_before_any_query():
    with pytest.raises(ValueError, match="at least one field"):
        bulk.update_by_pk(Payment, {}, status="captured")
    with pytest.raises(ValueError, match="same primary keys"):
        bulk.update_by_pk(Payment, {"refunded_paise": {1: 0}, "error_code": {2: ""}})
    assert bulk.update_by_pk(Payment, {"refunded_paise": {}}) == 0


def test_a_check_constraint_still_holds():
    from django.db import IntegrityError, transaction

    payment = PaymentFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        bulk.update_by_pk(Payment, {"refunded_paise": {payment.pk: payment.amount_paise + 1}})
