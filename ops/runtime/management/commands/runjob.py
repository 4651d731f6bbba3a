"""Run one job now, or list the jobs: `runjob JOB [--dry-run] [--date YYYY-MM-DD] [--param NAME=VALUE]...
[--async]`, `runjob --list`.

Exit status: 0 success (or handed to the workers as chunks), 1 the job failed (or could
not be queued), 2 usage error, 3 skipped because another run holds the job's lock. With the broker or Redis down, a
run still runs (its events wait in the outbox) and one line says what is down and
what became of the run's events and follow-ups.
"""
from __future__ import annotations

import difflib
import json
import re
import sys
import time
from datetime import date
from zoneinfo import ZoneInfo

from cron_descriptor import ExpressionDescriptor, Options
from django.core.management.base import CommandError
from django.db.models import Max
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import RedisError
from tqdm import tqdm

from checkout import commands
from checkout.celery import app
from checkout.commands import UsageError
from checkout.redis import get_redis
from checkout.timezones import local_today
from ops.runtime import schedules
from ops.runtime.errors import JobError
from ops.runtime.models import JobRun, OutboxEvent
from ops.runtime.params import read_params
from ops.runtime.registry import UnknownJob, all_jobs, get_job
from ops.runtime.ledger import LOCK_HELD
from ops.runtime.runner import run_job
from ops.runtime.status import job_statuses
from ops.runtime.dispatch import enqueue_job

EXIT_FAILED, EXIT_LOCKED = 1, 3
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def describe_cron(cron: schedules.Cron) -> str:
    options = Options()
    options.use_24hour_time_format = True
    # cron-descriptor reads standard order: minute hour day-of-month month day-of-week.
    return ExpressionDescriptor(str(cron), options).get_description()


class Command(commands.Command):
    help = "Run one job now and print what it did, or --list the jobs with their schedules and last runs."

    def add_arguments(self, parser):
        parser.add_argument("job", nargs="?", help="the job's name (see --list)")
        parser.add_argument("--list", dest="list_jobs", action="store_true", help="list jobs, schedules, last and next runs")
        parser.add_argument("--dry-run", action="store_true", help="report what would change, write nothing")
        parser.add_argument("--param", dest="params", action="append", default=[], metavar="NAME=VALUE",
                            help="a parameter of the job (repeatable), as a schedule's arguments give it: "
                                 "e.g. --param chunk_rows=100000 (a JSON value, else text)")
        parser.add_argument("--date", dest="day",
                            help="the local day to work on, YYYY-MM-DD, not in the future (jobs that take one)")
        parser.add_argument("--async", dest="run_async", action="store_true",
                            help="queue the run on a worker and print the task id")

    def handle(self, *args, job=None, list_jobs=False, dry_run=False, day=None, run_async=False, params=(),
               **options):
        if list_jobs:
            if job:
                raise UsageError("give either a job or --list, not both")
            self._list()
            return
        if not job:
            raise UsageError("name a job to run, or use --list")
        definition = self._job(job)
        day = self._day(day, definition)
        given = self._params(params, definition)

        if run_async:
            try:
                task_id = enqueue_job(job, dry_run=dry_run, day=day, params=given or None)
            except BrokerError as exc:
                raise CommandError(
                    f"broker down ({_reason(exc)}): {job} was not queued; "
                    "run it without --async, or again when the broker is back", returncode=EXIT_FAILED,
                ) from None
            self.stdout.write(f"{job}: queued on {definition.queue} as task {task_id}")
            return

        last_event = OutboxEvent.objects.aggregate(last=Max("pk"))["last"] or 0
        with _Progress(self.stdout) as progress:
            run = run_job(job, trigger=JobRun.Trigger.MANUAL, dry_run=dry_run, day=day, params=given,
                          on_progress=progress)
        self._report(run)
        down = _services_down()
        if down:
            self.stderr.write(_outage_line(down, run, definition, OutboxEvent.objects.filter(pk__gt=last_event)))
        if run.status == JobRun.Status.FAILED:
            sys.exit(EXIT_FAILED)
        if run.status == JobRun.Status.SKIPPED and run.error == LOCK_HELD:
            sys.exit(EXIT_LOCKED)

    def _job(self, name: str):
        try:
            return get_job(name)
        except UnknownJob:
            names = list(all_jobs())
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"known jobs: {', '.join(names) or 'none'}"
            raise UsageError(f"unknown job {name!r}; {hint}") from None

    def _params(self, raw: list[str], definition) -> dict:
        given = {}
        for item in raw:
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise UsageError(f"--param wants NAME=VALUE, not {item!r}")
            try:
                given[name.strip()] = json.loads(value)
            except ValueError:
                given[name.strip()] = value
        try:
            read_params(definition.name, definition.params, given)
        except JobError as exc:
            raise UsageError(f"--param: {exc}") from None
        return given

    def _day(self, raw: str | None, definition) -> date | None:
        if raw is None:
            return None
        try:
            if not _ISO_DATE.match(raw):
                raise ValueError("not in YYYY-MM-DD form")
            day = date.fromisoformat(raw)
        except ValueError as exc:
            raise UsageError(f"invalid --date {raw!r}: {exc} (expected YYYY-MM-DD)") from None
        if not definition.accepts_date:
            raise UsageError(f"job {definition.name!r} does not take --date")
        today = local_today()
        if day > today:
            raise UsageError(f"--date {day} is in the future (today is {today} in {schedules.schedule_zone()})")
        return day

    def _report(self, run: JobRun) -> None:
        mode = " (dry run: nothing written)" if run.dry_run else ""
        self.stdout.write(f"{run.job}: {run.status} in {run.duration_ms or 0} ms, run #{run.pk}{mode}")
        for key, value in sorted(run.counts.items()):
            self.stdout.write(f"  {key}: {value}")
        if run.result:
            self.stdout.write(json.dumps(run.result, indent=2, sort_keys=True, default=str))
        if run.error:
            stream = self.stderr if run.status == JobRun.Status.FAILED else self.stdout
            stream.write(f"{run.status}: {run.error}")
        if run.status == JobRun.Status.RUNNING:
            chunks = (run.result or {}).get("chunks", 0)
            self.stdout.write(
                f"{run.job}: run #{run.pk} handed {chunks} chunk{'s' if chunks != 1 else ''} to the workers; it "
                "stays running until the last one ends (its counts and result: the admin's job runs)"
            )

    def _list(self) -> None:
        local = ZoneInfo(schedules.schedule_zone())
        table = [("JOB", "QUEUE", "SCHEDULE", "LAST RUN", "STATUS", "NEXT RUN")]
        for name, status in job_statuses().items():
            table.append((
                name, status.queue, self._schedule_words(status),
                f"{status.last_run_at.astimezone(local):%Y-%m-%d %H:%M}" if status.last_run_at else "never",
                (status.last_status or "-") + (" (late)" if status.late else ""),
                self._next_words(status, local),
            ))
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        self.stdout.write(f"Times in {local}.")

    def _schedule_words(self, status) -> str:
        schedule = status.schedule
        if schedule is None:
            if status.after:
                return f"after {' / '.join(status.after)}"
            declared = schedules.for_job(status.job)
            if declared is not None:
                return describe_cron(declared.cron) + " (not synced: run sync_schedules)"
            return "not scheduled"
        if schedule.cron is not None:
            return describe_cron(schedule.cron)
        return schedule.words()

    def _next_words(self, status, local: ZoneInfo) -> str:
        if status.schedule is None:
            return "-"
        if not status.schedule.enabled:
            return "disabled"
        return f"{status.next_due.astimezone(local):%Y-%m-%d %H:%M}" if status.next_due else "never"


