"""Every setting is validated at start-up: a bad value is one line naming the variable and exit 2 from
every entry point (manage.py, celery worker and beat, the WSGI app), never a traceback or a silent
fallback; production (DEBUG off on PostgreSQL) refuses the development SECRET_KEY and passes
`check --deploy` with the README's settings.

The table of bad values runs the settings module in this process (a subprocess per value would add
only time); each entry point is then shown in real processes, started in parallel.
"""
import os
import re
import runpy
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.exceptions import ImproperlyConfigured

from checkout.apps import check_secret_key, import_named_classes
from tests.conftest import ROOT

SETTINGS_FILE = ROOT / "checkout" / "settings.py"
POSTGRES_URL = "postgres://checkout@db:5432/checkout"
PRODUCTION_KEY = secrets.token_urlsafe(50)

# Every variable the settings read, with values each must refuse.
BAD = {
    "DEBUG": ["maybe", "2"],
    "SECRET_KEY": [" key-with-a-pasted-newline\n"],
    "ALLOWED_HOSTS": ["", "https://checkout.example.com", "checkout.example.com/admin", "example.com:8000"],
    "CSRF_TRUSTED_ORIGINS": ["checkout.example.com", "https://checkout.example.com/admin", "ftp://x.com"],
    "CHECKOUT_TIME_ZONE": ["Mars/Olympus", "", "../etc/passwd"],
    "DATABASE_URL": ["garbage", "mysql://u:pw@h/db", "postgres://h:99999/db", "postgres://h/"],
    "DB_CONN_MAX_AGE": ["-1", "forever", "100000"],
    "DB_CONNECT_TIMEOUT": ["0", "abc", "1000"],
    "DATABASE_POOLING": ["statement", "pgbouncer"],
    "CHECKOUT_TEST_DB_SUFFIX": ["a-b", "x;drop"],
    "REDIS_URL": ["garbage", "http://h:6379", "redis://", "redis://h:99999/0", "redis://h/abc", "unix://"],
    "REDIS_SOCKET_TIMEOUT": ["0", "-1", "nan", "inf", "1000"],
    "CELERY_BROKER_URL": ["garbage", "kafka://h:9092", "redis://"],
    "CELERY_TASK_ALWAYS_EAGER": ["sometimes"],
    "BEAT_TICK": ["0", "-1", "nan", "3"],
    "BEAT_LEASE": ["0", "abc", "2h"],
    "BEAT_CLOCK_OFFSET": ["nan", "1e9"],
    "RETENTION_BEAT_SLOTS": ["1d", "99999999999d"],
    "CELERY_WORKER_CONCURRENCY": ["0", "many", "100000"],
    "CART_TTL": ["99999999999d", "0", "-1h", "soon", "400d"],
    "CART_ABANDON_AFTER": ["0", "2d", "31d"],
    "ORDER_TTL": ["0", "60d"],
    "PAYMENT_SYNC_AFTER": ["0", "3d", "8d"],
    "EFFECTS_REDRIVE_AFTER": ["0", "2d"],
    "CHECKOUT_CURRENCY": ["rupees", "inr", "", "IN"],
    "RAZORPAY_KEY_ID": ["rzp_test_alone", " rzp_test_padded"],
    "RAZORPAY_KEY_SECRET": ["secret-alone", "secret-with-newline\n"],
    "RAZORPAY_WEBHOOK_SECRET": ["whsec-with-newline\n"],
    "RAZORPAY_BASE_URL": ["api.razorpay.com", "ftp://api.razorpay.com", "https://"],
    "RAZORPAY_TIMEOUT": ["0", "-3", "inf", "nan", "1000"],
    "RAZORPAY_RATE_LIMIT": ["-1", "nan", "inf", "0.001", "1e6"],
    "RAZORPAY_RATE_MAX_WAIT": ["-1", "nan", "600"],
    "EMAIL_BACKEND": ["nosuch.Backend", "not a path", ""],
    "EMAIL_HOST": ["", "smtp://mail.example.com", "mail example"],
    "EMAIL_PORT": ["0", "99999", "smtp"],
    "EMAIL_HOST_PASSWORD": [" padded-password "],
    "EMAIL_USE_TLS": ["maybe"],
    "EMAIL_USE_SSL": ["maybe"],
    "EMAIL_TIMEOUT": ["0", "1.5", "100000"],
    "DEFAULT_FROM_EMAIL": ["nope", ""],
    "SERVER_EMAIL": ["nope"],
    "ADMIN_EMAILS": ["ops@example.com,nope"],
    "BACKUP_DIR": ["", " "],
    "BACKUP_KEEP_DAILY": ["0", "x", "10000"],
    "BACKUP_KEEP_WEEKLY": ["-1", "10000"],
    "BACKUP_RESTORE_CHECK": ["monthly"],
    "BACKUP_TIMEOUT": ["0", "2d"],
    "RETENTION_JOB_RUNS": ["90", "7d", "99999d"],
    "RETENTION_TASK_RESULTS": ["30", "0"],
    "RETENTION_WEBHOOK_EVENTS": ["90", "0"],
    "RETENTION_DEAD_LETTERS": ["30", "0"],
    "RETENTION_OUTBOX": ["7", "0"],
    "RETENTION_HEALTH": ["30", "0"],
    "DB_MONITOR_DEAD_TUPLE_RATIO": ["0", "1.5", "nan"],
    "DB_MONITOR_CONNECTIONS_RATIO": ["0", "80", "-0.1"],
    "DB_MONITOR_LONG_QUERY": ["0", "2d"],
    "HEALTH_CHECK_TIMEOUT": ["-1", "0", "inf", "600"],
    "HEALTH_STALE_AFTER": ["0", "60d"],
    "HEALTH_CACHE_SECONDS": ["-1", "nan", "86400"],
    "HEALTH_PING_SECONDS": ["-1", "inf"],
    "OPS_TOKEN": ["tok3n", " padded-token-long-enough "],
    "OPS_ALLOWED_NETWORKS": ["10.0.0.0/8,office"],
    "CHECKOUT_EXTRA_JOB_MODULES": ["tests.ops.nosuch", "not a module"],
    "JOB_LOCK_LEASE": ["0", "2h"],
    "ALERT_FAILURE_RATIO": ["7", "1", "-0.5", "nan"],
    "ALERT_WINDOW": ["0", "100d"],
    "ALERT_MIN_RUNS": ["0", "lots"],
    "ALERT_DEPENDENCY_DOWN_AFTER": ["0", "8d"],
    "ALERT_DEAD_LETTERS": ["0", "-5"],
    "ALERT_PAYMENT_STUCK_AFTER": ["0", "31d"],
    "ALERT_BACKENDS": ["nosuch.Backend", "", "LogBackend"],
    "STATIC_ROOT": [""],
    "SECURE_SSL_REDIRECT": ["maybe"],
    "SECURE_HSTS_SECONDS": ["-1", "99999999999", "year"],
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": ["maybe"],
    "SECURE_HSTS_PRELOAD": ["maybe"],
    "SESSION_COOKIE_SECURE": ["maybe"],
    "CSRF_COOKIE_SECURE": ["maybe"],
    "LOG_LEVEL": ["LOUD", "verbose"],
}
# Free text: any value is a valid one.
FREE = {"EMAIL_HOST_USER"}
# Values refused only together with others.
BAD_TOGETHER = [
    {"EMAIL_USE_TLS": "true", "EMAIL_USE_SSL": "true"},
    {"RAZORPAY_KEY_ID": "rzp_test_x", "RAZORPAY_KEY_SECRET": ""},
    {"BEAT_TICK": "2", "BEAT_LEASE": "5s"},
]
# Values that are fine, and what the setting becomes.
GOOD = [
    ("CART_TTL", "3h", "CART_TTL", 10800.0),
    ("CART_TTL", "2d", "CART_TTL", 172800.0),
    ("CART_TTL", " ", "CART_TTL", 86400.0),  # blank: the default
    ("RAZORPAY_RATE_LIMIT", "0", "RAZORPAY_RATE_LIMIT", 0.0),
    ("RAZORPAY_TIMEOUT", "2.5", "RAZORPAY_TIMEOUT", 2.5),
    ("HEALTH_PING_SECONDS", "0", "HEALTH_PING_SECONDS", 0.0),
    ("REDIS_URL", "rediss://:pw@cache.example.com:6380/2", "REDIS_URL", "rediss://:pw@cache.example.com:6380/2"),
    ("REDIS_URL", "unix:///run/redis.sock", "REDIS_URL", "unix:///run/redis.sock"),
    ("CELERY_BROKER_URL", "amqp://guest@mq:5672//", "CELERY_BROKER_URL", "amqp://guest@mq:5672//"),
    ("RAZORPAY_BASE_URL", "http://127.0.0.1:8765", "RAZORPAY_BASE_URL", "http://127.0.0.1:8765"),
    ("CHECKOUT_CURRENCY", "USD", "CHECKOUT_CURRENCY", "USD"),
    ("LOG_LEVEL", "warning", "LOGGING", "WARNING"),
    ("BACKUP_RESTORE_CHECK", "Daily", "BACKUP_RESTORE_CHECK", "daily"),
    ("ALLOWED_HOSTS", ".example.com,*,[::1]", "ALLOWED_HOSTS", [".example.com", "*", "[::1]"]),
    ("CSRF_TRUSTED_ORIGINS", "https://*.example.com", "CSRF_TRUSTED_ORIGINS", ["https://*.example.com"]),
    ("DEFAULT_FROM_EMAIL", "Checkout <ops@example.com>", "SERVER_EMAIL", "Checkout <ops@example.com>"),
    ("ALERT_BACKENDS", "ops.runtime.alerts.LogBackend", "ALERT_BACKENDS", ["ops.runtime.alerts.LogBackend"]),
    ("CHECKOUT_EXTRA_JOB_MODULES", "tests.ops.jobs_for_tests", "CHECKOUT_EXTRA_JOB_MODULES", ["tests.ops.jobs_for_tests"]),
    ("DATABASE_URL", POSTGRES_URL, "DATABASE_URL", POSTGRES_URL),
]
# Classes are imported once the apps are loaded (checkout.apps): values that pass the first look.
BAD_CLASSES = [
    ("EMAIL_BACKEND", "django.core.mail.backends.smtp.Nope"),
    ("EMAIL_BACKEND", "django.core.mail.message"),
    ("ALERT_BACKENDS", "ops.runtime.alerts.NoSuch"),
    ("ALERT_BACKENDS", "ops.runtime.alerts"),
]
SECRETS = {"SECRET_KEY", "RAZORPAY_KEY_ID", "RAZORPAY_KEY_SECRET", "RAZORPAY_WEBHOOK_SECRET",
           "EMAIL_HOST_PASSWORD", "OPS_TOKEN"}


