"""Scenarios that cross the apps (a payment settling an order that enrolls and emails its buyer; the schema's
constraints across tables) use the payments fixtures: the fake Razorpay and mirrored orders and payments."""
from tests.payments.conftest import fake_gateway, make_payment  # noqa: F401  (the fixtures, shared)
