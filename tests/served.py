"""The site served as in production, for tests that need a real HTTP server: gunicorn in a process of its own."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.conftest import ROOT

# Ports of the servers these tests start.
PORTS = range(16600, 16700)


def own_port() -> int:
    """A free port of the range."""
    for port in PORTS:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


@contextlib.contextmanager
def gunicorn(env: dict, log_path: Path, *args: str):
    """gunicorn checkout.wsgi with `env` and extra `args`, once /health/live/ answers; yields its base URL."""
    port = own_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "checkout.wsgi", "-b", f"127.0.0.1:{port}", *args],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{base}/health/live/", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "gunicorn did not answer within 30 s"
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def production_env(process_env: dict, tmp_path: Path, **extra: str) -> dict:
    """The settings production runs with (DEBUG off, a real key, static files collected into tmp_path),
    but plain http on 127.0.0.1: TLS ends at the proxy in production."""
    import secrets

    env = {
        **process_env,
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "STATIC_ROOT": str(tmp_path / "static"),
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "false",
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
        "SECURE_HSTS_SECONDS": "0",
        **extra,
    }
    collected = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert collected.returncode == 0, collected.stderr
    return env


def set_production_password(user, password: str) -> None:
    """Hash as the served site checks it: the tests' own fast hasher is not one production accepts."""
    from django.contrib.auth.hashers import PBKDF2PasswordHasher

    hasher = PBKDF2PasswordHasher()
    user.password = hasher.encode(password, hasher.salt())
    user.save(update_fields=["password"])
