"""analytics_track: announced counters added per subject and local day, once per key, in one upsert."""
from datetime import date

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from analytics.models import DailyCounter, TrackReceipt
from analytics.services import counters_track
from analytics.tasks import analytics_track

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

DAY = date(2024, 6, 10)


def _counters(subject="job:x"):
    return {c.name: c.value for c in DailyCounter.objects.filter(subject=subject, day=DAY)}


def test_counters_add_up_in_one_statement_and_a_key_counts_once():
    with CaptureQueriesContext(connection) as queries:
        assert counters_track(key="k1", day=DAY, subject="job:x", counters={"runs": 1, "deleted": 40})
    upserts = [q for q in queries.captured_queries if "analytics_dailycounter" in q["sql"]]
    assert len(upserts) == 1

    assert counters_track(key="k2", day=DAY, subject="job:x", counters={"runs": 1, "deleted": 2, "failed": 1})
    assert not counters_track(key="k2", day=DAY, subject="job:x", counters={"runs": 1, "deleted": 2})

    assert _counters() == {"runs": 2, "deleted": 42, "failed": 1}


@pytest.mark.parametrize("counters", [{"runs": 1.5}, {"": 1}, {"runs": "1"}, {"ok": True}])
def test_bad_counters_are_refused_and_change_nothing(counters):
    with pytest.raises(ValueError):
        counters_track(key="bad", day=DAY, subject="job:x", counters=counters)
    assert not DailyCounter.objects.exists() and not TrackReceipt.objects.exists()


def test_the_task_calls_the_service_with_plain_values():
    analytics_track.apply(kwargs={"key": "t1", "day": "2024-06-10", "subject": "job:x", "counters": {"runs": 1}})
    analytics_track.apply(kwargs={"key": "t1", "day": "2024-06-10", "subject": "job:x", "counters": {"runs": 1}})
    assert _counters() == {"runs": 1}
