"""Daily analytics on PostgreSQL at size: the report against hand-written SQL, a backfill against one rollup.

    python bench/analytics.py [--orders 1000000] [--carts 2000000] [--days 90] [--keep]

At ten million: `nice -n 19 python bench/analytics.py --orders 10000000 --carts 10000000 --repeat 3`.
Loads a database of its own (BENCH_ANALYTICS_DB, default checkout_bench_analytics, rebuilt unless --keep finds it
loaded at the same size) with COPY, then measures in the same run:

1. the daily report of one local day (daily_reports_build: rollup + write) against the same
   aggregates hand-written in SQL (goal <= 1.5x);
2. a 60-day backfill (60 reports written, one transaction per day) against one grouped
   rollup query per table, grouping by the local date in SQL (goal <= 1.2x).

Each timing is the best of --repeat runs after a warm-up, so both sides read a warm cache.
"""
import argparse
import io
import os
import random
import sys
import time
import uuid
from datetime import date, datetime, timedelta, timezone as dt_timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_DB = os.environ.get("BENCH_ANALYTICS_DB", "checkout_bench_analytics")
SERVER_URL = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
os.environ["DATABASE_URL"] = f"{SERVER_URL}/{BENCH_DB}"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "checkout.settings")
os.environ.setdefault("CELERY_TASK_ALWAYS_EAGER", "true")
os.environ.setdefault("SECRET_KEY", "bench-" + os.urandom(32).hex())  # DEBUG off on PostgreSQL needs a key

import psycopg2  # noqa: E402

FIRST_DAY = date(2024, 1, 1)
INTERNSHIPS = 50
USERS = 100_000
CHUNK = 100_000


def ensure_database(fresh: bool) -> bool:
    """Create the bench database; True when it was (re)created empty."""
    admin = psycopg2.connect(f"{SERVER_URL}/postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [BENCH_DB])
        exists = cursor.fetchone() is not None
        if exists and fresh:
            cursor.execute(f"DROP DATABASE {BENCH_DB} WITH (FORCE)")
        if fresh or not exists:
            cursor.execute(f"CREATE DATABASE {BENCH_DB}")
    admin.close()
    return fresh or not exists


def ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S+00")


def copy(cursor, table: str, columns: tuple[str, ...], rows) -> int:
    """COPY rows (tuples of text or None) into table, CHUNK rows at a time."""
    total = 0
    buffer = io.StringIO()
    columns_sql = ", ".join(columns)

    def flush():
        buffer.seek(0)
        cursor.copy_expert(f"COPY {table} ({columns_sql}) FROM STDIN", buffer)
        buffer.seek(0)
        buffer.truncate()

    for row in rows:
        buffer.write("\t".join(r"\N" if v is None else str(v) for v in row))
        buffer.write("\n")
        total += 1
        if total % CHUNK == 0:
            flush()
    flush()
    return total


def load(*, orders: int, carts: int, days: int) -> None:
    from django.db import connection

    rng = random.Random(6)
    start = datetime.combine(FIRST_DAY, datetime.min.time(), tzinfo=dt_timezone.utc)
    span = days * 86400
    with connection.cursor() as django_cursor:
        cursor = django_cursor.cursor
        copy(cursor, "orders_internship", ("id", "title", "price_paise", "currency", "is_active", "created_at"), (
            (i, f"Internship {i}", 100000 + 1000 * i, "USD" if i % 10 == 0 else "INR", "t", ts(start))
            for i in range(1, INTERNSHIPS + 1)
        ))
        copy(cursor, "auth_user", (
            "id", "password", "is_superuser", "username", "first_name", "last_name", "email", "is_staff",
            "is_active", "date_joined",
        ), ((i, "!", "f", f"user{i}", "", "", "", "f", "t", ts(start)) for i in range(1, USERS + 1)))

        def cart_rows():
            for i in range(1, carts + 1):
                created = start + timedelta(seconds=rng.randrange(span))
                kind = rng.random()
                abandoned = ts(created + timedelta(hours=1 + rng.random() * 5)) if kind < 0.4 else None
                converted = ts(created + timedelta(minutes=rng.random() * 90)) if 0.4 <= kind < 0.7 else None
                status = "abandoned" if abandoned else "converted" if converted else "active"
                yield (i, uuid.UUID(int=rng.getrandbits(128)), rng.randint(1, USERS), rng.randint(1, INTERNSHIPS),
                       ts(created), ts(created), status, abandoned, converted)

        copy(cursor, "carts_cart", (
            "id", "token", "user_id", "internship_id", "created_at", "updated_at", "status", "abandoned_at",
            "converted_at",
        ), cart_rows())

        paid_orders: list[tuple[int, int, int, datetime, int, str]] = []

        def order_rows():
            for i in range(1, orders + 1):
                internship = rng.randint(1, INTERNSHIPS)
                user = rng.randint(1, USERS)
                currency = "USD" if internship % 10 == 0 else "INR"
                amount = 100000 + 1000 * internship
                created = start + timedelta(seconds=rng.randrange(span))
                kind = rng.random()
                paid = expired = None
                status = "pending"
                if kind < 0.5:
                    paid, status = created + timedelta(minutes=rng.random() * 120), "paid"
                    paid_orders.append((i, user, internship, paid, amount, currency))
                elif kind < 0.75:
                    expired, status = created + timedelta(hours=48), "expired"
                yield (i, user, internship, amount, currency, status, ts(created), ts(created),
                       ts(paid) if paid else None, ts(expired) if expired else None)

        copy(cursor, "orders_order", (
            "id", "user_id", "internship_id", "amount_paise", "currency", "status", "created_at", "updated_at",
            "paid_at", "expired_at",
        ), order_rows())
        copy(cursor, "orders_enrollment", ("order_id", "user_id", "internship_id", "created_at"), (
            (order_id, user, internship, ts(paid + timedelta(minutes=1)))
            for order_id, user, internship, paid, _, _ in paid_orders
        ))
        copy(cursor, "payments_payment", (
            "order_id", "razorpay_order_id", "amount_paise", "currency", "status", "created_at", "updated_at",
            "captured_at", "refunded_paise", "refunded_at", "error_code", "error_description", "mismatch",
        ), (
            (order_id, f"order_B{order_id:012d}", amount, currency, "refunded", ts(paid), ts(paid), ts(paid),
             amount // 2, ts(paid + timedelta(hours=6)), "", "", "")
            for order_id, _, _, paid, amount, currency in paid_orders[::50]
        ))
        for table in ("orders_internship", "auth_user", "carts_cart", "orders_order"):
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))"
            )
        cursor.execute("ANALYZE")


