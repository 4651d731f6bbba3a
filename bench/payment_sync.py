"""Benchmark of payment_sync: pending payments reconciled per second against the fake Razorpay.

    python bench/payment_sync.py [--payments 5000] [--latency-ms 25] [--concurrency 8 16]

The fake gateway runs in its own process (so its threads do not share our GIL) and
answers every call after `--latency-ms`. The bound for concurrency C is C calls in
flight at all times: C ÷ latency payments per second (one call per payment). The same
run measures the real per-call time of one sequential client, and counts the database
queries the sync makes per payment. Needs PostgreSQL (a database `bench_money` is
created) and Redis (the shared rate limiter, set high enough not to bind).
"""
import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bench_money")
os.environ.update(
    DATABASE_URL=DB_URL, DJANGO_SETTINGS_MODULE="checkout.settings",
    REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/4"),
    # Events are published to the real broker (no worker consumes them: the bench measures the sync).
    CELERY_BROKER_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/4"), CELERY_TASK_ALWAYS_EAGER="false",
    RAZORPAY_KEY_ID="rzp_test_bench", RAZORPAY_KEY_SECRET="bench-secret",
    RAZORPAY_RATE_LIMIT="100000", RAZORPAY_TIMEOUT="10", LOG_LEVEL="WARNING",
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
    from payments.fake_gateway import FakeRazorpay

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=5000)
    parser.add_argument("--latency-ms", type=float, default=25.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 16])
    args = parser.parse_args()

    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", "bench_money"], capture_output=True)
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
    from django.db import connection

    from payments import gateway, services

    settings.RAZORPAY_BASE_URL = base_url
    call_command("migrate", verbosity=0)

    # Baseline: the real time of one call, made one after another by a single client.
    samples = 100
    started = time.perf_counter()
    for i in range(samples):
        gateway.fetch_order_payments(f"order_B{i:013d}")
    per_call = (time.perf_counter() - started) / samples
    print(f"payments={args.payments} latency={args.latency_ms:g} ms; "
          f"measured sequential call: {per_call * 1000:.1f} ms")

    try:
        for concurrency in args.concurrency:
            load(args.payments)
            queries = 0

            def count(execute, sql, params, many, context):
                nonlocal queries
                queries += 1
                return execute(sql, params, many, context)

            with connection.execute_wrapper(count):
                started = time.perf_counter()
                counts = services.payment_sync_pending(concurrency=concurrency)
                elapsed = time.perf_counter() - started
            rate = counts["seen"] / elapsed
            bound = concurrency / (args.latency_ms / 1000)
            measured_bound = concurrency / per_call
            print(
                f"C={concurrency:>2}: {counts['seen']} payments in {elapsed:.2f} s = {rate:.0f}/s; "
                f"bound C/{args.latency_ms:g}ms = {bound:.0f}/s -> {rate / bound:.0%} "
                f"(vs measured per-call bound {measured_bound:.0f}/s: {rate / measured_bound:.0%}); "
                f"{queries / counts['seen']:.2f} queries/payment; "
                f"captured={counts['captured']} failed={counts['failed']} authorized={counts['authorized']} "
                f"errors={counts['gateway_errors']}"
            )
    finally:
        stop.set()
        server.join(timeout=10)


if __name__ == "__main__":
    main()
