from django.contrib import admin

from checkout.admin import ReadOnlyAdmin

from orders.services import format_money
from payments.models import Payment, PaymentReport, WebhookEvent, WebhookRejection


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdmin):
    list_display = ("id", "order", "razorpay_order_id", "razorpay_payment_id", "amount_paise", "currency", "status", "mismatch", "created_at", "updated_at")
    list_filter = ("status", "currency", ("created_at", admin.DateFieldListFilter))
    search_fields = ("=razorpay_order_id", "=razorpay_payment_id", "=order__id")
    list_select_related = ("order",)
    date_hierarchy = "created_at"
    show_full_result_count = False


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyAdmin):
    list_display = ("event_id", "event", "received_at", "processed_at", "attempts", "error")
    list_filter = ("event", ("processed_at", admin.EmptyFieldListFilter))
    search_fields = ("=event_id",)
    date_hierarchy = "received_at"
    show_full_result_count = False


@admin.register(WebhookRejection)
class WebhookRejectionAdmin(ReadOnlyAdmin):
    list_display = ("received_at", "reason", "detail")
    list_filter = ("reason",)


@admin.register(PaymentReport)
class PaymentReportAdmin(ReadOnlyAdmin):
    list_display = ("period_end", "period_start", "captured", "refunded", "counts_by_status", "job_run")
    date_hierarchy = "period_end"
    show_full_result_count = False

    @admin.display(description="captured")
    def captured(self, report: PaymentReport) -> str:
        return _amounts(report, "captured_paise")

    @admin.display(description="refunded")
    def refunded(self, report: PaymentReport) -> str:
        return _amounts(report, "refunded_paise")


def _amounts(report: PaymentReport, key: str) -> str:
    return ", ".join(format_money(v[key], currency) for currency, v in sorted(report.amounts.items())) or "-"
