"""Typed readers for settings that come from the environment, each with the bounds of its setting.

Every reader raises ImproperlyConfigured naming the variable, so a bad value is one clear line
instead of a traceback, or a value that starts silently and breaks later; `stop_on_bad_configuration`
is how each entry point (manage.py, the Celery app, the WSGI app) turns it into one line on stderr
and exit status 2. A value that may hold a secret (a key, a URL with a password) is never echoed.
"""
import importlib.util
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.validators import validate_email

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# The longest any duration setting may be: far past every sensible retention, and far inside
# what a timedelta or a database interval holds.
MAX_DURATION = timedelta(days=3650)
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_HOST = re.compile(r"^[A-Za-z0-9_.:\[\]-]+$")
_SOCKET_SCHEMES = {"unix", "redis+socket"}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# What a SECRET_KEY needs to pass Django's own deploy check: long and not a repeated character or two.
SECRET_KEY_MIN_LENGTH = 50
SECRET_KEY_MIN_UNIQUE = 5


@contextmanager
def stop_on_bad_configuration(status: int = 2) -> Iterator[None]:
    """A configuration error raised inside becomes one line on stderr and exit `status`."""
    try:
        yield
    except ImproperlyConfigured as exc:
        message = " ".join(str(exc).split())
        print(f"configuration error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(status) from None


def _raw(name: str) -> str | None:
    """The variable's value, or None when it is unset or blank: an empty number, duration, boolean,
    choice or URL means its default. (An empty host, address, currency, zone, path or class is refused.)"""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    return raw


def _number(value: float) -> str:
    return f"{value:g}"


def _check_range(
    name: str,
    raw: str,
    value: float,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
) -> None:
    low_ok = (minimum is None or value >= minimum) and (above is None or value > above)
    high_ok = (maximum is None or value <= maximum) and (below is None or value < below)
    if low_ok and high_ok:
        return
    if minimum is not None and maximum is not None:
        raise ImproperlyConfigured(f"{name}={raw!r} must be between {_number(minimum)} and {_number(maximum)}")
    parts = []
    if minimum is not None:
        parts.append(f"at least {_number(minimum)}")
    if above is not None:
        parts.append(f"greater than {_number(above)}")
    if maximum is not None:
        parts.append(f"at most {_number(maximum)}")
    if below is not None:
        parts.append(f"less than {_number(below)}")
    raise ImproperlyConfigured(f"{name}={raw!r} must be {' and '.join(parts)}")


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_secret(name: str) -> str:
    """A credential: unset is empty; surrounding whitespace (a pasted newline) is refused, not stripped."""
    value = os.environ.get(name, "")
    if value != value.strip():
        raise ImproperlyConfigured(f"{name} has leading or trailing whitespace")
    return value


def env_bool(name: str, default: bool = False) -> bool:
    raw = _raw(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true/false)")


def env_int(name: str, default: int, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = _raw(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None
    _check_range(name, raw, value, minimum=minimum, maximum=maximum)
    return value


def env_port(name: str, default: int) -> int:
    return env_int(name, default, minimum=1, maximum=65535)


def env_float(
    name: str,
    default: float,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
) -> float:
    """A finite number within the bounds (`above`/`below` exclude the bound, `minimum`/`maximum` include it)."""
    raw = _raw(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ImproperlyConfigured(f"{name}={raw!r} is not a finite number")
    _check_range(name, raw, value, minimum=minimum, above=above, maximum=maximum, below=below)
    return value


def env_ratio(name: str, default: float, *, zero: bool = True, one: bool = True) -> float:
    """A share between 0 and 1; `zero`/`one` say whether the end itself means something."""
    return env_float(
        name, default,
        minimum=0 if zero else None, above=None if zero else 0,
        maximum=1 if one else None, below=None if one else 1,
    )


def format_duration(value: timedelta) -> str:
    """A duration as these settings are written: 14d, 90m, 1.5s."""
    seconds = value.total_seconds()
    for unit in ("d", "h", "m", "s"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{seconds / _UNITS[unit]:g}{unit}"
    return f"{seconds:g}s"


def env_duration(
    name: str,
    default: timedelta,
    *,
    minimum: timedelta | None = None,
    maximum: timedelta = MAX_DURATION,
) -> timedelta:
    """A positive duration, at least `minimum` when given, at most `maximum`: '90' (seconds), '500ms',
    '90s', '15m', '24h', '2d', '1w'."""
    raw = _raw(name)
    if raw is None:
        return default
    match = _DURATION.match(raw)
    if not match:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a duration (examples: 900, 15m, 24h, 2d)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ImproperlyConfigured(f"{name}={raw!r} must be positive")
    if minimum is not None and seconds < minimum.total_seconds():
        raise ImproperlyConfigured(f"{name}={raw!r} must be at least {format_duration(minimum)}")
    if not math.isfinite(seconds) or seconds > maximum.total_seconds():
        raise ImproperlyConfigured(f"{name}={raw!r} must be at most {format_duration(maximum)}")
    return timedelta(seconds=seconds)


def env_choice(name: str, default: str, choices: Iterable[str]) -> str:
    """One of `choices`, matched without regard to case; returned as spelled in `choices`."""
    choices = tuple(choices)
    raw = _raw(name)
    if raw is None:
        return default
    by_key = {choice.lower(): choice for choice in choices}
    value = by_key.get(raw.strip().lower())
    if value is None:
        raise ImproperlyConfigured(f"{name}={raw!r} must be one of {', '.join(choices)}")
    return value


def env_matching(name: str, default: str, pattern: str, what: str) -> str:
    """A string that matches `pattern` whole; `what` says in the message what it must be."""
    value = os.environ.get(name, default)
    if not re.fullmatch(pattern, value):
        raise ImproperlyConfigured(f"{name}={value!r} must be {what}")
    return value


def env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name, str(default))
    if not value.strip() or "\0" in value:
        raise ImproperlyConfigured(f"{name}={value!r} is not a path")
    return Path(value)


def env_log_level(name: str, default: str) -> str:
    return env_choice(name, default, LOG_LEVELS)


def env_currency(name: str, default: str) -> str:
    """An ISO 4217 code in its shape: three upper-case letters (INR, USD)."""
    value = os.environ.get(name, default)
    if not _CURRENCY.match(value):
        raise ImproperlyConfigured(f"{name}={value!r} is not a currency code (three upper-case letters, e.g. INR)")
    return value


def env_time_zone(name: str, default: str) -> str:
    value = os.environ.get(name, default)
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ImproperlyConfigured(f"{name}={value!r} is not a known time zone") from None
    return value


def redact_url(url: str) -> str:
    """The URL without its user and password (for messages)."""
    return re.sub(r"//[^/@]*@", "//***@", url)


def check_url(name: str, url: str, schemes: Iterable[str], *, path: re.Pattern | None = None) -> None:
    """Refuse a URL that is not of one of `schemes`, or has no host, a bad port or a bad path.

    Sockets (unix://, redis+socket://) name a path instead of a host, memory:// neither;
    `path`, when given, is what the path of a URL with a host must match.
    """
    schemes = tuple(schemes)
    shown = redact_url(url)
    expected = " or ".join(f"{scheme}://" for scheme in schemes)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ImproperlyConfigured(f"{name}={shown!r} is not a valid URL (a bad port?)") from None
    if "://" not in url or parts.scheme.lower() not in schemes:
        raise ImproperlyConfigured(f"{name}={shown!r} must be a {expected} URL")
    scheme = parts.scheme.lower()
    if scheme in _SOCKET_SCHEMES:
        if not parts.path:
            raise ImproperlyConfigured(f"{name}={shown!r} names no socket path")
        return
    if scheme != "memory" and not parts.hostname:
        raise ImproperlyConfigured(f"{name}={shown!r} names no host")
    if port == 0:
        raise ImproperlyConfigured(f"{name}={shown!r} has port 0")
    if path is not None and not path.fullmatch(parts.path):
        raise ImproperlyConfigured(f"{name}={shown!r} has an unexpected path {parts.path!r}")


def env_url(name: str, default: str, schemes: Iterable[str], *, path: re.Pattern | None = None) -> str:
    """A URL of one of `schemes`, or `default` ("" for none) when unset."""
    raw = _raw(name)
    if raw is None:
        return default
    value = raw.strip()
    check_url(name, value, schemes, path=path)
    return value


def env_host(name: str, default: str) -> str:
    """A host name or address, without a scheme, port or path."""
    value = os.environ.get(name, default).strip()
    if not value or not _HOST.match(value) or "://" in value:
        raise ImproperlyConfigured(f"{name}={value!r} is not a host name (e.g. smtp.example.com)")
    return value


def env_email(name: str, default: str) -> str:
    """An address, bare or with a name: ops@example.com, "Checkout <ops@example.com>"."""
    value = os.environ.get(name, default).strip()
    _check_email(name, value, value)
    return value


def _check_email(name: str, raw: str, value: str) -> None:
    match = re.match(r"^[^<>]*<([^<>]+)>$", value)
    address = match.group(1) if match else value
    try:
        validate_email(address)
    except ValidationError:
        raise ImproperlyConfigured(f"{name}={raw!r}: {value!r} is not an email address") from None


def env_list(name: str, default: list[str] | None = None, *, allow_empty: bool = True) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default or [])
    items = [item.strip() for item in raw.split(",") if item.strip()]
    if not items and not allow_empty:
        raise ImproperlyConfigured(f"{name}={raw!r} names nothing")
    return items


def env_emails(name: str) -> list[str]:
    items = env_list(name)
    for item in items:
        _check_email(name, os.environ[name], item)
    return items


def env_hosts(name: str, default: list[str]) -> list[str]:
    """Django's ALLOWED_HOSTS: names, addresses, `.example.com` for a domain and its subdomains, `*`."""
    items = env_list(name, default, allow_empty=False)
    for item in items:
        bare = item.lstrip(".").replace("*", "x")
        if "/" in item or not _HOST.match(bare) or (":" in bare and not bare.startswith("[")):
            raise ImproperlyConfigured(
                f"{name}={os.environ[name]!r}: {item!r} is not a host (no scheme, port or path: checkout.example.com)"
            )
    return items


def env_origins(name: str) -> list[str]:
    """Django's CSRF_TRUSTED_ORIGINS: scheme and host, e.g. https://checkout.example.com."""
    items = env_list(name)
    for item in items:
        try:
            check_url(name, item.replace("*.", "wildcard."), ("https", "http"), path=re.compile(""))
        except ImproperlyConfigured:
            raise ImproperlyConfigured(
                f"{name}={os.environ[name]!r}: {item!r} is not an origin (e.g. https://checkout.example.com)"
            ) from None
    return items


def _check_module(name: str, raw: str, module: str, what: str) -> None:
    if not _DOTTED.match(module):
        raise ImproperlyConfigured(f"{name}={raw!r}: {module!r} is not a dotted {what}")
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    except Exception as exc:  # a parent package that fails to import
        raise ImproperlyConfigured(
            f"{name}={raw!r}: {module!r} cannot be imported ({type(exc).__name__}: {exc})"
        ) from None
    if not found:
        raise ImproperlyConfigured(f"{name}={raw!r}: no module {module!r}")


def _check_import_path(name: str, raw: str, path: str) -> None:
    module = path.rpartition(".")[0]
    if not module or not _DOTTED.match(path):
        raise ImproperlyConfigured(f"{name}={raw!r}: {path!r} is not a dotted path (package.module.Class)")
    _check_module(name, raw, module, "path")


def env_import_path(name: str, default: str) -> str:
    """A dotted path to a class whose module exists; the class itself is imported once the apps are
    loaded (checkout.apps), since the module may need them."""
    value = os.environ.get(name, default).strip()
    _check_import_path(name, value, value)
    return value


def env_import_paths(name: str, default: list[str]) -> list[str]:
    items = env_list(name, default, allow_empty=False)
    for item in items:
        _check_import_path(name, os.environ.get(name, ",".join(default)), item)
    return items


def env_modules(name: str) -> list[str]:
    """Dotted names of modules that exist."""
    items = env_list(name)
    for item in items:
        _check_module(name, os.environ[name], item, "module name")
    return items


def secret_key_weakness(key: str, development_key: str) -> str | None:
    """Why `key` is no key for production, or None when it will do."""
    if not key:
        return "is not set"
    if key == development_key:
        return "is the development key"
    if key.startswith("django-insecure"):
        return "is a key Django generated for development"
    if len(key) < SECRET_KEY_MIN_LENGTH or len(set(key)) < SECRET_KEY_MIN_UNIQUE:
        return f"is too weak ({len(key)} characters, {len(set(key))} different)"
    return None
