"""Settings for checkout operations, read from the environment with safe defaults.

With nothing set, the project runs on a SQLite file with no Redis and no broker
(tasks then run in-process), which is what `make demo` uses. Production sets
DATABASE_URL (PostgreSQL), REDIS_URL, the Razorpay keys and a SECRET_KEY.

Every value is read through checkout.env with its bounds: a bad one raises ImproperlyConfigured
naming the variable, which each entry point turns into one line and exit status 2.
"""
import ipaddress
import re
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from checkout.env import (
    env_bool,
    env_choice,
    env_currency,
    env_duration,
    env_email,
    env_emails,
    env_float,
    env_host,
    env_hosts,
    env_import_path,
    env_import_paths,
    env_int,
    env_list,
    env_log_level,
    env_matching,
    env_modules,
    env_origins,
    env_path,
    env_port,
    env_ratio,
    env_secret,
    env_str,
    env_time_zone,
    env_url,
    format_duration,
    redact_url,
    secret_key_weakness,
)

BASE_DIR = Path(__file__).resolve().parent.parent

# --- core ---------------------------------------------------------------------
DEBUG = env_bool("DEBUG", False)
# Refused in production (see "security" below); the demo and development run with it.
INSECURE_DEV_SECRET_KEY = "insecure-development-key-set-SECRET_KEY-in-production"
_secret_key = env_secret("SECRET_KEY")
SECRET_KEY = _secret_key or INSECURE_DEV_SECRET_KEY
ALLOWED_HOSTS = env_hosts("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_origins("CSRF_TRUSTED_ORIGINS")

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
    # Last: once the others are loaded, it imports the classes settings name (checkout.apps).
    "checkout",
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
CHECKOUT_TIME_ZONE = env_time_zone("CHECKOUT_TIME_ZONE", "Asia/Kolkata")
USE_TZ = True
TIME_ZONE = CHECKOUT_TIME_ZONE
LANGUAGE_CODE = "en-us"
USE_I18N = False

# --- database -----------------------------------------------------------------
DEFAULT_SQLITE = BASE_DIR / "demo.sqlite3"
DATABASE_URL = env_str("DATABASE_URL") or f"sqlite:///{DEFAULT_SQLITE}"
# Seconds a connection is reused (0: one per request or task), and the longest a connect may take.
DB_CONN_MAX_AGE = env_int("DB_CONN_MAX_AGE", 60, minimum=0, maximum=86400)
DB_CONNECT_TIMEOUT = env_int("DB_CONNECT_TIMEOUT", 5, minimum=1, maximum=300)
if DATABASE_URL.partition("://")[0].lower() not in {"postgres", "postgresql", "pgsql", "sqlite"}:
    raise ImproperlyConfigured(
        f"DATABASE_URL={redact_url(DATABASE_URL)!r} must be a postgres:// or sqlite:/// URL"
    )
try:
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=DB_CONN_MAX_AGE, conn_health_checks=True)
except Exception as exc:  # the library raises several types for a bad URL
    raise ImproperlyConfigured(f"DATABASE_URL cannot be parsed: {exc}") from None
if not _db.get("NAME") and "sqlite" not in _db["ENGINE"]:
    raise ImproperlyConfigured("DATABASE_URL names no database")
if "postgresql" in _db["ENGINE"]:
    _db.setdefault("OPTIONS", {})
    _db["OPTIONS"].setdefault("connect_timeout", DB_CONNECT_TIMEOUT)
    _db["OPTIONS"].setdefault("application_name", "checkout-operations")
# "session": each connection is one PostgreSQL session (directly, or PgBouncer in session mode).
# "transaction": PgBouncer in transaction pooling mode, where nothing may outlive a transaction:
# job locks are lease rows instead of session advisory locks, and no cursor is held server-side.
DATABASE_POOLING = env_choice("DATABASE_POOLING", "session", ("session", "transaction"))
if DATABASE_POOLING == "transaction":
    _db["DISABLE_SERVER_SIDE_CURSORS"] = True
if "sqlite" in _db["ENGINE"]:
    # Jobs and the admin share the file; wait for the writer instead of failing.
    _db.setdefault("OPTIONS", {})
    _db["OPTIONS"].setdefault("timeout", 20)
    _db["OPTIONS"].setdefault("transaction_mode", "IMMEDIATE")
