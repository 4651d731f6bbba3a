"""A run's page in the admin: counts and result as key / value tables (nested values flattened), links to
the rows the result names, and the raw JSON kept in a collapsed block."""
import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from analytics.models import DailyReport
from ops.maintenance.models import Backup
from ops.runtime.admin import flatten
from ops.runtime.models import JobRun
from payments.models import PaymentReport
from tests.factories import staff_user

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def test_flatten_makes_dotted_keys_and_indexes_lists_of_objects():
    value = {
        "report_id": 7, "amounts": {"INR": {"refunded_paise": 0, "captured_paise": 100}},
        "top_failure_reasons": [{"reason": "declined", "count": 4}, {"reason": "timeout", "count": 1}],
        "would_prune": ["a.dump", "b.dump"], "empty": {}, "none": None,
    }
    assert flatten(value) == [
        ("amounts.INR.captured_paise", 100), ("amounts.INR.refunded_paise", 0), ("empty", {}), ("none", None),
        ("report_id", 7), ("top_failure_reasons[0].count", 4), ("top_failure_reasons[0].reason", "declined"),
        ("top_failure_reasons[1].count", 1), ("top_failure_reasons[1].reason", "timeout"),
        ("would_prune", ["a.dump", "b.dump"]),
    ]
    assert flatten({}) == [] and flatten([]) == []


def rows(html: str, field: str) -> list[tuple[str, str]] | None:
    """The key / value table shown for `field` of the run's page as (key, value text) rows; None if no table."""
    start = html.index(f"field-{field}")
    end = html.find('class="form-row', start)
    tables = re.findall(r'<table class="run-figures">(.*?)</table>', html[start:end], re.S)
    if not tables:
        return None
    return [(key, re.sub(r"<[^>]+>", "", value).strip())
            for key, value in re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td></tr>", tables[0], re.S)]


def run_page(client, run: JobRun) -> str:
    client.force_login(staff_user("viewer", "ops.view_jobrun"))
    response = client.get(reverse("admin:ops_jobrun_change", args=[run.pk]))
    assert response.status_code == 200
    return response.content.decode()


def test_a_payment_sync_run_shows_tables_a_link_to_its_report_and_the_raw_json(client):
    # given a payment_sync run whose result names its payment report
    now = timezone.now()
    report = PaymentReport.objects.create(period_start=now - timedelta(minutes=30), period_end=now)
    run = JobRun.objects.create(
        job="payment_sync", status="success", trigger="admin", requested_by="operator", finished_at=now,
        duration_ms=1250, counts={"reconciled": 1500, "captured": 12},
        result={"report_id": report.pk, "amounts": {"INR": {"captured_paise": 499900, "refunded_paise": 0}},
                "top_failure_reasons": [{"reason": "BAD_REQUEST_ERROR: declined", "count": 4}],
                "counts_by_status": {}, "captured": 12},
    )
    PaymentReport.objects.filter(pk=report.pk).update(job_run=run)

    # when a viewer opens the run
    page = run_page(client, run)

    # then counts and result are key / value tables, nested keys dotted, the report linked
    counts, result = rows(page, "counts_table"), rows(page, "result_table")
    print("counts:", counts)
    print("result:", result)
    assert counts == [("captured", "12"), ("reconciled", "1,500")]
    assert result == [
        ("amounts.INR.captured_paise", "499,900"), ("amounts.INR.refunded_paise", "0"), ("captured", "12"),
        ("counts_by_status", "–"), ("report_id", f"payment report {report.pk}"),
        ("top_failure_reasons[0].count", "4"), ("top_failure_reasons[0].reason", "BAD_REQUEST_ERROR: declined"),
    ]
    assert f'href="{reverse("admin:payments_paymentreport_change", args=[report.pk])}"' in page
    # the trigger and who asked are on the page
    assert "operator" in page and "admin" in page
    # and the JSON is still there, folded away
    raw = page[page.index("Raw JSON"):]
    assert page.rfind("<details>", 0, page.index("Raw JSON")) > page.rfind("</details>", 0, page.index("Raw JSON"))
    assert "&quot;captured_paise&quot;: 499900" in raw and "&quot;reconciled&quot;: 1500" in raw

    # and the report's list links back to the run
    client.force_login(staff_user("payments", "payments.view_paymentreport"))
    listing = client.get(reverse("admin:payments_paymentreport_changelist")).content.decode()
    assert f'href="{reverse("admin:ops_jobrun_change", args=[run.pk])}"' in listing


def test_links_to_a_backup_a_daily_report_and_a_row_no_longer_kept(client):
    # given a backup run, a pruned backup's run, and a daily analytics run
    backup = Backup.objects.create(vendor="postgresql", status="ok", filename="checkout-1.dump")
    kept = JobRun.objects.create(job="db_backup", status="success", result={"backup_id": backup.pk, "bytes": 2048})
    pruned = JobRun.objects.create(job="db_backup", status="success", result={"backup_id": backup.pk + 1000})
    report = DailyReport.objects.create(date="2026-05-01", currency="INR")
    daily = JobRun.objects.create(job="daily_analytics", status="success",
                                  result={"date": "2026-05-01", "orders_paid": 3})

    # then each page links what is kept and says what is not
    kept_page = run_page(client, kept)
    assert f'href="{reverse("admin:maintenance_backup_change", args=[backup.pk])}"' in kept_page
    assert rows(kept_page, "result_table") == [("backup_id", f"backup {backup.pk}"), ("bytes", "2,048")]
    assert rows(run_page(client, pruned), "result_table") == [("backup_id", f"{backup.pk + 1000} (no longer kept)")]
    odd = JobRun.objects.create(job="daily_analytics", status="success", result={"date": "not a date"})
    assert rows(run_page(client, odd), "result_table") == [("date", "not a date")]
    daily_page = run_page(client, daily)
    assert f'href="{reverse("admin:analytics_dailyreport_change", args=[report.pk])}"' in daily_page
    assert rows(daily_page, "result_table")[0] == ("date", "daily report 2026-05-01")


def test_a_run_that_did_nothing_shows_dashes_and_its_error(client):
    run = JobRun.objects.create(job="ops_test_job", status="failed", error="JobError: the file does not exist")
    page = run_page(client, run)
    assert "JobError: the file does not exist" in page
    assert [rows(page, field) for field in ("parameters", "counts_table", "result_table")] == [None, None, None]
    assert page.count('<div class="readonly">–</div>') >= 3  # shown as nothing, not as "{}"
