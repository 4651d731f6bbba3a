"""Build the daily reports of a range of local days: `backfill_analytics --from D1 --to D2 [--chunk-days N]`.

Runs daily_analytics through the job runtime (its lock and ledger). Without --chunk-days the range is
built here, a round of days at a time, each round's reports written in one transaction; progress is
drawn when the output is a terminal. With --chunk-days N the run hands chunks of N days to the workers
(any host) and the command returns once they are queued; the run stays "running" in the admin's Job runs
until the last chunk ends.
Exit 0 done (or queued for the workers), 1 failed, 2 bad arguments, 3 another run of daily_analytics
holds its lock or still has chunks open.
"""
import sys
from datetime import date, timedelta

from tqdm import tqdm

from checkout import commands
from checkout.commands import UsageError
from checkout.timezones import local_today
from ops.runtime.errors import JobError
from ops.runtime.models import JobRun
from ops.runtime.registry import get_job
from ops.runtime.runner import run_job

JOB = "daily_analytics"


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"not a date (YYYY-MM-DD): {value!r}") from None


def _chunk_days(value: str | None) -> int:
    """--chunk-days checked by the job's own declaration of chunk_days (0: build here)."""
    try:
        return get_job(JOB).params["chunk_days"].read("--chunk-days", value)
    except JobError as exc:
        raise UsageError(str(exc)) from None


class Command(commands.Command):
    help = "Build (or rebuild) the daily analytics reports of the local days FROM..TO, both included."

    def add_arguments(self, parser):
        parser.add_argument("--from", dest="first", required=True, help="first local date, YYYY-MM-DD")
        parser.add_argument("--to", dest="last", required=True, help="last local date, YYYY-MM-DD (included)")
        most = get_job(JOB).params["chunk_days"].high
        parser.add_argument(
            "--chunk-days", dest="chunk_days", metavar="N",
            help=f"build the range in chunks of N days (1 to {most:g}) that workers on any host take, and return "
                 "once they are queued; 0 (the default) builds it here, as does a range of N days or fewer",
        )
        parser.add_argument(
            "--dry-run", action="store_true",
            help="compute and print, write nothing; always here, in one process: a dry run does not fan out",
        )

    def handle(self, *args, first: str, last: str, chunk_days: str | None, dry_run: bool, **options):
        start, end = _day(first), _day(last)
        step = _chunk_days(chunk_days)
        if end < start:
            raise UsageError(f"--from {start} is after --to {end}")
        if end >= local_today():
            raise UsageError(
                f"--to {end} is not over yet; the last complete local day is {local_today() - timedelta(days=1)}"
            )
        params = {"from": start.isoformat(), "to": end.isoformat()}
        if step:
            params["chunk_days"] = step
        total = (end - start).days + 1
        with tqdm(total=total, unit="day", disable=not sys.stderr.isatty(), file=sys.stderr) as bar:
            def progress(done, _total, label):
                bar.set_postfix_str(label, refresh=False)
                bar.update(done - bar.n)

            run = run_job(JOB, trigger=JobRun.Trigger.MANUAL, dry_run=dry_run, params=params, on_progress=progress)
        if run.status == JobRun.Status.SKIPPED:
            self.stderr.write(f"skipped: {run.error}")
            sys.exit(3)
        if run.status == JobRun.Status.FAILED:
            self.stderr.write(f"{JOB} failed (run {run.pk}): {run.error}")
            sys.exit(1)
        if run.status == JobRun.Status.RUNNING:
            chunks = (run.result or {}).get("chunks", 0)
            self.stdout.write(
                f"{JOB} run {run.pk} queued {chunks} chunks of {step} days for the workers, {start} to {end}; "
                "follow it in the admin (Job runs)"
            )
            return
        verb = "computed (dry run)" if dry_run else "written"
        self.stdout.write(f"{run.counts.get('days', 0)} daily reports {verb}, {start} to {end} (run {run.pk})")
