"""seed_demo on PostgreSQL: COPY into tables whose indexes and foreign keys are dropped and rebuilt,
against COPY with them maintained row by row (the baseline), same plan, same database, one run each.

    DATABASE_URL=postgres://... python bench/seed_demo.py [--carts 100000] [--orders 20000]

The domain tables must start empty (a fresh database, or `seed_demo --reset --carts 0 --orders 0
--yes-destroy <database>`).
Each load runs in a transaction that is rolled back, so the database is left as it was; the
baseline's deferred foreign-key checks, which a real seed pays at commit, are run and timed first.
Memory at two sizes: `/usr/bin/time -v manage.py seed_demo --reset --yes-destroy <database> --carts N
--orders M` at each N.
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

from carts.models import Cart  # noqa: E402
from ops.demo.data import SeedPlan, demo_data_seed, peak_rss_mb  # noqa: E402
from orders.models import Enrollment, Order  # noqa: E402
from payments.models import Payment  # noqa: E402


def timed_load(plan: SeedPlan, *, rebuild: bool) -> float:
    label = "rebuilt" if rebuild else "maintained"
    with transaction.atomic():
        started = time.monotonic()
        result = demo_data_seed(plan=plan, warm_cache=False, rebuild_schema=rebuild)
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        seconds = time.monotonic() - started
        transaction.set_rollback(True)
    rows = sum(result.counts.values())
    load = open("/proc/loadavg").read().split()[0]
    print(f"indexes {label:<10} {rows:>9,} rows  {seconds:6.1f} s  {rows / seconds:>9,.0f} rows/s  (load {load})")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--carts", type=int, default=100_000)
    parser.add_argument("--orders", type=int, default=20_000)
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("bench/seed_demo.py needs DATABASE_URL pointing at PostgreSQL")
    if any(model.objects.exists() for model in (Cart, Order, Payment, Enrollment)):
        sys.exit("bench/seed_demo.py needs empty domain tables: run `manage.py seed_demo --reset --carts 0 --orders 0 --yes-destroy <database>`")
    plan = SeedPlan(carts=args.carts, orders=args.orders)
    baseline = timed_load(plan, rebuild=False)
    rebuilt = timed_load(plan, rebuild=True)
    print(f"dropping and rebuilding is {baseline / rebuilt:.1f}x faster; peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
