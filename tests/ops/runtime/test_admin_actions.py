"""Every admin action of the project needs its permission and leaves an entry in the admin's log with the
user: requeue dead tasks, run a job now (schedules and past runs), enable or disable schedules, verify
backups, export reports. A run asked from the admin is in the ledger as trigger `admin`, with the user."""
import json

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.urls import reverse
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from analytics.models import DailyReport
from ops.maintenance import backups
from ops.maintenance.models import Backup
from ops.runtime.models import DeadLetter, JobRun
from ops.runtime.runner import run_job
from tests.conftest import wait_for
from tests.factories import staff_user

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def act(client, model_url: str, action: str, pks) -> str:
    """Post `action` on the rows `pks` from the change list, as the list's form does; the page after."""
    response = client.post(reverse(model_url), {"action": action, "_selected_action": list(pks)}, follow=True)
    assert response.status_code == 200
    return response.content.decode()


def refused(page: str, action: str) -> bool:
    """The list did not offer the action (so the post ran nothing)."""
    return f'<option value="{action}"' not in page


def entries_for(obj) -> list[tuple[str, str]]:
    """(username, message) of the admin log's entries about `obj`."""
    return [
        (entry.user.username, entry.change_message)
        for entry in LogEntry.objects.filter(
            content_type=ContentType.objects.get_for_model(obj), object_id=str(obj.pk),
        ).select_related("user").order_by("pk")
    ]


def schedule_row(name: str, task: str, **kwargs) -> PeriodicTask:
    return PeriodicTask.objects.create(
        name=name, task=task, kwargs=json.dumps({"trigger": "beat", **kwargs}),
        interval=IntervalSchedule.objects.get_or_create(every=15, period=IntervalSchedule.MINUTES)[0],
    )


def dead_job_letter() -> DeadLetter:
    return DeadLetter.objects.create(
        task_name="jobs.ops_test_undated", task_id="dead-1", state=DeadLetter.State.DEAD, attempts=4,
        kwargs={"trigger": "beat", "dry_run": False, "date": None, "params": {}}, error="RuntimeError: boom",
    )


def test_requeue_needs_its_permission_and_names_the_user(client):
    # given a dead job task, a viewer of dead letters and an operator allowed to requeue
    letter = dead_job_letter()
    viewer = staff_user("viewer", "ops.view_deadletter", "ops.change_deadletter")
    operator = staff_user("operator", "ops.view_deadletter", "ops.requeue_deadletter")

    # when the viewer posts the requeue action
    client.force_login(viewer)
    page = act(client, "admin:ops_deadletter_changelist", "requeue", [letter.pk])

    # then nothing was sent and nothing logged
    assert refused(page, "requeue")
    letter.refresh_from_db()
    assert letter.state == DeadLetter.State.DEAD and not JobRun.objects.exists() and not LogEntry.objects.exists()

    # when the operator does
    client.force_login(operator)
    page = act(client, "admin:ops_deadletter_changelist", "requeue", [letter.pk])

    # then it ran again (inline here) as a retry asked by the operator, and the log says who and what
    letter.refresh_from_db()
    assert "Requeued 1 task(s)." in page and letter.state == DeadLetter.State.REQUEUED
    run = JobRun.objects.get()
    assert (run.trigger, run.requested_by, run.task_id) == ("retry", "operator", letter.requeued_task_id)
    assert entries_for(letter) == [("operator", f"Requeued as task {letter.requeued_task_id}")]


def test_run_selected_schedules_needs_the_run_permission_and_is_recorded_as_admin(client):
    # given a job's schedule, a runtime task's schedule, a viewer and an operator allowed to run jobs
    job_row = schedule_row("ops_test_undated", "jobs.ops_test_undated")
    relay_row = schedule_row("ops.outbox_relay", "ops.outbox_relay")
    client.force_login(staff_user("viewer", "django_celery_beat.view_periodictask"))

    # when the viewer posts "Run selected tasks" and the enable/disable actions
    for action in ("run_tasks", "disable_tasks", "toggle_tasks"):
        assert refused(act(
            client, "admin:django_celery_beat_periodictask_changelist", action, [job_row.pk, relay_row.pk]), action)

    # then nothing ran, nothing changed, nothing was logged
    assert not JobRun.objects.exists() and not LogEntry.objects.exists()
    assert PeriodicTask.objects.filter(pk__in=[job_row.pk, relay_row.pk], enabled=True).count() == 2

    # when the operator runs both
    client.force_login(staff_user("operator", "django_celery_beat.view_periodictask", "ops.run_job"))
    page = act(client, "admin:django_celery_beat_periodictask_changelist", "run_tasks", [job_row.pk, relay_row.pk])

    # then the job's run is the operator's, from the admin, not beat's; each row's log names the task sent
    run = JobRun.objects.get()
    print(f"run now: job={run.job} trigger={run.trigger} requested_by={run.requested_by} status={run.status}")
    assert (run.job, run.trigger, run.requested_by, run.status) == ("ops_test_undated", "admin", "operator", "success")
    assert f"Queued ops_test_undated as task {run.task_id}." in page
    assert entries_for(job_row) == [("operator", f"Ran now as task {run.task_id}")]
    [(user, message)] = entries_for(relay_row)
    assert user == "operator" and message.startswith("Ran now as task ")