def load_settings(monkeypatch, **env) -> dict:
    """The settings module run afresh with only `env` set (beside PATH): its names and values."""
    for key in list(os.environ):
        if key != "PATH":
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return runpy.run_path(str(SETTINGS_FILE))


def refusal(monkeypatch, **env) -> str:
    with pytest.raises(ImproperlyConfigured) as refused:
        load_settings(monkeypatch, **env)
    return str(refused.value)


def test_the_table_covers_every_variable_the_settings_read():
    read = set(re.findall(r"\benv_\w+\(\s*[\"']([A-Z][A-Z0-9_]*)[\"']", SETTINGS_FILE.read_text()))
    assert read - set(BAD) - FREE == set(), "variables read with no bad values in the table"
    assert set(BAD) - read == set(), "the table names variables the settings no longer read"


@pytest.mark.parametrize(
    "name,value", [(name, value) for name, values in BAD.items() for value in values],
    ids=lambda item: repr(item)[:40],
)
def test_a_bad_value_is_refused_in_one_line_naming_the_variable(monkeypatch, name, value):
    message = refusal(monkeypatch, **{name: value})

    assert name in message
    assert "\n" not in message
    if name in SECRETS and value.strip():
        assert value.strip() not in message, "a secret was echoed"


@pytest.mark.parametrize("env", BAD_TOGETHER, ids=lambda env: ",".join(env))
def test_values_that_exclude_each_other_are_refused(monkeypatch, env):
    message = refusal(monkeypatch, **env)

    assert any(name in message for name in env)
    assert "\n" not in message