def best_of(repeat: int, func) -> float:
    func()  # warm-up: both sides read a warm cache
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        func()
        timings.append(time.perf_counter() - started)
    return min(timings)


def hand_written_day(cursor, day: date) -> None:
    """The daily report's aggregates as one would write them in SQL for one local day."""
    from checkout.timezones import local_day_bounds

    lo, hi = local_day_bounds(day)
    p = {"lo": lo, "hi": hi, "day": day}
    cursor.execute("""
        SELECT internship_id, currency,
               COUNT(*) FILTER (WHERE created_at >= %(lo)s AND created_at < %(hi)s),
               COUNT(*) FILTER (WHERE paid_at >= %(lo)s AND paid_at < %(hi)s),
               COALESCE(SUM(amount_paise) FILTER (WHERE paid_at >= %(lo)s AND paid_at < %(hi)s), 0),
               COUNT(*) FILTER (WHERE expired_at >= %(lo)s AND expired_at < %(hi)s)
        FROM orders_order
        WHERE (created_at >= %(lo)s AND created_at < %(hi)s) OR (paid_at >= %(lo)s AND paid_at < %(hi)s)
           OR (expired_at >= %(lo)s AND expired_at < %(hi)s)
        GROUP BY 1, 2""", p)
    cursor.fetchall()
    cursor.execute("""
        SELECT o.internship_id, p.currency, SUM(p.refunded_paise) FROM payments_payment p
        JOIN orders_order o ON o.id = p.order_id
        WHERE p.refunded_at >= %(lo)s AND p.refunded_at < %(hi)s AND p.refunded_paise > 0 GROUP BY 1, 2""", p)
    cursor.fetchall()
    cursor.execute("""
        SELECT internship_id,
               COUNT(*) FILTER (WHERE created_at >= %(lo)s AND created_at < %(hi)s),
               COUNT(*) FILTER (WHERE abandoned_at >= %(lo)s AND abandoned_at < %(hi)s),
               COUNT(*) FILTER (WHERE converted_at >= %(lo)s AND converted_at < %(hi)s)
        FROM carts_cart
        WHERE (created_at >= %(lo)s AND created_at < %(hi)s) OR (abandoned_at >= %(lo)s AND abandoned_at < %(hi)s)
           OR (converted_at >= %(lo)s AND converted_at < %(hi)s)
        GROUP BY 1""", p)
    cursor.fetchall()
    cursor.execute("SELECT internship_id, created_deleted, abandoned_deleted FROM carts_cartdaytally WHERE day = %(day)s", p)
    cursor.fetchall()
    cursor.execute("""
        SELECT internship_id, COUNT(*) FROM orders_enrollment
        WHERE created_at >= %(lo)s AND created_at < %(hi)s GROUP BY 1""", p)
    cursor.fetchall()


