"""The job registry: every scheduled job by its contract name, and the hooks apps give the runtime.

Apps declare jobs in their `jobs.py` with `@job(...)`; the runtime's AppConfig
imports those modules at start-up. Whatever must follow a registration (the
Celery task `jobs.<name>` of ops.runtime.tasks) watches the registry instead of
being imported by it, and apps that want to hear of finished runs register an
after-run hook. This module imports nothing of the runtime but the parameter declarations.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Callable

from ops.runtime.params import Param

log = logging.getLogger(__name__)

JOB_TASK_PREFIX = "jobs."
# A job that asks for follow-up chunks (ctx.continue_later) gets at most this many
# in a row; what is left waits for its next scheduled run.
DEFAULT_MAX_CHUNKS = 48


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
    max_chunks: int = DEFAULT_MAX_CHUNKS
    # The parameters a run may be given (see ops.runtime.params); anything else is refused.
    params: dict[str, Param] = field(default_factory=dict)
    # For a job whose runs fan out: `close(ctx) -> dict | None`, run once all its chunks are done (with
    # the run's summed counts in ctx.counts), or right after the body when it fanned out to no part.
    # What it returns joins the run's result (see `job_close`).
    close: Callable | None = None

    @property
    def task_name(self) -> str:
        return JOB_TASK_PREFIX + self.name


_REGISTRY: dict[str, Job] = {}
# Called with ("registered", job) and ("unregistered", job).
_WATCHERS: list[Callable[[str, Job], None]] = []
# Called with each finished ledger row (any status, dry runs included) after its run.
_AFTER_RUN: list[Callable] = []


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
    max_chunks: int = DEFAULT_MAX_CHUNKS,
    params: dict[str, Param] | None = None,
):
    """Register `func(ctx: JobContext) -> dict | None` as the job `name`."""
    if max_chunks < 1:
        raise ValueError(f"job {name!r}: max_chunks must be at least 1")

    def register(func: Callable) -> Callable:
        existing = _REGISTRY.get(name)
        if existing is not None and _qualified(existing.func) != _qualified(func):
            raise ValueError(f"job {name!r} is registered twice")
        registered = Job(
            name=name, func=func, queue=queue, description=description or _first_line(func.__doc__),
            time_limit=time_limit, max_retries=max_retries, backoff_base=backoff_base,
            backoff_cap=backoff_cap, then=tuple(then), accepts_date=accepts_date, max_chunks=max_chunks,
            params=dict(params or {}),
        )
        _REGISTRY[name] = registered
        for watcher in _WATCHERS:
            watcher("registered", registered)
        return func

    return register


def job_close(name: str):
    """Register `func(ctx) -> dict | None` as the closing step of job `name` (registered before it):
    what is left to do once every chunk of a run that fanned out is done, in the process that ended
    the last one (a report of the whole run, work that must follow all parts). The run stays
    "running", and its job in single flight, until the closing step ends."""

    def register(func: Callable) -> Callable:
        existing = get_job(name)
        if existing.close is not None and _qualified(existing.close) != _qualified(func):
            raise ValueError(f"job {name!r} has a closing step already")
        _REGISTRY[name] = replace(existing, close=func)
        return func

    return register


def _qualified(func: Callable) -> str:
    return f"{func.__module__}.{func.__qualname__}"


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


def chained_from(name: str) -> list[str]:
    """The jobs whose `then=` starts `name`."""
    return [parent for parent, j in sorted(_REGISTRY.items()) if name in j.then and parent != name]


def chain_after(name: str) -> list[str]:
    """Every job a successful run of `name` starts, directly or further down its chain, in order."""
    chain, todo = [], list(get_job(name).then)
    while todo:
        follower = todo.pop(0)
        if follower not in chain:
            chain.append(follower)
            todo.extend(get_job(follower).then)
    return chain


def unregister(name: str) -> None:
    """For tests that register throwaway jobs: forget the job (and, through the watchers, its task)."""
    removed = _REGISTRY.pop(name, None)
    if removed is not None:
        for watcher in _WATCHERS:
            watcher("unregistered", removed)


def watch(watcher: Callable[[str, Job], None]) -> None:
    """Call `watcher(event, job)` on every registration from now on, and now for the jobs already known."""
    if watcher in _WATCHERS:
        return
    _WATCHERS.append(watcher)
    for registered in list(_REGISTRY.values()):
        watcher("registered", registered)


def after_run(hook: Callable) -> Callable:
    """Register `hook(run)` to be called with every finished run's ledger row; usable as a decorator.

    A hook runs in the process that ran the job, after the ledger row is final; an
    exception in it is logged and never changes the run's outcome.
    """
    if hook not in _AFTER_RUN:
        _AFTER_RUN.append(hook)
    return hook


def after_run_hooks() -> tuple[Callable, ...]:
    return tuple(_AFTER_RUN)
