"""Internships on sale, the orders placed for them, and the enrollments paid orders create."""
from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Internship(models.Model):
    title = models.CharField(max_length=200)
    price_paise = models.BigIntegerField(help_text="Price in paise (minor units).")
    currency = models.CharField(max_length=3, default="INR")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["title"]
        constraints = [
            models.CheckConstraint(
                condition=Q(price_paise__gte=0), name="internship_price_non_negative"
            ),
        ]

    def __str__(self) -> str:
        return self.title


class OrderStatus(models.TextChoices):
    PENDING = "pending"
    PAID = "paid"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    REFUNDED = "refunded"


class Order(models.Model):
    Status = OrderStatus

    # Nullable so that an order outlives a deleted user or internship; such
    # orders are "orphaned" and handled by order_cleanup.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="orders",
    )
    internship = models.ForeignKey(
        Internship, null=True, blank=True, on_delete=models.SET_NULL, related_name="orders"
    )
    # A cart with an order is never deleted by cart_cleanup; PROTECT says so in the ORM too.
    cart = models.ForeignKey(
        "carts.Cart", null=True, blank=True, on_delete=models.PROTECT, related_name="orders"
    )
    amount_paise = models.BigIntegerField()
    currency = models.CharField(max_length=3, default="INR")
    status = models.CharField(
        max_length=16, choices=OrderStatus.choices, default=OrderStatus.PENDING
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    paid_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    refunded_at = models.DateTimeField(null=True, blank=True)
    expiration_email_sent_at = models.DateTimeField(null=True, blank=True)
    # When a payment of this order last failed while the order waited for one; the customer is
    # told once (payment_failed_email_sent_at), unless the order is paid or closed first.
    payment_failed_at = models.DateTimeField(null=True, blank=True)
    payment_failed_email_sent_at = models.DateTimeField(null=True, blank=True)
    refund_email_sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["created_at"], name="order_created_idx"),
            models.Index(fields=["paid_at"], name="order_paid_idx"),
            models.Index(fields=["expired_at"], name="order_expired_idx"),
            # order_cleanup scans pending orders by age.
            models.Index(
                fields=["created_at"], condition=Q(status="pending"), name="order_pending_created_idx"
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(amount_paise__gte=0), name="order_amount_non_negative"
            ),
            models.CheckConstraint(
                condition=~Q(status="paid") | Q(paid_at__isnull=False), name="order_paid_has_paid_at"
            ),
        ]

    def __str__(self) -> str:
        return f"order {self.pk} ({self.status})"


class Enrollment(models.Model):
    order = models.OneToOneField(Order, on_delete=models.PROTECT, related_name="enrollment")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="enrollments",
    )
    internship = models.ForeignKey(
        Internship, null=True, blank=True, on_delete=models.SET_NULL, related_name="enrollments"
    )
    created_at = models.DateTimeField(default=timezone.now)
    confirmation_sent_at = models.DateTimeField(null=True, blank=True)
    # Set when its order is refunded in full: the enrollment no longer stands.
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["created_at"], name="enrollment_created_idx")]

    def __str__(self) -> str:
        return f"enrollment of order {self.order_id}"


class OutgoingEmail(models.Model):
    """One email to send, at most once: its key says what it is about ("order_expired:42").

    The notification that decides to write it claims its marker first; email_send
    claims the row before talking to SMTP and stamps sent_at after, so neither a
    repeated notification nor a repeated delivery of the email task sends twice.
    """

    key = models.CharField(max_length=128, unique=True)
    to = models.EmailField()
    subject = models.CharField(max_length=255)
    body = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    # Lease of the email task sending it; a sender that died leaves it claimable again.
    claimed_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(
                fields=["created_at"], condition=Q(sent_at__isnull=True), name="email_unsent_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.key} to {self.to}"
