"""manage.py runjob: output, exit codes 0/1/2/3, --list, --async, progress."""
import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.core.management.base import OutputWrapper

from ops.runtime.locks import try_acquire
from ops.runtime.management.commands.runjob import _Progress
from ops.runtime.models import JobRun
from ops.runtime.registry import all_jobs, get_job
from tests.conftest import ROOT

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def runjob(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("runjob", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_runs_the_job_and_prints_what_it_did():
    out, _ = runjob("ops_test_job", "--date", "2026-03-01", "--dry-run")

    run = JobRun.objects.get()
    assert run.dry_run and run.params == {"date": "2026-03-01"}
    assert f"ops_test_job: success in {run.duration_ms} ms, run #{run.pk} (dry run: nothing written)" in out
    assert '"date": "2026-03-01"' in out


def test_progress_is_plain_lines_off_a_terminal():
    # a StringIO is not a TTY: no bar, readable lines at most once a second, and the last one
    out = StringIO()
    progress = _Progress(OutputWrapper(out))
    for step in range(1, 4):
        progress(step, 3, "steps")
    assert out.getvalue().splitlines() == ["steps: 1/3", "steps: 3/3"]


def test_failed_job_exits_1(monkeypatch):
    monkeypatch.setenv("OPS_TEST_FAIL", "1")
    with pytest.raises(SystemExit) as exit_:
        runjob("ops_test_job")
    assert exit_.value.code == 1
    run = JobRun.objects.get()
    assert run.status == JobRun.Status.FAILED


def test_lock_held_exits_3():
    job = get_job("ops_test_job")
    with try_acquire(job.name, lease=job.time_limit):
        with pytest.raises(SystemExit) as exit_:
            runjob("ops_test_job")
    assert exit_.value.code == 3
    assert JobRun.objects.get().status == JobRun.Status.SKIPPED


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "unknown job 'nope'; known jobs: "),
        (["ops_test_jb"], "unknown job 'ops_test_jb'; did you mean ops_test_job"),
        (["ops_test_job", "--date", "2026-13-01"], "invalid --date '2026-13-01': month must be in 1..12"),
        (["ops_test_job", "--date", "01/03/2026"], "invalid --date '01/03/2026': not in YYYY-MM-DD form"),
        (["ops_test_undated", "--date", "2026-03-01"], "job 'ops_test_undated' does not take --date"),
        ([], "name a job to run, or use --list"),
        (["ops_test_spread", "--param", "units"], "--param wants NAME=VALUE, not 'units'"),
        (["ops_test_spread", "--param", "unit=3"], "--param: unknown parameter(s) for ops_test_spread: unit"),
        (["ops_test_spread", "--param", "units=many"], "--param: units must be an integer, not 'many'"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(args, message):
    with pytest.raises(CommandError) as error:
        runjob(*args)
    assert error.value.returncode == 2
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not JobRun.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_run_handed_to_chunks_says_so_and_exits_0(celery_live, redis_client):
    # given chunk tasks sent to a broker no worker reads here
    out, err = runjob("ops_test_spread", "--param", "units=30", "--param", "per_chunk=10")

    run = JobRun.objects.get()
    assert run.status == JobRun.Status.RUNNING and run.params == {"units": 30, "per_chunk": 10}
    assert (f"ops_test_spread: run #{run.pk} handed 3 chunks to the workers; it stays running until the last "
            "one ends") in out and err == ""


def test_async_prints_the_task_id():
    out, _ = runjob("ops_test_undated", "--async")

    run = JobRun.objects.get()  # eager here: it already ran
    assert out.strip() == f"ops_test_undated: queued on default as task {run.task_id}"


def test_list_shows_schedule_in_words_last_run_and_next_run(test_schedules):
    call_command("sync_schedules", stdout=StringIO())
    runjob("ops_test_undated")

    out, _ = runjob("--list")

    lines = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    assert "Every 15 minutes" in lines["ops_test_job"] and "never" in lines["ops_test_job"]
    assert "At 02:00" in lines["ops_test_undated"] and "success" in lines["ops_test_undated"]
    assert set(lines) == set(all_jobs())
    assert out.splitlines()[-1].startswith("Times in ")


@pytest.fixture
def cli(process_env):
    def run(*args):
        return subprocess.run(
            [sys.executable, "manage.py", "runjob", *args], cwd=ROOT, env=process_env,
            capture_output=True, text=True, timeout=60,
        )

    return run


@pytest.mark.slow
def test_command_line_usage_errors_print_one_line_and_exit_2(cli):
    cases = [("nope",), ("ops_test_undated", "--date", "2026-13-01")]
    if "cart_cleanup" in all_jobs():
        cases.append(("cart_cleanup", "--date", "2026-13-01"))  # the exact command of the design
    for args in cases:
        done = cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr and done.stdout == ""
