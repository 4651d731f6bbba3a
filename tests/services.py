"""Which real services answer, decided once before Django's settings load."""
import os
import socket
from urllib.parse import urlparse

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/{db}"


def answers(url: str, default_port: int, timeout: float = 1.0) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout):
            return True
    except OSError:
        return False


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def blpop_patiently(client, key: str, timeout: float):
    """BLPOP `key` for up to `timeout` seconds, on a connection of its own whose socket waits longer than the pop.

    The project's clients time out a socket after REDIS_SOCKET_TIMEOUT (2 s): a blocking pop on them fails
    on a busy machine, and a pop cut off by the client may have taken an item the caller never sees.
    """
    import redis

    kwargs = {**client.connection_pool.connection_kwargs, "socket_timeout": timeout + 30}
    patient = redis.Redis(**kwargs)
    try:
        return patient.blpop(key, timeout=max(1, round(timeout)))
    finally:
        patient.close()
