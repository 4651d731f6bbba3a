"""Settings for checkout operations, read from the environment with safe defaults.

With nothing set, the project runs on a SQLite file with no Redis and no broker
(tasks then run in-process), which is what `make demo` uses. Production sets
DATABASE_URL (PostgreSQL), REDIS_URL, the Razorpay keys and a SECRET_KEY.
"""
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from checkout.env import (
    env_bool,
    env_duration,
    env_float,
    env_int,
    env_list,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent

# --- core ---------------------------------------------------------------------
DEBUG = env_bool("DEBUG", False)
INSECURE_DEV_SECRET_KEY = "insecure-development-key-set-SECRET_KEY-in-production"
SECRET_KEY = env_str("SECRET_KEY") or INSECURE_DEV_SECRET_KEY
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "django_celery_results",
    "ops.runtime",
    "ops.maintenance",
    "ops.demo",
    "carts",
    "orders",
    "payments",
    "analytics",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files (the admin's CSS and JS) straight from the app server, compressed and
    # with hashed names cached for ever; `collectstatic` fills STATIC_ROOT on deploy.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "checkout.urls"
WSGI_APPLICATION = "checkout.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- time ---------------------------------------------------------------------
# Times are stored in UTC; days (reports, schedules) are counted in this zone.
CHECKOUT_TIME_ZONE = env_str("CHECKOUT_TIME_ZONE", "Asia/Kolkata")
try:
    ZoneInfo(CHECKOUT_TIME_ZONE)
except (ZoneInfoNotFoundError, ValueError):
    raise ImproperlyConfigured(
        f"CHECKOUT_TIME_ZONE={CHECKOUT_TIME_ZONE!r} is not a known time zone"
    ) from None
USE_TZ = True
TIME_ZONE = CHECKOUT_TIME_ZONE
LANGUAGE_CODE = "en-us"
USE_I18N = False

# --- database -----------------------------------------------------------------
DEFAULT_SQLITE = BASE_DIR / "demo.sqlite3"
DATABASE_URL = env_str("DATABASE_URL") or f"sqlite:///{DEFAULT_SQLITE}"
try:
    _db = dj_database_url.parse(
        DATABASE_URL,
        conn_max_age=env_int("DB_CONN_MAX_AGE", 60, minimum=0),
        conn_health_checks=True,
    )
except Exception as exc:  # the library raises several types for a bad URL
    raise ImproperlyConfigured(f"DATABASE_URL cannot be parsed: {exc}") from None
if not _db.get("NAME") and "sqlite" not in _db["ENGINE"]:
    raise ImproperlyConfigured("DATABASE_URL names no database")
if "postgresql" in _db["ENGINE"]:
    _db.setdefault("OPTIONS", {})
    _db["OPTIONS"].setdefault("connect_timeout", env_int("DB_CONNECT_TIMEOUT", 5, minimum=1))
    _db["OPTIONS"].setdefault("application_name", "checkout-operations")
if "sqlite" in _db["ENGINE"]:
    # Jobs and the admin share the file; wait for the writer instead of failing.
    _db.setdefault("OPTIONS", {})
    _db["OPTIONS"].setdefault("timeout", 20)
    _db["OPTIONS"].setdefault("transaction_mode", "IMMEDIATE")
# Each concurrent test run gets its own database (see tests/conftest.py).
_db["TEST"] = {"NAME": "test_checkout" + env_str("CHECKOUT_TEST_DB_SUFFIX")}
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- redis --------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 2.0)

# --- celery -------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or REDIS_URL or "memory://localhost/"
# With no broker configured (the demo), tasks run in-process.
CELERY_TASK_ALWAYS_EAGER = env_bool(
    "CELERY_TASK_ALWAYS_EAGER", CELERY_BROKER_URL.startswith("memory://")
)
CELERY_TASK_EAGER_PROPAGATES = False
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True
CELERY_TIMEZONE = CHECKOUT_TIME_ZONE
CELERY_BEAT_SCHEDULER = "ops.runtime.scheduler:CatchUpScheduler"
# Any number of beats run; one leads on a lease (ops.runtime.beat). The tick is how often each
# beat wakes: the leader renews its lease and sends what is due, a standby checks whether the
# lease expired. A standby takes over within a tick of the expiry, so a failover lasts about
# BEAT_LEASE; the lease spans several ticks so that one slow tick does not cost the lead.
BEAT_TICK = env_float("BEAT_TICK", 1.0)
BEAT_LEASE = env_duration("BEAT_LEASE", timedelta(seconds=5))
if not 0 < BEAT_TICK <= BEAT_LEASE.total_seconds() / 3:
    raise ImproperlyConfigured(
        f"BEAT_TICK={BEAT_TICK} must be positive and at most a third of BEAT_LEASE ({BEAT_LEASE})"
    )
CELERY_BEAT_MAX_LOOP_INTERVAL = BEAT_TICK
# Seconds added to this process's own clock. Beats decide with the database's clock, so a
# beat whose clock is off (as tests make it) still sends each slot at its time.
BEAT_CLOCK_OFFSET = env_float("BEAT_CLOCK_OFFSET", 0.0)
# Claimed slots older than this are pruned by db_cleanup.
RETENTION_BEAT_SLOTS = env_duration("RETENTION_BEAT_SLOTS", timedelta(days=30))
CELERY_WORKER_CONCURRENCY = env_int("CELERY_WORKER_CONCURRENCY", 2, minimum=1)

# --- domain -------------------------------------------------------------------
CART_TTL = env_duration("CART_TTL", timedelta(hours=24))
CART_ABANDON_AFTER = env_duration("CART_ABANDON_AFTER", timedelta(hours=1))
ORDER_TTL = env_duration("ORDER_TTL", timedelta(hours=48))
PAYMENT_SYNC_AFTER = env_duration("PAYMENT_SYNC_AFTER", timedelta(hours=1))
CHECKOUT_CURRENCY = env_str("CHECKOUT_CURRENCY", "INR")

# --- razorpay -----------------------------------------------------------------
RAZORPAY_KEY_ID = env_str("RAZORPAY_KEY_ID")
RAZORPAY_KEY_SECRET = env_str("RAZORPAY_KEY_SECRET")
RAZORPAY_WEBHOOK_SECRET = env_str("RAZORPAY_WEBHOOK_SECRET")
RAZORPAY_BASE_URL = env_str("RAZORPAY_BASE_URL")  # empty: the SDK's default (api.razorpay.com)
RAZORPAY_TIMEOUT = env_float("RAZORPAY_TIMEOUT", 10.0)
# Calls per second to Razorpay shared by all workers (0: no limit), and the longest a
# worker waits for a slot before giving the call back to be retried with a countdown.
RAZORPAY_RATE_LIMIT = env_float("RAZORPAY_RATE_LIMIT", 25.0)
RAZORPAY_RATE_MAX_WAIT = env_float("RAZORPAY_RATE_MAX_WAIT", 1.0)

# --- email --------------------------------------------------------------------
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10, minimum=1)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "checkout@localhost")
SERVER_EMAIL = env_str("SERVER_EMAIL", DEFAULT_FROM_EMAIL)
ADMINS = [("ops", addr) for addr in env_list("ADMIN_EMAILS", [])]

