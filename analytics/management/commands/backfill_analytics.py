"""Build the daily reports of a range of local days: `backfill_analytics --from D1 --to D2`.

Runs daily_analytics through the job runtime (its lock and ledger), one
transaction per day; progress is drawn when the output is a terminal.
Exit 0 done, 1 failed, 2 bad arguments, 3 another run of daily_analytics holds its lock.
"""
import sys
from datetime import date, timedelta

from tqdm import tqdm

from checkout import commands
from checkout.commands import UsageError
from ops.runtime.models import JobRun
from checkout.timezones import local_today
from ops.runtime.runner import run_job

JOB = "daily_analytics"


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"not a date (YYYY-MM-DD): {value!r}") from None


class Command(commands.Command):
    help = "Build (or rebuild) the daily analytics reports of the local days FROM..TO, both included."

    def add_arguments(self, parser):
        parser.add_argument("--from", dest="first", required=True, help="first local date, YYYY-MM-DD")
        parser.add_argument("--to", dest="last", required=True, help="last local date, YYYY-MM-DD (included)")
        parser.add_argument("--dry-run", action="store_true", help="compute and print, write nothing")

    def handle(self, *args, first: str, last: str, dry_run: bool, **options):
        start, end = _day(first), _day(last)
        if end < start:
            raise UsageError(f"--from {start} is after --to {end}")
        if end >= local_today():
            raise UsageError(
                f"--to {end} is not over yet; the last complete local day is {local_today() - timedelta(days=1)}"
            )
        total = (end - start).days + 1
        with tqdm(total=total, unit="day", disable=not sys.stderr.isatty(), file=sys.stderr) as bar:
            def progress(done, _total, label):
                bar.set_postfix_str(label, refresh=False)
                bar.update(done - bar.n)

            run = run_job(
                JOB, trigger=JobRun.Trigger.MANUAL, dry_run=dry_run,
                params={"from": start.isoformat(), "to": end.isoformat()}, on_progress=progress,
            )
        if run.status == JobRun.Status.SKIPPED:
            self.stderr.write(f"skipped: {run.error}")
            sys.exit(3)
        if run.status == JobRun.Status.FAILED:
            self.stderr.write(f"{JOB} failed (run {run.pk}): {run.error}")
            sys.exit(1)
        verb = "computed (dry run)" if dry_run else "written"
        self.stdout.write(f"{run.counts.get('days', 0)} daily reports {verb}, {start} to {end} (run {run.pk})")
