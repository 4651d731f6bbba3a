"""db_optimize, db_cleanup, db_monitor, and the chains between them."""
import logging
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone
from django_celery_results.models import TaskResult

from carts.models import CartSnapshot, CartSnapshotLine
from ops.maintenance import upkeep
from ops.maintenance.models import DbSnapshot, HealthCheck
from ops.runtime.models import AlertIncident, DeadLetter, JobRun, OutboxEvent
from ops.runtime.runner import run_job
from payments.models import WebhookEvent, WebhookRejection

pytestmark = pytest.mark.postgres

OLD = timedelta(days=400)


def ago(delta):
    return timezone.now() - delta


def seed_prunable():
    """Rows on both sides of every cutoff; returns the ids that must survive."""
    keep = {}
    old_runs = JobRun.objects.bulk_create(
        [JobRun(job="cart_cleanup", status="success", started_at=ago(OLD)) for _ in range(7)]
    )
    keep["runs"] = {
        JobRun.objects.create(job="cart_cleanup", status="success", started_at=ago(timedelta(days=1))).pk,
        # a run still marked running is never pruned, however old
        JobRun.objects.create(job="db_backup", status="running", started_at=ago(OLD)).pk,
    }
    TaskResult.objects.create(task_id="old", status="SUCCESS")
    TaskResult.objects.filter(task_id="old").update(date_done=ago(OLD))  # date_done is auto_now
    keep["results"] = {TaskResult.objects.create(task_id="new", status="SUCCESS").pk}
    WebhookEvent.objects.create(event_id="evt_old", event="payment.captured", payload={}, received_at=ago(OLD),
                                processed_at=ago(OLD))
    keep["webhooks"] = {
        WebhookEvent.objects.create(event_id="evt_unprocessed", event="payment.captured", payload={},
                                    received_at=ago(OLD)).pk,
    }
    WebhookRejection.objects.create(reason="bad_signature", received_at=ago(OLD))
    DeadLetter.objects.create(task_id="t-recovered", task_name="x", state="recovered", last_failed_at=ago(OLD))
    DeadLetter.objects.create(task_id="t-requeued", task_name="x", state="requeued", last_failed_at=ago(OLD))
    keep["dead"] = {DeadLetter.objects.create(task_id="t-dead", task_name="x", state="dead", last_failed_at=ago(OLD)).pk}
    OutboxEvent.objects.create(topic="order.paid", published_at=ago(OLD), created_at=ago(OLD))
    keep["outbox"] = {OutboxEvent.objects.create(topic="order.paid", created_at=ago(OLD)).pk}
    HealthCheck.objects.create(service="cache", status="ok", checked_at=ago(OLD))
    keep["health"] = {HealthCheck.objects.create(service="cache", status="ok").pk}
    old_snapshot = CartSnapshot.objects.create(taken_at=ago(OLD))
    CartSnapshotLine.objects.create(snapshot=old_snapshot)
    keep["cart_snapshots"] = {CartSnapshot.objects.create().pk}
    return old_runs, keep


@pytest.mark.django_db
def test_cleanup_deletes_exactly_the_old_resolved_rows_in_batches():
    # given
    _, keep = seed_prunable()
    batches = []

    # when
    deleted, finished = upkeep.database_cleanup(batch=3, on_batch=lambda table, total: batches.append(table))

    # then
    assert finished
    assert deleted == {
        "job_runs": 7, "task_results": 1, "webhook_events": 1, "webhook_rejections": 1,
        "dead_letters": 2, "outbox_events": 1, "beat_slots": 0, "health_checks": 1, "db_snapshots": 0, "cart_snapshots": 1,
        "failed_backups": 0,
    }
    assert batches.count("job_runs") == 3  # 3 + 3 + 1
    assert set(JobRun.objects.values_list("pk", flat=True)) == keep["runs"]
    assert set(TaskResult.objects.values_list("pk", flat=True)) == keep["results"]
    assert set(WebhookEvent.objects.values_list("pk", flat=True)) == keep["webhooks"]
    assert not WebhookRejection.objects.exists()
    assert set(DeadLetter.objects.values_list("pk", flat=True)) == keep["dead"]
    assert set(OutboxEvent.objects.values_list("pk", flat=True)) == keep["outbox"]
    assert set(HealthCheck.objects.values_list("pk", flat=True)) == keep["health"]
    assert set(CartSnapshot.objects.values_list("pk", flat=True)) == keep["cart_snapshots"]
    assert not CartSnapshotLine.objects.exists()
    # and again: nothing left to do
    assert sum(upkeep.database_cleanup()[0].values()) == 0


@pytest.mark.django_db
def test_cleanup_dry_run_counts_and_deletes_nothing():
    seed_prunable()
    before = JobRun.objects.count()
    run = run_job("db_cleanup", dry_run=True)
    assert run.status == JobRun.Status.SUCCESS, run.error
    assert run.result["would_delete"]["job_runs"] == 7
    assert JobRun.objects.count() == before + 1  # only the dry run's own ledger row


