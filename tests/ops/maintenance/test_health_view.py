"""GET /health/: live database and Redis, stored results of the rest, 200/503, never a 500."""
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from ops.runtime.models import ManagedSchedule
from ops.maintenance.models import HealthCheck
from ops.maintenance.services import health_record
from ops.runtime.registry import all_jobs
from ops.runtime.runner import run_job
from tests.ops.maintenance.conftest import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def all_dependencies_up():
    health_record(service="payment_gateway", status="ok", latency_ms=12.0)
    assert run_job("email_service_health").status == "success"
    assert run_job("webhook_health").status == "success"


def assert_no_secrets(text):
    db = connections["default"].settings_dict
    for secret in (db["NAME"], db["USER"], "127.0.0.1", "localhost", "redis://", "postgres://"):
        if secret:
            assert secret not in text


@pytest.mark.django_db
def test_healthy_when_everything_is_up(client, redis_client, smtp_server):
    # given
    all_dependencies_up()

    # when
    response = client.get("/health/")

    # then
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy", body.get("problems")
    assert {name: s["status"] for name, s in body["services"].items()} == {
        "database": "ok", "redis": "ok", "payment_gateway": "ok", "email_service": "ok", "webhooks": "ok",
    }
    assert set(body["cron_jobs"]) == set(all_jobs())
    assert body["cron_jobs"]["email_service_health"]["status"] == "success"
    assert body["cron_jobs"]["email_service_health"]["late"] is False
    assert body["background_jobs"]["queues"] == {"high": 0, "default": 0, "maintenance": 0}
    assert body["background_jobs"]["dead_letters"]["dead"] == 0
    assert response["Cache-Control"].startswith("max-age=0")
    assert_no_secrets(response.content.decode())


@pytest.mark.django_db
def test_degraded_but_200_when_smtp_is_down(client, redis_client, smtp_down):
    # given
    health_record(service="payment_gateway", status="ok")
    run_job("webhook_health")
    run_job("email_service_health")

    # when
    response = client.get("/health/")

    # then
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["services"]["email_service"]["status"] == "down"
    assert body["problems"] == ["email_service"]
    # strict monitors get a 503 for the same state
    assert client.get("/health/?strict=1").status_code == 503


@pytest.mark.django_db
def test_503_when_redis_is_unreachable(client, dead_redis):
    response = client.get("/health/")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["services"]["redis"] == {"status": "down", "error": "ConnectionError",
                                         "latency_ms": body["services"]["redis"]["latency_ms"]}
    assert body["services"]["database"]["status"] == "ok"
    assert body["problems"][0] == "redis"
    assert body["background_jobs"]["queues"] is None
    assert_no_secrets(response.content.decode())


@pytest.mark.django_db(transaction=True)
def test_503_when_the_database_is_unreachable(client, redis_client):
    # given the connection settings pointing at a port where nothing listens
    conn = connections["default"]
    saved = conn.settings_dict["PORT"]
    conn.close()
    conn.settings_dict["PORT"] = str(free_port())
    try:
        # when
        response = client.get("/health/")
        metrics = client.get("/metrics")
    finally:
        conn.close()
        conn.settings_dict["PORT"] = saved

    # then
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["services"]["database"]["status"] == "down"
    assert body["services"]["database"]["error"] == "OperationalError"
    assert body["services"]["redis"]["status"] == "ok"
    assert body["cron_jobs"] is None
    # what is down is named once; the stored results it hides are unknown, not problems of their own
    assert body["problems"] == ["database"]
    assert body["services"]["payment_gateway"] == {"status": "unknown", "reason": "database down"}
    assert_no_secrets(response.content.decode())
    # /metrics still answers, naming the sources it could not read
    assert metrics.status_code == 200
    assert 'checkout_scrape_errors{source="jobs"} 1.0' in metrics.content.decode()
    assert 'checkout_scrape_skipped{source="jobs"} 1.0' in metrics.content.decode()


@pytest.mark.django_db
def test_a_broker_of_its_own_is_pinged_and_named_when_down(client, redis_client, smtp_server, settings):
    # given every dependency up but a broker on a Redis of its own, where nothing answers
    all_dependencies_up()
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{free_port()}/0"

    # when
    response = client.get("/health/")

    # then
    assert response.status_code == 503
    body = response.json()
    assert body["services"]["broker"]["status"] == "down"
    assert body["services"]["redis"]["status"] == "ok"
    assert body["problems"] == ["broker"]
    assert_no_secrets(response.content.decode())


