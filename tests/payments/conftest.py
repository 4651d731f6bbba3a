"""Fixtures of the payments tests: a real fake-Razorpay server the real SDK talks to."""
import pytest

from ops.demo.fake_gateway import FakeRazorpay

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
