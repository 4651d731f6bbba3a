"""cart_cleanup on PostgreSQL + Redis at size: the job against the bare work, and its memory.

    python bench/cart_cleanup.py [--carts 1000000] [--small 100000] [--expired 0.6]

At ten million: `nice -n 19 python bench/cart_cleanup.py --carts 10000000 --small 1000000`.
Loads a database of its own (BENCH_CARTS_DB, default checkout_bench_carts, rebuilt each run) with COPY, and one
`cart:<token>` key per cart in Redis (BENCH_REDIS_URL, default db 2, flushed), then
measures on identical data:

1. the bare work: one `DELETE … RETURNING token` of the expired carts plus pipelined
   UNLINK of their keys (psycopg2 and redis-py, nothing else), on a file copy of the loaded
   database (CREATE DATABASE … TEMPLATE), its keys put back after;
2. the job: `run_job("cart_cleanup")` in a fresh process (batches, tallies, snapshot, ledger), its
   follow-up chunks run one after another if its time budget stops it, on another file copy made
   the same way (so the data is loaded once and both sides start alike);
3. the job's peak memory (VmHWM of that process) at --carts against --small carts.

Goals: job time <= 1.5x the bare work; peak memory at --carts within 20 % of --small.
"""
import argparse
import io
import json
import os
import random
import resource
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone as dt_timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_DB = os.environ.get("BENCH_CARTS_DB", "checkout_bench_carts")
SERVER_URL = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/2")
os.environ.setdefault("SECRET_KEY", "bench-" + os.urandom(32).hex())  # DEBUG off on PostgreSQL needs a key
ENV = {
    **os.environ,
    "DATABASE_URL": f"{SERVER_URL}/{BENCH_DB}",
    "REDIS_URL": REDIS_URL,
    "DJANGO_SETTINGS_MODULE": "checkout.settings",
    # Messages go to the broker (this Redis), as in production: what subscribers do with the
    # job's events is a worker's work, not the job's.
    "CELERY_TASK_ALWAYS_EAGER": "false",
    "LOG_LEVEL": "WARNING",
}
INTERNSHIPS = 20
CHUNK = 100_000
# One expired cart in this many has an order (kept by both sides).
ORDERED_EVERY = 100

import psycopg2  # noqa: E402
import redis  # noqa: E402


def create_database() -> None:
    admin = psycopg2.connect(f"{SERVER_URL}/postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        cursor.execute(f"CREATE DATABASE {BENCH_DB}")
    admin.close()
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, env=ENV, check=True
    )


def _rows(n: int, expired_share: float, now: datetime, rng: random.Random):
    """CSV lines of carts: expired ones 2-10 days old, live ones active in the last 10 minutes."""
    for _ in range(n):
        token = uuid.UUID(int=rng.getrandbits(128), version=4)
        internship = rng.randint(1, INTERNSHIPS)
        if rng.random() < expired_share:
            created = now - timedelta(days=2 + rng.random() * 8)
            updated = created + timedelta(minutes=rng.random() * 60)
        else:
            created = now - timedelta(minutes=10 + rng.random() * 40)
            updated = now - timedelta(minutes=rng.random() * 10)
        yield f"{token},{internship},{created.isoformat()},{updated.isoformat()},active\n"


