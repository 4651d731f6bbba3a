"""factory_boy factories for the checkout domain."""
import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone

from carts.models import Cart
from orders.models import Enrollment, Internship, Order
from payments.models import Payment


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"student{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")


class InternshipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Internship

    title = factory.Sequence(lambda n: f"Internship {n}")
    price_paise = 499900
    currency = "INR"


class CartFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Cart

    user = factory.SubFactory(UserFactory)
    internship = factory.SubFactory(InternshipFactory)
    created_at = factory.LazyFunction(timezone.now)
    updated_at = factory.LazyAttribute(lambda c: c.created_at)


class OrderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Order

    user = factory.SubFactory(UserFactory)
    internship = factory.SubFactory(InternshipFactory)
    amount_paise = factory.LazyAttribute(lambda o: o.internship.price_paise if o.internship else 0)
    currency = "INR"
    created_at = factory.LazyFunction(timezone.now)
    updated_at = factory.LazyAttribute(lambda o: o.created_at)


class PaymentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Payment

    order = factory.SubFactory(OrderFactory)
    razorpay_order_id = factory.Sequence(lambda n: f"order_T{n:010d}")
    amount_paise = factory.LazyAttribute(lambda p: p.order.amount_paise)
    currency = factory.LazyAttribute(lambda p: p.order.currency)
    created_at = factory.LazyFunction(timezone.now)
    updated_at = factory.LazyAttribute(lambda p: p.created_at)


class EnrollmentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Enrollment

    order = factory.SubFactory(OrderFactory, status="paid", paid_at=factory.LazyFunction(timezone.now))
    user = factory.LazyAttribute(lambda e: e.order.user)
    internship = factory.LazyAttribute(lambda e: e.order.internship)


def staff_user(username: str, *perms: str):
    """An active staff user (for the admin) holding exactly `perms`, each "app_label.codename"."""
    user = UserFactory(username=username, is_staff=True)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user
