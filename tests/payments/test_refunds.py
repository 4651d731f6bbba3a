"""Refunds as a durable effect, against the fake Razorpay with the real SDK: recorded before the gateway is
asked, made once whatever is lost on the way (a 5xx, an answer lost after the gateway made it, a double
submit), re-driven by payment_sync until done; a full refund refunds the order, revokes the enrollment and
emails the customer once."""
import threading
from datetime import timedelta

import pytest
from django.core import mail
from django.db import connection
from django.utils import timezone

from ops.runtime.runner import run_job
from orders.models import Enrollment, Order, OrderStatus, OutgoingEmail
from orders.services import (
    ENROLLMENT_CONFIRMATION,
    HEAL_AFTER,
    ORDER_REFUNDED,
    effects_redrive,
    notification_send,
)
from payments import gateway
from payments.models import Payment, Refund
from payments.services.refunds import (
    NOTE_KEY,
    RefundRefused,
    payment_refund,
    payment_refundable_paise,
    refunds_redrive,
)
from payments.services.settle import payment_sync_pending
from payments.services.state import GatewayPayment, payment_apply_observations

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

AMOUNT = 499900


@pytest.fixture
def paid(make_payment, django_capture_on_commit_callbacks):
    """A payment captured at the gateway, synced: its order paid, enrolled and confirmed."""
    payment, pay_id = make_payment(at_gateway="captured", amount=AMOUNT)
    with django_capture_on_commit_callbacks(execute=True):
        assert payment_sync_pending()["orders_paid"] == 1
    payment.refresh_from_db()
    assert Enrollment.objects.get(order_id=payment.order_id).confirmation_sent_at
    mail.outbox.clear()
    return payment, pay_id


def refund_posts(fake, pay_id):
    return [c for c in fake.calls("payment_refund") if c["id"] == pay_id]


def refund_emails():
    return [m for m in mail.outbox if "refunded" in m.subject]


def test_a_full_refund_refunds_the_order_revokes_the_enrollment_and_emails_once(
        paid, fake_gateway, django_capture_on_commit_callbacks):
    payment, pay_id = paid
    # when a person refunds the payment in full
    with django_capture_on_commit_callbacks(execute=True):
        refund = payment_refund(payment, AMOUNT, reason="course cancelled", requested_by="alice")

    # then the refund is made once at the gateway, with our key as its idempotency key and in its notes
    (at_gateway,) = fake_gateway.refunds(pay_id)
    assert refund.status == "processed" and refund.razorpay_refund_id == at_gateway["id"]
    assert at_gateway["amount"] == AMOUNT and at_gateway["notes"] == {NOTE_KEY: refund.idempotency_key}
    assert refund.idempotency_key in fake_gateway._refund_keys
    assert (refund.reason, refund.requested_by, refund.currency, refund.attempts) == (
        "course cancelled", "alice", "INR", 1)
    # and the payment, its order and the enrollment follow, in that one transaction
    payment.refresh_from_db()
    order = Order.objects.get(pk=payment.order_id)
    assert (payment.status, payment.refunded_paise) == ("refunded", AMOUNT) and payment.refunded_at
    assert order.status == OrderStatus.REFUNDED and order.refunded_at and order.refund_email_sent_at
    assert Enrollment.objects.get(order=order).revoked_at is not None
    # and the customer has one email saying so
    (email,) = refund_emails()
    print(f"subject={email.subject!r}\n{email.body}")
    assert email.to == [order.user.email] and f"order {order.pk}" in email.body and "4,999.00 INR" in email.body
    assert OutgoingEmail.objects.get(key=f"{ORDER_REFUNDED}:{order.pk}").sent_at

    # when the same refund is asked again, and another one with nothing left
    with django_capture_on_commit_callbacks(execute=True):
        again = payment_refund(payment, AMOUNT, reason="course cancelled", requested_by="alice",
                               idempotency_key=refund.idempotency_key)
        with pytest.raises(RefundRefused, match=r"payment \d+ is refunded: only a captured payment"):
            payment_refund(payment, AMOUNT, reason="again", requested_by="bob")
    # then nothing more happens anywhere
    assert again.pk == refund.pk and Refund.objects.count() == 1
    assert len(refund_posts(fake_gateway, pay_id)) == 1 and len(refund_emails()) == 1


