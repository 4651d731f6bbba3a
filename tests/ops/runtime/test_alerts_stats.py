"""Per-job statistics from the ledger, and alerts: once per incident, cleared (and announced) on recovery."""
from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
import time_machine
from django.core import mail
from django.urls import reverse

from ops.runtime.alerts import alerts_evaluate
from ops.runtime.models import AlertIncident, JobRun
from ops.runtime.runner import run_job
from ops.runtime.selectors import job_stats
from ops.runtime.services import schedules_sync
from ops.runtime.status import job_statuses

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def test_job_stats_are_true_mean_and_nearest_rank_p95():
    # given 100 finished runs lasting 1..100 ms, one skip and one dry run
    now = datetime(2026, 6, 1, tzinfo=dt_timezone.utc)
    JobRun.objects.bulk_create([
        JobRun(job="ops_test_job", status=JobRun.Status.FAILED if ms % 10 == 0 else JobRun.Status.SUCCESS,
               started_at=now + timedelta(minutes=ms), finished_at=now + timedelta(minutes=ms), duration_ms=ms)
        for ms in range(1, 101)
    ])
    JobRun.objects.create(job="ops_test_job", status=JobRun.Status.SKIPPED, started_at=now + timedelta(hours=5),
                          duration_ms=0)

    stats = job_stats()["ops_test_job"]

    assert stats["total"] == 101 and stats["succeeded"] == 90 and stats["failed"] == 10 and stats["skipped"] == 1
    assert stats["success_rate"] == 0.9
    assert stats["mean_ms"] == 50.5  # not the seed's running (avg + d) / 2
    assert stats["p95_ms"] == 95
    status = job_statuses(now + timedelta(hours=6))["ops_test_job"]
    assert status.last_status == JobRun.Status.SKIPPED
    assert status.last_run_at == now + timedelta(hours=5)
    assert status.last_success_at == now + timedelta(minutes=99)
    # registered jobs with no runs are listed too
    assert job_stats()["ops_test_undated"]["total"] == 0


def test_jobrun_changelist_shows_the_stats(admin_client):
    run_job("ops_test_job")
    response = admin_client.get(reverse("admin:ops_jobrun_changelist"), {"status": "success"})
    body = response.content.decode()
    assert response.status_code == 200
    assert 'id="job-stats"' in body and "ops_test_job" in body and "100 %" in body


def test_dead_letters_list_defaults_to_dead(admin_client):
    from ops.runtime.models import DeadLetter

    DeadLetter.objects.create(task_name="a", task_id="1", state=DeadLetter.State.DEAD)
    DeadLetter.objects.create(task_name="b", task_id="2", state=DeadLetter.State.RECOVERED)
    url = reverse("admin:ops_deadletter_changelist")

    default = admin_client.get(url).context["cl"]
    everything = admin_client.get(url, {"state": "all"}).context["cl"]

    assert [d.task_id for d in default.result_list] == ["1"]
    assert sorted(d.task_id for d in everything.result_list) == ["1", "2"]


def test_ledger_and_outbox_are_read_only_in_the_admin(admin_client):
    assert admin_client.get(reverse("admin:ops_jobrun_add")).status_code == 403
    assert admin_client.get(reverse("admin:ops_outboxevent_add")).status_code == 403


@pytest.fixture
def alert_settings(settings):
    settings.ADMINS = [("ops", "ops@example.com")]
    settings.ALERT_FAILURE_RATIO = 0.5
    settings.ALERT_MIN_RUNS = 2
    settings.ALERT_WINDOW = timedelta(hours=6)
    settings.ALERT_BACKENDS = ["ops.runtime.alerts.LogBackend", "ops.runtime.alerts.EmailBackend"]
    return settings


def test_failure_ratio_alerts_once_per_incident_and_recovery_clears_it(alert_settings, caplog):
    # one failure out of one run: not enough runs to judge
    run_job("ops_test_job", params={"crash": "down"})
    assert not AlertIncident.objects.exists()

    # a second failure: 2 of 2 failed, over the 50 % threshold -> one alert
    run_job("ops_test_job", params={"crash": "down"})
    incident = AlertIncident.objects.get()
    assert incident.kind == AlertIncident.Kind.FAILURE_RATIO and incident.resolved_at is None
    assert [m.subject for m in mail.outbox] == ["[Django] ALERT ops_test_job: failure ratio"]
    assert mail.outbox[0].to == ["ops@example.com"]
    assert "2 of the last 2 runs failed" in mail.outbox[0].body
    assert "ALERT job=ops_test_job kind=failure_ratio" in caplog.text

    # more failures while it is open: no new alert
    run_job("ops_test_job", params={"crash": "down"})
    assert AlertIncident.objects.count() == 1 and len(mail.outbox) == 1

    # recovery: the last two runs succeeded -> resolved, announced once
    run_job("ops_test_job")
    run_job("ops_test_job")
    incident.refresh_from_db()
    assert incident.resolved_at is not None
    assert mail.outbox[-1].subject == "[Django] RECOVERED ops_test_job: failure ratio"
    assert len(mail.outbox) == 2

    # a new bad spell is a new incident
    run_job("ops_test_job", params={"crash": "down"})
    run_job("ops_test_job", params={"crash": "down"})
    run_job("ops_test_job", params={"crash": "down"})
    assert AlertIncident.objects.filter(resolved_at__isnull=True).count() == 1
    assert AlertIncident.objects.count() == 2


def test_dry_runs_do_not_count_towards_alerts(alert_settings):
    for _ in range(3):
        run_job("ops_test_job", dry_run=True, params={"crash": "down"})
    assert not AlertIncident.objects.exists()


def test_a_job_without_success_in_twice_its_interval_alerts_then_recovers(alert_settings, test_schedules):
    # given the schedules were synced at T, and ops_test_job (every 15 min) last succeeded then
    start = datetime(2026, 6, 1, 8, 0, tzinfo=dt_timezone.utc)
    with time_machine.travel(start, tick=False):
        schedules_sync()
        run_job("ops_test_job")

    # 25 minutes later: within 2 x 15 min, fine
    assert alerts_evaluate(start + timedelta(minutes=25)) == {}
    # 31 minutes later: stale
    changes = alerts_evaluate(start + timedelta(minutes=31))
    assert changes["ops_test_job"] == {"stale": "opened"}
    assert "no successful run in the last 30 min" in mail.outbox[-1].body
    # evaluated again: still one incident, no new mail
    sent = len(mail.outbox)
    alerts_evaluate(start + timedelta(minutes=36))
    assert len(mail.outbox) == sent

    # a success clears it right after the run
    with time_machine.travel(start + timedelta(minutes=40), tick=False):
        run_job("ops_test_job")
    assert AlertIncident.objects.get(kind="stale").resolved_at is not None
    assert mail.outbox[-1].subject.endswith("RECOVERED ops_test_job: no recent success")


class Recorder:
    sent = []

    def send(self, *, incident, event):
        self.sent.append((incident.job, incident.kind, event))


class Broken:
    def send(self, *, incident, event):
        raise ConnectionError("pager down")


def test_backends_are_pluggable_and_one_broken_backend_does_not_stop_the_others(alert_settings):
    alert_settings.ALERT_BACKENDS = [f"{__name__}.Broken", f"{__name__}.Recorder"]
    Recorder.sent.clear()

    run_job("ops_test_job", params={"crash": "down"})
    run = run_job("ops_test_job", params={"crash": "down"})

    assert run.status == JobRun.Status.FAILED  # the run is recorded whatever the backends do
    assert Recorder.sent == [("ops_test_job", "failure_ratio", "opened")]
