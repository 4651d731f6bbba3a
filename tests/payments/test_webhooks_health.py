"""Refused webhook deliveries in webhook_health and /health/: counted and shown, never a failure on their own
(anyone can send them); degraded only when genuine deliveries are the ones refused."""
import pytest

from ops.maintenance.models import HealthCheck
from ops.maintenance.services import health_record
from ops.runtime.runner import run_job
from payments.models import WebhookEvent
from tests.factories import PaymentFactory
from tests.ops.maintenance.conftest import fresh_health_cache  # noqa: F401  (autouse: closes the ping's connection)
from tests.payments.test_webhooks import delivery, fresh_rejection_counts, post, sdk_signed  # noqa: F401

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


@pytest.fixture(autouse=True)
def webhook_secret(settings):
    from tests.payments.conftest import WEBHOOK_SECRET

    settings.RAZORPAY_WEBHOOK_SECRET = WEBHOOK_SECRET


def noise(client, n=30):
    for _ in range(n):
        assert post(client, delivery(), signature="f" * 64).status_code == 400


def webhooks_health():
    assert run_job("webhook_health").status == "success"
    return HealthCheck.objects.filter(service="webhooks").first()


@pytest.mark.redis
def test_noise_alone_is_reported_and_never_degrades_health(client, redis_client):
    # given every other dependency up, and thirty forged deliveries in the hour
    health_record(service="payment_gateway", status="ok")
    health_record(service="email_service", status="ok")
    noise(client)

    # when
    check = webhooks_health()
    response = client.get("/health/?strict=1")

    # then they are counted and shown, and health is untouched
    print(f"\nwebhook_health after 30 forged deliveries: {check.status} {check.detail}")
    assert check.status == "ok"
    assert check.detail["rejections_last_hour"] == {"bad_signature": 30}
    assert check.detail["rejections_counted"] == "all"
    assert check.detail["notes"] == ["30 deliveries refused in the last 1:00:00"]
    assert response.status_code == 200, response.json().get("problems")
    assert response.json()["status"] == "healthy"


@pytest.mark.redis
def test_signature_failures_while_payments_move_and_nothing_passes_degrade(client, redis_client):
    # given a payment captured in the hour, no delivery that passed, and refused ones
    PaymentFactory(status="captured")
    noise(client, n=3)

    # when
    check = webhooks_health()

    # then the webhook secret is suspect
    assert check.status == "degraded"
    assert "RAZORPAY_WEBHOOK_SECRET" in check.detail["problems"][0]


@pytest.mark.redis
def test_signature_failures_beside_deliveries_that_pass_are_noise(client, redis_client):
    PaymentFactory(status="captured")
    noise(client, n=3)
    body = delivery()
    assert post(client, body, signature=sdk_signed(body)).status_code == 200

    check = webhooks_health()

    assert check.status == "ok"
    assert check.detail["events_last_hour"] == WebhookEvent.objects.count() == 1


def test_without_redis_the_samples_are_counted_and_said_to_be(client, settings):
    settings.REDIS_URL = ""
    noise(client, n=5)
    check = webhooks_health()
    assert check.detail["rejections_last_hour"] == {"bad_signature": 1}
    assert check.detail["rejections_counted"] == "samples"