def test_enabling_and_disabling_schedules_needs_change_and_is_logged(client):
    row = schedule_row("ops_test_undated", "jobs.ops_test_undated")
    client.force_login(staff_user("editor", "django_celery_beat.view_periodictask",
                                  "django_celery_beat.change_periodictask"))

    act(client, "admin:django_celery_beat_periodictask_changelist", "disable_tasks", [row.pk])
    assert not PeriodicTask.objects.get(pk=row.pk).enabled
    act(client, "admin:django_celery_beat_periodictask_changelist", "toggle_tasks", [row.pk])
    assert PeriodicTask.objects.get(pk=row.pk).enabled
    # the editor may change schedules but not run them
    page = act(client, "admin:django_celery_beat_periodictask_changelist", "run_tasks", [row.pk])
    assert "No action selected." in page and refused(page, "run_tasks")

    assert entries_for(row) == [("editor", "Disabled"), ("editor", "Enabled (toggled)")]
    assert not JobRun.objects.exists()


def test_run_again_from_the_ledger_needs_the_run_permission_and_keeps_the_parameters(client):
    # given a past run of a job with a parameter
    earlier = run_job("ops_test_job", params={"steps": 2})
    client.force_login(staff_user("viewer", "ops.view_jobrun"))

    # when a viewer asks to run it again, then an operator does
    assert refused(act(client, "admin:ops_jobrun_changelist", "run_again", [earlier.pk]), "run_again")
    assert JobRun.objects.count() == 1 and not LogEntry.objects.exists()
    client.force_login(staff_user("operator", "ops.view_jobrun", "ops.run_job"))
    act(client, "admin:ops_jobrun_changelist", "run_again", [earlier.pk])

    # then one new run with the same parameters, from the admin, by the operator
    again = JobRun.objects.exclude(pk=earlier.pk).get()
    assert (again.trigger, again.requested_by, again.params, again.counts) == (
        "admin", "operator", {"steps": 2}, {"written": 2})
    assert entries_for(earlier) == [("operator", f"Ran ops_test_job again now as task {again.task_id}")]


@pytest.mark.django_db(transaction=True)
def test_verifying_backups_needs_change_backup_and_is_logged(client, settings, tmp_path):
    # given a good backup, and one whose file is gone
    settings.BACKUP_DIR = tmp_path / "backups"
    good = backups.backup_create()
    Backup.objects.filter(pk=good.pk).update(verified_at=None)
    gone = backups.backup_create()
    (settings.BACKUP_DIR / gone.filename).unlink()
    client.force_login(staff_user("viewer", "maintenance.view_backup"))

    # when a viewer posts "verify", then a user allowed to change backups does
    assert refused(act(client, "admin:maintenance_backup_changelist", "verify", [good.pk]), "verify")
    assert Backup.objects.get(pk=good.pk).verified_at is None and not LogEntry.objects.exists()
    client.force_login(staff_user("keeper", "maintenance.view_backup", "maintenance.change_backup"))
    page = act(client, "admin:maintenance_backup_changelist", "verify", [good.pk, gone.pk])

    # then the good one is verified, the missing file reported, and both attempts logged with the user
    assert Backup.objects.get(pk=good.pk).verified_at is not None
    assert f"Backup {good.pk} verified" in page and f"file {gone.filename} is missing" in page
    [(user, message)] = entries_for(good)
    assert user == "keeper" and message.startswith("Verified: size and SHA-256 as recorded")
    assert entries_for(gone) == [("keeper", f"Verification failed: backup {gone.pk}: file {gone.filename} is missing")]
    # and nobody deletes a backup row here (its file would stay behind): the delete page is refused
    assert client.post(reverse("admin:maintenance_backup_delete", args=[good.pk]), {"post": "yes"}).status_code == 403


def test_a_report_export_is_for_viewers_and_is_logged(client):
    # given two daily reports and a viewer of them
    first = DailyReport.objects.create(date="2026-05-01", currency="INR")
    second = DailyReport.objects.create(date="2026-05-02", currency="INR")
    client.force_login(staff_user("analyst", "analytics.view_dailyreport"))

    # when the analyst exports them
    response = client.post(reverse("admin:analytics_dailyreport_changelist"),
                           {"action": "export_csv", "_selected_action": [first.pk, second.pk]})

    # then the CSV comes back and one log entry says who took which reports
    assert response.status_code == 200 and b"".join(response.streaming_content).count(b"\n") == 3
    entry = LogEntry.objects.get()
    assert entry.user.username == "analyst" and entry.object_id is None
    assert entry.change_message == "Exported 2 daily reports as CSV (2026-05-01 to 2026-05-02)"
    # and a staff user who may not see the reports gets neither the list nor the export
    client.force_login(staff_user("stranger"))
    assert client.post(reverse("admin:analytics_dailyreport_changelist"),
                       {"action": "export_csv", "_selected_action": [first.pk]}).status_code == 403


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_run_asked_from_the_admin_reaches_a_real_worker_with_the_user(client, celery_worker_factory, celery_live):
    # given a worker process and a job's schedule
    celery_worker_factory(queues="default", concurrency=1)
    row = schedule_row("ops_test_undated", "jobs.ops_test_undated")
    client.force_login(staff_user("operator", "django_celery_beat.view_periodictask", "ops.run_job"))

    # when the operator runs it from the schedules list
    act(client, "admin:django_celery_beat_periodictask_changelist", "run_tasks", [row.pk])

    # then the worker's ledger row carries the trigger and the user through the broker
    run = wait_for(lambda: JobRun.objects.filter(status="success").first(), timeout=30, what="the worker's run")
    print(f"worker run: trigger={run.trigger} requested_by={run.requested_by} host={run.host} pid={run.pid}")
    assert (run.trigger, run.requested_by) == ("admin", "operator")
    assert entries_for(row) == [("operator", f"Ran now as task {run.task_id}")]
