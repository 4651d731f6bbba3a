"""Typed readers for settings that come from the environment.

Every reader raises ImproperlyConfigured naming the variable, so a bad value is
one clear line (manage.py turns it into exit 2) instead of a traceback.
"""
import os
import re
from datetime import timedelta

from django.core.exceptions import ImproperlyConfigured

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true/false)")


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r} must be at least {minimum}")
    return value


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None


def parse_duration(raw: str) -> timedelta:
    """'90' (seconds), '90s', '15m', '24h', '2d', '1w' -> timedelta."""
    match = _DURATION.match(raw)
    if not match:
        raise ValueError(raw)
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def env_duration(name: str, default: timedelta) -> timedelta:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = parse_duration(raw)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name}={raw!r} is not a duration (examples: 900, 15m, 24h, 2d)"
        ) from None
    if value <= timedelta(0):
        raise ImproperlyConfigured(f"{name}={raw!r} must be positive")
    return value


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default or [])
    return [item.strip() for item in raw.split(",") if item.strip()]
