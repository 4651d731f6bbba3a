"""Scheduled jobs of the payments app."""
from datetime import timedelta

from ops.registry import job
from ops.runner import JobContext
from payments.health import gateway_health_record


@job("payment_gateway_health", queue="default", time_limit=timedelta(minutes=2))
def payment_gateway_health(ctx: JobContext) -> dict:
    """Razorpay API reachable with valid credentials, with latency (stored for /health/)."""
    result = gateway_health_record(dry_run=ctx.dry_run)
    ctx.add(result["status"])
    return result
