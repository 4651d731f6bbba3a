"""payment_sync against the fake Razorpay with the real SDK: every status path, claims, faults, reports."""
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from ops.runtime.models import OutboxEvent
from ops.runtime.runner import run_job
from orders.models import Enrollment, Order
from payments.services.capture import payment_settle_authorized
from payments.services.claims import payment_claim
from payments.services.settle import payment_sync_pending
from payments.services.state import UNSETTLED, GatewayPayment
from payments.models import Payment, PaymentReport

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db]


def sync(capture_callbacks, **kwargs):
    with capture_callbacks(execute=True):
        return payment_sync_pending(**kwargs)


def test_captured_at_gateway_pays_the_order_enrolls_and_confirms_once(
        make_payment, django_capture_on_commit_callbacks, redis_client):
    # given
    payment, pay_id = make_payment(at_gateway="captured")
    # when
    counts = sync(django_capture_on_commit_callbacks)
    # then
    payment.refresh_from_db()
    order = Order.objects.get(pk=payment.order_id)
    assert (payment.status, payment.razorpay_payment_id) == ("captured", pay_id)
    assert payment.captured_at is not None
    assert order.status == "paid" and order.paid_at is not None
    assert counts["captured"] == 1 and counts["orders_paid"] == 1
    assert OutboxEvent.objects.filter(key=f"order.paid:{order.pk}", published_at__isnull=False).count() == 1
    enrollment = Enrollment.objects.get(order=order)
    assert enrollment.confirmation_sent_at is not None
    assert len(mail.outbox) == 1 and mail.outbox[0].to == [order.user.email]
    # when the sync and the event run again
    sync(django_capture_on_commit_callbacks)
    from orders.tasks import enrollment_create
    with django_capture_on_commit_callbacks(execute=True):
        enrollment_create.delay(order_id=order.pk)
    # then nothing more happens
    assert Enrollment.objects.filter(order=order).count() == 1
    assert len(mail.outbox) == 1


