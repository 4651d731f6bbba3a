"""Celery tasks of the analytics app: thin, plain values in, one service each."""
from datetime import date

from django.db import DatabaseError

from analytics.services import counters_track
from ops.runtime.tasks import background_task


@background_task("analytics_track", queue="default", max_retries=5, retry_on=(DatabaseError,))
def analytics_track(*, key: str, day: str, subject: str, counters: dict) -> bool:
    """Add a batch of counters (one job run's outcome, say) to the day's totals, once per key."""
    return counters_track(key=key, day=date.fromisoformat(day), subject=subject, counters=counters)
