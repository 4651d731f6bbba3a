"""`manage.py demo`: a working checkout on this machine, from an empty database to the admin.

Migrates, syncs the schedules, seeds a small data set, starts the local fake Razorpay,
runs every job once, prints what each did, and serves the admin. Needs neither
PostgreSQL nor Redis: on the default settings it runs on SQLite with tasks in-process.

It runs only on the demo's own databases (ops/demo/data/database.py): the project's
SQLite file, or a database that was empty when the demo first ran there. Anything else
is refused with one line, before anything is written; an existing user is never changed.
"""
import logging
import secrets
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.management import call_command, get_commands
from django.core.management.base import CommandError
from django.db import DatabaseError

from carts.models import Cart
from checkout import commands
from checkout.commands import UsageError
from ops.demo.data import (
    DEMO_ADMIN_USERNAME,
    NotADemoDatabase,
    SeedPlan,
    demo_admin_ensure,
    demo_data_seed,
    demo_database_claim,
    fake_gateway_populate,
)
from ops.demo.mail_sink import MailSink
from ops.runtime.models import JobRun
from ops.runtime.registry import all_jobs
from checkout.timezones import local_today
from ops.runtime.runner import run_job
from orders.models import Order

DEMO_PLAN = SeedPlan(carts=2000, orders=400, seed=42, days=60)
# The sync first (what the gateway says settles payments before orders are expired),
# then the cleanups, health checks, the reports, and the database jobs last, backup
# before optimize.
JOB_ORDER = (
    "payment_sync", "cart_cleanup", "order_cleanup", "webhook_health", "payment_gateway_health",
    "email_service_health", "cache_health", "daily_analytics", "weekly_analytics",
    "db_cleanup", "db_backup", "db_optimize", "db_monitor",
)
FIRST_DB_JOB = "db_cleanup"


def job_order(names) -> list[str]:
    """Registered jobs in demo order; jobs this list does not know run just before the database jobs."""
    known = [n for n in JOB_ORDER if n in names]
    unknown = sorted(set(names) - set(JOB_ORDER))
    cut = known.index(FIRST_DB_JOB) if FIRST_DB_JOB in known else len(known)
    return known[:cut] + unknown + known[cut:]


