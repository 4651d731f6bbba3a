"""Writes on carts: the checkout's cart writes with their cache entry, and the
set-based cleanup behind the cart_cleanup job.

Cleanup works in batches by primary key, each batch its own transaction. Every
write re-checks its condition in the statement itself, so a cart that a customer
touches after its batch was chosen is left alone, and two overlapping runs never
count a cart twice (a row is deleted, and tallied, by exactly one statement).
"""
from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from datetime import datetime

import redis
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count
from django.utils import timezone

from carts.models import (
    Cart,
    CartDayTally,
    CartSnapshot,
    CartSnapshotLine,
    CartStatus,
    PendingCacheDelete,
    cart_cache_key,
)
from carts.selectors import (
    abandonable_where,
    expired_where,
    next_batch_end,
    pending_cache_delete_count,
    up_to,
)
from checkout.db import is_postgres, skip_commit_flush, total_seconds_sql
from checkout.redis import get_redis
from checkout.timezones import local_date
from ops.runtime.batches import Batch, BatchProgress, run_batches
from ops.runtime.outbox import outbox_add
from orders.models import Internship

log = logging.getLogger(__name__)

# Rows per batch: a few MB of tokens in memory, a lock on at most this many carts.
BATCH_SIZE = 10_000
# Keys per UNLINK command inside one pipeline: keeps each command's reply small.
UNLINK_CHUNK = 1000
# Where a batch's DELETE leaves the summed age of its carts (PostgreSQL, transaction-local).
AGE_SETTING = "checkout.expired_cart_ages"


# --- the checkout's writes ----------------------------------------------------

def cart_cache_value(*, cart_id: int, internship_id: int, status: str, updated_at: datetime) -> str:
    """The JSON kept at `cart:<token>` (what the checkout reads instead of the database)."""
    return json.dumps({
        "id": cart_id, "internship_id": internship_id, "status": status,
        "updated_at": updated_at.isoformat(),
    })


def _cache_write(cart: Cart) -> None:
    """Best effort: the database is the truth, and the entry expires with the cart anyway."""
    client = get_redis()
    if client is None:
        return
    try:
        value = cart_cache_value(
            cart_id=cart.pk, internship_id=cart.internship_id, status=cart.status, updated_at=cart.updated_at
        )
        client.set(cart.cache_key, value, ex=int(settings.CART_TTL.total_seconds()))
    except redis.RedisError as exc:
        log.warning("cache write of cart %s failed: %s", cart.pk, exc)


def cart_create(*, internship: Internship, user=None) -> Cart:
    """A new active cart for an internship, with its cache entry."""
    cart = Cart.objects.create(internship=internship, user=user)
    transaction.on_commit(lambda: _cache_write(cart))
    return cart


def cart_touch(*, cart: Cart) -> bool:
    """Record activity on a cart (an abandoned cart becomes active again).

    Returns False, changing nothing, when the cart is converted or no longer
    exists (deleted by cart_cleanup once expired).
    """
    now = timezone.now()
    touched = (
        Cart.objects.filter(pk=cart.pk)
        .exclude(status=CartStatus.CONVERTED)
        .update(updated_at=now, status=CartStatus.ACTIVE, abandoned_at=None)
    )
    if not touched:
        return False
    cart.updated_at, cart.status, cart.abandoned_at = now, CartStatus.ACTIVE, None
    transaction.on_commit(lambda: _cache_write(cart))
    return True


# --- cache keys of deleted carts ----------------------------------------------

