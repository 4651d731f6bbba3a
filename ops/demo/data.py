"""Realistic demo data for the checkout domain, for `seed_demo` and `demo`.

Rows are generated in time order, a bounded chunk at a time, and bulk-loaded:
COPY on PostgreSQL, bulk_create elsewhere. Memory is flat in the number of rows.
The same seed on the same database state gives the same rows.
"""
from __future__ import annotations

import io
import logging
import math
import queue
import random
import resource
import sys
import threading
import time
from bisect import bisect
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone as dt_timezone
from typing import Iterator

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.utils import timezone

from carts.models import Cart, CartStatus, cart_cache_key
from carts.services import cart_cache_value
from checkout.redis import get_redis
from checkout.timezones import local_zone
from orders.models import Enrollment, Internship, Order
from payments.models import Payment, PaymentStatus

log = logging.getLogger(__name__)

MAX_ROWS = 50_000_000
MAX_DAYS = 3650
MAX_INTERNSHIPS = 1000
CHUNK_ROWS = 20_000
CURRENCY = "INR"
# One account per this many carts (or per this many orders, whichever needs more).
CARTS_PER_USER = 10
ORDERS_PER_USER = 5
# At most this share of a slot's carts converts; the other orders are placed without a cart.
MAX_CONVERTED_SHARE = 0.6
# Tables loaded without their secondary indexes and foreign keys when they start empty: one
# sorted build per index and one validating join per foreign key after COPY cost a fraction of
# maintaining nine b-trees (one on random UUIDs) and queueing a deferred check per row.
# auth_user keeps its two indexes: a tenth of the carts' rows, and rarely empty (staff accounts).
SCHEMA_REBUILT = ("cart", "order", "payment", "enrollment")
# Sorts for the index builds stay in memory at 1 M rows.
REBUILD_MAINTENANCE_WORK_MEM = "256MB"

# Relative cart volume by weekday (Monday first) and by local hour.
WEEKDAY_FACTOR = (1.0, 1.06, 1.1, 1.04, 0.93, 0.7, 0.62)
HOUR_PROFILE = (
    0.25, 0.15, 0.1, 0.08, 0.08, 0.12, 0.25, 0.45, 0.7, 0.9, 1.0, 1.1,
    1.15, 1.05, 0.95, 0.9, 0.95, 1.05, 1.2, 1.35, 1.4, 1.25, 0.9, 0.5,
)
INTERNSHIP_TITLES = (
    ("Backend Engineering with Django", 499900),
    ("Data Analytics with Python", 349900),
    ("Full-Stack Web Development", 599900),
    ("Machine Learning Foundations", 799900),
    ("Android App Development", 449900),
    ("UI/UX Design Studio", 299900),
    ("Cloud and DevOps Practice", 699900),
    ("Digital Marketing", 199900),
    ("Cybersecurity Essentials", 549900),
    ("Product Management", 399900),
    ("Financial Modelling", 249900),
    ("Content Writing", 149900),
    ("Embedded Systems", 459900),
    ("Business Analytics", 329900),
    ("Graphic Design", 179900),
    ("Human Resources Management", 159900),
)
FIRST_NAMES = (
    "aarav", "vivaan", "aditya", "vihaan", "arjun", "sai", "reyansh", "ayaan", "krishna", "ishaan",
    "ananya", "diya", "aadhya", "saanvi", "pari", "anika", "navya", "myra", "sara", "kiara",
    "rohan", "kabir", "meera", "priya", "rahul", "sneha", "nikhil", "pooja", "karthik", "divya",
)
LAST_NAMES = (
    "sharma", "verma", "iyer", "nair", "reddy", "patel", "gupta", "singh", "kumar", "das",
    "menon", "rao", "joshi", "mehta", "banerjee", "chatterjee", "pillai", "khan", "bose", "shah",
)
PAYMENT_FAILURES = (
    ("BAD_REQUEST_ERROR", "Payment failed because the card was declined"),
    ("BAD_REQUEST_ERROR", "Payment was cancelled by the customer"),
    ("GATEWAY_ERROR", "Payment processing failed due to an error at the bank"),
    ("BAD_REQUEST_ERROR", "Payment failed because of insufficient funds"),
)
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Random bytes to Razorpay's alphabet (the slight bias of 256 % 62 does not matter for ids).
_ALNUM_BYTES = bytes(ord(_BASE62[i % 62]) for i in range(256))
_NULL = "\\N"
# Random bytes made an RFC 4122 version 4 UUID: version nibble 4, variant nibble 8, 9, a or b.
_UUID_VERSION_4 = bytes((b & 0x0F) | 0x40 for b in range(256))
_UUID_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))
_MINUTE_SECOND = tuple(f"{m:02d}:{sec:02d}+00" for m in range(60) for sec in range(60))
HOUR = 3600
DAY = 86400
# Plain strings (not the Choices members) so that COPY can str() them cheaply.
_ACTIVE, _ABANDONED, _CONVERTED = CartStatus.ACTIVE.value, CartStatus.ABANDONED.value, CartStatus.CONVERTED.value
_P_CREATED, _P_AUTHORIZED, _P_CAPTURED = (
    PaymentStatus.CREATED.value, PaymentStatus.AUTHORIZED.value, PaymentStatus.CAPTURED.value,
)
_P_FAILED, _P_REFUNDED, _P_CANCELLED = (
    PaymentStatus.FAILED.value, PaymentStatus.REFUNDED.value, PaymentStatus.CANCELLED.value,
)


