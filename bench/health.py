"""/health/ under gunicorn at 50 concurrent clients, against the trivial /health/live/ on the same server.

    python bench/health.py [--seconds 10] [--workers 4] [--runs 2000]

Needs PostgreSQL and Redis on 127.0.0.1 and `wrk` (apt-get install wrk). A
scratch database is created, migrated, given a realistic run ledger (--runs
rows) and stored health results, then dropped. Both endpoints are measured
alternately, twice each, in the same run. Goals: /health/ at least 70 % of the
trivial view's throughput, p99 at most 50 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB_NAME = "checkout_bench_health"
PG = "postgres://postgres@127.0.0.1:5432/"
REDIS = "redis://127.0.0.1:6379/6"
os.environ.setdefault("SECRET_KEY", "bench-" + os.urandom(32).hex())  # DEBUG off on PostgreSQL needs a key
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def psql(sql: str) -> None:
    subprocess.run(["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c", sql], check=True)


def manage(env: dict, *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)


def seed(env: dict, runs: int) -> None:
    code = f"""
import django; django.setup()
from datetime import timedelta
from django.utils import timezone
from ops.runtime.models import JobRun
from ops.runtime.registry import all_jobs
from ops.maintenance.services import health_record
now = timezone.now(); jobs = list(all_jobs())
JobRun.objects.bulk_create([
    JobRun(job=jobs[i % len(jobs)], status="success" if i % 10 else "failed", duration_ms=1000,
           started_at=now - timedelta(minutes=15 * i), finished_at=now - timedelta(minutes=15 * i - 1))
    for i in range({runs})
], batch_size=5000)
for service in ("payment_gateway", "email_service", "webhooks", "cache"):
    health_record(service=service, status="ok", latency_ms=10.0)
"""
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)


def wait_until_serving(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"gunicorn did not answer at {url}")


def wrk(url: str, seconds: int, clients: int) -> dict:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{clients}", f"-d{seconds}s", "--latency", "--timeout", "5s", url],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "p99_ms": float(p99.group(1)) * UNITS[p99.group(2)],
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--worker-class", default="sync", help="gunicorn worker class (sync, gthread)")
    parser.add_argument("--threads", type=int, default=1, help="threads per gunicorn worker (gthread)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--runs", type=int, default=20000, help="run-ledger rows to seed")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")

    psql(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    psql(f"CREATE DATABASE {DB_NAME}")
    env = dict(os.environ, DATABASE_URL=PG + DB_NAME, REDIS_URL=REDIS, DJANGO_SETTINGS_MODULE="checkout.settings",
               DEBUG="false", ALLOWED_HOSTS="127.0.0.1", LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT))
    server = None
    try:
        manage(env, "migrate")
        seed(env, args.runs)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "checkout.wsgi", "-w", str(args.workers), "-b", f"127.0.0.1:{port}",
             "-k", args.worker_class, "--threads", str(args.threads), "--log-level", "warning"],
            cwd=ROOT, env=env, start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        wait_until_serving(base + "/health/live/")
        body = json.loads(urllib.request.urlopen(base + "/health/", timeout=5).read())
        print(f"/health/ answers status={body['status']} problems={body.get('problems', [])}")
        for path in ("/health/live/", "/health/"):
            wrk(base + path, 2, args.clients)  # warm every worker's connections and caches
        results: dict[str, list[dict]] = {"/health/live/": [], "/health/": []}
        for _ in range(2):
            for path in results:
                results[path].append(wrk(base + path, args.seconds, args.clients))
    finally:
        if server is not None:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
        psql(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")

    summary = {}
    for path, runs in results.items():
        summary[path] = {
            "rps": sum(r["rps"] for r in runs) / len(runs),
            "p99_ms": max(r["p99_ms"] for r in runs),
            "non_2xx": sum(r["non_2xx"] for r in runs),
        }
        print(f"{path:<15} {summary[path]['rps']:>9.0f} req/s  p99 {summary[path]['p99_ms']:6.1f} ms  "
              f"non-2xx {summary[path]['non_2xx']}  {' '.join(r['socket_errors'] for r in runs)}")
    ratio = summary["/health/"]["rps"] / summary["/health/live/"]["rps"]
    p99 = summary["/health/"]["p99_ms"]
    print(f"throughput ratio /health/ : trivial = {ratio:.2f} (goal >= 0.70)  "
          f"/health/ p99 = {p99:.1f} ms (goal <= 50 ms)  "
          f"{args.clients} clients, {args.workers} gunicorn {args.worker_class} workers x {args.threads} threads, "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
