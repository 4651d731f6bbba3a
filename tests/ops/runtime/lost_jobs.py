"""Test-only work for the lost-worker tests: a job that counts its steps and waits to be released or
killed, and a task that kills its own worker.

Worker processes import it through CHECKOUT_EXTRA_JOB_MODULES; the test process registers it by import.
"""
import os
import signal
from datetime import timedelta

from checkout.redis import get_redis
from ops.runtime import params
from ops.runtime.context import JobContext
from ops.runtime.registry import job
from ops.runtime.tasks import background_task
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


@background_task("ops_test.dies", queue="default", max_retries=0)
def dies(marker: str) -> str:
    """Test-only task that kills the worker process running it, every time (as running out of memory would)."""
    get_redis().rpush(marker, os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"