# Each concurrent test run gets its own database (see tests/conftest.py).
_test_suffix = env_matching(
    "CHECKOUT_TEST_DB_SUFFIX", "", r"\w{0,30}", "letters, digits and underscores (at most 30)"
)
_db["TEST"] = {"NAME": "test_checkout" + _test_suffix}
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- redis --------------------------------------------------------------------
REDIS_URL = env_url("REDIS_URL", "", ("redis", "rediss", "unix"), path=re.compile(r"(/\d*)?"))
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 2.0, above=0, maximum=60)

# --- celery -------------------------------------------------------------------
CELERY_BROKER_URL = env_url(
    "CELERY_BROKER_URL", REDIS_URL or "memory://localhost/",
    ("redis", "rediss", "redis+socket", "sentinel", "amqp", "amqps", "pyamqp", "memory"),
)
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
BEAT_TICK = env_float("BEAT_TICK", 1.0, above=0, maximum=60)
BEAT_LEASE = env_duration("BEAT_LEASE", timedelta(seconds=5), maximum=timedelta(minutes=10))
if BEAT_TICK > BEAT_LEASE.total_seconds() / 3:
    raise ImproperlyConfigured(
        f"BEAT_TICK={BEAT_TICK:g} must be at most a third of BEAT_LEASE ({format_duration(BEAT_LEASE)})"
    )
CELERY_BEAT_MAX_LOOP_INTERVAL = BEAT_TICK
# Seconds added to this process's own clock. Beats decide with the database's clock, so a
# beat whose clock is off (as tests make it) still sends each slot at its time.
BEAT_CLOCK_OFFSET = env_float("BEAT_CLOCK_OFFSET", 0.0, minimum=-86400, maximum=86400)
# Claimed slots older than this are pruned by db_cleanup (at least the longest schedule's week and a day).
RETENTION_BEAT_SLOTS = env_duration("RETENTION_BEAT_SLOTS", timedelta(days=30), minimum=timedelta(days=8))
CELERY_WORKER_CONCURRENCY = env_int("CELERY_WORKER_CONCURRENCY", 2, minimum=1, maximum=256)

# --- domain -------------------------------------------------------------------
CART_TTL = env_duration("CART_TTL", timedelta(hours=24), maximum=timedelta(days=365))
CART_ABANDON_AFTER = env_duration("CART_ABANDON_AFTER", timedelta(hours=1), maximum=timedelta(days=30))
if CART_ABANDON_AFTER >= CART_TTL:
    # Carts would be deleted before they could count as abandoned.
    raise ImproperlyConfigured(
        f"CART_ABANDON_AFTER ({format_duration(CART_ABANDON_AFTER)}) must be shorter than CART_TTL "
        f"({format_duration(CART_TTL)})"
    )
ORDER_TTL = env_duration("ORDER_TTL", timedelta(hours=48), maximum=timedelta(days=30))
PAYMENT_SYNC_AFTER = env_duration("PAYMENT_SYNC_AFTER", timedelta(hours=1), maximum=timedelta(days=7))
if PAYMENT_SYNC_AFTER >= ORDER_TTL:
    # Orders would expire before their payments were ever reconciled with the gateway.
    raise ImproperlyConfigured(
        f"PAYMENT_SYNC_AFTER ({format_duration(PAYMENT_SYNC_AFTER)}) must be shorter than ORDER_TTL "
        f"({format_duration(ORDER_TTL)})"
    )
# A customer effect (enrollment, confirmation or expiry email, stored email) not done this long after
# its cause is re-driven by payment_sync, whatever became of its message.
EFFECTS_REDRIVE_AFTER = env_duration("EFFECTS_REDRIVE_AFTER", timedelta(minutes=10), maximum=timedelta(days=1))
CHECKOUT_CURRENCY = env_currency("CHECKOUT_CURRENCY", "INR")

# --- razorpay -----------------------------------------------------------------
RAZORPAY_KEY_ID = env_secret("RAZORPAY_KEY_ID")
RAZORPAY_KEY_SECRET = env_secret("RAZORPAY_KEY_SECRET")
if bool(RAZORPAY_KEY_ID) != bool(RAZORPAY_KEY_SECRET):
    raise ImproperlyConfigured("RAZORPAY_KEY_ID and RAZORPAY_KEY_SECRET go together: set both or neither")
