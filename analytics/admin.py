"""Read-only report lists with a revenue and conversion chart, and CSV export."""
import csv
from datetime import timedelta

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db.models import Count, Max, Min
from django.http import HttpRequest, StreamingHttpResponse
from django.utils.html import format_html, format_html_join

from checkout.admin import ReadOnlyAdmin, ReadOnlyInline
from analytics.charts import build_chart
from analytics.models import DailyCounter, DailyInternshipReport, DailyReport, WeeklyReport
from analytics.selectors import daily_series, expired_cart_age_average, weekly_series
from checkout.timezones import local_today
from ops.runtime.admin import link_result

link_result("daily_analytics", "date", DailyReport, field="date")
link_result("weekly_analytics", "week_start", WeeklyReport, field="week_start")

CHART_RANGES = (30, 90)
RANGE_PARAM = "range"


class _Echo:
    def write(self, value):
        return value


def _span(queryset, field: str) -> tuple:
    figures = queryset.aggregate(first=Min(field), last=Max(field), count=Count("pk"))
    return figures["first"], figures["last"], figures["count"]


class ReportAdmin(ReadOnlyAdmin):
    change_list_template = "analytics/report_change_list.html"
    actions = ["export_csv"]
    csv_fields: tuple[str, ...] = ()
    list_per_page = 50
    # The tracked counters as a table, with what is derived from them, instead of raw JSON.
    exclude = ("tracked",)
    readonly_fields = ("tracked_counters", "average_expired_cart_age")

    @admin.action(description="Export selected reports as CSV", permissions=["view"])
    def export_csv(self, request, queryset):
        writer = csv.writer(_Echo())
        fields = self.csv_fields
        # One entry for the export as a whole: which reports left the admin, and who took them.
        first, last, count = _span(queryset, fields[0])
        meta = self.model._meta
        LogEntry.objects.create(
            user_id=request.user.pk, content_type=ContentType.objects.get_for_model(self.model),
            object_repr=f"{count} {meta.verbose_name_plural}", action_flag=CHANGE,
            change_message=f"Exported {count} {meta.verbose_name_plural} as CSV ({first} to {last})",
        )

        def rows():
            yield writer.writerow(fields)
            for values in queryset.order_by(fields[0]).values_list(*fields).iterator(chunk_size=500):
                yield writer.writerow(values)

        response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{self.model._meta.model_name}.csv"'
        return response

    @admin.display(description="revenue", ordering="revenue_paise")
    def revenue(self, report):
        return f"{report.revenue_paise / 100:,.2f} {report.currency}"

    @admin.display(description="tracked counters")
    def tracked_counters(self, report):
        rows = [
            (subject, name, f"{value:,}")
            for subject, counters in sorted(report.tracked.items())
            for name, value in sorted(counters.items())
        ]
        if not rows:
            return self.get_empty_value_display()
        return format_html(
            '<table class="tracked-counters"><tr><th>subject</th><th>counter</th><th>value</th></tr>{}</table>',
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )

    @admin.display(description="average expired cart age")
    def average_expired_cart_age(self, report):
        seconds = expired_cart_age_average(report.tracked)
        if seconds is None:
            return self.get_empty_value_display()
        return f"{seconds:,} s ({timedelta(seconds=seconds)})"

    def chart(self, *, last, days):
        raise NotImplementedError

    def changelist_view(self, request: HttpRequest, extra_context=None):
        # The chart's range is not a list filter: take it out before the changelist sees it.
        try:
            days = int(request.GET.get(RANGE_PARAM, CHART_RANGES[0]))
        except ValueError:
            days = CHART_RANGES[0]
        if days not in CHART_RANGES:
            days = CHART_RANGES[0]
        if RANGE_PARAM in request.GET:
            request.GET = request.GET.copy()
            del request.GET[RANGE_PARAM]
        last = local_today() - timedelta(days=1)
        context = {"chart": self.chart(last=last, days=days), "ranges": CHART_RANGES, "range_days": days}
        return super().changelist_view(request, extra_context={**(extra_context or {}), **context})


FIGURE_FIELDS = (
    "currency", "carts_created", "carts_abandoned", "carts_converted", "orders_created", "orders_paid",
    "orders_expired", "enrollments_created", "revenue_paise", "refunds_paise", "average_order_value_paise",
    "conversion_rate",
)


class DailyInternshipInline(ReadOnlyInline):
    model = DailyInternshipReport
    fields = ("title", "currency", "carts_created", "carts_abandoned", "carts_converted", "orders_created",
              "orders_paid", "orders_expired", "enrollments_created", "revenue_paise", "refunds_paise")


@admin.register(DailyReport)
class DailyReportAdmin(ReportAdmin):
    list_display = ("date", "carts_created", "orders_created", "orders_paid", "orders_expired",
                    "enrollments_created", "revenue", "refunds", "conversion_rate")
    date_hierarchy = "date"
    inlines = [DailyInternshipInline]
    csv_fields = ("date", *FIGURE_FIELDS, "computed_at")

    @admin.display(description="refunds", ordering="refunds_paise")
    def refunds(self, report):
        return f"{report.refunds_paise / 100:,.2f} {report.currency}"

    def chart(self, *, last, days):
        first = last - timedelta(days=days - 1)
        return build_chart(
            rows=daily_series(last=last, days=days), first=first, slots=days, step_days=1, key="date",
            title=f"Daily revenue and conversion, last {days} days", currency=settings.CHECKOUT_CURRENCY,
        )


@admin.register(WeeklyReport)
class WeeklyReportAdmin(ReportAdmin):
    list_display = ("week_start", "week_end", "carts_created", "orders_paid", "enrollments_created",
                    "revenue", "revenue_growth", "conversion_rate", "buyers", "repeat_buyers")
    csv_fields = ("week_start", "week_end", *FIGURE_FIELDS, "revenue_growth", "orders_paid_growth",
                  "carts_created_growth", "enrollments_growth", "buyers", "repeat_buyers", "computed_at")

    def chart(self, *, last, days):
        first = last - timedelta(days=days - 1)
        weeks = -(-days // 7)
        rows = weekly_series(last=last, days=days)
        return build_chart(
            rows=rows, first=rows[0]["week_start"] if rows else first, slots=weeks, step_days=7,
            key="week_start", title=f"Weekly revenue and conversion, last {days} days",
            currency=settings.CHECKOUT_CURRENCY,
        )


@admin.register(DailyCounter)
class DailyCounterAdmin(ReadOnlyAdmin):
    list_display = ("day", "subject", "name", "value")
    list_filter = ("subject",)
    search_fields = ("subject", "name")
    date_hierarchy = "day"
