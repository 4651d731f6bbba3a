"""Faults at the gateway and a broker outage at commit: the money still converges to the gateway's truth."""
import time
from datetime import timedelta

import pytest
from django.db.models import Count

from ops.runtime.models import OutboxEvent
from ops.runtime.outbox import outbox_relay
from orders.models import Enrollment, Order
from payments.services.settle import payment_sync_pending
from payments.models import Payment

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

# gateway status of the attempt -> what the local payment must end as (order valid, amounts equal)
EXPECTED = {"captured": "captured", "authorized": "captured", "failed": "failed", None: "created"}


def assert_no_wrong_money(fake, payments_by_pk):
    for order in Order.objects.filter(status="paid"):
        captured = [p for p in Payment.objects.filter(order=order, status="captured")]
        assert len(captured) == 1, f"order {order.pk} paid without exactly one captured payment"
        at_gateway = fake.payment(captured[0].razorpay_payment_id)
        assert at_gateway["status"] == "captured" and at_gateway["amount"] == order.amount_paise
    for pk, pay_id in payments_by_pk.items():
        if pay_id:
            assert fake.captures(pay_id) <= 1, f"payment {pk} captured twice"


@pytest.mark.django_db
def test_repeated_syncs_converge_under_5xx_429_timeouts_and_html(
        make_payment, fake_gateway, settings, django_capture_on_commit_callbacks, redis_client):
    # given 40 payments in every state, and a gateway failing a quarter of its calls
    settings.PAYMENT_SYNC_AFTER = timedelta(0)
    settings.RAZORPAY_TIMEOUT = 0.3
    kinds = [("captured", 12), ("authorized", 10), ("failed", 8), (None, 8)]
    expected, ids = {}, {}
    for status, n in kinds:
        for _ in range(n):
            payment, pay_id = make_payment(at_gateway=status)
            expected[payment.pk], ids[payment.pk] = EXPECTED[status], pay_id
    mismatched, mismatched_id = make_payment(at_gateway="captured", gateway_amount=100)
    ids[mismatched.pk] = mismatched_id
    fake_gateway.set_faults(p_5xx=0.10, p_429=0.05, p_timeout=0.05, p_html=0.05, timeout_hold_s=1.0)

    # when the sync runs until every payment reached the gateway's truth
    errors = 0
    for run in range(15):
        with django_capture_on_commit_callbacks(execute=True):
            counts = payment_sync_pending(concurrency=8)
        errors += counts["gateway_errors"]
        assert_no_wrong_money(fake_gateway, ids)
        actual = dict(Payment.objects.filter(pk__in=expected).values_list("pk", "status"))
        if actual == expected:
            break

    # then
    assert actual == expected, f"not converged after {run + 1} runs"
    assert errors > 0, "the faults were not exercised"
    assert Payment.objects.get(pk=mismatched.pk).mismatch
    assert Order.objects.get(pk=mismatched.order_id).status == "pending"
    paid = Order.objects.filter(status="paid").count()
    assert paid == 22
    assert Enrollment.objects.count() == paid
    assert not Enrollment.objects.values("order").annotate(n=Count("pk")).filter(n__gt=1).exists()


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_enrollment_appears_once_the_broker_is_back(
        make_payment, fake_gateway, celery_live, celery_worker_factory, process_env):
    # given the broker is unreachable when the sync commits
    payment, _ = make_payment(at_gateway="captured")
    real_broker = celery_live.conf.broker_url
    celery_live.conf.update(broker_url="redis://127.0.0.1:1/0", broker_connection_max_retries=1)
    celery_live._after_fork()  # drop pooled broker connections, as a forked process would
    try:
        payment_sync_pending()
    finally:
        celery_live.conf.update(broker_url=real_broker)
        celery_live._after_fork()

    # then the payment and the order changed, and the event waits in the outbox
    assert Order.objects.get(pk=payment.order_id).status == "paid"
    event = OutboxEvent.objects.get(key=f"order.paid:{payment.order_id}")
    assert event.published_at is None and event.last_error
    assert not Enrollment.objects.exists()

    # when the broker is back: a real worker, and the relay (as payment_sync's first step runs it)
    env = {**process_env, "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend"}
    worker = celery_worker_factory(queues="high,default", env=env)
    assert outbox_relay() >= 1

    # then the enrollment appears, once
    assert wait_for(lambda: Enrollment.objects.filter(order_id=payment.order_id).exists()), worker.log()
    assert wait_for(lambda: Enrollment.objects.get(order_id=payment.order_id).confirmation_sent_at is not None)
    assert Enrollment.objects.count() == 1
