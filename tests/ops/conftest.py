import pytest

import tests.ops.jobs_for_tests  # noqa: F401  (registers the test-only jobs in this process)


@pytest.fixture
def process_env(process_env):
    """Child processes (workers, runjob, beat) see the test-only jobs too."""
    return {**process_env, "CHECKOUT_EXTRA_JOB_MODULES": "tests.ops.jobs_for_tests"}


@pytest.fixture
def test_schedules(monkeypatch):
    """Replace the declared schedules with ones for the test-only jobs."""
    from ops.runtime import schedules

    declared = (
        schedules._job("ops_test_job", schedules.Cron(minute="*/15"), 15 * schedules.MINUTE,
                       grace=10 * schedules.MINUTE),
        schedules._job("ops_test_undated", schedules.Cron(minute="0", hour="2"), schedules.DAY,
                       grace=3 * schedules.HOUR),
    )
    monkeypatch.setattr(schedules, "SCHEDULES", declared)
    return declared