def test_authorized_payment_of_a_valid_order_is_captured_once(
        make_payment, fake_gateway, django_capture_on_commit_callbacks, redis_client):
    payment, pay_id = make_payment(at_gateway="authorized")
    counts = sync(django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert counts["authorized"] == 1 and counts["capture_requested"] == 1
    assert payment.status == "captured"
    assert Order.objects.get(pk=payment.order_id).status == "paid"
    assert fake_gateway.captures(pay_id) == 1
    # a second run and a duplicate capture task do not capture again
    from payments.tasks import payment_retry
    sync(django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        assert payment_retry.delay(payment_id=payment.pk).get() == "skipped"
    assert fake_gateway.captures(pay_id) == 1


def test_authorized_payment_of_an_overdue_order_is_refunded_never_captured(
        make_payment, fake_gateway, django_capture_on_commit_callbacks, redis_client):
    payment, pay_id = make_payment(at_gateway="authorized", order_age=timedelta(hours=49))
    sync(django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert payment.status == "refunded" and payment.refunded_paise == payment.amount_paise
    assert fake_gateway.captures(pay_id) == 0
    assert fake_gateway.payment(pay_id)["status"] == "refunded"
    assert Order.objects.get(pk=payment.order_id).status == "pending"  # order_cleanup expires it


def test_failed_payment_is_marked_failed_and_announced(make_payment, django_capture_on_commit_callbacks):
    payment, pay_id = make_payment(at_gateway="failed")
    counts = sync(django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert payment.status == "failed" and payment.error_code == "BAD_REQUEST_ERROR"
    assert counts["failed"] == 1
    assert OutboxEvent.objects.filter(topic="payment.failed", payload__payment_id=payment.pk).count() == 1
    assert Order.objects.get(pk=payment.order_id).status == "pending"


def test_a_later_captured_attempt_on_the_same_order_wins(make_payment, fake_gateway,
                                                          django_capture_on_commit_callbacks):
    payment, first = make_payment(at_gateway="failed")
    second = fake_gateway.add_payment(order_id=payment.razorpay_order_id, status="captured")["id"]
    sync(django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert (payment.status, payment.razorpay_payment_id) == ("captured", second)


@pytest.mark.parametrize("gateway_amount, gateway_currency", [(100, None), (None, "USD")])
def test_amount_or_currency_mismatch_is_flagged_never_paid(
        make_payment, fake_gateway, django_capture_on_commit_callbacks, gateway_amount, gateway_currency):
    payment, pay_id = make_payment(at_gateway="captured", gateway_amount=gateway_amount,
                                   gateway_currency=gateway_currency)
    counts = sync(django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert counts["mismatched"] == 1
    assert payment.status == "created" and payment.mismatch
    assert Order.objects.get(pk=payment.order_id).status == "pending"
    assert not OutboxEvent.objects.filter(topic="order.paid").exists()
    # flagged payments wait for a human: the next run leaves them alone
    assert sync(django_capture_on_commit_callbacks)["seen"] == 0


def test_no_attempt_at_the_gateway_changes_nothing_but_the_sync_time(make_payment,
                                                                     django_capture_on_commit_callbacks):
    payment, _ = make_payment()
    counts = sync(django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert counts["seen"] == 1 and payment.status == "created"
    assert payment.last_synced_at is not None and payment.claimed_until is None


def test_recent_payments_are_left_alone(make_payment, django_capture_on_commit_callbacks):
    make_payment(at_gateway="captured", age=timedelta(minutes=10))
    assert sync(django_capture_on_commit_callbacks)["seen"] == 0


def test_payments_claimed_by_another_worker_are_skipped(make_payment, django_capture_on_commit_callbacks):
    # given another worker holds the first payment's lease
    held, _ = make_payment(at_gateway="captured")
    free, _ = make_payment(at_gateway="captured")
    assert payment_claim(payment_id=held.pk, statuses=UNSETTLED)
    # when
    counts = sync(django_capture_on_commit_callbacks)
    # then only the free one was acted on
    held.refresh_from_db()
    free.refresh_from_db()
    assert counts["seen"] == 1
    assert (held.status, free.status) == ("created", "captured")


def test_gateway_errors_are_counted_and_the_payment_freed(make_payment, fake_gateway,
                                                         django_capture_on_commit_callbacks):
    payment, _ = make_payment(at_gateway="captured")
    fake_gateway.set_faults(p_5xx=1.0)
    counts = sync(django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert counts["gateway_errors"] == 1 and counts["gateway_error.GatewayUnavailable"] == 1
    assert payment.status == "created" and payment.claimed_until is None


def test_dry_run_reports_and_writes_nothing(make_payment, django_capture_on_commit_callbacks):
    payment, _ = make_payment(at_gateway="captured")
    counts = sync(django_capture_on_commit_callbacks, dry_run=True)
    payment.refresh_from_db()
    assert counts["would_captured"] == 1
    assert payment.status == "created" and payment.last_synced_at is None and payment.claimed_until is None


def test_the_job_writes_its_report_and_heals_a_paid_order_without_enrollment(
        make_payment, django_capture_on_commit_callbacks, redis_client):
    # given a paid order whose order.paid never reached enrollment
    from tests.factories import OrderFactory
    lost = OrderFactory(status="paid", paid_at=timezone.now() - timedelta(hours=1))
    make_payment(at_gateway="captured", amount=1000)
    make_payment(at_gateway="failed", amount=2000)
    # when
    with django_capture_on_commit_callbacks(execute=True):
        run = run_job("payment_sync")
    # then
    assert run.status == "success", run.error
    assert run.counts["captured"] == 1 and run.counts["failed"] == 1
    assert run.counts["enrollments_healed"] == 1
    assert Enrollment.objects.filter(order=lost).exists()
    report = PaymentReport.objects.get(job_run_id=run.pk)
    assert report.counts_by_status == {"captured": 1, "failed": 1}
    assert report.amounts == {"INR": {"captured_paise": 1000, "refunded_paise": 0}}
    assert report.top_failure_reasons[0]["count"] == 1
    assert report.sync_counts["captured"] == 1


def test_the_job_refuses_to_run_without_gateway_keys(settings):
    settings.RAZORPAY_KEY_ID = ""
    run = run_job("payment_sync")
    assert run.status == "failed" and "RAZORPAY_KEY_ID" in run.error


def test_bad_concurrency_is_one_clear_error(fake_gateway):
    run = run_job("payment_sync", params={"concurrency": "zero"})
    assert run.status == "failed" and "concurrency must be an integer" in run.error


def test_settle_reads_a_capture_made_behind_its_back_as_captured(
        make_payment, fake_gateway, django_capture_on_commit_callbacks):
    # given our side thinks authorized, but the gateway already captured (an answer we never got)
    payment, pay_id = make_payment(at_gateway="authorized", local_status="authorized")
    fake_gateway.set_status(pay_id, "captured")
    # when
    with django_capture_on_commit_callbacks(execute=True):
        outcome = payment_settle_authorized(payment_id=payment.pk)
    # then no capture call was made, and the order is paid
    assert outcome == "captured"
    assert fake_gateway.captures(pay_id) == 0
    assert not fake_gateway.calls("payment.capture")
    assert Order.objects.get(pk=payment.order_id).status == "paid"


def test_a_capture_whose_answer_is_lost_is_not_repeated(make_payment, fake_gateway,
                                                        django_capture_on_commit_callbacks):
    payment, pay_id = make_payment(at_gateway="authorized", local_status="authorized")
    # the fetch goes through; the capture is applied at the gateway but its answer is a 502
    fake_gateway.set_faults(p_5xx=1.0, after_apply=True)
    from payments.gateway import GatewayUnavailable
    with pytest.raises(GatewayUnavailable):
        payment_settle_authorized(payment_id=payment.pk)
    fake_gateway.set_faults(p_5xx=0.0, after_apply=False)
    with django_capture_on_commit_callbacks(execute=True):
        assert payment_settle_authorized(payment_id=payment.pk) == "captured"
    assert fake_gateway.captures(pay_id) <= 1
    assert Payment.objects.get(pk=payment.pk).status == "captured"


@pytest.mark.parametrize("concurrency,chunk_size", [(1, 1), (1, 2), (3, 2)])
def test_any_concurrency_and_chunk_size_reconcile_everything(
        make_payment, django_capture_on_commit_callbacks, redis_client, concurrency, chunk_size):
    # given more payments than one chunk, some captured and some failed at the gateway
    made = [make_payment(at_gateway=status)[0] for status in ("captured", "failed", "captured", "failed", "captured")]
    # when: one thread must still work (the pool is never also the pipeline's scheduler)
    counts = sync(django_capture_on_commit_callbacks, concurrency=concurrency, chunk_size=chunk_size)
    # then
    assert counts["captured"] == 3 and counts["failed"] == 2
    statuses = sorted(Payment.objects.filter(pk__in=[p.pk for p in made]).values_list("status", flat=True))
    assert statuses == ["captured"] * 3 + ["failed"] * 2
    assert OutboxEvent.objects.filter(topic="order.paid").count() == 3


def test_a_capture_failed_at_the_bank_fails_the_payment_and_its_order_expires_with_one_email(
        make_payment, fake_gateway, django_capture_on_commit_callbacks, settings):
    # given an authorized payment whose capture the bank fails (Razorpay then has it failed)
    payment, pay_id = make_payment(at_gateway="authorized", local_status="authorized")
    fake_gateway.set_capture_outcome(pay_id, "fail")

    with django_capture_on_commit_callbacks(execute=True):
        outcome = payment_settle_authorized(payment_id=payment.pk)

    # then the payment follows the gateway to failed, with the reason, and is never asked again
    assert outcome == "failed"
    payment.refresh_from_db()
    assert payment.status == "failed" and "capture failed" in payment.error_description
    assert fake_gateway.captures(pay_id) == 0
    # and once its order is past ORDER_TTL, order_cleanup expires it with one email
    settings.ORDER_TTL = timedelta(seconds=0)
    with django_capture_on_commit_callbacks(execute=True):
        run_job("order_cleanup")
        run_job("order_cleanup")
    assert Order.objects.get(pk=payment.order_id).status == "expired"
    assert len([m for m in mail.outbox if "expired" in m.subject.lower()]) == 1


def test_a_capture_refused_while_the_payment_stays_authorized_fails_it_once_and_for_good(
        make_payment, fake_gateway, django_capture_on_commit_callbacks):
    payment, pay_id = make_payment(at_gateway="authorized", local_status="authorized")
    fake_gateway.set_capture_outcome(pay_id, "refuse")

    with django_capture_on_commit_callbacks(execute=True):
        outcome = payment_settle_authorized(payment_id=payment.pk)

    assert outcome == "failed"
    payment.refresh_from_db()
    assert payment.status == "failed" and payment.error_code == "CAPTURE_REFUSED"
    assert "capture refused" in payment.error_description
    # the next sync sees it authorized at the gateway and leaves it failed: no new capture chain
    Payment.objects.filter(pk=payment.pk).update(updated_at=timezone.now() - timedelta(hours=2))
    sync(django_capture_on_commit_callbacks)
    assert Payment.objects.get(pk=payment.pk).status == "failed"
    assert not OutboxEvent.objects.filter(topic="payment.authorized", payload__payment_id=payment.pk).exists()


def test_a_payment_still_authorized_is_asked_for_its_capture_once_per_period(
        make_payment, fake_gateway, django_capture_on_commit_callbacks):
    # given an authorized payment whose capture keeps meeting a gateway outage
    payment, pay_id = make_payment(at_gateway="authorized", local_status="authorized")
    # when two syncs see it still authorized (as would two overlapping ones), capture tasks not run here
    for _ in range(2):
        Payment.objects.filter(pk=payment.pk).update(updated_at=timezone.now() - timedelta(hours=2))
        payment_sync_pending(concurrency=1)
    # then it was asked for once: one capture chain at a time
    asks = OutboxEvent.objects.filter(topic="payment.authorized", payload__payment_id=payment.pk)
    assert asks.count() == 1 and asks.get().key.startswith(f"payment.capture_ask:{payment.pk}:")


def test_the_order_s_own_amount_is_checked_against_the_gateway(
        make_payment, fake_gateway, django_capture_on_commit_callbacks):
    # given a payment row and the gateway both at 100 USD, for an order of 499900 INR
    payment, pay_id = make_payment(at_gateway="authorized", amount=100, gateway_currency="USD")
    Payment.objects.filter(pk=payment.pk).update(currency="USD")
    Order.objects.filter(pk=payment.order_id).update(amount_paise=499900, currency="INR")

    counts = sync(django_capture_on_commit_callbacks)

    # then it is flagged for a person, never captured, and the order is not paid
    payment.refresh_from_db()
    assert counts["mismatched"] == 1 and "its order is 499900 INR" in payment.mismatch
    assert fake_gateway.captures(pay_id) == 0
    assert Order.objects.get(pk=payment.order_id).status == "pending"


@pytest.mark.parametrize("amount", [100.5, "100", True, -1, None])
def test_an_amount_that_is_not_a_whole_number_of_paise_is_refused(amount):
    entity = {"id": "pay_x", "status": "captured", "amount": amount, "currency": "INR"}
    with pytest.raises((ValueError, TypeError)):
        GatewayPayment.from_entity(entity)