def test_a_password_in_a_url_is_never_echoed(monkeypatch):
    for name, url in [("REDIS_URL", "redis://:hunter2@h:99999/0"), ("DATABASE_URL", "mysql://u:hunter2@h/db")]:
        message = refusal(monkeypatch, **{name: url})
        assert name in message and "hunter2" not in message


@pytest.mark.parametrize("name,value,setting,expected", GOOD, ids=lambda item: repr(item)[:40])
def test_good_values_are_accepted(monkeypatch, name, value, setting, expected):
    loaded = load_settings(monkeypatch, SECRET_KEY=PRODUCTION_KEY, **{name: value})[setting]

    if setting == "LOGGING":
        loaded = loaded["root"]["level"]
    elif hasattr(loaded, "total_seconds"):
        loaded = loaded.total_seconds()
    assert loaded == expected


def test_with_nothing_set_the_demo_settings_load(monkeypatch):
    loaded = load_settings(monkeypatch)

    assert loaded["SECRET_KEY"] == loaded["INSECURE_DEV_SECRET_KEY"]
    assert "sqlite" in loaded["DATABASES"]["default"]["ENGINE"]
    assert not loaded["SECURE_SSL_REDIRECT"] and not loaded["SESSION_COOKIE_SECURE"]


@pytest.mark.parametrize("key,weakness", [
    (None, "is not set"),
    ("insecure-development-key-set-SECRET_KEY-in-production", "is the development key"),
    ("django-insecure-" + "x1y2z3" * 10, "generated for development"),
    ("short-key", "too weak"),
    ("ab" * 40, "too weak"),
])
def test_production_refuses_a_missing_default_or_weak_secret_key(monkeypatch, key, weakness):
    env = {"DATABASE_URL": POSTGRES_URL, **({"SECRET_KEY": key} if key else {})}

    message = refusal(monkeypatch, **env)

    assert message.startswith("SECRET_KEY ") and weakness in message
    assert key is None or key not in message


