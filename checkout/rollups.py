"""Counting a table's events by local day in one scan.

A row of the checkout carries several events, each with its own timestamp (an
order is created, then paid or expired; a cart is created, then abandoned or
converted). `events_by_local_day` finds the rows with any of the given events in
local days [start, end) by range predicates on those (indexed) timestamps, the
planner OR-ing the index ranges, and reads each row once: a row counts once for
each of its events that falls in the range, on that event's local date in
CHECKOUT_TIME_ZONE.

One day is grouped by the caller's keys only, with one filtered aggregate per
event; a longer range is grouped by each event's local date as well (None where
the event falls outside). The local date is the cheapest the range allows (see
`local_date_expression`).
"""
from __future__ import annotations

import operator
from datetime import date, timedelta, timezone as dt_timezone
from functools import reduce
from typing import Iterator, NamedTuple

from django.db.models import Case, Count, DateField, DateTimeField, ExpressionWrapper, F, Q, Sum, Value, When
from django.db.models.functions import TruncDate

from checkout.timezones import local_day_bounds, local_days_span, local_zone


class Tally(NamedTuple):
    """How many rows had `event` on local day `day`, by the caller's `group` values, and the sum of
    the event's amount field over them (0 for an event without one)."""

    day: date
    event: str
    group: tuple
    n: int
    amount: int


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


def events_by_local_day(
    queryset, events: dict[str, str], start: date, end: date, *,
    group: tuple[str, ...] = (), amounts: dict[str, str] | None = None,
) -> Iterator[Tally]:
    """The events of `queryset` ({event name: timestamp field}) in local days [start, end), counted per
    local day and `group` values in one query; `amounts` ({event name: field}) are summed per event.

    Each (day, event, group values) comes once, and only with a count above zero.
    """
    if end <= start:
        raise ValueError(f"empty range: {start} to {end}")
    amounts = amounts or {}
    unknown = set(amounts) - set(events)
    if unknown:
        raise ValueError(f"amounts for events not counted: {', '.join(sorted(unknown))}")
    start_at, end_at = local_days_span(start, end)
    inside = {event: Q(**{f"{field}__gte": start_at, f"{field}__lt": end_at}) for event, field in events.items()}
    rows = queryset.filter(reduce(operator.or_, inside.values())).order_by()
    if (end - start).days == 1:
        aggregates = {f"n_{event}": Count("pk", filter=inside[event]) for event in events}
        aggregates |= {f"amount_{event}": Sum(field, filter=inside[event]) for event, field in amounts.items()}
        for row in rows.values(*group).annotate(**aggregates):
            for event in events:
                if row[f"n_{event}"]:
                    yield Tally(start, event, tuple(row[key] for key in group), row[f"n_{event}"],
                                row.get(f"amount_{event}") or 0)
        return
    dated = {
        f"day_{event}": Case(When(inside[event], then=local_date_expression(field, start, end)),
                             default=None, output_field=DateField())
        for event, field in events.items()
    } if len(events) > 1 else {  # every row is inside: no condition to test again
        f"day_{event}": local_date_expression(field, start, end) for event, field in events.items()
    }
    # Every row of a group has each of its dated events in the range: the group's sums are theirs. An
    # event's (day, group) comes in as many groups as the other events' days split it into: summed here.
    aggregates = {"n": Count("pk")} | {f"amount_{event}": Sum(field) for event, field in amounts.items()}
    summed: dict[tuple, list[int]] = {}
    for row in rows.annotate(**dated).values(*dated, *group).annotate(**aggregates):
        for event in events:
            if row[f"day_{event}"] is not None:
                total = summed.setdefault((row[f"day_{event}"], event, tuple(row[key] for key in group)), [0, 0])
                total[0] += row["n"]
                total[1] += row.get(f"amount_{event}") or 0
    for (day, event, key), (n, amount) in summed.items():
        yield Tally(day, event, key, n, amount)