def load(n: int, expired_share: float, seed: int = 7) -> int:
    """Fill carts, orders and Redis afresh (same seed, same data); returns how many carts are expired."""
    now = datetime.now(dt_timezone.utc)
    rng = random.Random(seed)
    conn = psycopg2.connect(ENV["DATABASE_URL"])
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb(asynchronous=True)  # FLUSHDB ASYNC: a big database does not stall the shared server
    with conn, conn.cursor() as cursor:
        cursor.execute(
            "TRUNCATE carts_cart, orders_order, orders_internship, carts_cartdaytally, carts_cartsnapshot,"
            " carts_cartsnapshotline, carts_pendingcachedelete, ops_jobrun RESTART IDENTITY CASCADE"
        )
        cursor.execute(
            "INSERT INTO orders_internship (title, price_paise, currency, is_active, created_at)"
            " SELECT 'Internship ' || i, 499900, 'INR', true, now() FROM generate_series(1, %s) AS i",
            [INTERNSHIPS],
        )
        rows = _rows(n, expired_share, now, rng)
        for start in range(0, n, CHUNK):
            lines = [next(rows) for _ in range(min(CHUNK, n - start))]
            cursor.copy_expert(
                "COPY carts_cart (token, internship_id, created_at, updated_at, status) FROM STDIN WITH (FORMAT csv)",
                io.StringIO("".join(lines)),
            )
            pipe = client.pipeline(transaction=False)
            pipe.mset({f"cart:{line[:36]}": "{}" for line in lines})
            pipe.execute()
        cursor.execute(
            "INSERT INTO orders_order (cart_id, internship_id, amount_paise, currency, status, created_at, updated_at)"
            " SELECT id, internship_id, 499900, 'INR', 'pending', now(), now() FROM carts_cart"
            " WHERE updated_at < now() - interval '1 day' AND id %% %s = 0",
            [ORDERED_EVERY],
        )
        cursor.execute(
            "SELECT count(*) FROM carts_cart c WHERE c.updated_at < now() - interval '1 day'"
            " AND NOT EXISTS (SELECT 1 FROM orders_order o WHERE o.cart_id = c.id)"
        )
        expired = cursor.fetchone()[0]
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
        cursor.execute("CHECKPOINT")
    conn.close()
    return expired


def clone_database() -> str:
    """A file copy of the loaded database, for the baseline: both sides then start from the same rows
    without loading them twice. Its URL."""
    admin = psycopg2.connect(f"{SERVER_URL}/postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {BENCH_DB}_bare WITH (FORCE)")
        cursor.execute(f"CREATE DATABASE {BENCH_DB}_bare TEMPLATE {BENCH_DB} STRATEGY FILE_COPY")
    admin.close()
    return f"{SERVER_URL}/{BENCH_DB}_bare"


def drop_clone() -> None:
    admin = psycopg2.connect(f"{SERVER_URL}/postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {BENCH_DB}_bare WITH (FORCE)")
    admin.close()


def restore_keys(tokens: list) -> None:
    """Put back the cache keys the baseline removed (the job's side has all its rows still)."""
    client = redis.Redis.from_url(REDIS_URL)
    for start in range(0, len(tokens), CHUNK):
        client.mset({f"cart:{token}": "{}" for token in tokens[start:start + CHUNK]})


def bare(expected: int, url: str) -> tuple[float, list]:
    """The floor: one DELETE … RETURNING token of the same rows, then pipelined UNLINK of their keys."""
    conn = psycopg2.connect(url)
    client = redis.Redis.from_url(REDIS_URL)
    started = time.perf_counter()
    with conn, conn.cursor() as cursor:
        cursor.execute(
            "DELETE FROM carts_cart c WHERE c.status <> 'converted'"
            " AND c.created_at < now() - interval '1 day' AND c.updated_at < now() - interval '1 day'"
            " AND NOT EXISTS (SELECT 1 FROM orders_order o WHERE o.cart_id = c.id) RETURNING token"
        )
        tokens = [token for (token,) in cursor.fetchall()]
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(tokens), 1000):
        pipe.unlink(*[f"cart:{token}" for token in tokens[start:start + 1000]])
    pipe.execute()
    elapsed = time.perf_counter() - started
    conn.close()
    assert len(tokens) == expected, (len(tokens), expected)
    return elapsed, tokens


