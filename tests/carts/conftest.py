import pytest
from django.utils import timezone

from tests.factories import CartFactory, InternshipFactory


@pytest.fixture
def internship():
    return InternshipFactory()


@pytest.fixture
def make_cart(internship, redis_client):
    """A cart of a given age and idle time (timedeltas before now), with its cache key in Redis."""

    def make(*, age, idle=None, with_key=True, **fields):
        now = timezone.now()
        fields.setdefault("internship", internship)
        fields.setdefault("user", None)
        cart = CartFactory(created_at=now - age, updated_at=now - (age if idle is None else idle), **fields)
        if with_key:
            redis_client.set(cart.cache_key, "{}")
        return cart

    return make