class Command(commands.Command):
    help = (
        "Migrate, sync schedules, seed demo data, run every job once with the local fake Razorpay, "
        "print a summary, create a demo admin user if there is none and serve the admin on 127.0.0.1. "
        "Runs only on the demo's own database: the default SQLite file, or a database that is empty "
        "the first time (it is then marked as the demo's)."
    )
    requires_migrations_checks = False

    def add_arguments(self, parser):
        parser.add_argument("--no-serve", action="store_true", help="stop after the summary")
        parser.add_argument("--port", type=int, default=8000, help="port of the admin (default 8000)")

    def handle(self, *args, no_serve: bool, port: int, **options):
        if not 1 <= port <= 65535:
            raise UsageError(f"--port must be between 1 and 65535, got {port}")
        try:
            demo_database_claim()
        except NotADemoDatabase as exc:
            raise UsageError(
                f"refusing to run: {exc}; the demo runs on its own SQLite file (leave DATABASE_URL unset) "
                "or on a new, empty database"
            ) from None
        except DatabaseError as exc:
            raise CommandError(f"cannot use the database: {commands.one_line(exc)}") from None
        if options["verbosity"] < 2:
            # The summary says what each job did; the per-task log lines are for -v 2.
            logging.getLogger().setLevel(logging.WARNING)
        self._step("migrate")
        call_command("migrate", interactive=False, verbosity=0)
        if "sync_schedules" in get_commands():
            self._step("sync schedules")
            call_command("sync_schedules", stdout=self.stdout, stderr=self.stderr)
        self._seed()
        sink = self._route_mail()
        fake = self._start_fake_gateway()
        try:
            rows = self._run_jobs()
            self._summary(rows)
            password = demo_admin_ensure()
            if password is None:
                self.stdout.write(
                    f"\nDemo admin: user {DEMO_ADMIN_USERNAME!r} already exists and is left as it is "
                    f"(`manage.py changepassword {DEMO_ADMIN_USERNAME}` sets a new password)"
                )
            else:
                self.stdout.write(
                    f"\nDemo admin (demo only, never in production): user {DEMO_ADMIN_USERNAME!r}, "
                    f"password {password!r}"
                )
            if no_serve:
                return
            self.stdout.write(f"Admin: http://127.0.0.1:{port}/admin/  (Ctrl-C stops)\n")
            # The admin's static files as in production: collected, then served by WhiteNoise.
            call_command("collectstatic", interactive=False, verbosity=0)
            call_command("runserver", f"127.0.0.1:{port}", use_reloader=False, skip_checks=True)
        finally:
            if fake is not None:
                fake.stop()
            if sink is not None:
                sink.stop()

    def _step(self, label: str) -> None:
        self.stdout.write(self.style.MIGRATE_HEADING(f"== {label}"))

    def _seed(self) -> None:
        if Cart.objects.exists() or Order.objects.exists():
            self._step("data already there: not seeding")
            return
        plan = DEMO_PLAN
        self._step(f"seed {plan.carts:,} carts and {plan.orders:,} orders over {plan.days} days")
        result = demo_data_seed(plan=plan)
        self.stdout.write(
            "  " + ", ".join(f"{n:,} {name}" for name, n in sorted(result.counts.items()))
            + f" in {result.seconds:.1f} s"
            + (f"; {result.cache_entries:,} live carts cached" if result.cache_entries else "")
        )

    def _route_mail(self) -> MailSink | None:
        # A laptop has no SMTP server: unless mail is configured, the demo serves its own, which keeps
        # every message as a file, so the jobs send real SMTP and email_service_health finds it up.
        if not (settings.EMAIL_BACKEND.endswith("smtp.EmailBackend") and settings.EMAIL_HOST == "localhost"):
            return None
        sink = MailSink(Path(settings.BASE_DIR) / "demo-mail").start()
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", sink.port
        settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
        settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
        self.stdout.write(f"  emails go to a local SMTP server on port {sink.port}, kept in {sink.directory}/")
        return sink

    def _start_fake_gateway(self):
        try:
            from ops.demo.fake_gateway import FakeRazorpay
        except ImportError:
            self.stdout.write("  no local fake gateway: payment jobs talk to the configured Razorpay")
            return None
        self._step("start the local fake Razorpay")
        key_id, key_secret = "rzp_test_demo", secrets.token_hex(16)
        fake = FakeRazorpay(key_id, key_secret, seed=DEMO_PLAN.seed).start()
        counts = fake_gateway_populate(fake, seed=DEMO_PLAN.seed)
        # Read at call time by the gateway client, so this process's jobs talk to the fake.
        settings.RAZORPAY_BASE_URL = fake.base_url
        settings.RAZORPAY_KEY_ID = key_id
        settings.RAZORPAY_KEY_SECRET = key_secret
        self.stdout.write(
            f"  {fake.base_url}: {counts['orders']:,} orders; payments "
            + ", ".join(f"{n:,} {k}" for k, n in sorted(counts.items()) if k != "orders")
        )
        return fake

    def _run_jobs(self) -> list[tuple[str, JobRun, str]]:
        jobs = all_jobs()
        self._step(f"run {len(jobs)} jobs")
        rows = []
        for name in job_order(jobs):
            note = ""
            params = None
            if name == "daily_analytics":
                # One run builds the reports of every seeded day, so the charts have a history.
                first = local_today() - timedelta(days=DEMO_PLAN.days - 1)
                params = {"from": first.isoformat(), "to": (local_today() - timedelta(days=1)).isoformat()}
                note = f"days {params['from']}..{params['to']}"
            elif name == "weekly_analytics":
                weeks = self._backfill_weeks(name)
                note = f"+{weeks} earlier weeks" if weeks else ""
            started = time.monotonic()
            # Follow-ups (db_backup -> db_optimize...) run in their own turn here, not twice.
            run = run_job(name, trigger=JobRun.Trigger.MANUAL, params=params, enqueue_followups=False)
            self.stdout.write(f"  {name:<24} {run.status:<8} {time.monotonic() - started:6.1f} s")
            rows.append((name, run, note))
        return rows

    def _backfill_weeks(self, name: str) -> int:
        """Weekly reports of the seeded weeks before the last one, as catch-up runs."""
        today = local_today()
        first_sunday = today - timedelta(days=DEMO_PLAN.days - 7)
        first_sunday += timedelta(days=(6 - first_sunday.weekday()) % 7)
        done = 0
        sunday = first_sunday
        while sunday < today - timedelta(days=6):
            run_job(name, trigger=JobRun.Trigger.CATCH_UP, day=sunday, enqueue_followups=False)
            done += 1
            sunday += timedelta(days=7)
        return done

    def _summary(self, rows) -> None:
        self._step("summary")
        header = f"{'job':<24} {'status':<8} {'duration':>9}  counts"
        self.stdout.write(header)
        self.stdout.write("-" * len(header))
        for name, run, note in rows:
            counts = " ".join(f"{k}={v}" for k, v in sorted((run.counts or {}).items()))
            duration = f"{(run.duration_ms or 0) / 1000:.2f} s"
            detail = " ".join(part for part in (counts, f"({note})" if note else "") if part)
            style = {"success": self.style.SUCCESS, "failed": self.style.ERROR}.get(run.status, self.style.WARNING)
            self.stdout.write(f"{name:<24} {style(f'{run.status:<8}')} {duration:>9}  {detail}")
            if run.error:
                self.stdout.write(f"{'':<24} {run.error.splitlines()[0][:200]}")
        by_status = Counter(run.status for _, run, _ in rows)
        self.stdout.write(
            f"{len(rows)} jobs: " + ", ".join(f"{n} {status}" for status, n in sorted(by_status.items()))
            + (" (the admin's job runs have the tracebacks)" if by_status[JobRun.Status.FAILED] else "")
        )