def test_partial_refunds_are_checked_against_what_is_left_and_the_last_one_refunds_the_order(
        paid, fake_gateway, django_capture_on_commit_callbacks):
    payment, pay_id = paid
    # when part of the payment is refunded
    with django_capture_on_commit_callbacks(execute=True):
        first = payment_refund(payment, 100000, reason="late start", requested_by="alice")
    payment.refresh_from_db()
    # then the payment stays captured with its refunded amount; the order, enrollment and customer are left be
    assert first.status == "processed" and (payment.status, payment.refunded_paise) == ("captured", 100000)
    assert Order.objects.get(pk=payment.order_id).status == OrderStatus.PAID
    assert Enrollment.objects.get(order_id=payment.order_id).revoked_at is None and not refund_emails()
    assert payment_refundable_paise(payment_id=payment.pk) == AMOUNT - 100000

    # when more than is left is asked: one line, nothing recorded, nothing asked of the gateway
    with pytest.raises(RefundRefused) as refused:
        payment_refund(payment, AMOUNT - 99999, reason="too much", requested_by="alice")
    print(f"refused: {refused.value}")
    assert str(refused.value) == f"payment {payment.pk}: 3,999.01 INR asked, 3,999.00 INR left to refund"
    assert Refund.objects.count() == 1 and len(refund_posts(fake_gateway, pay_id)) == 1

    # when the rest is refunded
    with django_capture_on_commit_callbacks(execute=True):
        last = payment_refund(payment, AMOUNT - 100000, reason="course cancelled", requested_by="alice")
    payment.refresh_from_db()
    # then the payment is refunded in full, and its order with it, once
    assert last.status == "processed" and (payment.status, payment.refunded_paise) == ("refunded", AMOUNT)
    assert Order.objects.get(pk=payment.order_id).status == OrderStatus.REFUNDED
    assert Enrollment.objects.get(order_id=payment.order_id).revoked_at is not None
    assert len(refund_emails()) == 1 and sum(r["amount"] for r in fake_gateway.refunds(pay_id)) == AMOUNT


@pytest.mark.parametrize("amount, message", [
    (0, "positive whole number of paise"), (-100, "positive whole number"), (10.5, "positive whole number"),
    ("100", "positive whole number"), (True, "positive whole number"),
])
def test_a_bad_amount_is_one_clear_line_and_records_nothing(paid, amount, message):
    payment, _ = paid
    with pytest.raises(RefundRefused, match=message):
        payment_refund(payment, amount, reason="r", requested_by="alice")
    assert not Refund.objects.exists()


def test_only_a_captured_payment_is_refunded_and_a_refund_needs_a_reason_and_who(make_payment):
    pending, _ = make_payment(at_gateway="authorized", local_status="authorized")
    with pytest.raises(RefundRefused, match=r"is authorized: only a captured payment can be refunded"):
        payment_refund(pending, 100, reason="r", requested_by="alice")
    with pytest.raises(RefundRefused, match="needs a reason"):
        payment_refund(pending, 100, reason=" ", requested_by="alice")
    with pytest.raises(RefundRefused, match="who asked"):
        payment_refund(pending, 100, reason="r", requested_by="")
    with pytest.raises(RefundRefused, match="idempotency_key must be"):
        payment_refund(pending, 100, reason="r", requested_by="alice", idempotency_key="short")
    assert not Refund.objects.exists()


