"""The order_cleanup job (hourly): settle and close orders left pending past ORDER_TTL."""
from datetime import timedelta

import orders.tasks  # noqa: F401  (registers the order tasks and their outbox subscriptions)
from ops.registry import job
from ops.runner import JobContext, JobError
from orders import services


def positive_int_param(ctx: JobContext, name: str, default: int) -> int:
    value = ctx.params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit() or int(value) < 1:
        raise JobError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@job("order_cleanup", queue="default", time_limit=timedelta(minutes=50))
def order_cleanup(ctx: JobContext) -> dict:
    """Orders pending past ORDER_TTL: release their payments, expire them (email once), close orphans."""
    counts = services.order_cleanup_overdue(
        dry_run=ctx.dry_run,
        concurrency=positive_int_param(ctx, "concurrency", 4),
        batch_size=positive_int_param(ctx, "batch_size", services.BATCH),
    )
    for key, n in counts.items():
        ctx.add(key, n)
    return {"dry_run": ctx.dry_run, **counts}
