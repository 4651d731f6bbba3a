"""Jobs and a background task that exist only to test the runtime.

Tests register them in-process through tests/ops/conftest.py; worker and runjob
subprocesses import them through CHECKOUT_EXTRA_JOB_MODULES=tests.ops.jobs_for_tests.
They do nothing unless a test asks, through params or the OPS_TEST_HOLD_KEY and
OPS_TEST_FAIL environment variables.
"""
import os
import time
from datetime import timedelta
from pathlib import Path

from django.db import connection, transaction

from checkout.redis import get_redis
from ops.runtime import params, schedules
from ops.runtime.registry import job, job_close
from ops.runtime.context import JobContext
from ops.runtime.errors import JobError, JobSkipped
from ops.runtime.tasks import background_task
from tests.services import blpop_patiently  # noqa: F401  (the test jobs wait with it; tests import it here)

TEST_JOBS = ("ops_test_job", "ops_test_undated", "ops_test_tick", "ops_test_spread")
TEST_TASKS = ("ops_test.flaky", "ops_test.outbox_sink", "ops_test.backlog", "ops_test.urgent")
HOLD_TIMEOUT_S = 60


@job("ops_test_job", accepts_date=True, time_limit=timedelta(minutes=2), max_retries=2, params={
    "hold_key": params.text(), "fail_unless_file": params.text(), "crash": params.text(), "skip": params.text(),
    "steps": params.integer(0, low=0),
})
def ops_test_job(ctx: JobContext) -> dict:
    """Test-only job: holds, fails, skips or counts steps as its params say."""
    given = ctx.params
    hold = given.get("hold_key") or os.environ.get("OPS_TEST_HOLD_KEY")
    if hold:
        # Tell the test it holds the lock, then wait for its go (an event, not a sleep).
        client = get_redis()
        client.rpush(f"{hold}:started", os.getpid())
        blpop_patiently(client, f"{hold}:release", HOLD_TIMEOUT_S)
    if given.get("fail_unless_file") and not Path(given["fail_unless_file"]).exists():
        raise JobError(f"{given['fail_unless_file']} does not exist")
    if given.get("crash") or os.environ.get("OPS_TEST_FAIL"):
        raise RuntimeError(given.get("crash") or "failing as OPS_TEST_FAIL asks")
    if given.get("skip"):
        raise JobSkipped(given["skip"])
    steps = given["steps"]
    for step in range(1, steps + 1):
        ctx.progress(step, steps, "steps")
        ctx.add("would_write" if ctx.dry_run else "written")
    return {"date": ctx.date.isoformat() if ctx.date else None, "trigger": ctx.trigger}


@job("ops_test_undated")
def ops_test_undated(ctx: JobContext) -> dict:
    """Test-only job that takes no date and does nothing."""
    ctx.add("noop")
    return {}


class Transient(Exception):
    pass


@background_task("ops_test.flaky", queue="default", max_retries=3, retry_on=(Transient,))
def flaky(kind: str = "transient") -> str:
    """Fails with a retryable error, or with a permanent one."""
    if kind == "transient":
        raise Transient("gateway busy")
    raise ValueError("bad input")


# --- for the queue priority test of tests/ops/runtime/test_priority.py -------------------------
@background_task("ops_test.backlog", queue="default", max_retries=0)
def backlog(counter: str) -> None:
    """Default-queue filler: counts itself done."""
    get_redis().incr(counter)


@background_task("ops_test.urgent", queue="high", max_retries=0)
def urgent(counter: str, stamp: str) -> None:
    """High-queue work: records when it started and how much of the backlog had run by then."""
    client = get_redis()
    client.rpush(stamp, f"{time.time()} {int(client.get(counter) or 0)}")


# --- for the beat processes of tests/ops/runtime/test_beat_ha.py --------------------------------


@job("ops_test_tick", time_limit=timedelta(minutes=1), max_retries=0)
def ops_test_tick(ctx: JobContext) -> dict:
    """Test-only job that returns at once with its trigger: beat tests count its runs."""
    return {"trigger": ctx.trigger}


def declare_for_beat(spec: str) -> None:
    """Declare test jobs' schedules in this process, with the graces `spec` gives ("job=seconds,...").

    A beat applies the catch-up policy to declared schedules only. Declarations in
    code are crontabs; the beat tests write interval rows named after the jobs, and
    only the names and graces of these declarations matter to the scheduler.
    """
    extra = []
    for item in filter(None, spec.split(",")):
        name, seconds = item.split("=")
        extra.append(schedules._job(name, schedules.Cron(), schedules.MINUTE, grace=timedelta(seconds=float(seconds))))
    if extra:
        schedules.SCHEDULES = (*schedules.SCHEDULES, *extra)


declare_for_beat(os.environ.get("OPS_TEST_BEAT_GRACE", ""))


# --- for the chunks of tests/ops/runtime/test_chunks_across_hosts.py ----------------------------
# The units a run of ops_test_spread does: one row per unit done, with no key, so a unit done twice
# shows as two rows. The test creates the table and drops it.
UNIT_TABLE = "ops_test_spread_unit"


@job("ops_test_spread", time_limit=timedelta(minutes=2), max_retries=1, params={
    "units": params.integer(0, low=0), "per_chunk": params.integer(10, low=1),
    "hold_part": params.integer(-1, low=-1), "hold_key": params.text(), "pause_ms": params.integer(0, low=0),
    "fail_close": params.flag(False),
})
def ops_test_spread(ctx: JobContext) -> dict:
    """Test-only job that fans out: units [0, units) in parts of per_chunk, each part's units written
    in one transaction; part `hold_part`'s first attempt waits inside it for the test's release."""
    given = ctx.params
    if ctx.part is None:
        parts = [{"first": first, "last": min(first + given["per_chunk"], given["units"]), "index": index}
                 for index, first in enumerate(range(0, given["units"], given["per_chunk"]))]
        ctx.add("parts", len(parts))
        ctx.fan_out(parts)
        return {"units": given["units"]}
    part = ctx.part
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {UNIT_TABLE} (unit, part, attempt) SELECT n, %s, %s FROM generate_series(%s, %s) AS n",
            [part["index"], ctx.attempt, part["first"], part["last"] - 1],
        )
        ctx.add("units", cursor.rowcount)
        if part["index"] == given["hold_part"] and ctx.attempt == 1:
            client = get_redis()
            client.rpush(f"{given['hold_key']}:started", os.getpid())
            blpop_patiently(client, f"{given['hold_key']}:release", HOLD_TIMEOUT_S)
        elif given["pause_ms"]:
            time.sleep(given["pause_ms"] / 1000)  # stands for the part's work, so parts overlap across workers
    return {}


@job_close("ops_test_spread")
def ops_test_spread_close(ctx: JobContext) -> dict:
    """Its closing step: names the units the run's chunks counted, or fails when asked to."""
    if ctx.params["fail_close"]:
        raise JobError("the closing step was asked to fail")
    return {"closed_with_units": ctx.counts["units"]}
