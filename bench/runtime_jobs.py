"""The two no-ops bench/runtime.py compares: a job through the runtime, and a bare Celery task.

Imported by the bench and by its worker through CHECKOUT_EXTRA_JOB_MODULES=bench.runtime_jobs.
"""
from checkout.celery import app
from ops.runtime.registry import job


@job("bench_noop", queue="default")
def bench_noop(ctx) -> dict:
    """Does nothing: what is left is the runtime's own cost (lock, ledger, metrics)."""
    return {}


@app.task(name="bench.noop", queue="default")
def bare_noop() -> None:
    return None
