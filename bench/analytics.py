"""Daily analytics on PostgreSQL at size: the report against hand-written SQL, a backfill against one rollup.

    python bench/analytics.py [--orders 1000000] [--carts 2000000] [--days 90] [--repeat 5] [--shuffled] [--keep]

At ten million: `nice -n 19 python bench/analytics.py --orders 10000000 --carts 10000000 --repeat 3`.
Loads a database of its own (BENCH_ANALYTICS_DB, default checkout_bench_analytics, rebuilt unless --keep finds it
loaded with the same options) in SQL: rows made by generate_series a million per statement, with the loaded
tables' indexes and constraints dropped first and made again after (synchronous_commit off for the load;
the tables stay logged, as in production). Rows are written in time order, as the checkout writes them
(--shuffled: at random times, a day's rows spread over the whole table). Then it measures, in the same run:

1. the daily report of one local day (daily_reports_build: rollup + write; and the daily_analytics job
   through run_job, with its lock and ledger row) against the same aggregates hand-written in SQL
   (goal <= 1.5x);
2. a 60-day backfill (60 reports written, a round of BACKFILL_CHUNK_DAYS days per transaction) against
   one grouped rollup query per table, grouping by the local date in SQL (goal <= 1.2x); then one more
   backfill with its time split: the rollup queries, the writes, the figures computed in Python.

Each timing is the best of --repeat rounds after a warm-up round, the sides taking turns in every round,
so that both read a warm cache under the same load. The load average is printed with each result.
"""
import argparse
import os
import sys
import time
from datetime import date, datetime, timedelta, timezone as dt_timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_DB = os.environ.get("BENCH_ANALYTICS_DB", "checkout_bench_analytics")
SERVER_URL = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
os.environ["DATABASE_URL"] = f"{SERVER_URL}/{BENCH_DB}"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "checkout.settings")
os.environ.setdefault("CELERY_TASK_ALWAYS_EAGER", "true")
os.environ.setdefault("LOG_LEVEL", "WARNING")  # not a line per run of the measured job
os.environ.setdefault("SECRET_KEY", "bench-" + os.urandom(32).hex())  # DEBUG off on PostgreSQL needs a key

import psycopg2  # noqa: E402

FIRST_DAY = date(2024, 1, 1)
INTERNSHIPS = 50
USERS = 100_000
CHUNK_ROWS = 1_000_000


def loaded_shape() -> str | None:
    """What the bench database was loaded with (its comment), None when it does not exist."""
    admin = psycopg2.connect(f"{SERVER_URL}/postgres")
    with admin.cursor() as cursor:
        cursor.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", [BENCH_DB])
        row = cursor.fetchone()
    admin.close()
    return row[0] if row else None


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


# The tables the load fills: their indexes and constraints (and foreign keys pointing at them) are
# dropped before the load and made again after it, as one sort each instead of row by row.
LOADED = ("carts_cart", "orders_order", "orders_enrollment", "payments_payment")


def _timed(label: str, cursor, params: dict | None, sql: str) -> None:
    started = time.perf_counter()
    cursor.execute(sql, params)
    print(f"  {label}: {time.perf_counter() - started:.1f}s", flush=True)


def index_names(cursor) -> set[str]:
    """Names of the indexes and constraints on the loaded tables or pointing at them."""
    cursor.execute("""
        SELECT conname FROM pg_constraint
        WHERE conrelid = ANY(%(tables)s::regclass[]) OR confrelid = ANY(%(tables)s::regclass[])
        UNION SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = ANY(%(tables)s::regclass[])""",
                   {"tables": list(LOADED)})
    return {name for (name,) in cursor.fetchall()}