@pytest.mark.django_db
def test_cleanup_stops_when_its_time_budget_is_spent_and_reports_unfinished():
    seed_prunable()
    deleted, finished = upkeep.database_cleanup(batch=2, budget=timedelta(0))
    assert not finished
    assert deleted == {"job_runs": 2}


@pytest.mark.django_db
def test_optimize_vacuums_the_hot_tables_even_when_called_inside_a_transaction():
    with transaction.atomic():
        report = upkeep.database_optimize()
    assert set(report["timings_ms"]) == set(upkeep.hot_tables())
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_user_tables WHERE relname = ANY(%s) AND last_vacuum IS NOT NULL",
            [upkeep.hot_tables()],
        )
        assert cursor.fetchone()[0] == len(upkeep.hot_tables())


@pytest.mark.django_db
def test_monitor_stores_a_snapshot_and_alerts_on_a_threshold(settings, caplog):
    # given a connections threshold the test's own connection already passes
    settings.DB_MONITOR_CONNECTIONS_RATIO = 0.0

    # when
    with caplog.at_level(logging.ERROR, logger="ops.runtime.alerts"):
        run = run_job("db_monitor")

    # then
    assert run.status == JobRun.Status.SUCCESS, run.error
    snapshot = DbSnapshot.objects.get()
    assert snapshot.database_bytes > 0
    assert snapshot.max_connections >= snapshot.connections >= 1
    assert any(t["table"] == "ops_jobrun" for t in snapshot.tables)
    assert snapshot.breaches and snapshot.breaches[0].startswith("connections ")
    assert any("ALERT job=db_monitor" in r.getMessage() for r in caplog.records)
    incident = AlertIncident.objects.get(job="db_monitor", resolved_at__isnull=True)
    assert incident.kind == AlertIncident.Kind.CONDITION

    # and a second breach does not notify again; a clean snapshot resolves the incident
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="ops.runtime.alerts"):
        run_job("db_monitor")
    assert not any("ALERT job=db_monitor" in r.getMessage() for r in caplog.records)
    settings.DB_MONITOR_CONNECTIONS_RATIO = 1.0
    settings.DB_MONITOR_DEAD_TUPLE_RATIO = 1.0
    settings.DB_MONITOR_LONG_QUERY = timedelta(hours=1)
    run_job("db_monitor")
    assert not AlertIncident.objects.filter(job="db_monitor", resolved_at__isnull=True).exists()


@pytest.mark.django_db
def test_monitor_reports_long_queries_without_their_text(settings):
    # given: every running query counts as long
    settings.DB_MONITOR_LONG_QUERY = timedelta(0)
    other = upkeep.connections.create_connection("default")
    other.ensure_connection()
    other.set_autocommit(True)
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pid = cursor.fetchone()[0]
            # an open transaction: "idle in transaction" is a long query holding its locks
            other.set_autocommit(False)
            cursor.execute("SELECT 'customer@example.com'")
            snapshot, breaches = upkeep.database_snapshot_take()
    finally:
        other.close()
    assert pid in {q["pid"] for q in snapshot.long_queries}
    assert "customer@example.com" not in str(snapshot.long_queries)
    assert any("queries running longer" in b for b in breaches)


@pytest.mark.django_db
def test_a_successful_backup_chains_optimize_then_monitor(backup_dir):
    run = run_job("db_backup", params={"restore_check": False})
    assert run.status == JobRun.Status.SUCCESS, run.error
    chained = dict(JobRun.objects.filter(trigger="chain").values_list("job", "status"))
    assert chained == {"db_optimize": "success", "db_monitor": "success"}


@pytest.mark.django_db
def test_a_failed_backup_stops_the_chain_and_alerts(settings, tmp_path, caplog):
    # given a backup directory that cannot be created (its parent is a file)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    settings.BACKUP_DIR = blocker / "backups"

    # when
    with caplog.at_level(logging.ERROR, logger="ops.runtime.alerts"):
        run = run_job("db_backup")

    # then
    assert run.status == JobRun.Status.FAILED
    assert not JobRun.objects.filter(job__in=["db_optimize", "db_monitor"]).exists()
    alerts = [r.getMessage() for r in caplog.records if "ALERT job=db_backup" in r.getMessage()]
    assert alerts and "not run: db_optimize, db_monitor" in alerts[0]
    assert AlertIncident.objects.get(job="db_backup", resolved_at__isnull=True).detail["not_run"] == [
        "db_optimize", "db_monitor",
    ]


@pytest.mark.django_db
def test_a_failed_optimize_stops_before_monitor(monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("vacuum failed")

    monkeypatch.setattr(upkeep, "database_optimize", broken)
    run = run_job("db_optimize")
    assert run.status == JobRun.Status.FAILED
    assert not JobRun.objects.filter(job="db_monitor").exists()


@pytest.mark.django_db
def test_cleanup_chains_monitor(backup_dir):
    run = run_job("db_cleanup")
    assert run.status == JobRun.Status.SUCCESS, run.error
    assert JobRun.objects.filter(job="db_monitor", trigger="chain", status="success").exists()
