"""Reads on carts: the cleanup's conditions and batch bounds, and cart statistics by day."""
from __future__ import annotations

from datetime import date, datetime, timedelta

from django.db import connection

from carts.models import Cart, CartDayTally, CartSnapshot, CartStatus, PendingCacheDelete
from checkout.rollups import events_by_local_day
from orders.models import Order

COUNT_KEYS = ("created", "abandoned", "converted")


def _cart_table() -> str:
    return connection.ops.quote_name(Cart._meta.db_table)


def _at(value: datetime):
    return connection.ops.adapt_datetimefield_value(value)


def expired_where(cutoff: datetime) -> tuple[str, list]:
    """SQL condition on the cart table: never converted, no activity since `cutoff`, no order.

    A cart that was created before the cutoff but is still in use is not
    expired: deleting it would break a live checkout.
    """
    cart = _cart_table()
    order = connection.ops.quote_name(Order._meta.db_table)
    sql = (
        f"{cart}.status <> %s AND {cart}.created_at < %s AND {cart}.updated_at < %s"
        f" AND NOT EXISTS (SELECT 1 FROM {order} WHERE {order}.cart_id = {cart}.id)"
    )
    return sql, [CartStatus.CONVERTED, _at(cutoff), _at(cutoff)]


def abandonable_where(idle_cutoff: datetime) -> tuple[str, list]:
    """SQL condition on the cart table: active with no activity since `idle_cutoff`."""
    cart = _cart_table()
    return f"{cart}.status = %s AND {cart}.updated_at < %s", [CartStatus.ACTIVE, _at(idle_cutoff)]


def next_batch_end(where: tuple[str, list], *, after_id: int, size: int) -> int | None:
    """The id closing the next batch of at most `size` matching carts after `after_id`; None when none is left.

    A keyset step on the primary key: no OFFSET, and nothing but one id leaves the database.
    """
    sql, params = where
    cart = _cart_table()
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT MAX(id) FROM (SELECT {cart}.id AS id FROM {cart} WHERE {cart}.id > %s AND {sql}"
            f" ORDER BY {cart}.id LIMIT %s) AS batch",
            [after_id, *params, size],
        )
        return cursor.fetchone()[0]


def up_to(where: tuple[str, list], last_id: int | None) -> tuple[str, list]:
    """`where` limited to ids up to `last_id` (None: no limit)."""
    if last_id is None:
        return where
    sql, params = where
    return f"{sql} AND {_cart_table()}.id <= %s", [*params, last_id]


def cleanup_id_ranges(*, expire_cutoff: datetime, idle_cutoff: datetime, rows: int) -> list[tuple[int, int]]:
    """Id ranges (after_id, last_id] holding about `rows` carts to delete or flag each, covering them all.

    One keyset step per range on the primary key, as the cleanup's own batches walk it.
    """
    expired, expired_params = expired_where(expire_cutoff)
    idle, idle_params = abandonable_where(idle_cutoff)
    either = (f"(({expired}) OR ({idle}))", [*expired_params, *idle_params])
    ranges, after_id = [], 0
    while (last_id := next_batch_end(either, after_id=after_id, size=rows)) is not None:
        ranges.append((after_id, last_id))
        after_id = last_id
    return ranges


def cart_cleanup_preview(*, expire_cutoff: datetime, idle_cutoff: datetime) -> dict[str, int]:
    """How many carts a cleanup would delete and flag abandoned now (one scan, nothing written)."""
    expired, expired_params = expired_where(expire_cutoff)
    idle, idle_params = abandonable_where(idle_cutoff)
    # The cleanup deletes first, so an idle cart that is also expired counts as deleted only.
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT COALESCE(SUM(CASE WHEN {expired} THEN 1 ELSE 0 END), 0),"
            f" COALESCE(SUM(CASE WHEN {idle} AND NOT ({expired}) THEN 1 ELSE 0 END), 0)"
            f" FROM {_cart_table()} WHERE ({expired}) OR ({idle})",
            [*expired_params, *idle_params, *expired_params, *expired_params, *idle_params],
        )
        would_delete, would_flag = cursor.fetchone()
    return {"would_delete": int(would_delete), "would_flag_abandoned": int(would_flag)}


def pending_cache_delete_count() -> int:
    return PendingCacheDelete.objects.count()


def cart_snapshot_latest() -> CartSnapshot | None:
    return CartSnapshot.objects.order_by("-taken_at", "-pk").prefetch_related("lines").first()


def cart_counts_by_day(start: date, end: date) -> dict[date, dict[int | None, dict[str, int]]]:
    """Carts created, abandoned and converted per local day in [start, end) and internship.

    Deleted carts count too (from CartDayTally), so a day's numbers do not
    shrink when cart_cleanup removes its carts. Every day of the range is a key;
    an internship appears under a day when it has a non-zero count, with all
    three keys. The internship key is None for tallies whose internship was
    since removed. Two queries, whatever the range: one scan of the
    carts for the three events (checkout.rollups), one of the tallies.
    """
    if start > end:
        raise ValueError(f"start {start} is after end {end}")
    result: dict[date, dict[int | None, dict[str, int]]] = {
        start + timedelta(days=n): {} for n in range((end - start).days)
    }
    if not result:
        return result

    def add(day: date, internship_id: int | None, key: str, n: int) -> None:
        counts = result[day].setdefault(internship_id, dict.fromkeys(COUNT_KEYS, 0))
        counts[key] += n

    # One scan answers the three events: a cart counts once for each of its events in the range.
    for day, event, (internship_id,), n, _ in events_by_local_day(
        Cart.objects.all(), {"created": "created_at", "abandoned": "abandoned_at", "converted": "converted_at"},
        start, end, group=("internship_id",),
    ):
        add(day, internship_id, event, n)
    tallies = CartDayTally.objects.filter(day__gte=start, day__lt=end).values_list(
        "day", "internship_id", "created_deleted", "abandoned_deleted"
    )
    for day, internship_id, created, abandoned in tallies:
        if created:
            add(day, internship_id, "created", created)
        if abandoned:
            add(day, internship_id, "abandoned", abandoned)
    return result
