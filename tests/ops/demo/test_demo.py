"""`manage.py demo --no-serve` from nothing: a fresh SQLite file, no PostgreSQL, no Redis, no broker;
and only there: a database the demo did not make is refused before anything is written, and an
existing user is never changed."""
import os
import sqlite3
import subprocess
import sys

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from ops.demo.data import DEMO_ADMIN_USERNAME, NotADemoDatabase, demo_admin_ensure, demo_database_claim
from ops.demo.data.database import MARKER_TABLE, _mark
from ops.demo.management.commands.demo import job_order
from ops.runtime.models import JobRun
from ops.runtime.registry import all_jobs
from orders.models import Order
from tests.conftest import ROOT
from tests.factories import OrderFactory, PaymentFactory


def _project_jobs() -> set[str]:
    # Other test modules register test-only jobs in this process; the demo has none.
    return {name for name, job in all_jobs().items() if not job.func.__module__.startswith("tests.")}


@pytest.mark.slow
def test_demo_runs_end_to_end_on_a_fresh_sqlite_file(tmp_path):
    # given an environment with nothing configured but a database file of its own
    env = {k: v for k, v in os.environ.items()
           if k not in {"REDIS_URL", "CELERY_BROKER_URL", "CELERY_TASK_ALWAYS_EAGER", "DATABASE_URL"}
           and not k.startswith("CHECKOUT_TEST_")}
    database = tmp_path / "demo.sqlite3"
    env.update(
        DATABASE_URL=f"sqlite:///{database}", DJANGO_SETTINGS_MODULE="checkout.settings",
        BACKUP_DIR=str(tmp_path / "backups"), PYTHONPATH=str(ROOT),
    )

    # when
    done = subprocess.run(
        [sys.executable, "manage.py", "demo", "--no-serve"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )

    # then it exits 0 and prints a summary line for every registered job
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = done.stdout.split("== summary", 1)[1]
    lines = {line.split()[0]: line for line in summary.splitlines()[3:] if line[:1].strip()}
    # every job succeeds, but the Redis check, which has no Redis to check here
    expected = {name: "success" for name in _project_jobs()} | {"cache_health": "skipped"}
    got = {name: lines[name].split()[1] if name in lines else "missing" for name in expected}
    assert got == expected, summary
    assert "user 'admin', password '" in done.stdout
    # and the data, the ledger and the admin user are in the file
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT COUNT(*) FROM orders_order").fetchone()[0] == 400
        assert db.execute("SELECT COUNT(*) FROM carts_cart WHERE status = 'converted'").fetchone()[0] > 0
        ran = {row[0] for row in db.execute("SELECT DISTINCT job FROM ops_jobrun")}
        assert ran == _project_jobs()
        assert db.execute("SELECT is_superuser FROM auth_user WHERE username = 'admin'").fetchone() == (1,)
        assert db.execute("SELECT COUNT(*) FROM analytics_dailyreport").fetchone()[0] >= 50
        # and the file is marked as the demo's, so seed_demo --reset may empty it
        assert db.execute(f"SELECT COUNT(*) FROM {MARKER_TABLE}").fetchone()[0] == 1
        # and the demo's own SMTP server was up for the email check (a laptop has none)
        assert db.execute(
            "SELECT status FROM maintenance_healthcheck WHERE service = 'email_service'"
        ).fetchall() == [("ok",)]
    assert "emails go to a local SMTP server on port" in done.stdout


def test_jobs_run_the_sync_before_the_cleanups_and_database_jobs_last():
    names = list(all_jobs()) + ["some_new_job"]

    order = job_order(names)

    assert sorted(order) == sorted(names)
    # payments settle before order_cleanup expires their orders; reports see the result
    assert order.index("payment_sync") < order.index("order_cleanup") < order.index("daily_analytics")
    assert order.index("some_new_job") < order.index("db_backup") < order.index("db_optimize")
    assert order[-1] == "db_monitor"


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_demo_refuses_a_postgresql_database_it_did_not_make_and_changes_nothing(process_env):
    # given a database with real rows and a user named like the demo's admin
    user = get_user_model().objects.create_user(DEMO_ADMIN_USERNAME, password="the-owners-password")
    PaymentFactory.create_batch(3)
    OrderFactory.create_batch(2)
    tables_before = connection.introspection.table_names()

    # when
    done = subprocess.run(
        [sys.executable, "manage.py", "demo", "--no-serve"],
        cwd=ROOT, env=process_env, capture_output=True, text=True, timeout=120,
    )

    # then one line says why, and nothing changed: no migration, no seed, no run, no marker, the user as it was
    print(done.stderr.strip())
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"demo: error: refusing to run: database {connection.settings_dict['NAME']!r} has {len(tables_before)} "
        "tables and no demo marker: the demo did not make it; the demo runs on its own SQLite file "
        "(leave DATABASE_URL unset) or on a new, empty database (see --help)"
    ]
    assert connection.introspection.table_names() == tables_before
    assert Order.objects.count() == 5 and not Order.objects.filter(status="paid").exists()
    assert not JobRun.objects.exists()
    user.refresh_from_db()
    assert user.check_password("the-owners-password") and not user.is_superuser and not user.is_staff


@pytest.mark.django_db
def test_a_database_with_tables_is_the_demos_only_with_its_marker():
    # given the test database: tables, no marker
    with pytest.raises(NotADemoDatabase, match="no demo marker"):
        demo_database_claim()
    assert MARKER_TABLE not in connection.introspection.table_names()

    # when the demo had marked it (the test's transaction takes the table away again)
    _mark()

    # then it is the demo's
    demo_database_claim()


@pytest.mark.django_db
def test_the_demo_admin_is_made_once_and_an_existing_user_is_never_changed():
    # given a user of that name who is not an admin
    users = get_user_model().objects
    user = users.create_user(DEMO_ADMIN_USERNAME, password="the-owners-password")

    # then the demo leaves it as it is
    assert demo_admin_ensure() is None
    user.refresh_from_db()
    assert user.check_password("the-owners-password") and not user.is_superuser

    # and with none, it makes one, once
    user.delete()
    password = demo_admin_ensure()
    made = users.get(username=DEMO_ADMIN_USERNAME)
    assert made.is_superuser and made.check_password(password)
    assert demo_admin_ensure() is None
