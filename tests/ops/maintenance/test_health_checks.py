"""The health jobs against real services: an SMTP server (aiosmtpd), Redis, the webhook tables."""
from datetime import timedelta

import pytest
from django.utils import timezone

from ops.maintenance.models import HealthCheck
from ops.runtime.models import JobRun
from ops.runtime.runner import run_job
from payments.models import WebhookEvent, WebhookRejection

pytestmark = [pytest.mark.postgres]


@pytest.mark.django_db
def test_email_service_health_is_ok_against_a_real_smtp_server(smtp_server):
    run = run_job("email_service_health")
    assert run.status == JobRun.Status.SUCCESS, run.error
    check = HealthCheck.objects.get(service="email_service")
    assert check.status == "ok"
    assert 0 < check.latency_ms < 3000


@pytest.mark.django_db
def test_email_service_health_records_down_when_nothing_answers(smtp_down):
    run = run_job("email_service_health")
    # the check worked: it found the service down
    assert run.status == JobRun.Status.SUCCESS, run.error
    check = HealthCheck.objects.get(service="email_service")
    assert check.status == "down"
    assert "ConnectionRefusedError" in check.detail["error"]


@pytest.mark.redis
@pytest.mark.django_db
def test_cache_health_measures_redis(redis_client):
    run = run_job("cache_health")
    assert run.status == JobRun.Status.SUCCESS, run.error
    check = HealthCheck.objects.get(service="cache")
    assert check.status == "ok", check.detail
    assert check.detail["used_memory"] > 0
    assert check.detail["round_trip_ms"] >= 0
    assert redis_client.keys("health:cache:*") == []


@pytest.mark.django_db
def test_cache_health_records_down_when_redis_does_not_answer(dead_redis):
    run = run_job("cache_health")
    assert run.status == JobRun.Status.SUCCESS, run.error
    assert HealthCheck.objects.get(service="cache").status == "down"


@pytest.mark.django_db
def test_webhook_health_reports_age_backlog_and_signature_failures():
    # given: 120 events stuck unprocessed for 10 minutes, one fresh processed event, 12 rejections
    now = timezone.now()
    WebhookEvent.objects.bulk_create([
        WebhookEvent(event_id=f"evt_{i}", event="payment.captured", payload={},
                     received_at=now - timedelta(minutes=10))
        for i in range(120)
    ])
    WebhookEvent.objects.create(event_id="evt_new", event="payment.captured", payload={},
                                received_at=now - timedelta(seconds=30), processed_at=now)
    WebhookRejection.objects.bulk_create(
        [WebhookRejection(reason="bad_signature") for _ in range(12)]
        + [WebhookRejection(reason="bad_signature", received_at=now - timedelta(hours=3))]
    )

    # when
    run = run_job("webhook_health")

    # then
    assert run.status == JobRun.Status.SUCCESS, run.error
    check = HealthCheck.objects.get(service="webhooks")
    assert check.status == "degraded"
    assert check.detail["backlog"] == 120
    assert 25 <= check.detail["last_event_age_s"] <= 60
    assert check.detail["rejections_last_hour"] == {"bad_signature": 12}
    assert len(check.detail["problems"]) == 2


@pytest.mark.django_db
def test_webhook_health_is_ok_when_quiet():
    run_job("webhook_health")
    check = HealthCheck.objects.get(service="webhooks")
    assert check.status == "ok"
    assert check.detail["last_event_age_s"] is None
