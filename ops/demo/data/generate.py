"""The seed's rows: users, internships, then carts, orders, payments and enrollments in time order.

Deterministic for a plan and the ids already taken; a bounded chunk at a time, in the writer's encoding.
"""
from __future__ import annotations

import math
import random
from bisect import bisect
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Iterator

from django.conf import settings
from django.contrib.auth import get_user_model

from carts.models import Cart, CartStatus
from checkout.timezones import local_zone
from ops.demo.data.plan import DAY, HOUR, SeedPlan
from orders.models import Enrollment, Internship, Order
from payments.models import Payment, PaymentStatus

CURRENCY = "INR"
# At most this share of a slot's carts converts; the other orders are placed without a cart.
MAX_CONVERTED_SHARE = 0.6

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
# Random bytes made an RFC 4122 version 4 UUID: version nibble 4, variant nibble 8, 9, a or b.
_UUID_VERSION_4 = bytes((b & 0x0F) | 0x40 for b in range(256))
_UUID_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))
# Plain strings (not the Choices members) so that COPY can str() them cheaply.
_ACTIVE, _ABANDONED, _CONVERTED = CartStatus.ACTIVE.value, CartStatus.ABANDONED.value, CartStatus.CONVERTED.value
_P_CREATED, _P_AUTHORIZED, _P_CAPTURED = (
    PaymentStatus.CREATED.value, PaymentStatus.AUTHORIZED.value, PaymentStatus.CAPTURED.value,
)
_P_FAILED, _P_REFUNDED, _P_CANCELLED = (
    PaymentStatus.FAILED.value, PaymentStatus.REFUNDED.value, PaymentStatus.CANCELLED.value,
)


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


def seeded_tables():
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


class Generator:
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

