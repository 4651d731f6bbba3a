"""Days as the business counts them: local calendar days in CHECKOUT_TIME_ZONE.

Times are stored in UTC; reports, schedules and retention speak of local days,
which are 23 or 25 hours long across a DST change in zones that have one.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.utils import timezone


def local_zone() -> ZoneInfo:
    return ZoneInfo(settings.CHECKOUT_TIME_ZONE)


def local_today() -> date:
    return timezone.now().astimezone(local_zone()).date()


def local_date(instant: datetime) -> date:
    """The local calendar day on which an aware instant falls."""
    return instant.astimezone(local_zone()).date()


def local_day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a local calendar day as aware datetimes (23 or 25 h long across DST)."""
    zone = local_zone()
    start = datetime.combine(day, datetime.min.time(), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=zone)
    return start, end


def local_days_span(start: date, end: date) -> tuple[datetime, datetime]:
    """[start of local day `start`, start of local day `end`): the instants of local days [start, end)."""
    return local_day_bounds(start)[0], local_day_bounds(end)[0]

