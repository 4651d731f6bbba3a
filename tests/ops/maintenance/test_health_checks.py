"""The shared dependency health jobs against real services: an SMTP server (aiosmtpd), Redis."""

import pytest

from ops.maintenance.models import HealthCheck
from ops.runtime.models import JobRun
from ops.runtime.runner import run_job

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
