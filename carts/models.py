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