RAZORPAY_WEBHOOK_SECRET = env_secret("RAZORPAY_WEBHOOK_SECRET")
# Empty: the SDK's default (api.razorpay.com).
RAZORPAY_BASE_URL = env_url("RAZORPAY_BASE_URL", "", ("https", "http"))
RAZORPAY_TIMEOUT = env_float("RAZORPAY_TIMEOUT", 10.0, above=0, maximum=120)
# Calls per second to Razorpay shared by all workers (0: no limit), and the longest a
# worker waits for a slot before giving the call back to be retried with a countdown.
RAZORPAY_RATE_LIMIT = env_float("RAZORPAY_RATE_LIMIT", 25.0, minimum=0, maximum=10_000)
if 0 < RAZORPAY_RATE_LIMIT < 0.1:
    raise ImproperlyConfigured(
        f"RAZORPAY_RATE_LIMIT={RAZORPAY_RATE_LIMIT:g} must be 0 (no limit) or at least 0.1 calls a second"
    )
RAZORPAY_RATE_MAX_WAIT = env_float("RAZORPAY_RATE_MAX_WAIT", 1.0, minimum=0, maximum=60)

# --- email --------------------------------------------------------------------
EMAIL_BACKEND = env_import_path("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env_host("EMAIL_HOST", "localhost")
EMAIL_PORT = env_port("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL exclude each other: STARTTLS (587) or SSL (465)")
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10, minimum=1, maximum=300)
DEFAULT_FROM_EMAIL = env_email("DEFAULT_FROM_EMAIL", "checkout@localhost")
SERVER_EMAIL = env_email("SERVER_EMAIL", DEFAULT_FROM_EMAIL)
ADMINS = [("ops", addr) for addr in env_emails("ADMIN_EMAILS")]

# --- backups ------------------------------------------------------------------
BACKUP_DIR = env_path("BACKUP_DIR", BASE_DIR / "backups")
BACKUP_KEEP_DAILY = env_int("BACKUP_KEEP_DAILY", 7, minimum=1, maximum=366)
BACKUP_KEEP_WEEKLY = env_int("BACKUP_KEEP_WEEKLY", 4, minimum=0, maximum=520)
# Full restore of the new backup into a scratch database: never, weekly (Sundays, local) or daily.
BACKUP_RESTORE_CHECK = env_choice("BACKUP_RESTORE_CHECK", "weekly", ("never", "weekly", "daily"))
BACKUP_TIMEOUT = env_duration("BACKUP_TIMEOUT", timedelta(hours=1), maximum=timedelta(days=1))

# --- database upkeep and health -----------------------------------------------
# db_cleanup deletes rows older than these ages.
# At least a day, so that a unit left off ("90": seconds) cannot empty a table; the job runs keep
# at least two weeks, since the weekly jobs' last run is their status.
RETENTION_JOB_RUNS = env_duration("RETENTION_JOB_RUNS", timedelta(days=90), minimum=timedelta(days=14))
RETENTION_TASK_RESULTS = env_duration("RETENTION_TASK_RESULTS", timedelta(days=30), minimum=timedelta(days=1))
RETENTION_WEBHOOK_EVENTS = env_duration("RETENTION_WEBHOOK_EVENTS", timedelta(days=90), minimum=timedelta(days=1))
RETENTION_DEAD_LETTERS = env_duration("RETENTION_DEAD_LETTERS", timedelta(days=30), minimum=timedelta(days=1))
RETENTION_OUTBOX = env_duration("RETENTION_OUTBOX", timedelta(days=7), minimum=timedelta(days=1))
RETENTION_HEALTH = env_duration("RETENTION_HEALTH", timedelta(days=30), minimum=timedelta(days=1))
# Shares at or above which db_monitor alerts (0 would alert on every run).
DB_MONITOR_DEAD_TUPLE_RATIO = env_ratio("DB_MONITOR_DEAD_TUPLE_RATIO", 0.2, zero=False)
DB_MONITOR_CONNECTIONS_RATIO = env_ratio("DB_MONITOR_CONNECTIONS_RATIO", 0.8, zero=False)
DB_MONITOR_LONG_QUERY = env_duration("DB_MONITOR_LONG_QUERY", timedelta(minutes=5), maximum=timedelta(days=1))
# Timeout of each dependency check (SMTP, Redis), and of the live pings of /health/.
HEALTH_CHECK_TIMEOUT = env_float("HEALTH_CHECK_TIMEOUT", 3.0, above=0, maximum=60)
# A stored result older than this (when the job's interval is unknown) counts as unknown.
HEALTH_STALE_AFTER = env_duration("HEALTH_STALE_AFTER", timedelta(hours=2), maximum=timedelta(days=30))
# /health/ recomputes its database-backed parts at most this often per process (0: every request).
HEALTH_CACHE_SECONDS = env_float("HEALTH_CACHE_SECONDS", 5.0, minimum=0, maximum=3600)
# /health/ pings the database and Redis at most this often per process (0: every request).
HEALTH_PING_SECONDS = env_float("HEALTH_PING_SECONDS", 1.0, minimum=0, maximum=3600)
# /metrics and the detail of /health/ (its status code stays public): open when neither is set,
# otherwise only for `Authorization: Bearer <OPS_TOKEN>` or a peer address in OPS_ALLOWED_NETWORKS.
OPS_TOKEN = env_secret("OPS_TOKEN")
if OPS_TOKEN and len(OPS_TOKEN) < 16:
    raise ImproperlyConfigured(f"OPS_TOKEN is too short ({len(OPS_TOKEN)} characters; use 16 or more)")