def _unlink(client: redis.Redis, keys: list[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(keys), UNLINK_CHUNK):
        pipe.unlink(*keys[start:start + UNLINK_CHUNK])
    pipe.execute()


class CacheKeyRemover:
    """Removes cache keys in one pipelined call per batch; keys Redis cannot take are stored.

    After the first failure it stops calling Redis for the rest of the run, so a
    dead Redis costs one timeout, not one per batch.
    """

    def __init__(self) -> None:
        self.client = get_redis()
        self.down = False
        self.stored = 0  # keys stored for later by this run

    def remove(self, keys: list[str]) -> None:
        """Call once the delete's transaction has closed: each key is removed, or stored for cache_cleanup.

        A process that dies between the commit and this call leaves entries of deleted
        carts behind; they expire with their TTL (CART_TTL from the cart's last write).
        """
        if not keys or self.client is None:
            return
        if not self.down:
            try:
                _unlink(self.client, keys)
                return
            except redis.RedisError as exc:
                self.down = True
                log.warning("redis unavailable, storing cache keys for cache_cleanup: %s", exc)
        PendingCacheDelete.objects.bulk_create(
            [PendingCacheDelete(key=key) for key in keys], batch_size=BATCH_SIZE, ignore_conflicts=True
        )
        self.stored += len(keys)

def pending_cache_delete_flush(*, batch_size: int = BATCH_SIZE) -> int:
    """Remove the stored cache keys from Redis, then their rows; returns how many.

    Raises redis.RedisError while Redis is still down (the caller retries later);
    what was flushed before the error stays flushed.
    """
    client = get_redis()
    if client is None:
        return 0

    def step(after_id: int) -> Batch:
        rows = list(
            PendingCacheDelete.objects.filter(pk__gt=after_id).select_for_update(skip_locked=True)
            .order_by("pk").values_list("pk", "key")[:batch_size]
        )
        if not rows:
            return Batch(0, None)
        _unlink(client, [key for _, key in rows])
        PendingCacheDelete.objects.filter(pk__in=[pk for pk, _ in rows]).delete()
        return Batch(len(rows), rows[-1][0], more=len(rows) == batch_size)

    return run_batches(step).rows


# --- cleanup ------------------------------------------------------------------

def _quoted(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _local_day_sql(column: str) -> tuple[str, tuple]:
    return connection.ops.datetime_cast_date_sql(column, (), settings.CHECKOUT_TIME_ZONE)


def _tally_upsert_sql() -> tuple[str, list]:
    """INSERT … ON CONFLICT adding the carts of relation `gone` to CartDayTally, grouped in SQL.

    Rows go in (day, internship) order so that concurrent batches lock tally rows
    in the same order and cannot deadlock.
    """
    tally = _quoted(CartDayTally)
    created_day, created_params = _local_day_sql("created_at")
    abandoned_day, abandoned_params = _local_day_sql("abandoned_at")
    # `WHERE 1 = 1` keeps SQLite's parser from reading ON CONFLICT as a join's ON.
    sql = f"""
        INSERT INTO {tally} (day, internship_id, created_deleted, abandoned_deleted)
        SELECT day, internship_id, SUM(created), SUM(abandoned) FROM (
            SELECT {created_day} AS day, internship_id, 1 AS created, 0 AS abandoned FROM gone
            UNION ALL
            SELECT {abandoned_day}, internship_id, 0, 1 FROM gone WHERE abandoned_at IS NOT NULL
        ) AS counted
        WHERE 1 = 1
        GROUP BY day, internship_id
        ORDER BY day, internship_id
        ON CONFLICT (day, internship_id) DO UPDATE SET
            created_deleted = {tally}.created_deleted + excluded.created_deleted,
            abandoned_deleted = {tally}.abandoned_deleted + excluded.abandoned_deleted
    """
    return sql, [*created_params, *abandoned_params]


def cart_expire_batch(*, after_id: int, upto_id: int, cutoff: datetime) -> list[tuple[str, int]]:
    """Delete, tally and announce the expired carts with after_id < id <= upto_id; returns (token, internship_id).

    Tokens come back as their canonical text (`str(uuid)`), what cache keys are made
    of: at a million carts, parsing them into UUID objects would cost more than the DELETE.

    Call inside a transaction. The expiry condition is part of the DELETE, so a
    cart touched, converted or ordered since the batch was chosen stays. The
    announcement is written in the same transaction: a batch redone after a
    conflict, or rolled back, announces only what it finally deleted.
    """
    cart = _quoted(Cart)
    where, where_params = expired_where(cutoff)
    where = f"id > %s AND id <= %s AND {where}"
    where_params = [after_id, upto_id, *where_params]
    upsert, upsert_params = _tally_upsert_sql()
    columns = "token, internship_id, created_at, abandoned_at"
    now = timezone.now()
    # Summed in SQL and rounded once: the whole seconds of a batch, not of each cart.
    age_sum = f"CAST(ROUND(COALESCE({total_seconds_sql('created_at', '%s')}, 0)) AS BIGINT)"
    age_params = [connection.ops.adapt_datetimefield_value(now)]
    with connection.cursor() as cursor:
        # Don't wait for the WAL flush at each batch's commit: a batch lost to a
        # server crash comes back whole (carts, tally and announcement together) and
        # the next run deletes it again; its cache keys being gone already is harmless.
        skip_commit_flush(cursor)
        if is_postgres():
            # One statement: the tally and the age see exactly the rows this DELETE
            # removed. Its one result is the rows, so the age sum (computed once: the
            # CTE is materialized) leaves it through a setting local to this transaction,
            # read right after: carried on every row instead, it cost 3 % of a batch's
            # time, 4 times what the setting costs.
            cursor.execute(
                f"WITH gone AS (DELETE FROM {cart} WHERE {where} RETURNING {columns}),"
                f" tallied AS ({upsert}),"
                f" aged AS MATERIALIZED (SELECT set_config('{AGE_SETTING}', ({age_sum})::text, true) FROM gone)"
                f" SELECT token::text, internship_id FROM gone CROSS JOIN aged",
                [*where_params, *upsert_params, *age_params],
            )
            gone = cursor.fetchall()
            age = 0
            if gone:  # with no row, the join may never have needed `aged`
                cursor.execute("SELECT current_setting(%s)", [AGE_SETTING])
                (age,) = cursor.fetchone()
        else:
            # SQLite cannot DELETE inside WITH; its write transaction holds the
            # database lock, so the SELECTs and the DELETE see the same rows.
            cursor.execute(
                f"WITH gone AS (SELECT {columns} FROM {cart} WHERE {where}) {upsert}",
                [*where_params, *upsert_params],
            )
            cursor.execute(f"SELECT {age_sum} FROM {cart} WHERE {where}", [*age_params, *where_params])
            (age,) = cursor.fetchone()
            cursor.execute(f"DELETE FROM {cart} WHERE {where} RETURNING token, internship_id", where_params)
            # SQLite keeps a UUID as 32 hex digits.
            gone = [(str(uuid.UUID(token)), internship_id) for token, internship_id in cursor.fetchall()]
    if gone:
        # Counted by whoever keeps figures (the reports), on the local day of the deletion;
        # published by the relay the job asks for once it is done, not by each batch's commit.
        # A cart is deleted once, so the token of one the batch deleted names the batch for good.
        key = f"carts.expired:{gone[0][0]}"
        outbox_add("carts.expired.tally", {
            "key": key, "day": local_date(now).isoformat(), "subject": "carts",
            "counters": {"expired": len(gone), "expired_age_seconds": int(age)},
        }, key=key, deferred=True)
    return gone


def cart_abandon_batch(*, after_id: int, upto_id: int, idle_cutoff: datetime, now: datetime) -> list[int]:
    """Flag the idle active carts with after_id < id <= upto_id abandoned; returns their internship ids."""
    where, params = abandonable_where(idle_cutoff)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {_quoted(Cart)} SET status = %s, abandoned_at = %s"
            f" WHERE id > %s AND id <= %s AND {where} RETURNING internship_id",
            [CartStatus.ABANDONED, connection.ops.adapt_datetimefield_value(now), after_id, upto_id, *params],
        )
        return [internship_id for (internship_id,) in cursor.fetchall()]


def _batched(where: tuple[str, list], apply, *, after_id: int, batch_size: int, deadline: float | None,
             on_batch, after_batch=None, last_id: int | None = None, checkpoint=None) -> BatchProgress:
    """Walk the carts matching `where` by primary key up to `last_id`, `apply(after_id, upto_id)` per batch
    (its internship ids)."""
    where = up_to(where, last_id)

    def step(lo: int) -> Batch:
        upto_id = next_batch_end(where, after_id=lo, size=batch_size)
        if upto_id is None:
            return Batch(0, None)
        internship_ids = apply(lo, upto_id)
        return Batch(len(internship_ids), upto_id, tally=Counter(internship_ids), after=after_batch)

    # An order placed on a cart of a batch can commit after the DELETE's snapshot was
    # taken, and the foreign key check then refuses the delete: the batch runs again,
    # and its new snapshot sees the order and keeps the cart.
    return run_batches(
        step, after_id=after_id, deadline=deadline, on_batch=on_batch, redo_on_conflict=True, checkpoint=checkpoint,
    )


def cart_purge_expired(
    *, cutoff: datetime, batch_size: int = BATCH_SIZE, after_id: int = 0, last_id: int | None = None,
    deadline: float | None = None, cache: CacheKeyRemover | None = None, on_batch=None, checkpoint=None,
) -> BatchProgress:
    """Delete never-converted carts with no activity since `cutoff` and no order, with their cache keys
    (ids after `after_id`, up to `last_id` when given; `checkpoint` as in run_batches)."""
    cache = cache or CacheKeyRemover()

    keys: list[str] = []

    def apply(lo: int, hi: int) -> list[int]:
        gone = cart_expire_batch(after_id=lo, upto_id=hi, cutoff=cutoff)
        keys[:] = [cart_cache_key(token) for token, _ in gone]  # this attempt's alone
        return [internship_id for _, internship_id in gone]

    # Keys go once the batch's transaction has closed: a batch refused at commit (an order placed on
    # one of its carts meanwhile) and redone keeps that cart, and must not have taken its cache entry.
    return _batched(
        expired_where(cutoff), apply, after_id=after_id, batch_size=batch_size,
        deadline=deadline, on_batch=on_batch, after_batch=lambda: cache.remove(keys), last_id=last_id,
        checkpoint=checkpoint,
    )


def cart_flag_abandoned(
    *, idle_cutoff: datetime, now: datetime, batch_size: int = BATCH_SIZE, after_id: int = 0,
    last_id: int | None = None, deadline: float | None = None, on_batch=None, checkpoint=None,
) -> BatchProgress:
    """Mark active carts with no activity since `idle_cutoff` abandoned (abandoned_at = now)."""
    return _batched(
        abandonable_where(idle_cutoff),
        lambda lo, hi: cart_abandon_batch(after_id=lo, upto_id=hi, idle_cutoff=idle_cutoff, now=now),
        after_id=after_id, batch_size=batch_size, deadline=deadline, on_batch=on_batch, last_id=last_id,
        checkpoint=checkpoint,
    )


def cart_snapshot_record(*, run=None, deleted: Counter, flagged: Counter) -> CartSnapshot:
    """Store the cart statistics after a cleanup run: live carts by status and what the run did."""
    lines: dict[int, CartSnapshotLine] = {}
    live = Cart.objects.order_by().values_list("internship_id", "status").annotate(n=Count("id"))
    for internship_id, status, n in live:
        line = lines.setdefault(internship_id, CartSnapshotLine(internship_id=internship_id))
        setattr(line, status, n)
    for name, counter in (("deleted", deleted), ("flagged", flagged)):
        for internship_id, n in counter.items():
            line = lines.setdefault(internship_id, CartSnapshotLine(internship_id=internship_id))
            setattr(line, name, n)
    with transaction.atomic():
        snapshot = CartSnapshot.objects.create(
            run=run,
            cache_keys_pending=pending_cache_delete_count(),
            **{
                name: sum(getattr(line, name) for line in lines.values())
                for name in ("active", "abandoned", "converted", "deleted", "flagged")
            },
        )
        for line in lines.values():
            line.snapshot = snapshot
        CartSnapshotLine.objects.bulk_create(lines.values())
    return snapshot