def one_rollup(cursor, start: date, end: date) -> None:
    """One grouped query per table over the whole range, grouped by local date in SQL."""
    from django.conf import settings

    from checkout.timezones import local_day_bounds

    p = {"lo": local_day_bounds(start)[0], "hi": local_day_bounds(end)[0], "tz": settings.CHECKOUT_TIME_ZONE,
         "start": start, "end": end}
    cursor.execute("""
        SELECT (ts AT TIME ZONE %(tz)s)::date, internship_id, currency,
               COUNT(*) FILTER (WHERE kind = 'c'), COUNT(*) FILTER (WHERE kind = 'p'),
               COALESCE(SUM(amount_paise) FILTER (WHERE kind = 'p'), 0), COUNT(*) FILTER (WHERE kind = 'e')
        FROM (
            SELECT 'c' AS kind, created_at AS ts, internship_id, currency, amount_paise FROM orders_order
             WHERE created_at >= %(lo)s AND created_at < %(hi)s
            UNION ALL
            SELECT 'p', paid_at, internship_id, currency, amount_paise FROM orders_order
             WHERE paid_at >= %(lo)s AND paid_at < %(hi)s
            UNION ALL
            SELECT 'e', expired_at, internship_id, currency, amount_paise FROM orders_order
             WHERE expired_at >= %(lo)s AND expired_at < %(hi)s
        ) AS events GROUP BY 1, 2, 3""", p)
    cursor.fetchall()
    cursor.execute("""
        SELECT (p.refunded_at AT TIME ZONE %(tz)s)::date, o.internship_id, p.currency, SUM(p.refunded_paise)
        FROM payments_payment p JOIN orders_order o ON o.id = p.order_id
        WHERE p.refunded_at >= %(lo)s AND p.refunded_at < %(hi)s AND p.refunded_paise > 0 GROUP BY 1, 2, 3""", p)
    cursor.fetchall()
    cursor.execute("""
        SELECT (ts AT TIME ZONE %(tz)s)::date, internship_id,
               COUNT(*) FILTER (WHERE kind = 'c'), COUNT(*) FILTER (WHERE kind = 'a'),
               COUNT(*) FILTER (WHERE kind = 'v')
        FROM (
            SELECT 'c' AS kind, created_at AS ts, internship_id FROM carts_cart
             WHERE created_at >= %(lo)s AND created_at < %(hi)s
            UNION ALL
            SELECT 'a', abandoned_at, internship_id FROM carts_cart WHERE abandoned_at >= %(lo)s AND abandoned_at < %(hi)s
            UNION ALL
            SELECT 'v', converted_at, internship_id FROM carts_cart WHERE converted_at >= %(lo)s AND converted_at < %(hi)s
        ) AS events GROUP BY 1, 2""", p)
    cursor.fetchall()
    cursor.execute("SELECT day, internship_id, created_deleted, abandoned_deleted FROM carts_cartdaytally"
                   " WHERE day >= %(start)s AND day < %(end)s", p)
    cursor.fetchall()
    cursor.execute("""
        SELECT (created_at AT TIME ZONE %(tz)s)::date, internship_id, COUNT(*) FROM orders_enrollment
        WHERE created_at >= %(lo)s AND created_at < %(hi)s GROUP BY 1, 2""", p)
    cursor.fetchall()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--carts", type=int, default=2_000_000)
    parser.add_argument("--days", type=int, default=90, help="days the data is spread over (>= 62)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="reuse the bench database if loaded at this size")
    args = parser.parse_args()
    if args.days < 62:
        parser.error("--days must be at least 62 (a 60-day backfill inside the data)")

    fresh = ensure_database(fresh=not args.keep)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from analytics.services import daily_reports_build
    from orders.models import Order

    if not fresh and Order.objects.count() != args.orders:
        connection.close()
        ensure_database(fresh=True)
        fresh = True
    if fresh:
        started = time.perf_counter()
        call_command("migrate", verbosity=0)
        load(orders=args.orders, carts=args.carts, days=args.days)
        print(f"loaded {args.orders:,} orders and {args.carts:,} carts over {args.days} days "
              f"in {time.perf_counter() - started:.1f}s")

    day = FIRST_DAY + timedelta(days=args.days // 2)
    cursor = connection.cursor()
    report = best_of(args.repeat, lambda: daily_reports_build(start=day, end=day + timedelta(days=1)))
    hand = best_of(args.repeat, lambda: hand_written_day(cursor, day))
    print(f"daily report of {day}: {report * 1000:.1f} ms  |  hand-written SQL {hand * 1000:.1f} ms"
          f"  |  ratio {report / hand:.2f}x (goal <= 1.5x)")

    start = FIRST_DAY + timedelta(days=1)
    end = start + timedelta(days=60)
    repeat = max(1, args.repeat // 2)
    backfill = best_of(repeat, lambda: daily_reports_build(start=start, end=end))
    rollup = best_of(repeat, lambda: one_rollup(cursor, start, end))
    print(f"60-day backfill {start}..{end - timedelta(days=1)}: {backfill:.2f} s  |  one grouped rollup "
          f"{rollup:.2f} s  |  ratio {backfill / rollup:.2f}x (goal <= 1.2x)")


if __name__ == "__main__":
    main()
