"""Carts partitioned by created day, prototyped: dropping old partitions against deleting rows, and a week of bloat.

    python bench/cart_partitions.py [--carts 1000000] [--expired 0.6] [--days 7] [--daily N]

At ten million: `nice -n 19 python bench/cart_partitions.py --carts 10000000`.
Builds a database of its own (BENCH_PARTITIONS_DB, default checkout_bench_partitions, rebuilt each
run): the project's schema (migrated) and, beside it, a scratch schema `scratch` holding
`scratch.cart_by_day`, the same columns as carts_cart partitioned by RANGE (created_at), one
partition a day, with the same nine indexes (the primary key and the token's unique index carry
created_at, as a partitioned table requires). Both are loaded with the same rows in SQL
(generate_series, then INSERT … SELECT), as bench/cart_cleanup.py lays them out: --expired of
them 2-10 days old, the rest active in the last hour, one expired cart in a hundred with an order.
Then, on identical data:

1. row delete: the bare `DELETE … RETURNING token` of the expired carts from carts_cart (the floor
   bench/cart_cleanup.py holds the job to), then the VACUUM that the dead rows call for;
2. partition drop: for every day partition wholly older than CART_TTL, copy out the carts that stay
   (with an order, converted, or active since the cutoff) into scratch.cart_kept, read the tokens of
   the rest (for their cache keys), DETACH and DROP the partition;
3. a week of cleanups (--days, --daily carts expiring a day): each day the expired carts arrive and
   `cart_cleanup` (the job, run here) deletes them from carts_cart, while the partitioned side drops
   that day's partition; table and index sizes, dead tuples and autovacuum runs each day, then
   pgstattuple/pgstatindex before and after a plain VACUUM. Without --vacuum-daily nothing vacuums
   between the days (autovacuum off, or the nightly db_optimize not run): the worst case; with it,
   the VACUUM (ANALYZE) that db_optimize runs each night, timed.

The UNLINK of the cache keys is the same on both sides (bench/cart_cleanup.py measures it) and is
left out here. Needs PostgreSQL (pgstattuple, from postgresql-contrib) and Redis (the job's).
"""
import argparse
import os
import sys
import time
from datetime import datetime, timedelta, timezone as dt_timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_DB = os.environ.get("BENCH_PARTITIONS_DB", "checkout_bench_partitions")
SERVER_URL = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/2")
os.environ.setdefault("SECRET_KEY", "bench-" + os.urandom(32).hex())  # DEBUG off on PostgreSQL needs a key
os.environ.update(
    DATABASE_URL=f"{SERVER_URL}/{BENCH_DB}", REDIS_URL=REDIS_URL, DJANGO_SETTINGS_MODULE="checkout.settings",
    CELERY_TASK_ALWAYS_EAGER="false", LOG_LEVEL="WARNING",
    # The week's live carts stay active: flagging them abandoned would be an UPDATE of every live row,
    # another job's bloat than the one measured here.
    CART_ABANDON_AFTER="23h",
)
INTERNSHIPS = 20
ORDERED_EVERY = 100
PAST_DAYS = 12  # day partitions reach this far back; older rows would land in the default partition

import psycopg2  # noqa: E402

EXPIRED_SQL = (
    "{t}.status <> 'converted' AND {t}.created_at < %(cutoff)s AND {t}.updated_at < %(cutoff)s"
    " AND NOT EXISTS (SELECT 1 FROM orders_order o WHERE o.cart_id = {t}.id)"
)
COLUMNS = "id, token, user_id, internship_id, created_at, updated_at, status, abandoned_at, converted_at"


def connect():
    conn = psycopg2.connect(os.environ["DATABASE_URL"])
    conn.autocommit = True
    return conn


def create_database() -> None:
    import subprocess

    admin = psycopg2.connect(f"{SERVER_URL}/postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        cursor.execute(f"CREATE DATABASE {BENCH_DB}")
    admin.close()
    subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, check=True)