# --- backups ------------------------------------------------------------------
BACKUP_DIR = Path(env_str("BACKUP_DIR", str(BASE_DIR / "backups")))
BACKUP_KEEP_DAILY = env_int("BACKUP_KEEP_DAILY", 7, minimum=1)
BACKUP_KEEP_WEEKLY = env_int("BACKUP_KEEP_WEEKLY", 4, minimum=0)
# Full restore of the new backup into a scratch database: never, weekly (Sundays, local) or daily.
BACKUP_RESTORE_CHECK = env_str("BACKUP_RESTORE_CHECK", "weekly")
if BACKUP_RESTORE_CHECK not in {"never", "weekly", "daily"}:
    raise ImproperlyConfigured(
        f"BACKUP_RESTORE_CHECK={BACKUP_RESTORE_CHECK!r} must be never, weekly or daily"
    )
BACKUP_TIMEOUT = env_duration("BACKUP_TIMEOUT", timedelta(hours=1))

# --- database upkeep and health -----------------------------------------------
# db_cleanup deletes rows older than these ages.
RETENTION_JOB_RUNS = env_duration("RETENTION_JOB_RUNS", timedelta(days=90))
RETENTION_TASK_RESULTS = env_duration("RETENTION_TASK_RESULTS", timedelta(days=30))
RETENTION_WEBHOOK_EVENTS = env_duration("RETENTION_WEBHOOK_EVENTS", timedelta(days=90))
RETENTION_DEAD_LETTERS = env_duration("RETENTION_DEAD_LETTERS", timedelta(days=30))
RETENTION_OUTBOX = env_duration("RETENTION_OUTBOX", timedelta(days=7))
RETENTION_HEALTH = env_duration("RETENTION_HEALTH", timedelta(days=30))
DB_MONITOR_DEAD_TUPLE_RATIO = env_float("DB_MONITOR_DEAD_TUPLE_RATIO", 0.2)
DB_MONITOR_CONNECTIONS_RATIO = env_float("DB_MONITOR_CONNECTIONS_RATIO", 0.8)
DB_MONITOR_LONG_QUERY = env_duration("DB_MONITOR_LONG_QUERY", timedelta(minutes=5))
# Timeout of each dependency check (SMTP, Redis), and of the live pings of /health/.
HEALTH_CHECK_TIMEOUT = env_float("HEALTH_CHECK_TIMEOUT", 3.0)
# A stored result older than this (when the job's interval is unknown) counts as unknown.
HEALTH_STALE_AFTER = env_duration("HEALTH_STALE_AFTER", timedelta(hours=2))
# /health/ recomputes its database-backed parts at most this often per process.
HEALTH_CACHE_SECONDS = env_float("HEALTH_CACHE_SECONDS", 5.0)
# /health/ pings the database and Redis at most this often per process (0: every request).
HEALTH_PING_SECONDS = env_float("HEALTH_PING_SECONDS", 1.0)

