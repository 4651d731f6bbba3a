"""The job registry: every scheduled job by its contract name.

Apps declare jobs in their `jobs.py` with `@job(...)`; ops' AppConfig imports
those modules at start-up. A registered job is also a Celery task named
`jobs.<name>` on the job's queue (see ops.tasks).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable

JOB_TASK_PREFIX = "jobs."


class UnknownJob(LookupError):
    pass


@dataclass(frozen=True)
class Job:
    name: str
    func: Callable
    queue: str = "default"
    description: str = ""
    # Lease length for the portable lock, and the Celery time limits.
    time_limit: timedelta = timedelta(minutes=30)
    max_retries: int = 3
    backoff_base: float = 2.0
    backoff_cap: float = 30.0
    # Jobs to start after a successful (non dry-run) run: db_backup -> db_optimize.
    then: tuple[str, ...] = ()
    accepts_date: bool = False
    options: dict = field(default_factory=dict)

    @property
    def task_name(self) -> str:
        return JOB_TASK_PREFIX + self.name


_REGISTRY: dict[str, Job] = {}


def job(
    name: str,
    *,
    queue: str = "default",
    description: str = "",
    time_limit: timedelta = timedelta(minutes=30),
    max_retries: int = 3,
    backoff_base: float = 2.0,
    backoff_cap: float = 30.0,
    then: tuple[str, ...] = (),
    accepts_date: bool = False,
):
    """Register `func(ctx: JobContext) -> dict | None` as the job `name`."""

    def register(func: Callable) -> Callable:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.func is not func:
            if f"{existing.func.__module__}.{existing.func.__qualname__}" != (
                f"{func.__module__}.{func.__qualname__}"
            ):
                raise ValueError(f"job {name!r} is registered twice")
        _REGISTRY[name] = Job(
            name=name,
            func=func,
            queue=queue,
            description=description or _first_line(func.__doc__),
            time_limit=time_limit,
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            then=tuple(then),
            accepts_date=accepts_date,
        )
        from ops.tasks import register_job_task

        register_job_task(_REGISTRY[name])
        return func

    return register


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""


def get_job(name: str) -> Job:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownJob(name) from None


def all_jobs() -> dict[str, Job]:
    return dict(sorted(_REGISTRY.items()))


def unregister(name: str) -> None:
    """For tests that register throwaway jobs: forget the job and its Celery task."""
    from checkout.celery import app
    from ops.tasks import TASK_QUEUES

    _REGISTRY.pop(name, None)
    task_name = JOB_TASK_PREFIX + name
    app.tasks.pop(task_name, None)
    TASK_QUEUES.pop(task_name, None)
