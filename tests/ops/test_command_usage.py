"""Every management command of the project says every usage error in one line, with exit status 2.

Each case runs `manage.py <command> <args>` as a real process against the test database;
the cases run in parallel. The table must name every command found under the project's
management/commands directories, so a new command cannot miss it.
"""
from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from checkout.timezones import local_today
from tests.conftest import ROOT

# The commands read the test database (migrated, empty): the tests themselves write nothing.
pytestmark = [pytest.mark.slow, pytest.mark.django_db]

FUTURE = (local_today() + timedelta(days=400)).isoformat()
UNKNOWN_OPTION = (["--no-such-option"], "unrecognized arguments: --no-such-option")
# Arguments a command requires before argparse looks at the others.
REQUIRED = {"backfill_analytics": ["--from", "2026-01-01", "--to", "2026-01-02"]}

# command -> (arguments, what the one line must say); every command also gets UNKNOWN_OPTION.
CASES: dict[str, list[tuple[list[str], str]]] = {
    "runjob": [
        ([], "name a job to run, or use --list"),
        (["no_such_job"], "unknown job 'no_such_job'"),
        (["daily_analytics", "--date", FUTURE], f"--date {FUTURE} is in the future"),
        (["daily_analytics", "--date", "2026-13-01"], "invalid --date '2026-13-01'"),
        (["daily_analytics", "--date"], "argument --date: expected one argument"),
        (["cart_cleanup", "--date", "2026-01-01"], "job 'cart_cleanup' does not take --date"),
        (["--list", "cart_cleanup"], "give either a job or --list, not both"),
    ],
    "sync_schedules": [
        (["extra"], "unrecognized arguments: extra"),
    ],
    "restore_backup": [
        (["abc"], "argument backup_id: invalid int value: 'abc'"),
        (["999999999", "--database", "checkout_never_restored"], "no backup with id 999999999"),
        (["1"], "--database is required"),
        (["--database", "checkout_never_restored"], "name the backup to restore"),
        (["1", "--database", "x", "--yes-destroy", "x"], "--yes-destroy goes with --replace"),
    ],
    "demo": [
        (["--port", "0"], "--port must be between 1 and 65535, got 0"),
        (["--port", "http"], "argument --port: invalid int value: 'http'"),
    ],
    "seed_demo": [
        (["--carts", "-5"], "--carts must be between 0"),
        (["--orders", "many"], "argument --orders: invalid int value: 'many'"),
        (["--yes-destroy", "x"], "--yes-destroy goes with --reset"),
        (["--reset", "--yes-destroy", "not_this_database"], "'not_this_database' is not the name of the database"),
    ],
    "fake_razorpay": [
        (["--p-5xx", "2"], "argument --p-5xx: invalid probability value: '2'"),
        (["--port", "70000"], "--port 70000 is not a TCP port"),
        (["--latency-ms", "-1"], "--latency-ms must be 0 or more"),
        (["--p-5xx", "0.6", "--p-429", "0.6"], "fault probabilities add up to more than 1"),
    ],
    "backfill_analytics": [
        ([], "the following arguments are required: --from, --to"),
        (["--from", "2026-13-01", "--to", "2026-01-01"], "not a date (YYYY-MM-DD): '2026-13-01'"),
        (["--from", "2026-01-02", "--to", "2026-01-01"], "--from 2026-01-02 is after --to 2026-01-01"),
        (["--from", "2026-01-01", "--to", FUTURE], f"--to {FUTURE} is not over yet"),
    ],
}
TABLE = [
    (command, args, says) for command, cases in CASES.items()
    for args, says in [(REQUIRED.get(command, []) + UNKNOWN_OPTION[0], UNKNOWN_OPTION[1]), *cases]
]
# Filled once by the first test that needs it: every case, run in parallel.
_RESULTS: dict[tuple, subprocess.CompletedProcess] = {}


def project_commands() -> set[str]:
    packages = [
        path for path in ROOT.iterdir() if (path / "__init__.py").exists() and path.name not in {"tests", "bench"}
    ]
    return {
        path.stem for package in packages for path in package.rglob("management/commands/*.py")
        if not path.name.startswith("_")
    }


def _run(env, command: str, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", command, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def results(process_env):
    if not _RESULTS:
        with ThreadPoolExecutor(max_workers=4) as pool:
            done = pool.map(lambda case: (case, _run(process_env, case[0], case[1])), TABLE)
            _RESULTS.update(((command, tuple(args)), result) for (command, args, _), result in done)
    return _RESULTS


def test_the_table_covers_every_command_of_the_project():
    assert set(CASES) == project_commands()


@pytest.mark.parametrize(("command", "args", "says"), TABLE, ids=[f"{c} {' '.join(a)}" for c, a, _ in TABLE])
def test_a_usage_error_is_one_line_and_exit_2(results, command, args, says):
    done = results[(command, tuple(args))]

    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{command}: error: ") and lines[0].endswith(" (see --help)"), lines[0]
    assert says in lines[0]
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_help_is_unchanged_and_exits_0(process_env):
    done = _run(process_env, "runjob", ["--help"])

    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("usage: manage.py runjob") and "--date DAY" in done.stdout