def day_start(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def partition_name(day: datetime) -> str:
    return f"scratch.cart_by_day_{day:%Y%m%d}"


def create_partitioned(cursor, today: datetime) -> list[tuple[str, datetime]]:
    """scratch.cart_by_day with a partition a day from PAST_DAYS back to tomorrow, and a default one."""
    cursor.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
    cursor.execute("CREATE SCHEMA scratch")
    cursor.execute("CREATE TABLE scratch.cart_by_day (LIKE carts_cart INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
                   " PARTITION BY RANGE (created_at)")
    cursor.execute("CREATE TABLE scratch.cart_kept (LIKE carts_cart INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    days = []
    for offset in range(-PAST_DAYS, 2):
        day = today + timedelta(days=offset)
        days.append((partition_name(day), day))
        cursor.execute(f"CREATE TABLE {partition_name(day)} PARTITION OF scratch.cart_by_day"
                       " FOR VALUES FROM (%s) TO (%s)", [day, day + timedelta(days=1)])
    cursor.execute("CREATE TABLE scratch.cart_by_day_default PARTITION OF scratch.cart_by_day DEFAULT")
    return days


def index_partitioned(cursor) -> None:
    """The nine indexes of carts_cart, on the partitioned table (each partition gets its own)."""
    t = "scratch.cart_by_day"
    for sql in (
        f"ALTER TABLE {t} ADD PRIMARY KEY (id, created_at)",
        f"CREATE UNIQUE INDEX ON {t} (token, created_at)",
        f"CREATE INDEX ON {t} (user_id)",
        f"CREATE INDEX ON {t} (internship_id)",
        f"CREATE INDEX ON {t} (created_at)",
        f"CREATE INDEX ON {t} (abandoned_at)",
        f"CREATE INDEX ON {t} (converted_at)",
        f"CREATE INDEX ON {t} (updated_at) WHERE status = 'active'",
        f"CREATE INDEX ON {t} (created_at) WHERE status <> 'converted'",
    ):
        cursor.execute(sql)


def insert_carts(cursor, n: int, expired_share: float, *, expired_from: str, expired_days: float,
                 mirror: bool = True) -> int:
    """n carts in SQL: a share expired (created `expired_from` ago and up to `expired_days` before),
    the rest active in the last hour; one expired cart in ORDERED_EVERY gets an order. With `mirror`
    the same rows go into scratch.cart_by_day. Returns the id the new carts start after."""
    cursor.execute("SELECT coalesce(max(id), 0) FROM carts_cart")
    first = cursor.fetchone()[0]
    cursor.execute(
        f"""
        INSERT INTO carts_cart (token, internship_id, created_at, updated_at, status)
        SELECT md5('cart' || i)::uuid, 1 + i %% {INTERNSHIPS}, created,
               CASE WHEN expired THEN created + random() * interval '60 minutes'
                    ELSE now() - random() * interval '10 minutes' END,
               'active'
        FROM (SELECT i, random() < %(share)s AS expired FROM generate_series(%(lo)s, %(hi)s) AS i) AS s,
             LATERAL (SELECT CASE WHEN s.expired
                                  THEN now() - %(since)s::interval - random() * %(span)s * interval '1 day'
                                  ELSE now() - interval '10 minutes' - random() * interval '40 minutes'
                             END AS created) AS c
        """,
        {"share": expired_share, "lo": first + 1, "hi": first + n, "since": expired_from, "span": expired_days},
    )
    cursor.execute(
        "INSERT INTO orders_order (cart_id, internship_id, amount_paise, currency, status, created_at, updated_at)"
        " SELECT id, internship_id, 499900, 'INR', 'pending', now(), now() FROM carts_cart"
        " WHERE id > %s AND updated_at < now() - interval '1 day' AND id %% %s = 0",
        [first, ORDERED_EVERY],
    )
    if mirror:
        cursor.execute(f"INSERT INTO scratch.cart_by_day ({COLUMNS}) SELECT {COLUMNS} FROM carts_cart WHERE id > %s",
                       [first])
    return first


def row_delete(cursor, cutoff: datetime) -> tuple[int, float, float]:
    started = time.perf_counter()
    cursor.execute("BEGIN")
    cursor.execute(f"DELETE FROM carts_cart c WHERE {EXPIRED_SQL.format(t='c')} RETURNING token", {"cutoff": cutoff})
    tokens = cursor.fetchall()
    cursor.execute("COMMIT")
    deleted_s = time.perf_counter() - started
    started = time.perf_counter()
    cursor.execute("VACUUM carts_cart")
    return len(tokens), deleted_s, time.perf_counter() - started


def partition_drop(cursor, days: list[tuple[str, datetime]], cutoff: datetime) -> tuple[int, int, int, float]:
    """Drop every day partition wholly older than cutoff, keeping its carts that stay; (tokens, kept, dropped, s)."""
    keep = f"NOT ({EXPIRED_SQL.format(t='p')})"
    gone = kept = dropped = 0
    started = time.perf_counter()
    for name, day in list(days):
        if day + timedelta(days=1) > cutoff:
            continue
        cursor.execute("BEGIN")
        cursor.execute(f"SELECT p.token FROM {name} p WHERE {EXPIRED_SQL.format(t='p')}", {"cutoff": cutoff})
        gone += len(cursor.fetchall())
        cursor.execute(f"INSERT INTO scratch.cart_kept SELECT * FROM {name} p WHERE {keep}", {"cutoff": cutoff})
        kept += cursor.rowcount
        cursor.execute(f"ALTER TABLE scratch.cart_by_day DETACH PARTITION {name}")
        cursor.execute(f"DROP TABLE {name}")
        cursor.execute("COMMIT")
        days.remove((name, day))
        dropped += 1
    return gone, kept, dropped, time.perf_counter() - started


def sizes(cursor) -> dict:
    cursor.execute(
        "SELECT pg_table_size('carts_cart'), pg_indexes_size('carts_cart'), n_live_tup, n_dead_tup,"
        " autovacuum_count, vacuum_count FROM pg_stat_user_tables WHERE relid = 'carts_cart'::regclass"
    )
    table, indexes, live, dead, autovacuums, vacuums = cursor.fetchone()
    cursor.execute(
        "SELECT coalesce(sum(pg_table_size(c.oid)), 0), coalesce(sum(pg_indexes_size(c.oid)), 0)"
        " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'scratch.cart_by_day'::regclass"
    )
    p_table, p_indexes = cursor.fetchone()
    return {"table": table, "indexes": indexes, "live": live, "dead": dead, "autovacuums": autovacuums,
            "vacuums": vacuums, "p_table": p_table, "p_indexes": p_indexes}


def tuple_stats(cursor) -> str:
    cursor.execute("SELECT tuple_percent, dead_tuple_percent, free_percent FROM pgstattuple('carts_cart')")
    tuples, dead, free = cursor.fetchone()
    cursor.execute("SELECT avg_leaf_density, leaf_fragmentation FROM pgstatindex('carts_cart_pkey')")
    density, fragmentation = cursor.fetchone()
    cursor.execute("SELECT avg_leaf_density FROM pgstatindex('cart_unconverted_created_idx')")
    (unconverted_density,) = cursor.fetchone()
    return (f"table: live tuples {tuples:.1f} %, dead {dead:.1f} %, free {free:.1f} %; pkey leaf density"
            f" {density:.1f} % (fragmentation {fragmentation:.1f} %), unconverted-created index leaf density"
            f" {unconverted_density:.1f} %")


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def show(label: str, s: dict) -> None:
    print(f"{label}: carts_cart table {mib(s['table'])} + indexes {mib(s['indexes'])}, {s['live']:,} live /"
          f" {s['dead']:,} dead tuples, autovacuums {s['autovacuums']}; partitioned: table {mib(s['p_table'])}"
          f" + indexes {mib(s['p_indexes'])}")


def week(cursor, days: list[tuple[str, datetime]], n_days: int, daily: int, vacuum_daily: bool) -> None:
    import django

    django.setup()
    from ops.runtime.runner import run_job

    start = sizes(cursor)
    show("week, day 0", start)
    print("week, day 0: " + tuple_stats(cursor))
    job_total = drop_total = vacuum_total = 0.0
    for d in range(1, n_days + 1):
        # The day's expired carts arrive (created 30-36 hours ago, never touched since)...
        first = insert_carts(cursor, daily, 1.0, expired_from="30 hours", expired_days=0.25, mirror=False)
        cursor.execute("ANALYZE carts_cart")
        # ...and each side removes them: the job deletes the rows; the partitioned side holds the same
        # carts in a day partition of their own (a past day's, dated in 2000) and drops it.
        name = f"scratch.cart_by_day_week{d}"
        old = datetime(2000, 1, d, tzinfo=dt_timezone.utc)
        cursor.execute(f"CREATE TABLE {name} PARTITION OF scratch.cart_by_day FOR VALUES FROM (%s) TO (%s)",
                       [old, old + timedelta(days=1)])
        cursor.execute(f"INSERT INTO {name} ({COLUMNS}) SELECT id, token, user_id, internship_id, %s, %s, status,"
                       f" abandoned_at, converted_at FROM carts_cart WHERE id > %s", [old, old, first])
        days.append((name, old))
        started = time.perf_counter()
        run = run_job("cart_cleanup", enqueue_followups=False)
        job_s = time.perf_counter() - started
        assert run.status == "success", run.error
        job_total += job_s
        _, _, _, drop_s = partition_drop(cursor, days, old + timedelta(days=1))
        drop_total += drop_s
        vacuumed = ""
        if vacuum_daily:  # what the nightly db_optimize does to the hot tables
            started = time.perf_counter()
            cursor.execute("VACUUM (ANALYZE) carts_cart")
            vacuum_total += time.perf_counter() - started
            vacuumed = f"; VACUUM (ANALYZE) {time.perf_counter() - started:.1f} s"
        s = sizes(cursor)
        show(f"week, day {d} (job {run.counts.get('deleted', 0):,} deleted in {job_s:.1f} s;"
             f" partition dropped in {drop_s * 1000:.0f} ms{vacuumed})", s)
    end = sizes(cursor)
    print(f"week, day {n_days}: " + tuple_stats(cursor))
    started = time.perf_counter()
    cursor.execute("VACUUM carts_cart")
    vacuum_s = time.perf_counter() - started
    after = sizes(cursor)
    show(f"after VACUUM ({vacuum_s:.1f} s)", after)
    print("after VACUUM: " + tuple_stats(cursor))
    print(f"week: job {job_total:.1f} s in all (+ daily VACUUM {vacuum_total:.1f} s), partition drops"
          f" {drop_total * 1000:.0f} ms in all;"
          f" carts_cart table {mib(start['table'])} -> {mib(end['table'])} ({end['table'] / start['table'] - 1:+.1%}),"
          f" indexes {mib(start['indexes'])} -> {mib(end['indexes'])} ({end['indexes'] / start['indexes'] - 1:+.1%})"
          f" at {start['live']:,} -> {end['live']:,} live rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--carts", type=int, default=1_000_000)
    parser.add_argument("--expired", type=float, default=0.6, help="share of expired carts (>= 0.5)")
    parser.add_argument("--days", type=int, default=7, help="days of the simulated week of cleanups (0: none)")
    parser.add_argument("--daily", type=int, default=0, help="carts expiring each day (default: --carts / 10)")
    parser.add_argument("--vacuum-daily", action="store_true",
                        help="VACUUM (ANALYZE) carts_cart after each day's cleanup, as the nightly db_optimize does")
    args = parser.parse_args()
    if not 0.5 <= args.expired < 1 or args.carts < 1 or args.days < 0 or args.days > 28 or args.daily < 0:
        parser.error("--expired must be in [0.5, 1), --carts positive, --days within 0..28, --daily >= 0")
    daily = args.daily or max(1, args.carts // 10)

    create_database()
    conn = connect()
    cursor = conn.cursor()
    now = datetime.now(dt_timezone.utc)
    days = create_partitioned(cursor, day_start(now))
    cursor.execute("SELECT setseed(0.7)")
    cursor.execute("INSERT INTO orders_internship (title, price_paise, currency, is_active, created_at)"
                   " SELECT 'Internship ' || i, 499900, 'INR', true, now() FROM generate_series(1, %s) AS i",
                   [INTERNSHIPS])
    started = time.perf_counter()
    insert_carts(cursor, args.carts, args.expired, expired_from="2 days", expired_days=8)
    index_partitioned(cursor)
    cursor.execute("VACUUM ANALYZE")
    cursor.execute("CHECKPOINT")
    print(f"{args.carts:,} carts in carts_cart and in scratch.cart_by_day ({len(days)} day partitions),"
          f" {args.expired:.0%} expired, loaded in SQL in {time.perf_counter() - started:.1f} s")
    show("loaded", sizes(cursor))

    cutoff = datetime.now(dt_timezone.utc) - timedelta(days=1)
    deleted, delete_s, vacuum_s = row_delete(cursor, cutoff)
    cursor.execute("CHECKPOINT")
    gone, kept, dropped, drop_s = partition_drop(cursor, days, cutoff)
    assert gone == deleted, (gone, deleted)
    print(f"row delete:     {deleted:,} carts in {delete_s:.2f} s ({deleted / delete_s:,.0f}/s),"
          f" then VACUUM carts_cart {vacuum_s:.2f} s")
    print(f"partition drop: {gone:,} carts in {drop_s:.2f} s ({gone / drop_s:,.0f}/s), {dropped} partitions"
          f" dropped, {kept:,} carts kept (copied out), nothing to vacuum")
    print(f"time ratio partition drop / row delete: {drop_s / delete_s:.3f}x"
          f" ({drop_s / (delete_s + vacuum_s):.3f}x counting the VACUUM)")
    show("after the cleanup", sizes(cursor))

    if args.days:
        week(cursor, days, args.days, daily, args.vacuum_daily)
    conn.close()


if __name__ == "__main__":
    main()
