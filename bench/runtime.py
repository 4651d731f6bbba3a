"""Per-run overhead of the job runtime through a real worker.

Queues N no-op job runs (`jobs.bench_noop`: lock, ledger row, alert check, result)
and N bare Celery no-op tasks (`bench.noop`: result only) on the same worker, one
process, alternating batches, and compares the time per task. Goal: <= 2x.

    python bench/runtime.py [--n 300] [--rounds 2]

DATABASE_URL (default: a scratch PostgreSQL database checkout_bench_runtime, created
and migrated here) and REDIS_URL (default redis://127.0.0.1:6379/1) as for the app.
"""
import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/checkout_bench_runtime")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/1")
os.environ["CELERY_TASK_ALWAYS_EAGER"] = "false"
os.environ["CHECKOUT_EXTRA_JOB_MODULES"] = "bench.runtime_jobs"
os.environ["DJANGO_SETTINGS_MODULE"] = "checkout.settings"
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("SECRET_KEY", "bench-" + os.urandom(32).hex())  # DEBUG off on PostgreSQL needs a key


def ensure_database() -> None:
    import psycopg2
    from urllib.parse import urlparse

    url = urlparse(os.environ["DATABASE_URL"])
    if not url.scheme.startswith("postgres"):
        return
    conn = psycopg2.connect(
        host=url.hostname, port=url.port or 5432, user=url.username, password=url.password, dbname="postgres"
    )
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [url.path.lstrip("/")])
        if cursor.fetchone() is None:
            cursor.execute(f'CREATE DATABASE "{url.path.lstrip("/")}"')
    conn.close()


def start_worker():
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "checkout", "worker", "-Q", "default", "-c", "1",
         "-n", f"bench-{os.getpid()}@%h", "--without-gossip", "--without-mingle", "-l", "WARNING"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return proc


def drain(ids: list[str], timeout: float = 600.0) -> None:
    from django_celery_results.models import TaskResult

    deadline = time.monotonic() + timeout
    while TaskResult.objects.filter(task_id__in=ids, status="SUCCESS").count() < len(ids):
        if time.monotonic() > deadline:
            raise SystemExit("the worker did not finish the batch in time")
        time.sleep(0.02)


def batch(send, n: int) -> float:
    """Seconds per task for n tasks queued at once and drained by the worker."""
    started = time.perf_counter()
    ids = [send() for _ in range(n)]
    drain(ids)
    return (time.perf_counter() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="tasks per batch")
    parser.add_argument("--rounds", type=int, default=2, help="batches of each kind, alternating")
    args = parser.parse_args()

    ensure_database()
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from checkout.celery import app
    from checkout.redis import get_redis
    from ops.runtime.dispatch import enqueue_job

    get_redis().flushdb()  # an empty broker: nothing but our tasks in the queue
    bare = app.tasks["bench.noop"]
    worker = start_worker()
    try:
        # warm-up: the worker is up, connections and imports are made
        batch(lambda: bare.apply_async().id, 20)
        batch(lambda: enqueue_job("bench_noop"), 20)
        bare_s, job_s = [], []
        for _ in range(args.rounds):
            bare_s.append(batch(lambda: bare.apply_async().id, args.n))
            job_s.append(batch(lambda: enqueue_job("bench_noop"), args.n))
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)

    bare_best, job_best = min(bare_s), min(job_s)
    print(f"bare Celery no-op task : {bare_best * 1000:7.2f} ms per task (best of {args.rounds} x {args.n})")
    print(f"no-op job via runtime  : {job_best * 1000:7.2f} ms per task (best of {args.rounds} x {args.n})")
    print(f"ratio                  : {job_best / bare_best:.2f}x (goal <= 2x)")


if __name__ == "__main__":
    main()
