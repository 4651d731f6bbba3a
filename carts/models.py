"""Carts: a visitor's pending choice of an internship, cached in Redis as `cart:<token>`."""
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class CartStatus(models.TextChoices):
    ACTIVE = "active"
    ABANDONED = "abandoned"
    CONVERTED = "converted"


class Cart(models.Model):
    Status = CartStatus

    token = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="carts",
    )
    internship = models.ForeignKey(
        "orders.Internship", on_delete=models.CASCADE, related_name="carts"
    )
    created_at = models.DateTimeField(default=timezone.now)
    # Last activity. Set by the services that touch a cart (not auto_now, so
    # bulk loads and tests can state it).
    updated_at = models.DateTimeField(default=timezone.now)
    status = models.CharField(max_length=16, choices=CartStatus.choices, default=CartStatus.ACTIVE)
    abandoned_at = models.DateTimeField(null=True, blank=True)
    converted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["created_at"], name="cart_created_idx"),
            models.Index(fields=["abandoned_at"], name="cart_abandoned_idx"),
            models.Index(fields=["converted_at"], name="cart_converted_idx"),
            # cart_cleanup: active carts by last activity (abandon)...
            models.Index(
                fields=["updated_at"], condition=Q(status="active"), name="cart_active_updated_idx"
            ),
            # ...and never-converted carts by age (expiry).
            models.Index(
                fields=["created_at"], condition=~Q(status="converted"),
                name="cart_unconverted_created_idx",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=~Q(status="converted") | Q(converted_at__isnull=False),
                name="cart_converted_has_converted_at",
            ),
        ]

    @property
    def cache_key(self) -> str:
        return cart_cache_key(self.token)

    def __str__(self) -> str:
        return f"cart {self.token} ({self.status})"


def cart_cache_key(token) -> str:
    return f"cart:{token}"


class CartDayTally(models.Model):
    """What deleted carts leave behind: per local day and internship, how many were created or abandoned.

    cart_cleanup adds to these in the transaction that deletes the carts, so the
    daily report counts a cart on the day it was created (or abandoned) even when
    the report runs after the cart is gone. Live carts are counted from carts_cart.
    """

    day = models.DateField(help_text="Local date in CHECKOUT_TIME_ZONE.")
    # SET_NULL: the history outlives an internship that is removed later.
    internship = models.ForeignKey(
        "orders.Internship", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_deleted = models.PositiveBigIntegerField(default=0)
    abandoned_deleted = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-day", "internship_id"]
        constraints = [
            models.UniqueConstraint(fields=["day", "internship"], name="cart_tally_day_internship_uniq"),
        ]

    def __str__(self) -> str:
        return f"deleted carts of {self.day} (internship {self.internship_id})"


class CartSnapshot(models.Model):
    """Cart statistics as one cart_cleanup run left them."""

    run = models.ForeignKey(
        "ops.JobRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    taken_at = models.DateTimeField(default=timezone.now)
    active = models.PositiveBigIntegerField(default=0)
    abandoned = models.PositiveBigIntegerField(default=0)
    converted = models.PositiveBigIntegerField(default=0)
    deleted = models.PositiveBigIntegerField(default=0, help_text="Deleted by this run.")
    flagged = models.PositiveBigIntegerField(default=0, help_text="Marked abandoned by this run.")
    cache_keys_pending = models.PositiveBigIntegerField(
        default=0, help_text="Cache keys of deleted carts still waiting for Redis."
    )

    class Meta:
        ordering = ["-taken_at"]
        indexes = [models.Index(fields=["taken_at"], name="cart_snapshot_taken_idx")]

    def __str__(self) -> str:
        return f"cart snapshot {self.taken_at:%Y-%m-%d %H:%M}"


class CartSnapshotLine(models.Model):
    """One internship's line of a CartSnapshot."""

    snapshot = models.ForeignKey(CartSnapshot, on_delete=models.CASCADE, related_name="lines")
    internship = models.ForeignKey(
        "orders.Internship", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    active = models.PositiveBigIntegerField(default=0)
    abandoned = models.PositiveBigIntegerField(default=0)
    converted = models.PositiveBigIntegerField(default=0)
    deleted = models.PositiveBigIntegerField(default=0)
    flagged = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["snapshot", "internship_id"]
        constraints = [
            models.UniqueConstraint(fields=["snapshot", "internship"], name="cart_snapshot_line_uniq"),
        ]


class PendingCacheDelete(models.Model):
    """A cache key whose data is gone but which Redis could not remove at the time.

    The cache_cleanup task (and the start of every cart_cleanup run) removes the
    keys once Redis answers again, then these rows.
    """

    key = models.CharField(max_length=255, unique=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.key
