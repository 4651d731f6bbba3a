"""Payments mirrored from Razorpay, their refunds and disputes, and the webhook events Razorpay delivers."""
from django.db import models
from django.db.models import Q
from django.utils import timezone


class PaymentStatus(models.TextChoices):
    CREATED = "created"
    AUTHORIZED = "authorized"
    CAPTURED = "captured"
    FAILED = "failed"
    REFUNDED = "refunded"
    CANCELLED = "cancelled"


class Payment(models.Model):
    Status = PaymentStatus

    order = models.ForeignKey("orders.Order", on_delete=models.PROTECT, related_name="payments")
    razorpay_order_id = models.CharField(max_length=64, unique=True)
    razorpay_payment_id = models.CharField(max_length=64, null=True, blank=True, unique=True)
    amount_paise = models.BigIntegerField()
    currency = models.CharField(max_length=3, default="INR")
    status = models.CharField(
        max_length=16, choices=PaymentStatus.choices, default=PaymentStatus.CREATED
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    captured_at = models.DateTimeField(null=True, blank=True)
    refunded_paise = models.BigIntegerField(default=0)
    error_code = models.CharField(max_length=64, blank=True)
    error_description = models.CharField(max_length=255, blank=True)
    # Set when the gateway's amount or currency disagrees with ours: never paid, a human looks.
    mismatch = models.CharField(max_length=255, blank=True)
    last_synced_at = models.DateTimeField(null=True, blank=True)
    authorized_at = models.DateTimeField(null=True, blank=True)
    refunded_at = models.DateTimeField(null=True, blank=True)
    # A lease taken before any gateway call about this payment (sync, capture,
    # refund), so two workers never act on it at once; an expired lease is free.
    claimed_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        # The admin's money actions, each behind its own permission (the admin changes nothing else).
        permissions = [
            ("refund_payment", "Can refund a captured payment"),
            ("resolve_mismatch", "Can resolve a payment whose amount disagrees with the gateway"),
        ]
        indexes = [
            models.Index(fields=["created_at"], name="payment_created_idx"),
            models.Index(fields=["captured_at"], name="payment_captured_idx"),
            # daily_analytics: refunds by the day they happened.
            models.Index(
                fields=["refunded_at"], condition=Q(refunded_at__isnull=False),
                name="payment_refunded_idx",
            ),
            # payment_sync: payments not yet settled, by last change.
            models.Index(
                fields=["updated_at"], condition=Q(status__in=["created", "authorized"]),
                name="payment_unsettled_idx",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(amount_paise__gte=0), name="payment_amount_non_negative"
            ),
            models.CheckConstraint(
                condition=Q(refunded_paise__gte=0) & Q(refunded_paise__lte=models.F("amount_paise")),
                name="payment_refund_within_amount",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.razorpay_payment_id or self.razorpay_order_id} ({self.status})"


class RefundStatus(models.TextChoices):
    REQUESTED = "requested"  # recorded; the gateway has not (yet) said it made it
    PROCESSED = "processed"  # made at the gateway (razorpay_refund_id)
    FAILED = "failed"        # refused by the gateway: nothing was refunded (last_error says why)


class Refund(models.Model):
    """One refund of a captured payment (payments/services/refunds.py), stored before the gateway is asked.

    Its idempotency key goes to Razorpay as X-Refund-Idempotency and in the refund's notes, so asking
    again (a lost answer, a crash) never refunds twice and a refund already made is recognised.
    """

    Status = RefundStatus

    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="refunds")
    amount_paise = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=RefundStatus.choices, default=RefundStatus.REQUESTED)
    razorpay_refund_id = models.CharField(max_length=64, null=True, blank=True, unique=True)
    idempotency_key = models.CharField(max_length=64, unique=True)
    reason = models.CharField(max_length=255)
    requested_by = models.CharField(max_length=150, help_text="Who asked: a username, or a job's name.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)
    # Times the gateway was asked for it; the last error when it did not answer or refused.
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=255, blank=True)
    # Lease while a gateway call about it runs; a caller that died leaves it to lapse.
    claimed_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # payment_sync: refunds still waiting for the gateway, by age.
            models.Index(fields=["created_at"], condition=Q(status="requested"), name="refund_requested_idx"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(amount_paise__gt=0), name="refund_amount_positive"),
            models.CheckConstraint(
                condition=~Q(status="processed") | Q(razorpay_refund_id__isnull=False),
                name="refund_processed_has_gateway_id",
            ),
        ]

    def __str__(self) -> str:
        return f"refund {self.pk} of payment {self.payment_id}: {self.amount_paise} {self.currency} ({self.status})"


