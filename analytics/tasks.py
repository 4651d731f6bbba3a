"""Celery tasks of the analytics app: thin, plain values in, one service each."""
from datetime import date

from django.db import DatabaseError

from analytics.services import counters_track
from ops.runtime.outbox import subscribe
from ops.runtime.tasks import background_task


@background_task("analytics_track", queue="default", max_retries=5, retry_on=(DatabaseError,))
def analytics_track(*, key: str, day: str, subject: str, counters: dict) -> bool:
    """Add one announced batch's counters to the day's totals, once per key."""
    return counters_track(key=key, day=date.fromisoformat(day), subject=subject, counters=counters)


# Counts announced by the apps that make the change, in the transaction that makes it,
# each as {"key", "day" (local, ISO), "subject", "counters": {name: int}}.
subscribe("carts.expired.tally", "analytics_track")    # per batch: expired, expired_age_seconds
subscribe("orders.closed.tally", "analytics_track")    # per batch: expired, cancelled_orphaned
subscribe("payments.failed.tally", "analytics_track")  # per applied group: failed
