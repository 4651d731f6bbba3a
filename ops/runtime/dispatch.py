"""Sending work to the workers: which queue each task goes to, and queueing a run of a job.

Every task declares its queue (background_task, @job); the Celery app routes by
`route_task`. Queueing a job is `enqueue_job`, used by runjob --async, the runner's
follow-ups, the sweep of lost runs and the dead letters' requeue.
"""
from __future__ import annotations

from datetime import date

from django.utils import timezone

from checkout.celery import app
from ops.runtime.models import DeadLetter, JobRun
from ops.runtime.registry import JOB_TASK_PREFIX, get_job

# Task name -> queue, filled as tasks are declared; `route_task` is the app's router.
TASK_QUEUES: dict[str, str] = {}


def route_task(name, args, kwargs, options, task=None, **kw):
    queue = TASK_QUEUES.get(name)
    return {"queue": queue} if queue else None


def job_task(name: str):
    return app.tasks[get_job(name).task_name]


def enqueue_job(
    name: str,
    *,
    trigger: str = JobRun.Trigger.MANUAL,
    dry_run: bool = False,
    day: date | None = None,
    params: dict | None = None,
    countdown: float = 0,
    expires: float | None = None,
    requested_by: str = "",
) -> str:
    """Queue a run of the job on its queue; returns the Celery task id.

    `expires` (seconds): a run still queued after that is dropped by the worker.
    `requested_by`: the user who asked for it, kept on the run's ledger row.
    """
    params = dict(params or {})
    date_param = params.pop("date", None) or (day.isoformat() if day else None)
    kwargs = {"trigger": trigger, "dry_run": dry_run, "date": date_param, "params": params}
    if requested_by:  # only when set: a worker still on the previous release takes the other messages as before
        kwargs["requested_by"] = requested_by
    result = job_task(name).apply_async(kwargs=kwargs, countdown=countdown or None, expires=expires)
    return result.id


def requeue_dead_letter(letter: DeadLetter, *, requested_by: str = "") -> str:
    """Send a dead task again with its original arguments; the row remembers the new task id.

    A job's run then names `requested_by` (who requeued it) in the ledger.
    """
    task = app.tasks[letter.task_name]
    kwargs = dict(letter.kwargs)
    if letter.task_name.startswith(JOB_TASK_PREFIX):
        kwargs["trigger"] = JobRun.Trigger.RETRY
        if requested_by:
            kwargs["requested_by"] = requested_by
    result = task.apply_async(args=letter.args, kwargs=kwargs)
    DeadLetter.objects.filter(pk=letter.pk).update(
        state=DeadLetter.State.REQUEUED, requeued_at=timezone.now(), requeued_task_id=result.id,
    )
    return result.id
