"""GET /metrics: Prometheus text that the client's own parser reads, counting work done in other processes."""
import os
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from ops.runtime import metrics as task_metrics
from ops.maintenance.services import health_record
from ops.runtime.models import DeadLetter, JobRun
from ops.runtime.dispatch import enqueue_job

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def scrape(client) -> dict[tuple, float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.mark.django_db
def test_metrics_expose_jobs_tasks_queues_dead_letters_and_health(client, redis_client):
    # given
    now = timezone.now()
    for status, duration_ms in (("success", 1000), ("success", 3000), ("failed", 500)):
        JobRun.objects.create(job="cart_cleanup", status=status, duration_ms=duration_ms,
                              started_at=now - timedelta(minutes=5), finished_at=now)
    JobRun.objects.create(job="cart_cleanup", status="success", dry_run=True, duration_ms=1)
    task_metrics.record_task("email_send", "succeeded", 0.2)
    task_metrics.record_task("email_send", "failed", 0.4)
    redis_client.rpush("high", "message-1", "message-2")
    DeadLetter.objects.create(task_id="t1", task_name="email_send", state="dead")
    health_record(service="payment_gateway", status="degraded", latency_ms=900)

    # when
    samples = scrape(client)

    # then
    job = (("job", "cart_cleanup"),)
    assert samples[("checkout_job_runs_total", (("job", "cart_cleanup"), ("status", "success")))] == 2
    assert samples[("checkout_job_runs_total", (("job", "cart_cleanup"), ("status", "failed")))] == 1
    assert samples[("checkout_job_duration_seconds_count", job)] == 3
    assert samples[("checkout_job_duration_seconds_sum", job)] == pytest.approx(4.5)
    assert samples[("checkout_job_last_success_timestamp_seconds", job)] == pytest.approx(now.timestamp())
    assert samples[("checkout_task_runs_total", (("outcome", "failed"), ("task", "email_send")))] == 1
    assert samples[("checkout_task_duration_seconds_sum", (("task", "email_send"),))] == pytest.approx(0.6)
    assert samples[("checkout_queue_length", (("queue", "high"),))] == 2
    assert samples[("checkout_dead_letters", (("state", "dead"),))] == 1
    assert samples[("checkout_service_status", (("service", "payment_gateway"), ("status", "degraded")))] == 1
    assert samples[("checkout_service_status", (("service", "payment_gateway"), ("status", "ok")))] == 0
    assert samples[("checkout_service_status", (("service", "email_service"), ("status", "unknown")))] == 1
    assert all(v == 0 for (name, _), v in samples.items() if name == "checkout_scrape_errors")


@pytest.mark.django_db
def test_job_counters_never_go_down_when_old_runs_are_pruned(client, settings):
    from ops.maintenance import upkeep

    # given runs older than the ledger's retention, and one recent run
    old = timezone.now() - settings.RETENTION_JOB_RUNS - timedelta(days=1)
    for status, duration_ms in (("success", 1000), ("success", 2000), ("failed", 500)):
        JobRun.objects.create(job="cart_cleanup", status=status, duration_ms=duration_ms,
                              started_at=old, finished_at=old)
    JobRun.objects.create(job="cart_cleanup", status="success", dry_run=True, duration_ms=1, started_at=old)
    JobRun.objects.create(job="cart_cleanup", status="success", duration_ms=4000)
    before = scrape(client)

    # when db_cleanup prunes the old runs (in batches of two)
    deleted, _ = upkeep.database_cleanup(batch=2)

    # then the rows are gone but every job counter reads the same
    assert deleted["job_runs"] == 4 and JobRun.objects.count() == 1
    after = scrape(client)
    job_samples = {k: v for k, v in before.items() if k[0].startswith("checkout_job_") and "last_success" not in k[0]}
    assert job_samples and all(after[k] == v for k, v in job_samples.items())
    assert after[("checkout_job_runs_total", (("job", "cart_cleanup"), ("status", "success")))] == 3
    assert after[("checkout_job_duration_seconds_sum", (("job", "cart_cleanup"),))] == pytest.approx(7.5)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_job_run_by_a_worker_process_is_counted(client, celery_worker_factory, celery_live):
    # given a real worker in its own process
    worker = celery_worker_factory(queues="default", concurrency=1)

    # when it runs a job
    enqueue_job("webhook_health")
    deadline = time.monotonic() + 60
    while not JobRun.objects.filter(job="webhook_health", status="success").exists():
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.1)

    # then the web side counts it, and sees the worker alive
    run = JobRun.objects.get(job="webhook_health")
    assert run.pid != os.getpid()
    samples = scrape(client)
    assert samples[("checkout_job_runs_total", (("job", "webhook_health"), ("status", "success")))] == 1
    assert samples[("checkout_workers_seen", ())] >= 1
    assert samples[("checkout_service_status", (("service", "webhooks"), ("status", "ok")))] == 1
    assert client.get("/health/").json()["background_jobs"]["workers"]["seen"] >= 1
