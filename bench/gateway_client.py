"""Throughput of payments.gateway against the fake Razorpay at a fixed latency.

    python bench/gateway_client.py [--calls 2000] [--concurrency 16] [--latency-ms 25]

C threads (one SDK client each) fetch payments from the fake answering after L ms. The bound
is C / L calls per second; the baseline in the same run is a bare requests.Session per thread
(no SDK, no wrapper), so the ratio shows what the SDK, the error translation and the rate
limiter cost. The shared Redis limiter is measured at a rate far above the load (overhead only).
"""
import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "checkout.settings")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/3")

import django  # noqa: E402

django.setup()

import requests  # noqa: E402
from django.conf import settings  # noqa: E402

from payments import gateway  # noqa: E402
from ops.demo.fake_gateway import FakeRazorpay  # noqa: E402


def run_threads(concurrency: int, calls: int, work) -> float:
    """Calls per second of `work(i)` spread over `concurrency` threads."""
    per_thread = calls // concurrency
    barrier = threading.Barrier(concurrency + 1)
    errors = []

    def loop():
        barrier.wait()
        try:
            for i in range(per_thread):
                work(i)
        except Exception as exc:  # reported below; a bench with errors means nothing
            errors.append(exc)

    threads = [threading.Thread(target=loop) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise SystemExit(f"{len(errors)} calls failed, first: {errors[0]!r}")
    return per_thread * concurrency / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=25.0)
    args = parser.parse_args()

    fake = FakeRazorpay("rzp_test_bench", "bench-secret", seed=1).start()
    ids = [fake.add_payment(amount=49900)["id"] for _ in range(100)]
    fake.set_faults(latency_ms=args.latency_ms)
    settings.RAZORPAY_BASE_URL = fake.base_url
    settings.RAZORPAY_KEY_ID, settings.RAZORPAY_KEY_SECRET = "rzp_test_bench", "bench-secret"
    settings.RAZORPAY_TIMEOUT = 5.0
    bound = args.concurrency / (args.latency_ms / 1000)

    local = threading.local()

    def bare(i):
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        response = session.get(f"{fake.base_url}/v1/payments/{ids[i % len(ids)]}",
                               auth=("rzp_test_bench", "bench-secret"), timeout=5)
        response.raise_for_status()
        response.json()

    def through_gateway(i):
        gateway.fetch_payment(ids[i % len(ids)])

    try:
        baseline = run_threads(args.concurrency, args.calls, bare)
        settings.RAZORPAY_RATE_LIMIT = 0
        unlimited = run_threads(args.concurrency, args.calls, through_gateway)
        settings.RAZORPAY_RATE_LIMIT = 1_000_000
        limited = run_threads(args.concurrency, args.calls, through_gateway)
    finally:
        fake.stop()

    print(f"{args.calls} fetches, concurrency {args.concurrency}, {args.latency_ms:g} ms per call: "
          f"bound {bound:.0f}/s")
    print(f"  bare requests.Session      {baseline:8.1f}/s  {baseline / bound:6.1%} of bound")
    print(f"  gateway, no rate limit     {unlimited:8.1f}/s  {unlimited / bound:6.1%} of bound  "
          f"ratio to bare {unlimited / baseline:.2f}")
    print(f"  gateway, Redis rate limit  {limited:8.1f}/s  {limited / bound:6.1%} of bound  "
          f"ratio to bare {limited / baseline:.2f}")


if __name__ == "__main__":
    main()
