"""Every finished job run is counted per job and local day, through the analytics_track task.

Listening to the run ledger keeps the job runtime unaware of analytics. The run's
ledger id is the batch key, so a ledger row saved twice, or a task delivered
twice, is counted once.
"""
from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from ops.models import JobRun
from ops.runner import local_zone


def job_run_counters(run: JobRun) -> dict[str, int]:
    counters = {"runs": 1, f"status_{run.status}": 1, "duration_ms": int(run.duration_ms or 0)}
    for name, value in (run.counts or {}).items():
        if type(value) is int:
            counters[f"count_{name}"] = value
    return counters


@receiver(post_save, sender=JobRun, dispatch_uid="analytics.job_run_finished")
def job_run_finished(sender, instance: JobRun, **kwargs) -> None:
    if instance.status == JobRun.Status.RUNNING or instance.dry_run or instance.finished_at is None:
        return
    from analytics.tasks import analytics_track

    task_kwargs = {
        "key": f"jobrun:{instance.pk}",
        "day": instance.finished_at.astimezone(local_zone()).date().isoformat(),
        "subject": f"job:{instance.job}",
        "counters": job_run_counters(instance),
    }
    # robust: a broker that is down must not fail the job whose outcome this is.
    transaction.on_commit(lambda: analytics_track.apply_async(kwargs=task_kwargs), robust=True)
