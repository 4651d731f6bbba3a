"""`demo_data_seed`: the seed in one transaction, from the ids already taken to the advanced sequences.

The next chunk is generated on a thread while this one loads; the cart cache is warmed after commit.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Iterator

from django.db import connection, transaction
from django.utils import timezone

from checkout.db import is_postgres, skip_commit_flush
from ops.demo.data.cache import cart_cache_warm
from ops.demo.data.generate import TABLE_KEYS, Generator, seeded_tables
from ops.demo.data.plan import CHUNK_ROWS, SeedPlan, SeedResult, peak_rss_mb
from ops.demo.data.schema import schema_restore, schema_set_aside
from ops.demo.data.writers import writer_for

log = logging.getLogger(__name__)

# Tables loaded without their secondary indexes and foreign keys when they start empty: one
# sorted build per index and one validating join per foreign key after COPY cost a fraction of
# maintaining nine b-trees (one on random UUIDs) and queueing a deferred check per row.
# auth_user keeps its two indexes: a tenth of the carts' rows, and rarely empty (staff accounts).
SCHEMA_REBUILT = ("cart", "order", "payment", "enrollment")


def _in_background(items: Iterator, depth: int = 2) -> Iterator:
    """Iterate `items` on a thread, at most `depth` ahead.

    Generating and encoding the next chunk in Python then overlaps the database's
    work on this one (psycopg2 releases the GIL while COPY waits on the server).
    """
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            put(_Failure(exc))
            return
        put(done)

    thread = threading.Thread(target=produce, name="seed-generator", daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.get()
            if item is done:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()


@dataclass
class _Failure:
    exc: BaseException


# --- ids --------------------------------------------------------------------------------------

def _lock_and_find_bases() -> dict[str, int]:
    """Lock the tables against other writers and return, per table, the id after which ours start.

    Rows carry explicit ids (children must know their parents' ids before COPY); the locks
    hold until the seed commits, and `_advance_sequences` moves the sequences past our rows.
    """
    bases = {}
    with connection.cursor() as cursor:
        for key, (model, _) in zip(TABLE_KEYS, seeded_tables()):
            table = connection.ops.quote_name(model._meta.db_table)
            if is_postgres():
                cursor.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
            cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}")
            bases[key] = cursor.fetchone()[0]
    return bases


def _advance_sequences(bases: dict[str, int], next_ids: dict[str, int]) -> None:
    # SQLite's AUTOINCREMENT follows explicit ids by itself.
    if not is_postgres():
        return
    with connection.cursor() as cursor:
        for key, (model, _) in zip(TABLE_KEYS, seeded_tables()):
            if next_ids[key] - 1 > bases[key]:
                cursor.execute(
                    "SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)",
                    [model._meta.db_table, next_ids[key] - 1],
                )


# --- the seed ---------------------------------------------------------------------------------

def demo_data_seed(
    *,
    plan: SeedPlan,
    now: datetime | None = None,
    chunk_rows: int = CHUNK_ROWS,
    method: str | None = None,
    warm_cache: bool = True,
    rebuild_schema: bool = True,
) -> SeedResult:
    """Insert `plan`'s users, internships, carts, orders, payments and enrollments in one transaction.

    With COPY and `rebuild_schema`, the tables of SCHEMA_REBUILT that start empty are loaded without
    their secondary indexes and foreign keys, recreated from their catalog definitions before commit.
    Then, when Redis is configured, write `cart:<token>` for the carts that are still live.
    """
    plan.validate()
    now = now or timezone.now()
    started = time.monotonic()
    result = SeedResult()
    writer = writer_for(method)
    result.method = writer.method
    tables = dict(zip(TABLE_KEYS, seeded_tables()))
    with transaction.atomic():
        bases = _lock_and_find_bases()
        restore: list[str] = []
        if writer.method == "copy":
            with connection.cursor() as cursor:
                # One commit at the end; a crash before it loses the seed, never other data.
                skip_commit_flush(cursor)
            if rebuild_schema:
                # Ids start at 1, so a base of 0 is an empty table.
                result.rebuilt = tuple(
                    tables[key][0]._meta.db_table for key in SCHEMA_REBUILT if bases[key] == 0
                )
                restore = schema_set_aside(list(result.rebuilt))
        generator = Generator(plan, now, bases, chunk_rows, writer.stamp, writer.null)

        def encoded():
            for key, rows in generator.batches():
                yield key, len(rows), writer.encode(*tables[key], rows)

        for key, n, payload in _in_background(encoded()):
            writer.load(*tables[key], payload)
            result.counts[key + "s"] += n
        schema_restore(restore)
        _advance_sequences(bases, generator.next_id)
    first_cart = bases["cart"] + 1
    if warm_cache and plan.carts:
        try:
            result.cache_entries = cart_cache_warm(
                id_range=(first_cart, first_cart + plan.carts - 1), now=now
            )
        except Exception as exc:  # redis-py's errors and socket errors: the data is in, the cache is optional
            result.cache_error = f"{type(exc).__name__}: {exc}"
            log.warning("seed: cart cache not written: %s", result.cache_error)
    result.seconds = time.monotonic() - started
    result.peak_rss_mb = peak_rss_mb()
    log.info(
        "seed: method=%s seconds=%.1f peak_rss_mb=%.0f %s rebuilt=%s cache_entries=%s", result.method,
        result.seconds, result.peak_rss_mb, " ".join(f"{k}={v}" for k, v in sorted(result.counts.items())),
        ",".join(result.rebuilt) or "-", result.cache_entries,
    )
    return result
