"""`manage.py demo --no-serve` from nothing: a fresh SQLite file, no PostgreSQL, no Redis, no broker."""
import os
import sqlite3
import subprocess
import sys

import pytest

from ops.demo.management.commands.demo import job_order
from ops.runtime.registry import all_jobs
from tests.conftest import ROOT


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


def test_jobs_run_the_sync_before_the_cleanups_and_database_jobs_last():
    names = list(all_jobs()) + ["some_new_job"]

    order = job_order(names)

    assert sorted(order) == sorted(names)
    # payments settle before order_cleanup expires their orders; reports see the result
    assert order.index("payment_sync") < order.index("order_cleanup") < order.index("daily_analytics")
    assert order.index("some_new_job") < order.index("db_backup") < order.index("db_optimize")
    assert order[-1] == "db_monitor"