# --- job runtime ----------------------------------------------------------------
# Extra modules that register jobs (e.g. test-only jobs that worker processes must see).
CHECKOUT_EXTRA_JOB_MODULES = env_list("CHECKOUT_EXTRA_JOB_MODULES", [])
# A job alerts when more than this share of its finished runs in the window failed
# (with at least ALERT_MIN_RUNS runs), or when it has not succeeded within twice its interval.
ALERT_FAILURE_RATIO = env_float("ALERT_FAILURE_RATIO", 0.5)
ALERT_WINDOW = env_duration("ALERT_WINDOW", timedelta(hours=6))
ALERT_MIN_RUNS = env_int("ALERT_MIN_RUNS", 2, minimum=1)
# Rules that page about what jobs found: a dependency down this long, this many dead tasks,
# a payment authorized (or, past ORDER_TTL, created) this long. Mismatched payments page at once.
ALERT_DEPENDENCY_DOWN_AFTER = env_duration("ALERT_DEPENDENCY_DOWN_AFTER", timedelta(minutes=30))
ALERT_DEAD_LETTERS = env_int("ALERT_DEAD_LETTERS", 10, minimum=1)
ALERT_PAYMENT_STUCK_AFTER = env_duration("ALERT_PAYMENT_STUCK_AFTER", timedelta(hours=6))
ALERT_BACKENDS = env_list("ALERT_BACKENDS", ["ops.runtime.alerts.LogBackend", "ops.runtime.alerts.EmailBackend"])

# --- static, security ---------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
