"""Fixtures of the money tests: the fake gateway, and local orders/payments mirrored at it."""
from datetime import timedelta

import pytest
from django.utils import timezone

from payments.models import Payment
from tests.factories import OrderFactory, PaymentFactory
from tests.payments.conftest import fake_gateway  # noqa: F401  (the fixture, shared)


@pytest.fixture
def make_payment(fake_gateway):  # noqa: F811
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
