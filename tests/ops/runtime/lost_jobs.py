"""A test-only job for the lost-worker tests: counts its steps, then waits to be released or killed.

Worker processes import it through CHECKOUT_EXTRA_JOB_MODULES; the test process registers it by import.
"""
from datetime import timedelta

from checkout.redis import get_redis
from ops.runtime import params
from ops.runtime.context import JobContext
from ops.runtime.registry import job
from tests.ops.jobs_for_tests import blpop_patiently


@job("ops_test_long", time_limit=timedelta(minutes=5), params={
    "key": params.text(), "steps": params.integer(0, low=0),
})
def ops_test_long(ctx: JobContext) -> dict:
    """Counts `steps`, tells the test it started, and waits for its release (60 s at most)."""
    ctx.add("written", ctx.params["steps"])
    key = ctx.params["key"]
    if key:
        client = get_redis()
        client.rpush(f"{key}:started", ctx.run.pk)
        blpop_patiently(client, f"{key}:release", 60)
    return {"released": bool(key)}
