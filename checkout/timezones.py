"""Days as the business counts them: local calendar days in CHECKOUT_TIME_ZONE.

Times are stored in UTC; reports, schedules and retention speak of local days,
which are 23 or 25 hours long across a DST change in zones that have one.
"""
from __future__ import annotations

import operator
from datetime import date, datetime, timedelta, timezone as dt_timezone
from functools import reduce
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db.models import Case, DateField, DateTimeField, ExpressionWrapper, F, Q, Value, When
from django.db.models.functions import TruncDate
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


def local_date_expression(field: str, start: date, end: date):
    """The local date of `field` for rows already limited to local days [start, end), as cheaply as the
    range allows: the date itself for one day; the UTC time moved by the zone's offset when that offset
    holds over the whole range; the zone's own conversion of every row across a change of offset (the
    zone's rules cost more than the rest of a row's work)."""
    days = (end - start).days
    if days == 1:
        return Value(start, output_field=DateField())
    offsets = {local_day_bounds(start + timedelta(days=n))[0].utcoffset() for n in range(days + 1)}
    if len(offsets) == 1:
        shifted = ExpressionWrapper(F(field) + Value(offsets.pop()), output_field=DateTimeField())
        return TruncDate(shifted, tzinfo=dt_timezone.utc)
    return TruncDate(field, tzinfo=local_zone())


def by_local_days(queryset, fields: tuple[str, ...], start: date, end: date):
    """Rows of `queryset` with any of `fields` in local days [start, end), each annotated `<field>_day`:
    that field's local date, or None when it falls outside the range.

    One scan answers every field: grouped by the `<field>_day` columns (and whatever else the caller
    groups by), a row counts once for each of its fields in the range, and no row is read twice.
    """
    if end <= start:
        raise ValueError(f"empty range: {start} to {end}")
    start_at, end_at = local_days_span(start, end)
    inside = {field: Q(**{f"{field}__gte": start_at, f"{field}__lt": end_at}) for field in fields}
    if len(fields) == 1:  # every row is inside: no condition to test again
        return queryset.filter(inside[fields[0]]).annotate(
            **{f"{fields[0]}_day": local_date_expression(fields[0], start, end)}
        )
    return queryset.filter(reduce(operator.or_, inside.values())).annotate(**{
        f"{field}_day": Case(
            When(inside[field], then=local_date_expression(field, start, end)), default=None,
            output_field=DateField(),
        )
        for field in fields
    })