def strip_indexes(cursor) -> list[str]:
    """Drop the loaded tables' indexes and constraints; the statements that make them again, in order."""
    cursor.execute("""
        SELECT c.conrelid::regclass::text, c.conname, c.contype, pg_get_constraintdef(c.oid)
        FROM pg_constraint c
        WHERE c.conrelid = ANY(%(tables)s::regclass[]) OR c.confrelid = ANY(%(tables)s::regclass[])
        ORDER BY c.contype = 'f' DESC""", {"tables": list(LOADED)})
    constraints = cursor.fetchall()
    cursor.execute("""
        SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i
        WHERE i.indrelid = ANY(%(tables)s::regclass[])
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)""",
                   {"tables": list(LOADED)})
    indexes = cursor.fetchall()
    for table, name, _, _ in constraints:  # foreign keys first: they hang on the primary keys
        cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for name, _ in indexes:
        cursor.execute(f"DROP INDEX {name}")
    # Keys first (foreign keys need them), then checks, indexes, and the foreign keys last.
    first = {"p": 0, "u": 0, "c": 1, "f": 3}
    remake = [(first.get(kind, 1), f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
              for table, name, kind, definition in constraints]
    remake += [(2, definition) for _, definition in indexes]
    return [statement for _, statement in sorted(remake, key=lambda item: item[0])]


def _chunks(rows: int, shuffled: bool):
    """(first id, last id, generated rows) of each INSERT: per id a random user and internship, a
    creation time and two random numbers (kind, r). Creation times follow the ids over the span, as
    rows are written in production (a day's rows side by side in the table); `shuffled` puts them
    anywhere in the span, as the earlier Python loader did (a day's rows over the whole table)."""
    created = "floor(random() * %(span)s)" if shuffled else "(i - 1 + random()) * %(span)s / %(rows)s"
    generated = f"""(
                    SELECT i, 1 + floor(random() * %(users)s)::int AS user_id,
                           1 + floor(random() * %(internships)s)::int AS internship_id,
                           %(start)s + make_interval(secs => {created}) AS created,
                           random() AS kind, random() AS r
                    FROM generate_series(%(low)s, %(high)s) AS i
                ) AS generated"""
    for low in range(1, rows + 1, CHUNK_ROWS):
        yield low, min(low + CHUNK_ROWS - 1, rows), generated


def load(*, orders: int, carts: int, days: int, shuffled: bool) -> None:
    """Fill the checkout tables in SQL (generate_series), CHUNK_ROWS rows a statement, indexes made after."""
    from django.db import connection

    start = datetime.combine(FIRST_DAY, datetime.min.time(), tzinfo=dt_timezone.utc)
    p = {"start": start, "span": days * 86400, "internships": INTERNSHIPS, "users": USERS}
    with connection.cursor() as django_cursor:
        cursor = django_cursor.cursor
        cursor.connection.autocommit = True
        cursor.execute("SET synchronous_commit = off")
        cursor.execute("SET maintenance_work_mem = '1GB'")
        cursor.execute("SELECT setseed(0.6)")
        names = index_names(cursor)
        remake = strip_indexes(cursor)
        cursor.execute("""
            INSERT INTO orders_internship (id, title, price_paise, currency, is_active, created_at)
            SELECT i, 'Internship ' || i, 100000 + 1000 * i, CASE WHEN i %% 10 = 0 THEN 'USD' ELSE 'INR' END,
                   true, %(start)s
            FROM generate_series(1, %(internships)s) AS i""", p)
        cursor.execute("""
            INSERT INTO auth_user (id, password, is_superuser, username, first_name, last_name, email,
                                   is_staff, is_active, date_joined)
            SELECT i, '!', false, 'user' || i, '', '', '', false, true, %(start)s
            FROM generate_series(1, %(users)s) AS i""", p)
        for low, high, generated in _chunks(carts, shuffled):
            _timed(f"carts {low:,}..{high:,}", cursor, {**p, "low": low, "high": high, "rows": carts}, """
                INSERT INTO carts_cart (id, token, user_id, internship_id, created_at, updated_at, status,
                                        abandoned_at, converted_at)
                SELECT i, md5('cart' || i)::uuid, user_id, internship_id, created, created,
                       CASE WHEN kind < 0.4 THEN 'abandoned' WHEN kind < 0.7 THEN 'converted' ELSE 'active' END,
                       CASE WHEN kind < 0.4 THEN created + make_interval(secs => 3600 + r * 5 * 3600) END,
                       CASE WHEN kind >= 0.4 AND kind < 0.7 THEN created + make_interval(secs => r * 90 * 60) END
                FROM """ + generated)
        for low, high, generated in _chunks(orders, shuffled):
            _timed(f"orders {low:,}..{high:,}", cursor, {**p, "low": low, "high": high, "rows": orders}, """
                INSERT INTO orders_order (id, user_id, internship_id, amount_paise, currency, status, created_at,
                                          updated_at, paid_at, expired_at)
                SELECT i, user_id, internship_id, 100000 + 1000 * internship_id,
                       CASE WHEN internship_id %% 10 = 0 THEN 'USD' ELSE 'INR' END,
                       CASE WHEN kind < 0.5 THEN 'paid' WHEN kind < 0.75 THEN 'expired' ELSE 'pending' END,
                       created, created,
                       CASE WHEN kind < 0.5 THEN created + make_interval(secs => r * 120 * 60) END,
                       CASE WHEN kind >= 0.5 AND kind < 0.75 THEN created + interval '48 hours' END
                FROM """ + generated)
        _timed("enrollments", cursor, None, """
            INSERT INTO orders_enrollment (order_id, user_id, internship_id, created_at)
            SELECT id, user_id, internship_id, paid_at + interval '1 minute' FROM orders_order
            WHERE status = 'paid'""")
        # One paid order in 50 has a payment refunded by half six hours after it was paid.
        _timed("payments", cursor, None, """
            INSERT INTO payments_payment (order_id, razorpay_order_id, amount_paise, currency, status, created_at,
                                          updated_at, captured_at, refunded_paise, refunded_at, error_code,
                                          error_description, mismatch)
            SELECT id, 'order_B' || lpad(id::text, 12, '0'), amount_paise, currency, 'refunded', paid_at, paid_at,
                   paid_at, amount_paise / 2, paid_at + interval '6 hours', '', '', ''
            FROM (SELECT *, row_number() OVER (ORDER BY id) AS n FROM orders_order WHERE status = 'paid') AS paid
            WHERE n % 50 = 1""")
        for statement in remake:
            _timed(statement.split(" (")[0].split(" USING ")[0], cursor, None, statement)
        if index_names(cursor) != names:
            raise RuntimeError("the load did not make every index and constraint again")
        for table in ("orders_internship", "auth_user", "carts_cart", "orders_order", "orders_enrollment",
                      "payments_payment"):
            cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))")
        _timed("vacuum analyze", cursor, None, "VACUUM (ANALYZE)")


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def best_of(repeat: int, *funcs) -> list[float]:
    """The best time of each function over `repeat` rounds after a warm-up round; in every round the
    functions take turns, so that each side reads a warm cache under the same load on the machine."""
    timings = [[] for _ in funcs]
    for round_ in range(repeat + 1):
        for func, times in zip(funcs, timings):
            started = time.perf_counter()
            func()
            if round_:
                times.append(time.perf_counter() - started)
    return [min(times) for times in timings]


