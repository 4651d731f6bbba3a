"""Test settings: the project's settings, pointed at the real PostgreSQL and Redis when they answer.

DATABASE_URL / REDIS_URL win when set. Otherwise the local defaults are probed;
a service that does not answer leaves the tests that need it skipped (a failure
under CI=true, see tests/conftest.py).
"""
import os
import secrets
import tempfile
from pathlib import Path

from tests.services import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, answers

SERVICES = {"postgres": False, "redis": False}

if os.environ.get("DATABASE_URL"):
    SERVICES["postgres"] = os.environ["DATABASE_URL"].startswith(("postgres", "pgsql")) and answers(
        os.environ["DATABASE_URL"], 5432
    )
elif answers(DEFAULT_DATABASE_URL, 5432):
    os.environ["DATABASE_URL"] = DEFAULT_DATABASE_URL
    SERVICES["postgres"] = True
else:
    os.environ["DATABASE_URL"] = f"sqlite:///{tempfile.gettempdir()}/checkout-tests.sqlite3"

if not os.environ.get("REDIS_URL"):
    candidate = DEFAULT_REDIS_URL.format(db=os.environ.get("CHECKOUT_TEST_REDIS_DB", "15"))
    if answers(candidate, 6379):
        os.environ["REDIS_URL"] = candidate
SERVICES["redis"] = bool(os.environ.get("REDIS_URL")) and answers(os.environ["REDIS_URL"], 6379)

# In-process tests run tasks inline; tests of a worker's behaviour start real workers.
os.environ.setdefault("CELERY_TASK_ALWAYS_EAGER", "true")
os.environ.setdefault("BACKUP_DIR", os.path.join(tempfile.gettempdir(), "checkout-test-backups"))
# DEBUG off on PostgreSQL is production, which needs a key of its own and https. Tests and the
# processes they start (which inherit this environment) serve plain http on 127.0.0.1.
os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
os.environ.setdefault("SECURE_SSL_REDIRECT", "false")
os.environ.setdefault("SESSION_COOKIE_SECURE", "false")
os.environ.setdefault("CSRF_COOKIE_SECURE", "false")

from checkout.settings import *  # noqa: E402,F401,F403

EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# The manifest storage needs `collectstatic` first; tests render templates without it
# (the browser test of the served admin collects into its own directory).
STATIC_ROOT = Path(tempfile.gettempdir()) / "checkout-test-static"  # WhiteNoise warns about a missing one
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    **STORAGES,  # noqa: F405
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
