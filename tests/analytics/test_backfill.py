"""backfill_analytics: a range of days built and rebuilt, a dry run, clear errors for bad input."""
from datetime import date, timedelta

import pytest
import time_machine
from django.core.management import call_command
from django.core.management.base import CommandError

from analytics.models import DailyReport
from ops.runtime.models import JobRun
from tests.analytics.conftest import local
from tests.factories import OrderFactory

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

NOW = local(date(2024, 6, 10), 9)


def test_backfill_builds_every_day_of_the_range_and_is_idempotent(capsys):
    # given one paid order per day for ten days
    for n in range(10):
        day = date(2024, 5, 20) + timedelta(days=n)
        OrderFactory(status="paid", amount_paise=100 + n, created_at=local(day, 0, 10), paid_at=local(day, 0, 20))

    with time_machine.travel(NOW, tick=False):
        call_command("backfill_analytics", "--from", "2024-05-18", "--to", "2024-05-31")
        call_command("backfill_analytics", "--from", "2024-05-25", "--to", "2024-05-31")

    reports = {r.date: r for r in DailyReport.objects.all()}
    assert len(reports) == 14
    assert reports[date(2024, 5, 18)].orders_paid == 0
    assert [reports[date(2024, 5, 20) + timedelta(days=n)].revenue_paise for n in range(10)] == [
        100 + n for n in range(10)
    ]
    assert "7 daily reports written, 2024-05-25 to 2024-05-31" in capsys.readouterr().out
    run = JobRun.objects.filter(job="daily_analytics").latest("pk")
    assert run.params == {"from": "2024-05-25", "to": "2024-05-31"} and run.counts["days"] == 7


def test_backfill_dry_run_writes_nothing(capsys):
    with time_machine.travel(NOW, tick=False):
        call_command("backfill_analytics", "--from", "2024-05-01", "--to", "2024-05-03", "--dry-run")
    assert "3 daily reports computed (dry run)" in capsys.readouterr().out
    assert not DailyReport.objects.exists()


@pytest.mark.parametrize("first,last,message", [
    ("2024-05-31", "2024-05-01", "is after"),
    ("2024-02-30", "2024-05-01", "not a date"),
    ("yesterday", "2024-05-01", "not a date"),
    ("2024-06-01", "2024-06-10", "not over yet"),
])
def test_bad_ranges_exit_2_and_change_nothing(first, last, message):
    with time_machine.travel(NOW, tick=False), pytest.raises(CommandError, match=message) as error:
        call_command("backfill_analytics", "--from", first, "--to", last)
    assert error.value.returncode == 2
    assert not DailyReport.objects.exists()
    assert not JobRun.objects.exists()