def test_a_gateway_500_leaves_the_refund_requested_and_payment_sync_makes_it_once(
        paid, fake_gateway, django_capture_on_commit_callbacks):
    payment, pay_id = paid
    # given the gateway answers 500 to every call
    fake_gateway.set_faults(p_5xx=1.0)
    # when the refund is asked for
    refund = payment_refund(payment, AMOUNT, reason="course cancelled", requested_by="alice")
    # then it is recorded, held against the payment, and waits with its reason; nothing was made
    assert refund.status == "requested" and "GatewayUnavailable" in refund.last_error
    assert refund.claimed_until is None and not fake_gateway.refunds(pay_id)
    assert payment_refundable_paise(payment_id=payment.pk) == 0
    with pytest.raises(RefundRefused, match="0.00 INR left to refund"):
        payment_refund(payment, 100, reason="more", requested_by="bob")

    # when payment_sync runs inside the grace, the refund is left to its first ask
    fake_gateway.set_faults(p_5xx=0.0)
    assert refunds_redrive()["refunds_redriven"] == 0
    # when it runs after the grace, while the gateway still fails, and again once it answers
    Refund.objects.filter(pk=refund.pk).update(created_at=timezone.now() - HEAL_AFTER - timedelta(minutes=1))
    fake_gateway.set_faults(p_5xx=1.0)
    failing = run_job("payment_sync")
    fake_gateway.set_faults(p_5xx=0.0)
    with django_capture_on_commit_callbacks(execute=True):
        answered = run_job("payment_sync")
        after = refunds_redrive()
    print(f"while failing: {failing.counts.get('refunds_redriven')} re-driven, "
          f"{failing.counts.get('refunds_pending')} pending; after: {answered.counts.get('refunds_redriven')} "
          f"re-driven, {answered.counts.get('refunds_processed')} processed; gateway posts "
          f"{len(refund_posts(fake_gateway, pay_id))}")

    # then the ledger counts each re-drive, and the refund is made once
    assert failing.status == "success" and failing.counts["refunds_redriven"] == failing.counts["refunds_pending"] == 1
    assert answered.counts["refunds_redriven"] == answered.counts["refunds_processed"] == 1
    assert after["refunds_redriven"] == 0
    refund.refresh_from_db()
    assert refund.status == "processed" and refund.attempts == 3 and refund.last_error == ""
    assert len(fake_gateway.refunds(pay_id)) == 1
    assert Order.objects.get(pk=payment.order_id).status == OrderStatus.REFUNDED and len(refund_emails()) == 1


def test_an_answer_lost_after_the_gateway_made_the_refund_is_recognised_not_made_again(
        paid, fake_gateway, settings, django_capture_on_commit_callbacks):
    payment, pay_id = paid
    # given the gateway applies the refund and then never answers (the client times out)
    settings.RAZORPAY_TIMEOUT = 0.5
    fake_gateway.set_faults(p_timeout=1.0, after_apply=True, timeout_hold_s=2.0)
    refund = payment_refund(payment, 200000, reason="partial", requested_by="alice")
    assert refund.status == "requested" and "no answer within" in refund.last_error
    assert len(fake_gateway.refunds(pay_id)) == 1  # made, though we were never told

    # when payment_sync comes round after the grace
    fake_gateway.set_faults(p_timeout=0.0, after_apply=False)
    Refund.objects.filter(pk=refund.pk).update(created_at=timezone.now() - HEAL_AFTER - timedelta(minutes=1))
    with django_capture_on_commit_callbacks(execute=True):
        counts = refunds_redrive()

    # then it finds the refund among the payment's refunds by its key, and asks for no second one
    refund.refresh_from_db()
    (made,) = fake_gateway.refunds(pay_id)
    print(f"re-drive: {counts}; refund posts {len(refund_posts(fake_gateway, pay_id))}, "
          f"refund lists {len(fake_gateway.calls('payment_refunds'))}")
    assert counts == {"refunds_redriven": 1, "refunds_processed": 1}
    assert refund.status == "processed" and refund.razorpay_refund_id == made["id"]
    assert len(refund_posts(fake_gateway, pay_id)) == 1
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_paise) == ("captured", 200000)


def test_a_refund_asked_again_with_its_key_is_made_once_at_the_gateway(paid, fake_gateway):
    _, pay_id = paid
    first = gateway.refund(pay_id, 1000, idempotency_key="k" * 20, notes={NOTE_KEY: "k" * 20})
    again = gateway.refund(pay_id, 1000, idempotency_key="k" * 20, notes={NOTE_KEY: "k" * 20})
    assert first["id"] == again["id"] and len(fake_gateway.refunds(pay_id)) == 1
    with pytest.raises(gateway.GatewayRejected):  # the same key for another request is refused
        gateway.refund(pay_id, 2000, idempotency_key="k" * 20)


def test_a_refund_the_gateway_refuses_fails_with_its_reason_and_holds_nothing(paid, fake_gateway):
    payment, pay_id = paid
    # given the payment was refunded at the gateway behind our back (its dashboard)
    fake_gateway.set_status(pay_id, "refunded")
    refund = payment_refund(payment, 1000, reason="goodwill", requested_by="alice")
    print(f"failed: {refund.last_error}")
    assert refund.status == "failed" and "fully refunded already" in refund.last_error
    assert payment_refundable_paise(payment_id=payment.pk) == AMOUNT
    payment.refresh_from_db()
    assert (payment.status, payment.refunded_paise) == ("captured", 0)
    assert refunds_redrive(now=timezone.now() + HEAL_AFTER * 2) == {"refunds_redriven": 0}