def run_job_here() -> None:
    """Child process: run the job once and print time, what it did and the peak memory."""
    import django

    django.setup()
    from ops.runtime.runner import run_job

    # The peak is the whole process's, start-up included; the resident set sampled
    # after every batch shows what the job itself adds on top.
    rss_start = _rss_kb()
    sampled = [rss_start]
    started = time.perf_counter()
    # A run stops at its time budget and leaves the rest to a follow-up chunk; the bench runs the
    # chunks here, one after another, as a worker would take them.
    chunks, deleted = 0, 0
    while True:
        run = run_job("cart_cleanup", enqueue_followups=False, on_progress=lambda *_: sampled.append(_rss_kb()))
        chunks += 1
        deleted += (run.counts or {}).get("deleted", 0)
        if run.status != "success" or (run.result or {}).get("finished") or chunks >= 48:
            break
    elapsed = time.perf_counter() - started
    print(json.dumps({
        "seconds": elapsed, "status": run.status, "error": run.error, "counts": {**run.counts, "deleted": deleted},
        "finished": run.result.get("finished"), "chunks": chunks,
        "rss_peak_kb": _peak_kb(),
        "rss_growth_kb": max(sampled) - rss_start,
    }))


def _peak_kb() -> int:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux keeps that across execve, so a
    child started by a big parent would report the parent's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _rss_kb() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() // 1024


def job(expected: int, url: str | None = None) -> dict:
    env = {**ENV, "DATABASE_URL": url} if url else ENV
    out = subprocess.run(
        [sys.executable, __file__, "--run-job"], cwd=ROOT, env=env, check=True, capture_output=True, text=True,
    ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert report["status"] == "success", report["error"]
    assert report["finished"], "the job left work for a follow-up chunk"
    assert report["counts"]["deleted"] == expected, (report["counts"], expected)
    # Only cart keys: the runtime keeps its own keys (metrics) in the same database.
    report["keys_left"] = sum(1 for _ in redis.Redis.from_url(REDIS_URL).scan_iter("cart:*", count=10_000))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--carts", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--expired", type=float, default=0.6, help="share of expired carts (>= 0.5)")
    parser.add_argument("--run-job", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_job:
        return run_job_here()
    if not 0.5 <= args.expired < 1 or args.carts < 1 or args.small < 1:
        parser.error("--expired must be in [0.5, 1) and the sizes positive")

    create_database()
    print(f"{args.carts:,} carts, {args.expired:.0%} expired, 1 in {ORDERED_EVERY} of those with an order")

    started = time.perf_counter()
    expired = load(args.carts, args.expired)
    print(f"loaded (COPY + pipelined MSET + VACUUM ANALYZE) in {time.perf_counter() - started:.1f} s")
    bare_s, tokens = bare(expired, clone_database())
    drop_clone()
    print(f"bare DELETE … RETURNING + UNLINK: {expired:,} carts in {bare_s:.2f} s ({expired / bare_s:,.0f}/s)"
          " (on a file copy of the loaded database)")
    restore_keys(tokens)
    del tokens

    big = job(expired, clone_database())
    drop_clone()
    live = args.carts - expired
    assert big["keys_left"] == live, (big["keys_left"], live)
    print(
        f"job cart_cleanup:                 {expired:,} carts in {big['seconds']:.2f} s"
        f" ({expired / big['seconds']:,.0f}/s) in {big['chunks']} chunk(s), {big['keys_left']:,} live keys kept"
    )
    ratio = big["seconds"] / bare_s
    print(f"time ratio job / bare: {ratio:.2f}x (goal <= 1.5x) {'OK' if ratio <= 1.5 else 'MISSED'}")

    small_expired = load(args.small, args.expired)
    small = job(small_expired)
    growth = big["rss_peak_kb"] / small["rss_peak_kb"] - 1
    print(
        f"peak memory of the job process: {big['rss_peak_kb'] / 1024:.1f} MiB at {args.carts:,} carts,"
        f" {small['rss_peak_kb'] / 1024:.1f} MiB at {args.small:,};"
        f" resident set added during the batches: {big['rss_growth_kb'] / 1024:.1f} / {small['rss_growth_kb'] / 1024:.1f} MiB"
    )
    print(f"memory growth: {growth:+.1%} (goal within 20 %) {'OK' if abs(growth) <= 0.2 else 'MISSED'}")


if __name__ == "__main__":
    main()