@dataclass(frozen=True)
class SeedPlan:
    carts: int = 2000
    orders: int = 400
    seed: int = 42
    days: int = 60
    internships: int = 12

    def validate(self) -> None:
        """Raise ValueError with one clear sentence for the first bad option."""
        for name, value, low, high in (
            ("carts", self.carts, 0, MAX_ROWS),
            ("orders", self.orders, 0, MAX_ROWS),
            ("days", self.days, 1, MAX_DAYS),
            ("internships", self.internships, 1, MAX_INTERNSHIPS),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"--{name} must be a whole number, got {value!r}")
            if not low <= value <= high:
                raise ValueError(f"--{name} must be between {low:,} and {high:,}, got {value:,}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"--seed must be a whole number, got {self.seed!r}")

    @property
    def users(self) -> int:
        if not self.carts and not self.orders:
            return 0
        return max(1, -(-self.carts // CARTS_PER_USER), -(-self.orders // ORDERS_PER_USER))


@dataclass
class SeedResult:
    counts: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    method: str = ""
    # Tables whose secondary indexes and foreign keys were dropped for the load and recreated.
    rebuilt: tuple[str, ...] = ()
    cache_entries: int = 0
    cache_error: str = ""


def peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux (bytes on macOS, where this overstates: fine for a report).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- columns, in the order the generator emits them ---------------------------------------------

USER_COLUMNS = (
    "id", "password", "last_login", "is_superuser", "username", "first_name", "last_name", "email",
    "is_staff", "is_active", "date_joined",
)
INTERNSHIP_COLUMNS = ("id", "title", "price_paise", "currency", "is_active", "created_at")
CART_COLUMNS = (
    "id", "token", "user_id", "internship_id", "created_at", "updated_at", "status", "abandoned_at",
    "converted_at",
)
ORDER_COLUMNS = (
    "id", "user_id", "internship_id", "cart_id", "amount_paise", "currency", "status", "created_at",
    "updated_at", "paid_at", "expired_at", "cancelled_at", "refunded_at", "expiration_email_sent_at",
)
PAYMENT_COLUMNS = (
    "id", "order_id", "razorpay_order_id", "razorpay_payment_id", "amount_paise", "currency", "status",
    "created_at", "updated_at", "captured_at", "refunded_paise", "error_code", "error_description",
    "mismatch", "last_synced_at", "authorized_at", "refunded_at",
)
ENROLLMENT_COLUMNS = ("id", "order_id", "user_id", "internship_id", "created_at", "confirmation_sent_at")


TABLE_KEYS = ("user", "internship", "cart", "order", "payment", "enrollment")


def _tables():
    """(model, columns) in insertion order: parents before children."""
    return (
        (get_user_model(), USER_COLUMNS),
        (Internship, INTERNSHIP_COLUMNS),
        (Cart, CART_COLUMNS),
        (Order, ORDER_COLUMNS),
        (Payment, PAYMENT_COLUMNS),
        (Enrollment, ENROLLMENT_COLUMNS),
    )


# --- the generator ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Slot:
    start: int  # epoch seconds
    length: int
    carts: int
    orders: int


def _allocate(total: int, weights: list[float]) -> list[int]:
    """Split `total` over `weights` exactly (largest remainder), deterministically."""
    weight_sum = sum(weights)
    if total == 0 or weight_sum <= 0:
        return [0] * len(weights)
    shares = [total * w / weight_sum for w in weights]
    counts = [int(s) for s in shares]
    short = total - sum(counts)
    by_remainder = sorted(range(len(weights)), key=lambda i: (counts[i] - shares[i], i))
    for i in by_remainder[:short]:
        counts[i] += 1
    return counts


class _Generator:
    """Yields chunks of rows (dict: model -> list of tuples); times are epoch seconds."""

    def __init__(self, plan: SeedPlan, now: datetime, bases: dict, chunk_rows: int, stamp, null) -> None:
        self.plan = plan
        self.now = int(now.timestamp())
        self.bases = bases
        self.chunk_rows = chunk_rows
        # Epoch seconds (or None) to what the writer stores (a COPY literal or a datetime), and the
        # writer's NULL: rows hold values the writer takes as they are, with no pass over them to encode.
        self.stamp = stamp
        self.null = null
        self.rng = random.Random(plan.seed)
        # Identifiers also depend on where the ids start, so seeding twice into one
        # database never repeats a token or a Razorpay id.
        self.ids = random.Random(f"{plan.seed}:{bases['cart']}:{bases['order']}:{bases['payment']}")
        self.abandon_after = int(settings.CART_ABANDON_AFTER.total_seconds())
        self.order_ttl = int(settings.ORDER_TTL.total_seconds())
        self.sync_after = int(settings.PAYMENT_SYNC_AFTER.total_seconds())
        self.next_id = {key: base + 1 for key, base in bases.items()}
        self.prices: list[int] = []
        # Popularity of internships: a 1024-entry lookup table (Zipf-like weights).
        self.popular: list[int] = []

    # identifiers

    def _razorpay_id(self, prefix: str) -> str:
        return prefix + self.ids.randbytes(14).translate(_ALNUM_BYTES).decode()

    def _take(self, key: str) -> int:
        value = self.next_id[key]
        self.next_id[key] = value + 1
        return value

    # reference rows

    def internships(self) -> list[tuple]:
        created = self.now - (self.plan.days + 30) * DAY
        rows = []
        for i in range(self.plan.internships):
            title, price = INTERNSHIP_TITLES[i % len(INTERNSHIP_TITLES)]
            if i >= len(INTERNSHIP_TITLES):
                title = f"{title} (cohort {i // len(INTERNSHIP_TITLES) + 1})"
            internship_id = self._take("internship")
            self.prices.append(price)
            rows.append((internship_id, title, price, CURRENCY, True, self.stamp(created)))
        weights = [1 / (i + 1) ** 0.8 for i in range(self.plan.internships)]
        total = sum(weights)
        cumulative, running = [], 0.0
        for w in weights:
            running += w / total
            cumulative.append(running)
        base = self.bases["internship"] + 1
        self.popular = [
            base + min(bisect(cumulative, (k + 0.5) / 1024), self.plan.internships - 1) for k in range(1024)
        ]
        return rows

    def users(self) -> Iterator[list[tuple]]:
        rng = self.rng
        first_joined = self.now - (self.plan.days + 90) * DAY
        rows = []
        for _ in range(self.plan.users):
            user_id = self._take("user")
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            username = f"{first}.{last}{user_id}"
            rows.append((
                user_id, f"!{self.ids.getrandbits(160):040x}", self.null, False, username, first.title(),
                last.title(), f"{username}@example.com", False, True,
                self.stamp(first_joined + rng.randrange(90 * DAY)),
            ))
            if len(rows) >= self.chunk_rows:
                yield rows
                rows = []
        if rows:
            yield rows

    # the timeline

    def slots(self) -> Iterator[_Slot]:
        """Hour slots over the last `days` local days up to now, sized by weekday and hour."""
        rng, zone = self.rng, local_zone()
        today = datetime.fromtimestamp(self.now, zone).date()
        hours: list[tuple[int, int]] = []
        cart_weights: list[float] = []
        order_weights: list[float] = []
        for offset in range(self.plan.days - 1, -1, -1):
            day: date = today - timedelta(days=offset)
            day_start = int(datetime.combine(day, datetime.min.time(), tzinfo=zone).timestamp())
            progress = 1 - offset / max(self.plan.days, 1)
            day_weight = WEEKDAY_FACTOR[day.weekday()] * (0.85 + 0.3 * progress) * rng.lognormvariate(0, 0.12)
            conversion = rng.lognormvariate(0, 0.2)
            for hour, profile in enumerate(HOUR_PROFILE):
                start = day_start + hour * HOUR
                if start >= self.now:
                    break
                length = min(HOUR, self.now - start)
                weight = day_weight * profile * length / HOUR
                hours.append((start, length))
                cart_weights.append(weight)
                order_weights.append(weight * conversion)
        cart_counts = _allocate(self.plan.carts, cart_weights)
        order_counts = _allocate(self.plan.orders, order_weights)
        for (start, length), carts, orders in zip(hours, cart_counts, order_counts):
            # A slot too big for one chunk (few days, many rows) is cut into even pieces.
            pieces = max(1, -(-max(carts, orders) // self.chunk_rows))
            cart_parts, order_parts = _allocate(carts, [1] * pieces), _allocate(orders, [1] * pieces)
            for p in range(pieces):
                piece_start = start + length * p // pieces
                piece_length = max(1, start + length * (p + 1) // pieces - piece_start)
                yield _Slot(piece_start, piece_length, cart_parts[p], order_parts[p])

    def batches(self) -> Iterator[tuple[str, list[tuple]]]:
        """(table key, rows) in insertion order, parents first, each at most about chunk_rows long."""
        yield "internship", self.internships()
        for rows in self.users():
            yield "user", rows
        for chunk in self.chunks():
            for key, rows in chunk.items():
                if rows:
                    yield key, rows

    def chunks(self) -> Iterator[dict[str, list[tuple]]]:
        chunk = self._empty()
        for slot in self.slots():
            self._fill(slot, chunk)
            if len(chunk["cart"]) + len(chunk["order"]) >= self.chunk_rows:
                yield chunk
                chunk = self._empty()
        if chunk["cart"] or chunk["order"]:
            yield chunk

    @staticmethod
    def _empty() -> dict[str, list[tuple]]:
        return {"cart": [], "order": [], "payment": [], "enrollment": []}

    def _fill(self, slot: _Slot, chunk: dict[str, list[tuple]]) -> None:
        # Hot loop: random() scaled by hand is several times cheaper than randrange/randint.
        rng, now, popular, stamp, null = self.rng, self.now, self.popular, self.stamp, self.null
        rand = rng.random
        user_base, users = self.bases["user"] + 1, self.plan.users
        start, length = slot.start, slot.length
        convert_cap = int(slot.carts * MAX_CONVERTED_SHARE + rand())
        converting = min(slot.orders, convert_cap)
        converted = set(rng.sample(range(slot.carts), converting)) if converting else set()
        # (created_at, user_id, internship_id, cart_id or null) of the orders placed in this slot.
        placed: list[tuple[int, int, int, int | str | None]] = []
        carts = chunk["cart"]
        times = sorted([start + int(rand() * length) for _ in range(slot.carts)])
        # One draw of random bytes for the slot's tokens, made version 4 in place (byte 6 of each
        # 16 holds the version, byte 8 the variant); 32 hex digits each, which uuid input takes.
        raw = bytearray(self.ids.randbytes(16 * slot.carts))
        raw[6::16] = raw[6::16].translate(_UUID_VERSION_4)
        raw[8::16] = raw[8::16].translate(_UUID_VARIANT)
        hexes = raw.hex()
        abandon_after, max_idle, ln = self.abandon_after, 6 * HOUR, math.log
        cart_id = self.next_id["cart"] - 1
        for i, created in enumerate(times):
            cart_id += 1
            token = hexes[32 * i:32 * i + 32]
            internship_id = popular[int(rand() * 1024)]
            if i in converted:
                user_id = user_base + int(rand() * users)
                converted_at = min(now, created + 60 + int(rand() * 1740))
                at = stamp(converted_at)
                carts.append((
                    cart_id, token, user_id, internship_id, stamp(created), at, _CONVERTED, null, at,
                ))
                placed.append((converted_at, user_id, internship_id, cart_id))
                continue
            user_id = user_base + int(rand() * users) if rand() < 0.75 else null
            # Last touched after an exponential idle time (mean 10 minutes, at most 6 hours);
            # expovariate's formula inline, and comparisons for min(), save two calls per cart.
            idle = int(-ln(1.0 - rand()) * 600)
            updated = created + (idle if idle < max_idle else max_idle)
            if updated > now:
                updated = now
            status, abandoned_at = _ACTIVE, null
            # Most carts idle past the threshold were flagged by an earlier cleanup run;
            # the rest are left for the next one.
            if now - updated > abandon_after and rand() < 0.8:
                status = _ABANDONED
                abandoned_at = stamp(min(now, updated + abandon_after + int(rand() * 900)))
            carts.append((
                cart_id, token, user_id, internship_id, stamp(created), stamp(updated), status,
                abandoned_at, null,
            ))
        self.next_id["cart"] = cart_id + 1
        for _ in range(slot.orders - converting):
            placed.append((
                start + int(rand() * length), user_base + int(rand() * users), popular[int(rand() * 1024)], null,
            ))
        placed.sort(key=lambda p: p[0])
        for created, user_id, internship_id, cart_id in placed:
            self._order(chunk, created, user_id, internship_id, cart_id)

    def _order(self, chunk, created: int, user_id: int, internship_id: int, cart_id) -> None:
        rng, now, stamp, null = self.rng, self.now, self.stamp, self.null
        rand = rng.random
        order_id = self._take("order")
        amount = self.prices[internship_id - self.bases["internship"] - 1]
        age = now - created
        roll = rand()
        if age < self.sync_after:
            status = "pending" if roll < 0.55 else "paid" if roll < 0.95 else "cancelled"
        elif age < self.order_ttl:
            status = ("pending" if roll < 0.12 else "paid" if roll < 0.85
                      else "cancelled" if roll < 0.95 else "refunded")
        else:
            status = ("paid" if roll < 0.67 else "expired" if roll < 0.84 else "cancelled" if roll < 0.91
                      else "refunded" if roll < 0.96 else "pending")
        paid_at = expired_at = cancelled_at = refunded_at = email_sent_at = None
        updated = created
        payments = chunk["payment"]

        def between(low: int, high: int) -> int:
            return low + int(rand() * (high - low + 1))

        def payment(status, p_created, p_updated, *, with_payment_id, authorized_at=None, captured_at=None,
                    refunded_at=None, error=("", "")):
            payments.append((
                self._take("payment"), order_id, self._razorpay_id("order_"),
                self._razorpay_id("pay_") if with_payment_id else null, amount, CURRENCY, status,
                stamp(p_created), stamp(p_updated), stamp(captured_at), amount if refunded_at else 0,
                error[0], error[1], "", null, stamp(authorized_at), stamp(refunded_at),
            ))

        if status in ("paid", "refunded"):
            paid_at = min(now, created + between(30, 900))
            if status == "refunded":
                refunded_at = paid_at + between(HOUR, 7 * DAY)
                if refunded_at > now:
                    status, refunded_at = "paid", None
            step = (paid_at - created) // 8
            if rand() < 0.06:  # an earlier attempt failed before this one went through
                payment(_P_FAILED, created + step, created + 2 * step, with_payment_id=True,
                        error=rng.choice(PAYMENT_FAILURES))
            if status == "refunded":
                payment(_P_REFUNDED, created + 3 * step, refunded_at, with_payment_id=True,
                        authorized_at=created + 5 * step, captured_at=paid_at, refunded_at=refunded_at)
                updated = refunded_at
            else:
                payment(_P_CAPTURED, created + 3 * step, paid_at, with_payment_id=True,
                        authorized_at=created + 5 * step, captured_at=paid_at)
                updated = paid_at
                enrolled = min(now, paid_at + between(1, 20))
                confirmed = enrolled + between(2, 30)
                chunk["enrollment"].append((
                    self._take("enrollment"), order_id, user_id, internship_id, stamp(enrolled),
                    stamp(confirmed) if confirmed <= now else null,
                ))
        elif status == "expired":
            expired_at = min(now, created + self.order_ttl + int(rand() * HOUR))
            email_sent_at = min(now, expired_at + between(1, 60))
            updated = expired_at
            p_created = created + between(5, 120)
            roll = rand()
            if roll < 0.3:
                payment(_P_CANCELLED, p_created, expired_at, with_payment_id=False)
            elif roll < 0.5:
                payment(_P_FAILED, p_created, p_created + between(5, 300), with_payment_id=True,
                        error=rng.choice(PAYMENT_FAILURES))
        elif status == "cancelled":
            cancelled_at = min(now, created + between(60, 4 * HOUR))
            updated = cancelled_at
            p_created = min(cancelled_at, created + between(5, 60))
            if rand() < 0.6:
                payment(_P_FAILED, p_created, cancelled_at, with_payment_id=True,
                        error=rng.choice(PAYMENT_FAILURES))
            else:
                payment(_P_CANCELLED, p_created, cancelled_at, with_payment_id=False)
        else:  # pending: no payment yet, or one the gateway has not settled (payment_sync's work)
            p_created = min(now, created + between(5, 120))
            roll = rand()
            if roll < 0.4:
                payment(_P_CREATED, p_created, p_created, with_payment_id=False)
            elif roll < 0.6:
                authorized = min(now, p_created + between(5, 120))
                payment(_P_AUTHORIZED, p_created, authorized, with_payment_id=True, authorized_at=authorized)
            elif roll < 0.65:
                payment(_P_FAILED, p_created, min(now, p_created + between(5, 120)),
                        with_payment_id=True, error=rng.choice(PAYMENT_FAILURES))
        chunk["order"].append((
            order_id, user_id, internship_id, cart_id, amount, CURRENCY, status, stamp(created), stamp(updated),
            stamp(paid_at), stamp(expired_at), stamp(cancelled_at), stamp(refunded_at), stamp(email_sent_at),
        ))


# --- writers --------------------------------------------------------------------------------

class _CopyWriter:
    """PostgreSQL: COPY ... FROM STDIN (text format) from an in-memory chunk."""

    method = "copy"
    null = _NULL

    def __init__(self) -> None:
        self.stamp = self._stamper()

    @staticmethod
    def _stamper():
        """Epoch seconds as a timestamptz literal, from a cached "date hour:" prefix.

        A closure over locals: it runs a few times per row, the hottest call of the generator.
        """
        hours: dict[int, str] = {}
        cached = hours.get

        def stamp(epoch: int | None) -> str:
            if epoch is None:
                return _NULL
            hour = epoch // HOUR
            prefix = cached(hour)
            if prefix is None:
                prefix = hours[hour] = datetime.fromtimestamp(hour * HOUR, dt_timezone.utc).strftime("%Y-%m-%d %H:")
            return prefix + _MINUTE_SECOND[epoch - hour * HOUR]

        return stamp

    @staticmethod
    def encode(model, columns, rows) -> io.BytesIO:
        # Values are ints, bools, \N, or plain strings without tabs, newlines or backslashes, so
        # %-formatting a whole row at once is a valid text-format line (and the cheapest to make).
        # Held as bytes while queued: a StringIO would keep four bytes a character.
        line = "\t".join(["%s"] * len(columns)) + "\n"
        return io.BytesIO("".join([line % row for row in rows]).encode())

    @staticmethod
    def load(model, columns, payload: io.BytesIO) -> None:
        table = connection.ops.quote_name(model._meta.db_table)
        column_list = ", ".join(connection.ops.quote_name(model._meta.get_field(c).column) for c in columns)
        with connection.cursor() as cursor:
            cursor.copy_expert(f"COPY {table} ({column_list}) FROM STDIN", payload)


class _BulkWriter:
    """Any other database: bulk_create in batches."""

    method = "bulk_create"
    null = None

    @staticmethod
    def stamp(epoch: int | None) -> datetime | None:
        return None if epoch is None else datetime.fromtimestamp(epoch, dt_timezone.utc)

    @staticmethod
    def encode(model, columns, rows) -> list:
        return [model(**dict(zip(columns, row))) for row in rows]

    @staticmethod
    def load(model, columns, payload: list) -> None:
        model.objects.bulk_create(payload, batch_size=1000)


def _writer(method: str | None):
    method = method or ("copy" if connection.vendor == "postgresql" else "bulk_create")
    if method == "copy":
        if connection.vendor != "postgresql":
            raise ValueError("COPY needs PostgreSQL")
        return _CopyWriter()
    if method == "bulk_create":
        return _BulkWriter()
    raise ValueError(f"unknown load method {method!r}")


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
        for key, (model, _) in zip(TABLE_KEYS, _tables()):
            table = connection.ops.quote_name(model._meta.db_table)
            if connection.vendor == "postgresql":
                cursor.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
            cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}")
            bases[key] = cursor.fetchone()[0]
    return bases


def _advance_sequences(bases: dict[str, int], next_ids: dict[str, int]) -> None:
    # SQLite's AUTOINCREMENT follows explicit ids by itself.
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        for key, (model, _) in zip(TABLE_KEYS, _tables()):
            if next_ids[key] - 1 > bases[key]:
                cursor.execute(
                    "SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)",
                    [model._meta.db_table, next_ids[key] - 1],
                )


# --- secondary indexes and foreign keys, set aside for the load -------------------------------

_CONSTRAINTS_SET_ASIDE = """
    SELECT c.contype = 'f', format('ALTER TABLE %%s DROP CONSTRAINT %%I', c.conrelid::regclass, c.conname),
           format('ALTER TABLE %%s ADD CONSTRAINT %%I %%s', c.conrelid::regclass, c.conname,
                  pg_get_constraintdef(c.oid))
    FROM pg_constraint c
    WHERE c.conrelid = ANY(%s::regclass[])
      AND (c.contype = 'f'
           -- a unique constraint that a foreign key points at must stay
           OR (c.contype = 'u' AND NOT EXISTS (
               SELECT 1 FROM pg_constraint r WHERE r.contype = 'f' AND r.conindid = c.conindid)))
    -- foreign keys are dropped first and added last
    ORDER BY c.contype = 'f' DESC, c.conrelid::regclass::text, c.conname
"""
# Indexes of their own; the primary key and the unique constraints' indexes go with their constraints.
# Partial and expression indexes stay: their deparsed definitions do not always parse back to the
# same text (`IN (...)` comes back as a differently cast ARRAY), and the ones we have are cheap to
# maintain (few rows, or appended in time order).
_INDEXES_SET_ASIDE = """
    SELECT format('DROP INDEX %%s', i.indexrelid::regclass), pg_get_indexdef(i.indexrelid)
    FROM pg_index i
    WHERE i.indrelid = ANY(%s::regclass[]) AND i.indpred IS NULL AND i.indexprs IS NULL
      AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid)
    ORDER BY i.indrelid::regclass::text, i.indexrelid::regclass::text
"""


def _schema_set_aside(tables: list[str]) -> list[str]:
    """Drop the secondary indexes and foreign keys of `tables`; return the statements that recreate them.

    The definitions are read from the catalog just before the drop, so what comes back is exactly
    what the migrations made. Runs inside the loading transaction: a failure before the
    statements have run rolls the drops back with the rows.
    """
    if not tables:
        return []
    with connection.cursor() as cursor:
        cursor.execute(_CONSTRAINTS_SET_ASIDE, [tables])
        constraints = cursor.fetchall()
        cursor.execute(_INDEXES_SET_ASIDE, [tables])
        indexes = cursor.fetchall()
        for drop in [drop for _, drop, _ in constraints] + [drop for drop, _ in indexes]:
            cursor.execute(drop)
    # Indexes, then unique constraints, then the foreign keys, each validated by one join.
    return (
        [create for _, create in indexes]
        + [create for is_fk, _, create in constraints if not is_fk]
        + [create for is_fk, _, create in constraints if is_fk]
    )


def _schema_restore(statements: list[str]) -> None:
    with connection.cursor() as cursor:
        if statements:
            cursor.execute(f"SET LOCAL maintenance_work_mem = '{REBUILD_MAINTENANCE_WORK_MEM}'")
        for statement in statements:
            cursor.execute(statement)


# --- services ---------------------------------------------------------------------------------

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
    writer = _writer(method)
    result.method = writer.method
    tables = dict(zip(TABLE_KEYS, _tables()))
    with transaction.atomic():
        bases = _lock_and_find_bases()
        restore: list[str] = []
        if writer.method == "copy":
            with connection.cursor() as cursor:
                # One commit at the end; a crash before it loses the seed, never other data.
                cursor.execute("SET LOCAL synchronous_commit = off")
            if rebuild_schema:
                # Ids start at 1, so a base of 0 is an empty table.
                result.rebuilt = tuple(
                    tables[key][0]._meta.db_table for key in SCHEMA_REBUILT if bases[key] == 0
                )
                restore = _schema_set_aside(list(result.rebuilt))
        generator = _Generator(plan, now, bases, chunk_rows, writer.stamp, writer.null)

        def encoded():
            for key, rows in generator.batches():
                yield key, len(rows), writer.encode(*tables[key], rows)

        for key, n, payload in _in_background(encoded()):
            writer.load(*tables[key], payload)
            result.counts[key + "s"] += n
        _schema_restore(restore)
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


def cart_cache_warm(*, id_range: tuple[int, int] | None = None, now: datetime | None = None,
                    batch_size: int = 5000) -> int:
    """Write `cart:<token>` for active carts younger than CART_TTL, expiring with the cart.

    Pipelined, in batches by primary key. Returns how many keys were written (0 without Redis).
    """
    client = get_redis()
    if client is None:
        return 0
    now = now or timezone.now()
    ttl = settings.CART_TTL
    carts = Cart.objects.filter(status=CartStatus.ACTIVE, created_at__gt=now - ttl)
    if id_range is not None:
        carts = carts.filter(id__range=id_range)
    written, last_id = 0, 0
    while True:
        batch = list(
            carts.filter(id__gt=last_id).order_by("id").values_list(
                "id", "token", "user_id", "internship_id", "created_at", "updated_at"
            )[:batch_size]
        )
        if not batch:
            return written
        pipe = client.pipeline(transaction=False)
        for cart_id, token, user_id, internship_id, created_at, updated_at in batch:
            remaining = math.ceil((created_at + ttl - now).total_seconds())
            value = cart_cache_value(
                cart_id=cart_id, internship_id=internship_id, status=CartStatus.ACTIVE, updated_at=updated_at
            )
            pipe.set(cart_cache_key(token), value, ex=max(1, remaining))
        pipe.execute()
        written += len(batch)
        last_id = batch[-1][0]


def demo_data_reset() -> Counter:
    """Empty the domain tables (enrollments, payments, orders, carts, internships), the seeded

    accounts (every user that is neither staff nor superuser) and the `cart:*` cache keys.
    """
    counts: Counter = Counter()
    with transaction.atomic():
        for model in (Enrollment, Payment, Order, Cart, Internship):
            counts[model._meta.model_name] = model.objects.count()
        if connection.vendor == "postgresql":
            tables = ", ".join(
                connection.ops.quote_name(m._meta.db_table) for m in (Enrollment, Payment, Order, Cart, Internship)
            )
            # CASCADE: report rows that point at internships go with them. TRUNCATE refuses
            # tables with deferred checks pending in this transaction, so run those first.
            with connection.cursor() as cursor:
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
                cursor.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
        else:
            for model in (Enrollment, Payment, Order, Cart, Internship):
                model.objects.all().delete()
        users = get_user_model().objects.filter(is_staff=False, is_superuser=False)
        last_id = 0
        while True:
            ids = list(users.filter(id__gt=last_id).order_by("id").values_list("id", flat=True)[:5000])
            if not ids:
                break
            get_user_model().objects.filter(id__in=ids).delete()
            counts["user"] += len(ids)
            last_id = ids[-1]
    client = get_redis()
    if client is not None:
        try:
            batch = []
            for key in client.scan_iter(match="cart:*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    counts["cache_key"] += client.unlink(*batch)
                    batch = []
            if batch:
                counts["cache_key"] += client.unlink(*batch)
        except Exception as exc:  # the tables are empty; stale keys expire with their TTL
            log.warning("reset: cart cache keys not removed: %s: %s", type(exc).__name__, exc)
    return counts


def one_line_errors(parser, name: str):
    """Make a command's usage errors one line and exit status 2 (argparse prints the whole usage)."""

    def error(message):
        if not parser.called_from_command_line:
            raise CommandError(f"{message}", returncode=2)
        sys.stderr.write(f"{name}: {message}\n")
        sys.exit(2)

    parser.error = error
    return parser


def fake_gateway_populate(fake, *, seed: int = 0, batch_size: int = 2000) -> Counter:
    """Give the local fake Razorpay what the real one would know about the seeded payments.

    Settled payments mirror our rows; of the payments still `created` here, some were in
    fact paid (or failed) at the gateway and only payment_sync will find out.
    """
    rng = random.Random(seed)
    counts: Counter = Counter()
    gateway_status = {
        PaymentStatus.AUTHORIZED: "authorized", PaymentStatus.CAPTURED: "captured",
        PaymentStatus.FAILED: "failed", PaymentStatus.REFUNDED: "refunded",
    }
    rows = Payment.objects.order_by("id").values_list(
        "razorpay_order_id", "razorpay_payment_id", "amount_paise", "currency", "status", "error_code",
        "error_description",
    )
    for order_id, payment_id, amount, currency, status, error_code, error_description in rows.iterator(
        chunk_size=batch_size
    ):
        fake.add_order(amount=amount, currency=currency, order_id=order_id)
        counts["orders"] += 1
        if payment_id and status in gateway_status:
            fake.add_payment(
                order_id=order_id, payment_id=payment_id, status=gateway_status[status],
                error_code=error_code or None, error_description=error_description or None,
            )
            counts[gateway_status[status]] += 1
        elif status == PaymentStatus.CREATED:
            roll = rng.random()
            if roll < 0.5:
                fake.add_payment(order_id=order_id, status="captured")
                counts["captured_unseen"] += 1
            elif roll < 0.7:
                fake.add_payment(order_id=order_id, status="failed")
                counts["failed_unseen"] += 1
    return counts
