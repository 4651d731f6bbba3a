"""db_backup against bare pg_dump with the same options on the same database.

    python bench/backup.py [--rows 1000000] [--rounds 2]

Needs PostgreSQL on 127.0.0.1. A scratch database is created, migrated and
filled with --rows carts (one INSERT ... SELECT), then each round runs the bare
`pg_dump --format=custom` command line that db_backup uses, and the db_backup
job itself (ledger row, lock, snapshot export, row counts, fsync, SHA-256,
`pg_restore --list` verification, retention; no restore check). Goal: db_backup
at most 1.1x the bare dump.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB_NAME = "checkout_bench_backup"
os.environ.update(
    DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
    DJANGO_SETTINGS_MODULE="checkout.settings",
    LOG_LEVEL="WARNING",
    BACKUP_RESTORE_CHECK="never",
)
os.environ.pop("REDIS_URL", None)
os.environ.setdefault("SECRET_KEY", "bench-" + os.urandom(32).hex())  # DEBUG off on PostgreSQL needs a key


def psql(sql: str, database: str = "postgres") -> None:
    subprocess.run(["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-c", sql], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    psql(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    psql(f"CREATE DATABASE {DB_NAME}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    os.environ["BACKUP_DIR"] = str(workdir / "backups")
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, check=True)
        started = time.perf_counter()
        psql(
            "INSERT INTO orders_internship (title, price_paise, currency, is_active, created_at)"
            " VALUES ('Bench internship', 499900, 'INR', true, now());"
            "INSERT INTO carts_cart (token, internship_id, created_at, updated_at, status)"
            " SELECT gen_random_uuid(), (SELECT min(id) FROM orders_internship),"
            "        now() - (n || ' seconds')::interval, now(), 'active'"
            f"  FROM generate_series(1, {args.rows}) AS n;",
            DB_NAME,
        )
        psql("VACUUM ANALYZE", DB_NAME)
        print(f"seeded {args.rows} carts in {time.perf_counter() - started:.1f}s")

        import django

        django.setup()
        from ops.maintenance.backups import pg_client_env, pg_dump_command
        from ops.maintenance.models import Backup
        from ops.runtime.runner import run_job

        bare_times, job_times = [], []
        for round_no in range(args.rounds):
            target = workdir / f"bare-{round_no}.dump"
            started = time.perf_counter()
            subprocess.run(pg_dump_command(target), env=pg_client_env(), check=True)
            bare_times.append(time.perf_counter() - started)
            bare_size = target.stat().st_size
            target.unlink()

            started = time.perf_counter()
            run = run_job("db_backup", enqueue_followups=False)
            job_times.append(time.perf_counter() - started)
            if run.status != "success":
                raise SystemExit(f"db_backup failed: {run.error}")
            backup = Backup.objects.get(pk=run.result["backup_id"])
            print(f"round {round_no + 1}: bare pg_dump {bare_times[-1]:.2f}s ({bare_size} bytes), "
                  f"db_backup {job_times[-1]:.2f}s ({backup.size_bytes} bytes, {backup.toc_entries} TOC entries)")
        bare, job = statistics.median(bare_times), statistics.median(job_times)
        print(f"median: bare pg_dump {bare:.2f}s, db_backup {job:.2f}s, "
              f"ratio {job / bare:.2f}x (goal <= 1.10x), {args.rows} carts")
    finally:
        from django.db import connections

        connections.close_all()
        psql(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


if __name__ == "__main__":
    main()
