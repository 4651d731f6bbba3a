"""Business reports built from the checkout tables: one row per local day, one per week.

Money is in minor units (paise) of the report's `currency` (CHECKOUT_CURRENCY when
the report was built); orders in other currencies are never added to it but kept
apart in `revenue_by_currency`. Counts cover every currency.
"""
from django.db import models
from django.utils import timezone


class FunnelFigures(models.Model):
    """Counts and money of a period (or one internship's share of it), in `currency`."""

    currency = models.CharField(max_length=3)
    carts_created = models.PositiveIntegerField(default=0)
    carts_abandoned = models.PositiveIntegerField(default=0)
    carts_converted = models.PositiveIntegerField(default=0)
    orders_created = models.PositiveIntegerField(default=0)
    orders_paid = models.PositiveIntegerField(default=0)
    orders_expired = models.PositiveIntegerField(default=0)
    enrollments_created = models.PositiveIntegerField(default=0)
    revenue_paise = models.BigIntegerField(default=0, help_text="Paid orders, in `currency`.")
    refunds_paise = models.BigIntegerField(default=0, help_text="Refunded to payments, in `currency`.")

    class Meta:
        abstract = True


class ReportFigures(FunnelFigures):
    """The figures a daily and a weekly report share."""

    average_order_value_paise = models.BigIntegerField(
        default=0, help_text="Revenue / paid orders in `currency`, rounded to the paisa."
    )
    # orders_paid / carts_created, 0 with no carts; above 1 when carts of earlier days were paid.
    conversion_rate = models.DecimalField(max_digits=9, decimal_places=4, default=0)
    # {"USD": {"orders_paid": 2, "revenue_paise": 5000, "refunds_paise": 0}, ...}: every currency seen.
    revenue_by_currency = models.JSONField(default=dict, blank=True)
    # What the apps announced for the period (DailyCounter), by subject and counter:
    # {"carts": {"expired": 12, "expired_age_seconds": 1900800}, "payments": {"failed": 2}}.
    tracked = models.JSONField(default=dict, blank=True)
    computed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        abstract = True


class DailyReport(ReportFigures):
    date = models.DateField(unique=True, help_text="A local date in CHECKOUT_TIME_ZONE.")

    class Meta:
        ordering = ["-date"]

    def __str__(self) -> str:
        return f"daily report {self.date}"


class DailyInternshipReport(FunnelFigures):
    """One internship's share of a daily report (one row per currency its orders used)."""

    report = models.ForeignKey(DailyReport, on_delete=models.CASCADE, related_name="internships")
    # Kept when the internship is deleted: the title below still says what it was.
    internship = models.ForeignKey(
        "orders.Internship", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    title = models.CharField(max_length=200)

    class Meta:
        ordering = ["-revenue_paise", "title"]
        constraints = [
            models.UniqueConstraint(
                fields=["report", "internship", "currency"], name="daily_internship_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.title} ({self.currency})"


class WeeklyReport(ReportFigures):
    """Seven complete local days from `week_start` (a Sunday for the scheduled run)."""

    week_start = models.DateField(unique=True)
    week_end = models.DateField(help_text="Last local date of the window (inclusive).")
    # Against the seven days before: (this - previous) / previous, null when previous is 0.
    revenue_growth = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    orders_paid_growth = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    carts_created_growth = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    enrollments_growth = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    # The previous window's totals the growth was measured against.
    previous = models.JSONField(default=dict, blank=True)
    buyers = models.PositiveIntegerField(default=0, help_text="Distinct users with an order paid this week.")
    repeat_buyers = models.PositiveIntegerField(
        default=0, help_text="Buyers of this week with at least two paid orders by its end."
    )
    # [{"internship_id", "title", "currency", "revenue_paise", "orders_paid"}], best first.
    top_internships = models.JSONField(default=list, blank=True)
    # [{"step": "carts", "count": n, "rate": None}, {"step": "orders", "count": n, "rate": "0.2500"}, ...]
    funnel = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-week_start"]

    def __str__(self) -> str:
        return f"weekly report {self.week_start} to {self.week_end}"


class DailyCounter(models.Model):
    """A running total per subject, counter and local day (e.g. carts / expired), as the apps announce them."""

    day = models.DateField()
    subject = models.CharField(max_length=100)
    name = models.CharField(max_length=100)
    value = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-day", "subject", "name"]
        constraints = [
            models.UniqueConstraint(fields=["day", "subject", "name"], name="daily_counter_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.subject} {self.name}={self.value}"


class TrackReceipt(models.Model):
    """Keys of tracked batches already counted, so a redelivered task counts nothing twice."""

    key = models.CharField(max_length=255, unique=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return self.key
