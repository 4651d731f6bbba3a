"""The analytics jobs: daily_analytics (02:00, yesterday's report) and weekly_analytics (Sunday)."""
from datetime import date, timedelta

from analytics.services import (
    daily_reports_build,
    default_report_day,
    track_receipts_prune,
    week_before,
    weekly_report_build,
)
from ops.runtime import params
from ops.runtime.registry import job
from checkout.timezones import local_today
from ops.runtime.context import JobContext
from ops.runtime.errors import JobError


def report_days(ctx: JobContext) -> tuple[date, date]:
    """[start, end) to report: params from/to (inclusive), else ctx.date, else yesterday."""
    first, last = ctx.params["from"], ctx.params["to"]
    if first is not None or last is not None:
        if first is None or last is None:
            raise JobError("a range needs both from and to")
        if last < first:
            raise JobError(f"from {first} is after to {last}")
    else:
        first = last = ctx.date or default_report_day()
    if last >= local_today():
        raise JobError(f"{last} is not over yet in the report time zone; the last complete day is "
                       f"{local_today() - timedelta(days=1)}")
    return first, last + timedelta(days=1)


@job("daily_analytics", queue="default", accepts_date=True, time_limit=timedelta(minutes=30),
     params={"from": params.day(), "to": params.day(), "chunk_days": params.integer(0, low=0, high=366)})
def daily_analytics(ctx: JobContext) -> dict:
    """Daily report (yesterday by default): carts, orders, enrollments, revenue, conversion.

    A range given `chunk_days` is built in chunks of that many days, by any workers on any hosts; a
    chunk redone after a lost worker rebuilds its days (each day's report is replaced, never doubled).
    """
    if ctx.part is not None:
        built = daily_reports_build(start=date.fromisoformat(ctx.part["from"]), end=date.fromisoformat(ctx.part["to"]))
        ctx.add("days", len(built))
        ctx.add("reports_written", len(built))
        return {}
    start, end = report_days(ctx)
    step = ctx.params["chunk_days"]
    if step and not ctx.dry_run and (end - start).days > step:
        firsts = [start + timedelta(days=n) for n in range(0, (end - start).days, step)]
        ctx.fan_out([{"from": first.isoformat(), "to": min(first + timedelta(days=step), end).isoformat()}
                     for first in firsts])
        ctx.add("receipts_pruned", track_receipts_prune())
        return {"from": start.isoformat(), "to": (end - timedelta(days=1)).isoformat()}
    built = daily_reports_build(start=start, end=end, dry_run=ctx.dry_run, on_progress=ctx.progress)
    ctx.add("days", len(built))
    if not ctx.dry_run:
        ctx.add("reports_written", len(built))
        ctx.add("receipts_pruned", track_receipts_prune())
    if len(built) == 1:
        return built[0]
    return {
        "from": built[0]["date"], "to": built[-1]["date"],
        "days": [
            {key: day[key] for key in ("date", "orders_paid", "revenue_paise", "conversion_rate")}
            for day in built
        ],
    }


@job("weekly_analytics", queue="default", accepts_date=True, time_limit=timedelta(minutes=30))
def weekly_analytics(ctx: JobContext) -> dict:
    """Weekly report of the last complete Sunday-to-Saturday week before the run's date."""
    week_start = week_before(ctx.date or local_today())
    report = weekly_report_build(week_start=week_start, dry_run=ctx.dry_run)
    ctx.add("weeks", 1)
    if not ctx.dry_run:
        ctx.add("reports_written", 1)
    return report
