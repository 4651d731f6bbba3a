"""seed_demo loaders: COPY against bulk_create (the baseline), same plan, same PostgreSQL, one run each.

    DATABASE_URL=postgres://... python bench/seed_demo.py [--carts 50000] [--orders 10000]

Each load runs in a transaction that is rolled back, so the database is left as it was.
The full-size figure (1 M carts + 200 k orders) comes from `manage.py seed_demo`, which
prints its time and peak RSS.
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "checkout.settings")

import django  # noqa: E402

django.setup()

from django.db import connection, transaction  # noqa: E402

from ops.demo_data import SeedPlan, demo_data_seed  # noqa: E402


def timed_load(plan: SeedPlan, method: str) -> float:
    with transaction.atomic():
        result = demo_data_seed(plan=plan, method=method, warm_cache=False)
        transaction.set_rollback(True)
    rows = sum(result.counts.values())
    print(f"{method:<12} {rows:>9,} rows  {result.seconds:6.2f} s  {rows / result.seconds:>9,.0f} rows/s")
    return result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--carts", type=int, default=50_000)
    parser.add_argument("--orders", type=int, default=10_000)
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("bench/seed_demo.py needs DATABASE_URL pointing at PostgreSQL")
    plan = SeedPlan(carts=args.carts, orders=args.orders)
    baseline = timed_load(plan, "bulk_create")
    copy = timed_load(plan, "copy")
    print(f"COPY is {baseline / copy:.1f}x faster than bulk_create")


if __name__ == "__main__":
    main()
