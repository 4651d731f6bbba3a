"""Fixtures for the maintenance and health tests: a real SMTP server, a private backup directory."""
import socket

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Sink


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def backup_dir(settings, tmp_path):
    settings.BACKUP_DIR = tmp_path / "backups"
    return settings.BACKUP_DIR


@pytest.fixture
def smtp_server(settings):
    """A real SMTP server on a free local port; settings point the checks at it."""
    controller = Controller(Sink(), hostname="127.0.0.1", port=free_port())
    controller.start()
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = controller.port
    settings.EMAIL_USE_TLS = False
    settings.EMAIL_USE_SSL = False
    yield controller
    controller.stop()


@pytest.fixture
def smtp_down(settings):
    """Settings pointing at a port where no SMTP server answers."""
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = free_port()
    settings.EMAIL_USE_TLS = False
    settings.EMAIL_USE_SSL = False


@pytest.fixture(autouse=True)
def fresh_health_cache(settings):
    from ops.maintenance.health import clear_cache

    settings.HEALTH_CACHE_SECONDS = 0
    settings.HEALTH_PING_SECONDS = 0
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def dead_redis(settings):
    """Settings pointing Redis (cache, broker reads) at a port where nothing answers."""
    from checkout.redis import _client

    url = f"redis://127.0.0.1:{free_port()}/0"
    settings.REDIS_URL = url
    settings.CELERY_BROKER_URL = url
    _client.cache_clear()
    yield url
    _client.cache_clear()