try:
    OPS_ALLOWED_NETWORKS = [ipaddress.ip_network(item, strict=False) for item in env_list("OPS_ALLOWED_NETWORKS")]
except ValueError:
    raise ImproperlyConfigured(
        f"OPS_ALLOWED_NETWORKS={env_str('OPS_ALLOWED_NETWORKS')!r} is not a list of addresses or networks"
    ) from None

# --- job runtime ----------------------------------------------------------------
# Extra modules that register jobs (e.g. test-only jobs that worker processes must see).
CHECKOUT_EXTRA_JOB_MODULES = env_modules("CHECKOUT_EXTRA_JOB_MODULES")
# Where a job's lock is a lease row (SQLite; PostgreSQL with DATABASE_POOLING=transaction): how long it
# holds without renewal. The holder renews it every third of this, so a holder that died frees it by then.
JOB_LOCK_LEASE = env_duration("JOB_LOCK_LEASE", timedelta(seconds=30), maximum=timedelta(hours=1))
# A job alerts when more than this share of its finished runs in the window failed
# (with at least ALERT_MIN_RUNS runs), or when it has not succeeded within twice its interval.
# (1 would never alert: no share is more than all of them.)
ALERT_FAILURE_RATIO = env_ratio("ALERT_FAILURE_RATIO", 0.5, one=False)
ALERT_WINDOW = env_duration("ALERT_WINDOW", timedelta(hours=6), maximum=RETENTION_JOB_RUNS)
ALERT_MIN_RUNS = env_int("ALERT_MIN_RUNS", 2, minimum=1, maximum=1000)
# Rules that page about what jobs found: a dependency down this long, this many dead tasks,
# a payment authorized (or, past ORDER_TTL, created) this long. Mismatched payments page at once.
ALERT_DEPENDENCY_DOWN_AFTER = env_duration(
    "ALERT_DEPENDENCY_DOWN_AFTER", timedelta(minutes=30), maximum=timedelta(days=7)
)
ALERT_DEAD_LETTERS = env_int("ALERT_DEAD_LETTERS", 10, minimum=1, maximum=1_000_000)
ALERT_PAYMENT_STUCK_AFTER = env_duration("ALERT_PAYMENT_STUCK_AFTER", timedelta(hours=6), maximum=timedelta(days=30))
# Classes with send(*, incident, event); imported at start-up (checkout.apps).
ALERT_BACKENDS = env_import_paths(
    "ALERT_BACKENDS", ["ops.runtime.alerts.LogBackend", "ops.runtime.alerts.EmailBackend"]
)

# --- static, security ---------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = env_path("STATIC_ROOT", BASE_DIR / "staticfiles")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
# Production is DEBUG off on PostgreSQL. The demo (the SQLite file, DEBUG off, plain http on
# 127.0.0.1) and development (DEBUG on) may run with the development key and without https;
# production needs a key of its own, and its defaults pass `manage.py check --deploy`.
_production = not DEBUG and "sqlite" not in DATABASES["default"]["ENGINE"]
_key_weakness = secret_key_weakness(_secret_key, INSECURE_DEV_SECRET_KEY)
if _production and _key_weakness:
    raise ImproperlyConfigured(
        f"SECRET_KEY {_key_weakness}: with DEBUG off on PostgreSQL it must be a random string of 50 or more "
        "characters (python -c 'import secrets; print(secrets.token_urlsafe(50))')"
    )
# TLS ends at the proxy in front; gunicorn takes its X-Forwarded-Proto from the addresses in
# FORWARDED_ALLOW_IPS (gunicorn's setting; 127.0.0.1 by default). Probes and scrapes from inside
# the network may use plain http.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", _production)
SECURE_REDIRECT_EXEMPT = [r"^health/", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int(
    "SECURE_HSTS_SECONDS", 31_536_000 if _production else 0, minimum=0, maximum=2 * 31_536_000
)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", _production)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", _production)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", _production)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", _production)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_log_level("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
