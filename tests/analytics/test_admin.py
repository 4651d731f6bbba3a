"""The report admin: read-only lists, the chart drawn on the page, CSV export, and a real browser."""
import csv
import io
import re
from datetime import timedelta

import pytest
from django.urls import reverse

from analytics.models import DailyReport
from analytics.services import daily_reports_build, weekly_report_build, week_before
from checkout.timezones import local_today
from tests.analytics.conftest import local
from tests.browser import admin_login, chromium
from tests.factories import CartFactory, OrderFactory

pytestmark = [pytest.mark.postgres]

@pytest.fixture
def reports():
    """Reports of the last 40 local days, from orders paid on every day but one (a report of zeros)."""
    yesterday = local_today() - timedelta(days=1)
    first = yesterday - timedelta(days=39)
    for n in range(40):
        day = first + timedelta(days=n)
        if n == 20:
            continue
        CartFactory(created_at=local(day, 9))
        CartFactory(created_at=local(day, 9))
        OrderFactory(status="paid", amount_paise=10000 * (n + 1), created_at=local(day, 10), paid_at=local(day, 11))
    daily_reports_build(start=first, end=yesterday + timedelta(days=1))
    weekly_report_build(week_start=week_before(local_today()))
    return first, yesterday


@pytest.mark.django_db
def test_daily_list_draws_a_bar_per_reported_day(admin_client, reports):
    page = admin_client.get(reverse("admin:analytics_dailyreport_changelist"))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'class="analytics-chart"' in html
    assert html.count('<rect class="bar"') == 30  # the last 30 days
    assert html.count('height="0.0"') == 1        # the day without orders
    assert 'class="conversion-line"' in html

    wide = admin_client.get(reverse("admin:analytics_dailyreport_changelist"), {"range": "90"})
    assert wide.status_code == 200
    assert wide.content.decode().count('<rect class="bar"') == 40
    assert "<strong>90 days</strong>" in wide.content.decode()


@pytest.mark.django_db
def test_weekly_list_and_report_pages_render(admin_client, reports):
    page = admin_client.get(reverse("admin:analytics_weeklyreport_changelist"))
    assert page.status_code == 200
    assert page.content.decode().count('<rect class="bar"') == 1
    report = DailyReport.objects.first()
    detail = admin_client.get(reverse("admin:analytics_dailyreport_change", args=[report.pk]))
    assert detail.status_code == 200
    assert b"Internship" in detail.content


@pytest.mark.django_db
def test_reports_are_read_only(admin_client, reports):
    report = DailyReport.objects.first()
    assert admin_client.get(reverse("admin:analytics_dailyreport_add")).status_code == 403
    response = admin_client.post(reverse("admin:analytics_dailyreport_change", args=[report.pk]),
                                 {"orders_paid": 999})
    assert response.status_code == 403
    report.refresh_from_db()
    assert report.orders_paid != 999


@pytest.mark.django_db
def test_csv_export_of_selected_reports(admin_client, reports):
    chosen = list(DailyReport.objects.order_by("date")[:3])
    response = admin_client.post(reverse("admin:analytics_dailyreport_changelist"), {
        "action": "export_csv", "_selected_action": [r.pk for r in chosen],
    })
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [row["date"] for row in rows] == [r.date.isoformat() for r in chosen]
    assert [int(row["revenue_paise"]) for row in rows] == [r.revenue_paise for r in chosen]
    assert rows[0]["conversion_rate"] == "0.5000"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_chart_is_drawn_in_a_real_browser(live_server, admin_user, reports, tmp_path):
    from selenium.webdriver.common.by import By

    with chromium(tmp_path) as browser:
        admin_login(browser, live_server.url, admin_user.username, "password")
        browser.get(f"{live_server.url}{reverse('admin:analytics_dailyreport_changelist')}")

        chart = browser.find_element(By.CSS_SELECTOR, "svg.analytics-chart")
        bars = chart.find_elements(By.CSS_SELECTOR, "rect.bar")
        assert len(bars) == 30
        # Drawn, not just present: the browser laid the marks out with a real size.
        assert chart.size["width"] > 300 and chart.size["height"] > 50
        assert sum(bar.size["height"] > 0 for bar in bars) == 29
        assert chart.find_element(By.CSS_SELECTOR, "polyline.conversion-line").get_attribute("points")
        browser.save_screenshot(str(tmp_path / "daily-report-chart.png"))
        assert (tmp_path / "daily-report-chart.png").stat().st_size > 0


@pytest.mark.django_db
def test_a_report_shows_its_tracked_counters_and_the_average_expired_cart_age(admin_client):
    # given a day on which cart_cleanup deleted four carts, aged 1 day 1:01:01 on average
    day = local_today() - timedelta(days=1)
    report = DailyReport.objects.create(date=day, currency="INR", tracked={
        "carts": {"expired": 4, "expired_age_seconds": 4 * 90061}, "payments": {"failed": 2},
    })
    quiet = DailyReport.objects.create(date=day - timedelta(days=1), currency="INR",
                                       tracked={"payments": {"failed": 1}})

    # when
    html = admin_client.get(reverse("admin:analytics_dailyreport_change", args=[report.pk])).content.decode()
    quiet_html = admin_client.get(reverse("admin:analytics_dailyreport_change", args=[quiet.pk])).content.decode()

    # then the counters are a table, and the average is derived from them
    assert "<td>carts</td><td>expired_age_seconds</td><td>360,244</td>" in html
    assert "<td>payments</td><td>failed</td><td>2</td>" in html
    assert "90,061 s (1 day, 1:01:01)" in html
    assert re.search(r'Average expired cart age:</label>\s*<div class="readonly">-</div>', quiet_html)
    assert "<td>payments</td><td>failed</td><td>1</td>" in quiet_html
