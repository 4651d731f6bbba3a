"""webhook_health: the age of the last Razorpay event and the unprocessed backlog, stored for /health/
(refused deliveries: test_webhooks_health.py)."""
from datetime import timedelta

import pytest
from django.utils import timezone

from ops.maintenance.models import HealthCheck
from ops.runtime.models import JobRun
from ops.runtime.runner import run_job
from payments.models import WebhookEvent

pytestmark = [pytest.mark.postgres]


@pytest.mark.django_db
def test_webhook_health_reports_age_and_backlog():
    # given: 120 events stuck unprocessed for 10 minutes, one fresh processed event
    now = timezone.now()
    WebhookEvent.objects.bulk_create([
        WebhookEvent(event_id=f"evt_{i}", event="payment.captured", payload={},
                     received_at=now - timedelta(minutes=10))
        for i in range(120)
    ])
    WebhookEvent.objects.create(event_id="evt_new", event="payment.captured", payload={},
                                received_at=now - timedelta(seconds=30), processed_at=now)

    # when
    run = run_job("webhook_health")

    # then
    assert run.status == JobRun.Status.SUCCESS, run.error
    check = HealthCheck.objects.get(service="webhooks")
    assert check.status == "degraded"
    assert check.detail["backlog"] == 120
    assert 25 <= check.detail["last_event_age_s"] <= 60
    assert len(check.detail["problems"]) == 1


@pytest.mark.django_db
def test_webhook_health_is_ok_when_quiet():
    run_job("webhook_health")
    check = HealthCheck.objects.get(service="webhooks")
    assert check.status == "ok"
    assert check.detail["last_event_age_s"] is None
