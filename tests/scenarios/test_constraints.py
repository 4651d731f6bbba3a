"""The schema's constraints hold in the database itself, not only in forms."""
import pytest
from django.db import IntegrityError, transaction
from django.db.models.deletion import ProtectedError
from django.utils import timezone

from carts.models import Cart
from orders.models import Enrollment
from tests.factories import (
    CartFactory,
    EnrollmentFactory,
    InternshipFactory,
    OrderFactory,
    PaymentFactory,
)

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


def _violates(factory, **kwargs):
    with pytest.raises(IntegrityError), transaction.atomic():
        factory(**kwargs)


def test_one_enrollment_per_order():
    enrollment = EnrollmentFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        Enrollment.objects.create(order=enrollment.order, user=enrollment.user, internship=enrollment.internship)


def test_cart_token_is_unique():
    cart = CartFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        Cart.objects.create(token=cart.token, internship=cart.internship)


def test_razorpay_ids_are_unique_when_present():
    first = PaymentFactory(razorpay_payment_id="pay_A")
    _violates(PaymentFactory, razorpay_order_id=first.razorpay_order_id)
    _violates(PaymentFactory, razorpay_payment_id="pay_A")
    # Many payments may still lack a payment id.
    PaymentFactory(razorpay_payment_id=None)
    PaymentFactory(razorpay_payment_id=None)


@pytest.mark.parametrize("factory,field", [
    (InternshipFactory, "price_paise"),
    (OrderFactory, "amount_paise"),
    (PaymentFactory, "amount_paise"),
])
def test_money_is_never_negative(factory, field):
    _violates(factory, **{field: -1})


def test_refund_cannot_exceed_the_payment():
    _violates(PaymentFactory, amount_paise=100, refunded_paise=101)


def test_paid_order_needs_paid_at_and_converted_cart_needs_converted_at():
    _violates(OrderFactory, status="paid", paid_at=None)
    _violates(CartFactory, status="converted", converted_at=None)
    OrderFactory(status="paid", paid_at=timezone.now())


def test_a_cart_with_an_order_cannot_be_deleted():
    order = OrderFactory(cart=CartFactory(status="converted", converted_at=timezone.now()))
    with pytest.raises(ProtectedError):
        order.cart.delete()