@pytest.mark.parametrize("env", [
    {},  # the demo: its SQLite file, DEBUG off
    {"DATABASE_URL": "sqlite:////tmp/elsewhere.sqlite3"},
    {"DATABASE_URL": POSTGRES_URL, "DEBUG": "true"},
], ids=["demo", "sqlite", "debug"])
def test_the_development_key_is_allowed_without_production(monkeypatch, env):
    loaded = load_settings(monkeypatch, **env)

    assert loaded["SECRET_KEY"] == loaded["INSECURE_DEV_SECRET_KEY"]


def test_production_defaults_are_the_secure_ones(monkeypatch):
    loaded = load_settings(monkeypatch, DATABASE_URL=POSTGRES_URL, SECRET_KEY=PRODUCTION_KEY)

    assert loaded["SECURE_SSL_REDIRECT"] and loaded["SESSION_COOKIE_SECURE"] and loaded["CSRF_COOKIE_SECURE"]
    assert loaded["SECURE_HSTS_SECONDS"] >= 31_536_000
    # Monitors and scrapers inside the network may probe over plain http.
    assert [pattern for pattern in loaded["SECURE_REDIRECT_EXEMPT"] if re.search(pattern, "health/")]


@pytest.mark.parametrize("name,path", BAD_CLASSES)
def test_a_class_that_does_not_import_is_refused_at_start_up(settings, name, path):
    setattr(settings, name, path if name == "EMAIL_BACKEND" else [path])

    with pytest.raises(ImproperlyConfigured) as refused:
        import_named_classes()

    assert str(refused.value).startswith(f"{name}={path!r}")
    assert "\n" not in str(refused.value)