class DisputeStatus(models.TextChoices):
    OPEN = "open"                        # raised by the customer's bank: evidence due by respond_by
    ACTION_REQUIRED = "action_required"  # the evidence given is not enough: more is due
    UNDER_REVIEW = "under_review"        # contested: the bank is reviewing the evidence
    WON = "won"
    LOST = "lost"                        # the amount was taken back from the balance
    CLOSED = "closed"


# A dispute in these needs a person to answer it at Razorpay before its respond_by.
DISPUTE_NEEDS_ACTION = (DisputeStatus.OPEN, DisputeStatus.ACTION_REQUIRED)


class Dispute(models.Model):
    """A customer's bank disputing a payment (a chargeback), as Razorpay's `payment.dispute.*` webhooks tell it.

    Answered on Razorpay's dashboard; here it flags the payment (admin, the `payments:dispute` alert).
    """

    Status = DisputeStatus

    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="disputes")
    razorpay_dispute_id = models.CharField(max_length=64, unique=True)
    status = models.CharField(max_length=16, choices=DisputeStatus.choices)
    amount_paise = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    amount_deducted_paise = models.BigIntegerField(default=0)
    reason_code = models.CharField(max_length=64, blank=True)
    reason = models.CharField(max_length=255, blank=True)
    phase = models.CharField(max_length=32, blank=True)
    respond_by = models.DateTimeField(null=True, blank=True)
    # The gateway's time of the last event applied: a late delivery of an older one changes nothing.
    event_at = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The alert and the admin's filter: disputes waiting for an answer.
            models.Index(fields=["respond_by"], condition=Q(status__in=["open", "action_required"]),
                         name="dispute_needs_action_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(amount_paise__gte=0) & Q(amount_deducted_paise__gte=0), name="dispute_amounts_non_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"dispute {self.razorpay_dispute_id} of payment {self.payment_id} ({self.status})"


class PaymentReport(models.Model):
    """What the payments did over one period, written by each payment_sync run."""

    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)
    job_run = models.ForeignKey(
        "ops.JobRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Payments changed in the period, by their status now: {"captured": 12, "failed": 3, ...}.
    counts_by_status = models.JSONField(default=dict, blank=True)
    # Per currency, in minor units: {"INR": {"captured_paise": 0, "refunded_paise": 0}}.
    amounts = models.JSONField(default=dict, blank=True)
    # [{"reason": "BAD_REQUEST_ERROR: card declined", "count": 4}, ...], most frequent first.
    top_failure_reasons = models.JSONField(default=list, blank=True)
    # What this run did: reconciled, captured, failed, mismatched, gateway errors...
    sync_counts = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-period_end"]
        indexes = [models.Index(fields=["period_end"], name="paymentreport_end_idx")]

    def __str__(self) -> str:
        return f"payments {self.period_start:%Y-%m-%d %H:%M} to {self.period_end:%H:%M}"


class WebhookEvent(models.Model):
    """One delivery of a Razorpay event, deduplicated on Razorpay's event id."""

    event_id = models.CharField(max_length=64, unique=True)
    event = models.CharField(max_length=64)
    payload = models.JSONField()
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-received_at"]
        indexes = [
            models.Index(fields=["received_at"], name="webhook_received_idx"),
            models.Index(
                fields=["received_at"], condition=Q(processed_at__isnull=True),
                name="webhook_unprocessed_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} {self.event_id}"


class WebhookRejection(models.Model):
    """A delivery refused before it became an event (bad signature, bad body): counted by webhook_health."""

    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    reason = models.CharField(max_length=64)
    detail = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-received_at"]
