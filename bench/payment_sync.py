"""Benchmark of payment_sync: pending payments reconciled per second against the fake Razorpay.

    python bench/payment_sync.py [--payments 5000] [--latency-ms 25] [--concurrency 8 16] [--rate-limit 1000]
                                 [--workers 1]

The fake gateway runs in its own process (so its threads do not share our GIL) and
answers every call after `--latency-ms`. For each concurrency C the same run measures:
the bound C ÷ latency (C calls in flight at all times, one call per payment); a bare
baseline, the same number of order-payments fetches made with the plain SDK (one
`razorpay.Client` per thread, as its docs show) on C threads and nothing else; then
payment_sync_pending itself, with the database queries it makes (on every connection)
per payment. The load average is printed with each line: the machine is shared.
The shared rate limiter runs on every call (one Redis round trip each), set by
`--rate-limit` above the highest bound so that it never makes a call wait: the
settings' default (25/s) would cap the sync at 25 payments/s whatever C is.
With `--workers W` above 1 the same pending payments are spread over W worker processes, each
running payment_sync_pending with C threads at once (their row claims keep them apart): the
bound is then C x W / latency, the baseline W processes of bare SDK fetches, and the run checks
that no payment was settled twice.
Needs PostgreSQL (the database of BENCH_DATABASE_URL is created) and Redis.
"""
import argparse
from concurrent.futures import ThreadPoolExecutor
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bench_money")
os.environ.setdefault("SECRET_KEY", "bench-" + os.urandom(32).hex())  # DEBUG off on PostgreSQL needs a key
os.environ.update(
    DATABASE_URL=DB_URL, DJANGO_SETTINGS_MODULE="checkout.settings",
    REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/4"),
    # Events are published to the real broker (no worker consumes them: the bench measures the sync).
    CELERY_BROKER_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/4"), CELERY_TASK_ALWAYS_EAGER="false",
    RAZORPAY_KEY_ID="rzp_test_bench", RAZORPAY_KEY_SECRET="bench-secret",
    RAZORPAY_TIMEOUT="10", LOG_LEVEL="WARNING",
)
MIX = (("captured", 70), ("failed", 10), ("authorized", 10), (None, 10))  # percent of payments


def gateway_status(i: int) -> str | None:
    slot = i % 100
    for status, share in MIX:
        if slot < share:
            return status
        slot -= share
    return None


def serve_fake(n: int, latency_ms: float, conn, stop) -> None:
    from ops.demo.fake_gateway import FakeRazorpay

    fake = FakeRazorpay("rzp_test_bench", "bench-secret", seed=7)
    for i in range(n):
        fake.add_order(amount=499900, order_id=f"order_B{i:013d}")
        status = gateway_status(i)
        if status:
            fake.add_payment(order_id=f"order_B{i:013d}", status=status, payment_id=f"pay_B{i:015d}")
    fake.set_faults(latency_ms=latency_ms)
    fake.start()
    conn.send(fake.base_url)
    stop.wait()
    fake.stop()


def load(n: int) -> None:
    from datetime import timedelta

    from django.db import connection
    from django.utils import timezone

    from orders.models import Internship, Order
    from payments.models import Payment

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE orders_enrollment, orders_outgoingemail, payments_paymentreport, "
                       "payments_payment, orders_order, ops_outboxevent RESTART IDENTITY CASCADE")
    internship, _ = Internship.objects.get_or_create(title="Bench internship", defaults={"price_paise": 499900})
    old = timezone.now() - timedelta(hours=2)
    orders = Order.objects.bulk_create(
        [Order(internship=internship, amount_paise=499900, created_at=old, updated_at=old) for _ in range(n)],
        batch_size=1000,
    )
    Payment.objects.bulk_create(
        [Payment(order=o, razorpay_order_id=f"order_B{i:013d}", amount_paise=499900, created_at=old, updated_at=old)
         for i, o in enumerate(orders)],
        batch_size=1000,
    )


def load_average() -> str:
    return "load " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