def backfill_parts(start: date, end: date) -> dict[str, float]:
    """One backfill of [start, end) with its time split: in the rollups, in the writes, in all."""
    from analytics import services

    spent = {"rollup": 0.0, "writes": 0.0}

    def timed(part: str, func):
        def call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - started
        return call

    real = services.rollup, services.daily_reports_store
    services.rollup, services.daily_reports_store = timed("rollup", real[0]), timed("writes", real[1])
    try:
        started = time.perf_counter()
        services.daily_reports_build(start=start, end=end)
        spent["total"] = time.perf_counter() - started
    finally:
        services.rollup, services.daily_reports_store = real
    return spent


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
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--shuffled", action="store_true",
                        help="rows in random time order (a day's rows over the whole table) instead of id order")
    parser.add_argument("--keep", action="store_true", help="reuse the bench database if loaded with these options")
    args = parser.parse_args()
    if args.days < 62:
        parser.error("--days must be at least 62 (a 60-day backfill inside the data)")
    shape = f"orders={args.orders} carts={args.carts} days={args.days} shuffled={args.shuffled}"

    fresh = ensure_database(fresh=not args.keep or loaded_shape() != shape)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from analytics.services import daily_reports_build
    from ops.runtime.runner import run_job

    if fresh:
        started = time.perf_counter()
        call_command("migrate", verbosity=0)
        load(orders=args.orders, carts=args.carts, days=args.days, shuffled=args.shuffled)
        with connection.cursor() as cursor:
            cursor.execute(f"COMMENT ON DATABASE {BENCH_DB} IS %s", [shape])
        print(f"loaded {args.orders:,} orders and {args.carts:,} carts over {args.days} days "
              f"({'shuffled' if args.shuffled else 'in id order'}) in {time.perf_counter() - started:.1f}s")
    print(f"load average {load_average()}", flush=True)

    day = FIRST_DAY + timedelta(days=args.days // 2)
    cursor = connection.cursor()
    report, job, hand = best_of(
        args.repeat,
        lambda: daily_reports_build(start=day, end=day + timedelta(days=1)),
        lambda: run_job("daily_analytics", day=day),
        lambda: hand_written_day(cursor, day),
    )
    print(f"daily report of {day}: {report * 1000:.1f} ms (the daily_analytics job, with its lock and ledger row: "
          f"{job * 1000:.1f} ms)  |  hand-written SQL {hand * 1000:.1f} ms  |  ratio {report / hand:.2f}x, job "
          f"{job / hand:.2f}x (goal <= 1.5x)  |  load average {load_average()}", flush=True)

    start = FIRST_DAY + timedelta(days=1)
    end = start + timedelta(days=60)
    backfill, rollup = best_of(
        args.repeat,
        lambda: daily_reports_build(start=start, end=end),
        lambda: one_rollup(cursor, start, end),
    )
    parts = backfill_parts(start, end)
    print(f"60-day backfill {start}..{end - timedelta(days=1)}: {backfill:.2f} s  |  one grouped rollup {rollup:.2f} s"
          f"  |  ratio {backfill / rollup:.2f}x (goal <= 1.2x)  |  load average {load_average()}")
    print(f"one more backfill, split: {parts['total']:.2f} s = rollup queries {parts['rollup']:.2f} s + writes "
          f"{parts['writes']:.2f} s + the rest (figures in Python) {parts['total'] - parts['rollup'] - parts['writes']:.2f} s")

if __name__ == "__main__":
    main()
