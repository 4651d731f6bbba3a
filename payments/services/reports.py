"""Payment reports: what changed in each period between two syncs."""
from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Count, Sum

from payments.models import Payment, PaymentReport, PaymentStatus

REPORT_TOP_FAILURES = 5


def payment_report_write(*, period_end: datetime, sync_counts: dict, job_run_id: int | None = None,
                         default_period: timedelta = timedelta(minutes=30)) -> PaymentReport:
    """The report of the period since the last one: payments changed by status, money moved, why they failed."""
    last_end = PaymentReport.objects.order_by("-period_end").values_list("period_end", flat=True).first()
    period_start = last_end if last_end and last_end < period_end else period_end - default_period
    changed = Payment.objects.filter(updated_at__gte=period_start, updated_at__lt=period_end)
    counts = dict(changed.values_list("status").annotate(n=Count("pk")).order_by("status"))
    amounts: dict[str, dict[str, int]] = {}
    for currency, total in (
        Payment.objects.filter(captured_at__gte=period_start, captured_at__lt=period_end)
        .values_list("currency").annotate(total=Sum("amount_paise")).order_by("currency")
    ):
        amounts.setdefault(currency, {"captured_paise": 0, "refunded_paise": 0})["captured_paise"] = total
    for currency, total in (
        Payment.objects.filter(refunded_at__gte=period_start, refunded_at__lt=period_end)
        .values_list("currency").annotate(total=Sum("refunded_paise")).order_by("currency")
    ):
        amounts.setdefault(currency, {"captured_paise": 0, "refunded_paise": 0})["refunded_paise"] = total
    failures = (
        changed.filter(status=PaymentStatus.FAILED).values("error_code", "error_description")
        .annotate(n=Count("pk")).order_by("-n", "error_code")[:REPORT_TOP_FAILURES]
    )
    top = [{"reason": f"{f['error_code'] or 'UNKNOWN'}: {f['error_description'] or '-'}", "count": f["n"]}
           for f in failures]
    return PaymentReport.objects.create(
        period_start=period_start, period_end=period_end, job_run_id=job_run_id,
        counts_by_status=counts, amounts=amounts, top_failure_reasons=top, sync_counts=dict(sync_counts),
    )