def bare_fetches(base_url: str, n: int, concurrency: int) -> float:
    """Seconds for n order-payments fetches with the plain SDK on `concurrency` threads."""
    started = time.perf_counter()
    _fetch_range(base_url, 0, n, concurrency)
    return time.perf_counter() - started


def _bare_worker(base_url: str, first: int, n: int, concurrency: int, go, conn) -> None:
    go.wait()
    started = time.time()
    _fetch_range(base_url, first, n, concurrency)
    conn.send((started, time.time()))


def _fetch_range(base_url: str, first: int, n: int, concurrency: int) -> None:
    """Fetch the payments of orders first … first + n - 1 with the plain SDK (one client per thread, as
    its docs show) on `concurrency` threads."""
    import razorpay

    local = threading.local()

    def fetch(i: int) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = razorpay.Client(auth=("rzp_test_bench", "bench-secret"), base_url=base_url)
        client.order.payments(f"order_B{i:013d}", {}, timeout=10)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(fetch, range(first, first + n)))


def _sync_worker(concurrency: int, go, conn) -> None:
    """One worker process: payment_sync_pending with its own connections, from the common start."""
    from django.db import connections

    from payments.services.settle import payment_sync_pending

    connections.close_all()  # never the parent's sockets
    go.wait()
    started = time.time()
    counts = payment_sync_pending(concurrency=concurrency)
    conn.send((started, time.time(), dict(counts)))
    connections.close_all()


def _together(ctx, target, args_for, workers: int) -> list:
    """Start `workers` processes of target, release them at once, return what each sent."""
    go = ctx.Event()
    pipes, procs = [], []
    for w in range(workers):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=target, args=(*args_for(w), go, child))
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    time.sleep(1.0)  # every process is up and waiting
    go.set()
    results = [pipe.recv() for pipe in pipes]
    for proc in procs:
        proc.join(timeout=60)
        if proc.exitcode != 0:
            raise SystemExit(f"a worker process exited with {proc.exitcode}")
    return results