@pytest.mark.django_db
def test_a_rabbitmq_broker_is_pinged_and_named_when_down(client, redis_client, smtp_server, settings):
    from tests.brokers import RABBITMQ_URL, rabbitmq_unavailable
    from tests.services import in_ci

    reason = rabbitmq_unavailable()
    if reason:
        (pytest.fail if in_ci() else pytest.skip)(reason)
    all_dependencies_up()
    # given RabbitMQ as the broker: up, then a port where nothing listens
    settings.CELERY_BROKER_URL = RABBITMQ_URL
    up = client.get("/health/")
    settings.CELERY_BROKER_URL = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    down = client.get("/health/")

    assert up.status_code == 200 and up.json()["services"]["broker"]["status"] == "ok"
    assert down.status_code == 503 and down.json()["problems"] == ["broker"]
    assert_no_secrets(down.content.decode())


@pytest.mark.django_db
def test_a_stale_stored_result_counts_as_unknown(client, redis_client, smtp_server):
    all_dependencies_up()
    HealthCheck.objects.filter(service="payment_gateway").update(checked_at=timezone.now() - timedelta(days=2))
    body = client.get("/health/").json()
    assert body["services"]["payment_gateway"]["status"] == "unknown"
    assert body["status"] == "degraded"


@pytest.mark.django_db
def test_a_scheduled_job_without_a_recent_success_is_late(client, redis_client, smtp_server):
    # given db_backup scheduled daily since three days ago, and never successful; beat has
    # just saved its row (which moves date_changed: that must not reset "late")
    all_dependencies_up()
    crontab = CrontabSchedule.objects.create(minute="0", hour="2", timezone="Asia/Kolkata")
    PeriodicTask.objects.create(name="db_backup", task="jobs.db_backup", crontab=crontab)
    ManagedSchedule.objects.create(name="db_backup", created_at=timezone.now() - timedelta(days=3))

    # when
    body = client.get("/health/").json()

    # then
    backup = body["cron_jobs"]["db_backup"]
    assert backup["late"] is True
    assert backup["interval_s"] == 86400
    due = timezone.datetime.fromisoformat(backup["next_due"])
    assert timedelta(0) < due - timezone.now() <= timedelta(days=1)
    assert body["cron_jobs"]["db_optimize"]["after"] == ["db_backup"]
    assert body["cron_jobs"]["db_optimize"]["late"] is True
    # jobs beat does not schedule are never late
    assert body["cron_jobs"]["cart_cleanup"]["late"] is False
    assert body["status"] == "degraded"
    assert "job db_backup late" in body["problems"]


@pytest.mark.django_db
def test_never_a_500(client, monkeypatch):
    import ops.maintenance.views as views

    def broken(**kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(views, "health_report", broken)
    response = client.get("/health/")
    assert response.status_code == 503
    assert response.json()["status"] == "unhealthy"


def test_liveness_touches_no_dependency(client, dead_redis):
    # no database access is allowed in this test: any query would raise
    response = client.get("/health/live/")
    assert response.status_code == 200
    assert response.json()["status"] == "alive"


def test_report_json_is_the_body_and_encodes_cron_jobs_once_per_object(monkeypatch):
    import json as json_module

    from ops.maintenance import health

    health.clear_cache()
    cron = {"cart_cleanup": {"last_run": "2026-11-29T06:00:00+00:00", "late": False}}
    body = {"status": "healthy", "timestamp": "t", "services": {"database": {"status": "ok"}},
            "cron_jobs": cron, "background_jobs": {"queues": None}}
    assert json_module.loads(health.report_json(body)) == body
    # the same cached object is not encoded again...
    encodings = []
    real_dumps = json_module.dumps
    monkeypatch.setattr(health.json, "dumps", lambda value, **kw: encodings.append(value) or real_dumps(value, **kw))
    health.report_json(body)
    assert cron not in encodings
    # ...a refreshed one is, and the answer follows it
    fresh = {"cart_cleanup": {"last_run": None, "late": True}}
    assert json_module.loads(health.report_json({**body, "cron_jobs": fresh}))["cron_jobs"] == fresh
    # with the database down there are no cron jobs to show, and a body without them still encodes
    assert json_module.loads(health.report_json({**body, "cron_jobs": None}))["cron_jobs"] is None
    assert json_module.loads(health.report_json({"status": "unhealthy"})) == {"status": "unhealthy"}