def _reason(exc: BaseException) -> str:
    return commands.one_line(exc)[:200] or type(exc).__name__


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _services_down() -> dict[str, str]:
    """The broker and Redis that do not answer now, with why; the broker only when tasks go to one."""
    down = {}
    if not app.conf.task_always_eager:
        try:
            with app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=0)  # one attempt: the run is over, nothing waits on it
        except (BrokerError, OSError) as exc:
            down["broker"] = _reason(exc)
    client = get_redis()
    if client is not None:
        try:
            client.ping()
        except RedisError as exc:
            down["redis"] = _reason(exc)
    return down


def _outage_line(down: dict[str, str], run: JobRun, definition, events) -> str:
    """One line: what is down, how the run ended, and what became of its events and follow-ups."""
    why = "; ".join(dict.fromkeys(down.values()))
    outcome = {
        JobRun.Status.SUCCESS: "the run succeeded", JobRun.Status.FAILED: "the run failed",
    }.get(run.status, f"the run was {run.status}")
    written = events.count()
    waiting = events.filter(published_at__isnull=True).count()
    if not written:
        fate = "it wrote no events"
    elif not waiting:
        fate = f"its {_plural(written, 'event')} {'was' if written == 1 else 'were'} sent"
    else:
        one = waiting == 1
        events = _plural(written, "event")
        fate = f"{waiting} of its {events}" if waiting < written else f"its {events}"
        if "broker" in down:
            fate += f" {'stays' if one else 'stay'} in the outbox and {'is' if one else 'are'} sent when the broker returns"
        else:
            fate += f" {'waits' if one else 'wait'} in the outbox for the relay"
    parts = [f"{' and '.join(down)} down ({why}): {outcome}", fate]
    if "broker" in down and run.status == JobRun.Status.SUCCESS and not run.dry_run:
        unqueued = list(definition.then)
        if (run.result or {}).get("next_chunk") == "queued":
            unqueued.append("its next chunk")
        if unqueued:
            parts.append(f"follow-up {', '.join(unqueued)} not queued")
    return "; ".join(parts)


class _Progress:
    """ctx.progress(): a tqdm bar on a terminal, a plain line at most every second otherwise."""

    def __init__(self, stdout) -> None:
        self.stdout = stdout
        self.tty = stdout.isatty()
        self.bar = None
        self._last_line = 0.0

    def __call__(self, done: int, total: int | None, label: str) -> None:
        if self.tty:
            if self.bar is None:
                self.bar = tqdm(total=total, desc=label or None, file=self.stdout._out, leave=True)
            if total is not None and self.bar.total != total:
                self.bar.total = total
            if label:
                self.bar.set_description(label, refresh=False)
            self.bar.update(done - self.bar.n)
            return
        now = time.monotonic()
        if now - self._last_line >= 1.0 or (total is not None and done >= total):
            self._last_line = now
            of = f"/{total}" if total is not None else ""
            self.stdout.write(f"{label or 'progress'}: {done}{of}")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
