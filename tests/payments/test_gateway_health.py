"""payment_gateway_health: ok / bad credentials / down / not configured, stored for /health/."""
import pytest

from ops.maintenance.models import HealthCheck
from ops.runtime.models import JobRun
from ops.runtime.runner import run_job
from tests.payments.conftest import KEY_SECRET

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def stored() -> HealthCheck:
    return HealthCheck.objects.get(service="payment_gateway")


def test_ok_with_latency(fake_gateway):
    run = run_job("payment_gateway_health")
    assert run.status == JobRun.Status.SUCCESS
    check = stored()
    assert check.status == "ok" and check.latency_ms is not None
    assert check.detail["reason"] == "answered"
    assert [c["operation"] for c in fake_gateway.calls()] == ["order_fetch"]


def test_bad_credentials_are_down_and_told_apart(fake_gateway, settings):
    settings.RAZORPAY_KEY_SECRET = "revoked-secret"
    run_job("payment_gateway_health")
    check = stored()
    assert (check.status, check.detail["reason"], check.detail["http_status"]) == ("down", "bad_credentials", 401)
    assert "revoked-secret" not in str(check.detail) and KEY_SECRET not in str(check.detail)


@pytest.mark.parametrize("fault", [{"p_5xx": 1.0}, {"p_timeout": 1.0}, {"p_html": 1.0}])
def test_gateway_failing_is_down(fake_gateway, settings, fault):
    settings.RAZORPAY_TIMEOUT = 0.3
    fake_gateway.set_faults(**fault)
    run_job("payment_gateway_health")
    assert (stored().status, stored().detail["reason"]) == ("down", "unavailable")


def test_gateway_gone_is_down(fake_gateway):
    fake_gateway.stop()
    run_job("payment_gateway_health")
    assert (stored().status, stored().detail["reason"]) == ("down", "unavailable")


def test_rate_limited_is_degraded(fake_gateway):
    fake_gateway.set_faults(p_429=1.0)
    run_job("payment_gateway_health")
    assert (stored().status, stored().detail["reason"]) == ("degraded", "rate_limited")


def test_slow_is_degraded(fake_gateway, settings):
    settings.RAZORPAY_TIMEOUT = 0.4
    fake_gateway.set_faults(latency_ms=250)
    run_job("payment_gateway_health")
    assert (stored().status, stored().detail["reason"]) == ("degraded", "slow")


def test_not_configured_is_down(settings):
    settings.RAZORPAY_KEY_ID = ""
    settings.RAZORPAY_KEY_SECRET = ""
    run_job("payment_gateway_health")
    check = stored()
    assert (check.status, check.detail["reason"], check.latency_ms) == ("down", "not_configured", None)


def test_dry_run_stores_nothing(fake_gateway):
    run = run_job("payment_gateway_health", dry_run=True)
    assert run.result["status"] == "ok"
    assert not HealthCheck.objects.exists()