def test_the_deploy_check_flags_the_development_key(settings):
    settings.SECRET_KEY = settings.INSECURE_DEV_SECRET_KEY
    assert [error.id for error in check_secret_key(None)] == ["checkout.E001"]

    settings.SECRET_KEY = PRODUCTION_KEY
    assert check_secret_key(None) == []


# --- the entry points, in real processes ------------------------------------------------------------

STAGE_ONE = {"CART_TTL": "99999999999d"}  # refused while the settings load
STAGE_TWO = {"ALERT_BACKENDS": "ops.runtime.alerts.NoSuch"}  # refused once the apps are loaded
CELERY = [sys.executable, "-m", "celery", "-A", "checkout"]
GUNICORN = [sys.executable, "-m", "gunicorn", "checkout.wsgi", "-b", "127.0.0.1:0"]
# Each entry point with both kinds of refusal; beside them, a project command and a bare import of
# the WSGI module (as any WSGI server does) with the first kind.
ENTRY_POINTS = {
    "manage.py check": [sys.executable, "manage.py", "check"],
    "celery worker": [*CELERY, "worker", "-P", "solo", "--without-gossip", "--without-mingle"],
    "celery beat": [*CELERY, "beat", "--pidfile="],
    "gunicorn --preload": [*GUNICORN, "--preload"],
}
REFUSALS = {
    **{f"{entry} | {name}": (command, {name: value}, name)
       for entry, command in ENTRY_POINTS.items() for name, value in {**STAGE_ONE, **STAGE_TWO}.items()},
    "manage.py runjob --list | CART_TTL": ([sys.executable, "manage.py", "runjob", "--list"], STAGE_ONE, "CART_TTL"),
    "import checkout.wsgi | CART_TTL": ([sys.executable, "-c", "import checkout.wsgi"], STAGE_ONE, "CART_TTL"),
    "manage.py check | no SECRET_KEY on PostgreSQL": (
        ENTRY_POINTS["manage.py check"], {"DATABASE_URL": POSTGRES_URL}, "SECRET_KEY"),
}
README_PRODUCTION = {
    "DATABASE_URL": POSTGRES_URL, "REDIS_URL": "redis://redis:6379/0", "SECRET_KEY": PRODUCTION_KEY,
    "ALLOWED_HOSTS": "checkout.example.com",
}
OTHERS = {
    "gunicorn without --preload | CART_TTL": (GUNICORN, STAGE_ONE),
    "check --deploy | the README's production settings": (
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], README_PRODUCTION),
}


def _run(command, env, tmp_dir):
    base = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": str(tmp_dir),
            "DATABASE_URL": f"sqlite:///{tmp_dir}/unused.sqlite3"}
    return subprocess.run(command, cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=90)


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """Every process of this module, run at once: name -> CompletedProcess."""
    tmp_dir = tmp_path_factory.mktemp("entry-points")
    cases = {name: (command, env) for name, (command, env, _) in REFUSALS.items()} | OTHERS
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(_run, command, env, tmp_dir) for name, (command, env) in cases.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(REFUSALS))
def test_every_entry_point_stops_with_one_line_and_exit_2(started, case):
    done, (_, _, name) = started[case], REFUSALS[case]
    print(f"\n{case}: exit {done.returncode}: {done.stderr.strip()}")

    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(f"configuration error: {name}")
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.slow
def test_gunicorn_without_preload_stops_instead_of_restarting_the_worker(started):
    done = started["gunicorn without --preload | CART_TTL"]
    print(f"\nexit {done.returncode}:\n{done.stderr.strip()}")

    # gunicorn's own "worker failed to boot": the master stops (exit 2 would have it boot the worker
    # again for ever); the cause is still one line, and no traceback.
    assert done.returncode == 3
    assert [line for line in done.stderr.splitlines() if "CART_TTL" in line] == [
        "configuration error: CART_TTL='99999999999d' must be at most 365d"
    ]
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_check_deploy_is_clean_with_the_readmes_production_settings(started):
    done = started["check --deploy | the README's production settings"]
    print(f"\nexit {done.returncode}: {done.stdout.strip()} {done.stderr.strip()}")

    assert done.returncode == 0, done.stderr
    assert "no issues" in done.stdout
