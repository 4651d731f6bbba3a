"""Fixtures of the payments tests: a real fake-Razorpay server the real SDK talks to, and local orders
and payments mirrored at it."""
from datetime import timedelta

import pytest
from django.utils import timezone

from ops.demo.fake_gateway import FakeRazorpay
from payments.models import Payment
from tests.factories import OrderFactory, PaymentFactory

KEY_ID = "rzp_test_fixture"
KEY_SECRET = "fixture-key-secret"
WEBHOOK_SECRET = "fixture-webhook-secret"


@pytest.fixture
def fake_gateway(settings):
    """A FakeRazorpay on 127.0.0.1 (random port), with the settings pointed at it.

    The rate limit is off and the timeout short, so tests that want either set them.
    """
    fake = FakeRazorpay(KEY_ID, KEY_SECRET, seed=1234).start()
    settings.RAZORPAY_BASE_URL = fake.base_url
    settings.RAZORPAY_KEY_ID = KEY_ID
    settings.RAZORPAY_KEY_SECRET = KEY_SECRET
    settings.RAZORPAY_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.RAZORPAY_TIMEOUT = 2.0
    settings.RAZORPAY_RATE_LIMIT = 0
    yield fake
    fake.stop()


@pytest.fixture
def make_payment(fake_gateway):
    """A local order + payment, the matching Razorpay order, and (if `at_gateway`) a payment attempt on it.

    Returns (payment, gateway_payment_id or None).
    """

    def make(*, at_gateway: str | None = None, local_status: str = "created", age=timedelta(hours=2),
             order_age=None, amount: int = 499900, gateway_amount: int | None = None,
             gateway_currency: str | None = None, **order_fields) -> tuple[Payment, str | None]:
        now = timezone.now()
        order = OrderFactory(
            amount_paise=amount, created_at=now - (order_age if order_age is not None else age), **order_fields
        )
        rzp_order = fake_gateway.add_order(amount=amount)
        payment_id = None
        if at_gateway:
            payment_id = fake_gateway.add_payment(
                order_id=rzp_order["id"], status=at_gateway, amount=gateway_amount, currency=gateway_currency,
            )["id"]
        payment = PaymentFactory(
            order=order, razorpay_order_id=rzp_order["id"], amount_paise=amount, status=local_status,
            razorpay_payment_id=payment_id if local_status != "created" else None,
            created_at=now - age, updated_at=now - age,
        )
        return payment, payment_id

    return make