def spread(base_url: str, payments: int, concurrency: int, workers: int, latency_ms: float) -> None:
    """The same sync spread over `workers` processes, against bare fetches spread the same way."""
    from django.db import connection, connections

    from payments.models import Payment

    ctx = mp.get_context("fork")
    bound = concurrency * workers / (latency_ms / 1000)
    share = -(-payments // workers)
    connections.close_all()
    bare_runs = _together(
        ctx, _bare_worker,
        lambda w: (base_url, w * share, max(0, min(share, payments - w * share)), concurrency), workers,
    )
    bare_s = max(end for _, end in bare_runs) - min(start for start, _ in bare_runs)
    bare = payments / bare_s
    print(f"C={concurrency:>2} x {workers} workers: bare SDK {payments} fetches = {bare:.0f}/s "
          f"({bare / bound:.0%} of bound {bound:.0f}/s); {load_average()}")
    load(payments)
    connections.close_all()
    runs = _together(ctx, _sync_worker, lambda w: (concurrency,), workers)
    elapsed = max(end for _, end, _ in runs) - min(start for start, _, _ in runs)
    seen = [counts.get("seen", 0) for _, _, counts in runs]
    total = sum(seen)
    settled = sum(counts.get("captured", 0) + counts.get("failed", 0) for _, _, counts in runs)
    rate = total / elapsed
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM payments_payment WHERE claimed_until IS NOT NULL")
        left_claimed = cursor.fetchone()[0]
    captured_rows = Payment.objects.filter(status="captured").count()
    captured = sum(counts.get("captured", 0) for _, _, counts in runs)
    print(
        f"C={concurrency:>2} x {workers} workers: payment_sync {total} payments in {elapsed:.2f} s = {rate:.0f}/s; "
        f"bound {bound:.0f}/s -> {rate / bound:.0%} of bound (goal >= 80 %), {rate / bare:.0%} of bare; "
        f"per worker {'/'.join(str(n) for n in seen)}; settled {settled}, captured {captured} "
        f"(rows captured {captured_rows}: {'nothing twice' if captured == captured_rows else 'DOUBLE COUNT'}); "
        f"claims left {left_claimed}; {load_average()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=5000)
    parser.add_argument("--latency-ms", type=float, default=25.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--rate-limit", type=float, default=1000.0,
                        help="RAZORPAY_RATE_LIMIT for the run, calls/s (keep it above the bounds)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the pending payments")
    args = parser.parse_args()
    if args.payments < 1 or args.workers < 1 or min(args.concurrency) < 1 or args.latency_ms <= 0:
        parser.error("--payments, --workers and --concurrency must be positive, --latency-ms above 0")
    highest_bound = max(args.concurrency) * args.workers / (args.latency_ms / 1000)
    if args.rate_limit < highest_bound:
        print(f"warning: --rate-limit {args.rate_limit:g}/s is below the bound {highest_bound:.0f}/s "
              "and will cap the sync")

    db = urlsplit(DB_URL)
    subprocess.run(["createdb", "-h", db.hostname or "127.0.0.1", "-p", str(db.port or 5432),
                    "-U", db.username or "postgres", db.path.lstrip("/")], capture_output=True)
    # The fake forks before Django opens any connection.
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    stop = ctx.Event()
    server = ctx.Process(target=serve_fake, args=(args.payments, args.latency_ms, child, stop), daemon=True)
    server.start()
    base_url = parent.recv()

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections
    from django.db.backends.signals import connection_created

    from payments import gateway
    from payments.services.settle import payment_sync_pending

    settings.RAZORPAY_BASE_URL = base_url
    settings.RAZORPAY_RATE_LIMIT = args.rate_limit
    call_command("migrate", verbosity=0)

    queries = 0
    counting = threading.Event()

    def count(execute, sql, params, many, context):
        nonlocal queries
        if counting.is_set():
            queries += 1
        return execute(sql, params, many, context)

    # Every connection, including any a thread of the sync opens, goes through the counter.
    for conn in connections.all():
        conn.execute_wrappers.append(count)
    connection_created.connect(lambda sender, connection, **kwargs: connection.execute_wrappers.append(count),
                               weak=False)

    # The real time of one call through our client, made one after another.
    samples = 100
    started = time.perf_counter()
    for i in range(samples):
        gateway.fetch_order_payments(f"order_B{i:013d}")
    per_call = (time.perf_counter() - started) / samples
    print(f"payments={args.payments} latency={args.latency_ms:g} ms rate limit={args.rate_limit:g}/s; "
          f"sequential call through payments.gateway: {per_call * 1000:.1f} ms; {load_average()}")

    try:
        for concurrency in args.concurrency:
            if args.workers > 1:
                spread(base_url, args.payments, concurrency, args.workers, args.latency_ms)
                continue
            bound = concurrency / (args.latency_ms / 1000)
            bare = args.payments / bare_fetches(base_url, args.payments, concurrency)
            print(f"C={concurrency:>2}: bare SDK {args.payments} fetches = {bare:.0f}/s "
                  f"({bare / bound:.0%} of bound {bound:.0f}/s); {load_average()}")
            load(args.payments)
            queries = 0
            counting.set()
            started = time.perf_counter()
            counts = payment_sync_pending(concurrency=concurrency)
            elapsed = time.perf_counter() - started
            counting.clear()
            rate = counts["seen"] / elapsed
            print(
                f"C={concurrency:>2}: payment_sync {counts['seen']} payments in {elapsed:.2f} s = {rate:.0f}/s; "
                f"bound {bound:.0f}/s -> {rate / bound:.0%} of bound, {rate / bare:.0%} of bare; "
                f"{queries / counts['seen']:.2f} queries/payment; {load_average()}; "
                f"captured={counts['captured']} failed={counts['failed']} authorized={counts['authorized']} "
                f"errors={counts['gateway_errors']}"
            )
    finally:
        stop.set()
        server.join(timeout=10)


if __name__ == "__main__":
    main()
