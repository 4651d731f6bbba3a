"""Prometheus exposition for /metrics, read at scrape time from shared state.

Jobs come from the run ledger, background tasks from ops.runtime.metrics' Redis
counters, queues and workers from Redis, dead letters and health from their
tables: every number is the same whichever process serves the scrape, so web
and worker processes need no shared memory. Each source is read on its own;
one that fails is reported in checkout_scrape_errors instead of failing the
whole scrape. A source behind a dependency that does not answer the shared
/health/ ping (HEALTH_CHECK_TIMEOUT at most, reused for HEALTH_PING_SECONDS) is
not read at all and is counted in checkout_scrape_skipped, so a scrape against a
hung database answers within the timeout.
"""
from __future__ import annotations

import logging

from django.db.models import Count, Sum
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from ops.runtime import metrics as task_metrics
from ops.maintenance import selectors
from ops.maintenance.health import dependency_pings
from ops.maintenance.models import HealthCheck, JobRunTally
from ops.runtime.models import JobRun
from ops.runtime.status import job_statuses

log = logging.getLogger(__name__)

SERVICE_STATUSES = ("ok", "degraded", "down", selectors.UNKNOWN)


def _job_metrics():
    runs = CounterMetricFamily(
        "checkout_job_runs", "Job runs in the run ledger, by job and status", labels=["job", "status"]
    )
    durations = SummaryMetricFamily(
        "checkout_job_duration_seconds", "Duration of finished job runs", labels=["job"]
    )
    last_success = GaugeMetricFamily(
        "checkout_job_last_success_timestamp_seconds", "End of the job's last successful run",
        labels=["job"],
    )
    late = GaugeMetricFamily(
        "checkout_job_late", "1 when a scheduled job has not succeeded within twice its interval",
        labels=["job"],
    )
    ledger = JobRun.objects.filter(dry_run=False)
    # Runs still in the ledger plus those db_cleanup pruned, so the counters only grow.
    counted: dict[tuple[str, str], list] = {}
    live = (
        ledger.values_list("job", "status")
        .annotate(n=Count("pk"), total=Sum("duration_ms"), finished=Count("duration_ms"))
        .order_by()
    )
    pruned = JobRunTally.objects.values_list("job", "status", "runs", "duration_ms", "finished")
    for job, status, n, total_ms, finished in [*live, *pruned]:
        acc = counted.setdefault((job, status), [0, 0, 0])
        acc[0] += n
        acc[1] += finished
        acc[2] += (total_ms or 0) / 1000
    by_job: dict[str, list] = {}
    for (job, status), (n, finished, seconds) in sorted(counted.items()):
        runs.add_metric([job, status], n)
        acc = by_job.setdefault(job, [0, 0])
        acc[0] += finished
        acc[1] += seconds
    for job, (count, seconds) in by_job.items():
        durations.add_metric([job], count_value=count, sum_value=seconds)
    for job, status in job_statuses().items():
        if status.last_success_at is not None:
            last_success.add_metric([job], status.last_success_at.timestamp())
        late.add_metric([job], 1 if status.late else 0)
    return [runs, durations, last_success, late]


def _task_metrics():
    runs = CounterMetricFamily(
        "checkout_task_runs", "Background task executions, by task and outcome", labels=["task", "outcome"]
    )
    durations = SummaryMetricFamily("checkout_task_duration_seconds", "Background task durations", labels=["task"])
    p95 = GaugeMetricFamily(
        "checkout_task_duration_p95_seconds", "p95 of the last 1,000 durations", labels=["task"]
    )
    last_success = GaugeMetricFamily(
        "checkout_task_last_success_timestamp_seconds", "Time of the task's last success", labels=["task"]
    )
    for task, stats in task_metrics.task_stats().items():
        runs.add_metric([task, "succeeded"], stats["succeeded"])
        runs.add_metric([task, "failed"], stats["failed"])
        durations.add_metric(
            [task], count_value=stats["total"], sum_value=(stats["mean_s"] or 0) * stats["total"]
        )
        if stats["p95_s"] is not None:
            p95.add_metric([task], stats["p95_s"])
        if stats["last_success"] is not None:
            last_success.add_metric([task], stats["last_success"])
    return [runs, durations, p95, last_success]


def _queue_metrics():
    state = selectors.queue_state()
    if state is None:
        return []
    families = [GaugeMetricFamily(
        "checkout_workers_seen", "Celery workers that sent a heartbeat in the last minute",
        value=state["workers"],
    )]
    if state["queues"] is not None:
        queues = GaugeMetricFamily("checkout_queue_length", "Messages waiting in each queue", labels=["queue"])
        for queue, length in state["queues"].items():
            queues.add_metric([queue], length)
        families.append(queues)
    return families


def _dead_letter_metrics():
    family = GaugeMetricFamily("checkout_dead_letters", "Failed tasks by state", labels=["state"])
    for state, n in selectors.dead_letter_counts().items():
        family.add_metric([state], n)
    return [family]


def _health_metrics():
    status = GaugeMetricFamily(
        "checkout_service_status", "Latest stored health result (1 for the current status)",
        labels=["service", "status"],
    )
    age = GaugeMetricFamily(
        "checkout_service_check_age_seconds", "Age of the latest stored health result", labels=["service"]
    )
    services = sorted(set(selectors.STORED_SERVICES) | set(
        HealthCheck.objects.values_list("service", flat=True).distinct()
    ))
    for service, entry in selectors.stored_service_statuses(services).items():
        for value in SERVICE_STATUSES:
            status.add_metric([service, value], 1 if entry["status"] == value else 0)
        if "age_s" in entry:
            age.add_metric([service], entry["age_s"])
    return [status, age]


# Each source and the dependency it reads.
SOURCES = {
    "jobs": (_job_metrics, "database"),
    "tasks": (_task_metrics, "redis"),
    "queues": (_queue_metrics, "redis"),
    "dead_letters": (_dead_letter_metrics, "database"),
    "health": (_health_metrics, "database"),
}


class CheckoutCollector(Collector):
    def collect(self):
        pings = dependency_pings()
        up = GaugeMetricFamily(
            "checkout_dependency_up", "1 when the dependency answered the shared health ping in time",
            labels=["dependency"],
        )
        for name, answer in pings.items():
            if answer["status"] != "not_configured":
                up.add_metric([name], 1 if answer["status"] == "ok" else 0)
        yield up
        errors = GaugeMetricFamily(
            "checkout_scrape_errors", "1 when a source could not be read in this scrape", labels=["source"]
        )
        skipped = GaugeMetricFamily(
            "checkout_scrape_skipped", "1 when a source was not read because its dependency is down",
            labels=["source"],
        )
        for name, (source, dependency) in SOURCES.items():
            down = pings[dependency]["status"] == "down"
            skipped.add_metric([name], 1 if down else 0)
            if down:
                errors.add_metric([name], 1)
                continue
            try:
                families = source()
            except Exception as exc:  # one dead source must not hide the others
                log.warning("metrics source %s failed: %s", name, type(exc).__name__)
                errors.add_metric([name], 1)
                continue
            errors.add_metric([name], 0)
            yield from families
        yield errors
        yield skipped


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(CheckoutCollector())


def exposition() -> bytes:
    return generate_latest(REGISTRY)