def test_a_refund_seen_by_the_sync_or_a_webhook_also_revokes_and_emails_once(
        paid, django_capture_on_commit_callbacks):
    payment, pay_id = paid
    observed = GatewayPayment(id=pay_id, status="refunded", amount=AMOUNT, currency="INR", amount_refunded=AMOUNT)
    with django_capture_on_commit_callbacks(execute=True):
        applied = [payment_apply_observations(observations=[(payment.pk, observed)]) for _ in range(2)]
    assert [a.counts["orders_refunded"] for a in applied] == [1, 0]
    assert Order.objects.get(pk=payment.order_id).status == OrderStatus.REFUNDED
    assert Enrollment.objects.get(order_id=payment.order_id).revoked_at is not None
    assert len(refund_emails()) == 1


def test_a_duplicate_payment_refunded_at_the_gateway_leaves_its_order_paid_by_the_other(
        paid, django_capture_on_commit_callbacks):
    # given a paid order, and a second payment captured for it (refunded at the gateway as a duplicate)
    payment, _ = paid
    duplicate = Payment.objects.create(order_id=payment.order_id, razorpay_order_id="order_dup_1",
                                       razorpay_payment_id="pay_dup_1", amount_paise=AMOUNT, currency="INR",
                                       status="captured", captured_at=timezone.now())
    observed = GatewayPayment(id="pay_dup_1", status="refunded", amount=AMOUNT, currency="INR",
                              amount_refunded=AMOUNT)
    # when the sync or a webhook sees the duplicate's full refund
    with django_capture_on_commit_callbacks(execute=True):
        applied = payment_apply_observations(observations=[(duplicate.pk, observed)])
    # then the duplicate is refunded, and the order stays paid, enrolled, with no refund email
    assert Payment.objects.get(pk=duplicate.pk).status == "refunded"
    assert applied.counts["orders_refunded"] == 0
    assert Order.objects.get(pk=payment.order_id).status == OrderStatus.PAID
    assert Enrollment.objects.get(order_id=payment.order_id).revoked_at is None
    assert refund_emails() == []


@pytest.mark.django_db(transaction=True)
def test_a_double_submit_makes_one_refund_at_the_gateway(make_payment, fake_gateway):
    # given a captured payment of a paid order
    payment, pay_id = make_payment(at_gateway="captured", local_status="captured", amount=AMOUNT,
                                   status=OrderStatus.PAID, paid_at=timezone.now())
    # when the same confirmation is submitted twice at once (two requests, two connections)
    barrier, results = threading.Barrier(2), []

    def submit():
        try:
            barrier.wait()
            results.append(payment_refund(Payment.objects.get(pk=payment.pk), AMOUNT, reason="double click",
                                          requested_by="alice", idempotency_key="form-token-0001"))
        finally:
            connection.close()

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    # then both get the one refund, made once at the gateway
    print(f"submits={len(results)} refund rows={Refund.objects.count()} "
          f"gateway refunds={len(fake_gateway.refunds(pay_id))} posts={len(refund_posts(fake_gateway, pay_id))}")
    assert len(results) == 2 and results[0].pk == results[1].pk and Refund.objects.count() == 1
    assert len(fake_gateway.refunds(pay_id)) == 1 and len(refund_posts(fake_gateway, pay_id)) == 1
    assert Payment.objects.get(pk=payment.pk).status == "refunded"


def test_an_enrollment_revoked_before_its_confirmation_is_never_confirmed(
        make_payment, django_capture_on_commit_callbacks):
    # given a paid order whose enrollment's confirmation was lost, then a full refund
    payment, _ = make_payment(at_gateway="captured", amount=AMOUNT)
    with django_capture_on_commit_callbacks(execute=False):
        payment_sync_pending()
    enrollment = Enrollment.objects.create(order_id=payment.order_id, user=payment.order.user,
                                           internship=payment.order.internship)
    payment.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        assert payment_refund(payment, AMOUNT, reason="cancelled", requested_by="alice").status == "processed"
    # when the confirmation's message arrives late, and the sweep comes round
    with django_capture_on_commit_callbacks(execute=True):
        outcome = notification_send(kind=ENROLLMENT_CONFIRMATION, object_id=enrollment.pk)
        counts = effects_redrive(now=timezone.now() + HEAL_AFTER * 2)
    # then the customer is told of the refund only
    assert outcome == "not_needed" and counts["notifications_redriven"] == 0
    assert [m.subject for m in mail.outbox] == [f"Your order {payment.order_id} has been refunded"]
