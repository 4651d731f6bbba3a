"""The demo's own databases: which ones `demo` may run on, the marker it leaves, its admin user.

`demo` seeds made-up payments, settles them against the local fake gateway, runs every
job and makes an admin user: on a database with real data that would pay orders nobody
paid. So it runs only on the project's own SQLite file (settings.DEFAULT_SQLITE) or on a
database that had no tables at all when the demo first ran there. Either is marked with
a table of its own, `demo_database` (plain SQL, not a model, so that no migration ever
creates it elsewhere), and `seed_demo --reset` empties a marked database without asking.
"""
from __future__ import annotations

import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from checkout import db

MARKER_TABLE = "demo_database"
DEMO_ADMIN_USERNAME = "admin"


class NotADemoDatabase(Exception):
    """The database is not the demo's (the message says what it is)."""


def database_label() -> str:
    """The name an operator types to confirm destroying this database: its name, or a SQLite file's path."""
    return str(connection.settings_dict["NAME"])


def _own_sqlite_file() -> bool:
    return db.is_sqlite() and (
        Path(database_label()).resolve() == Path(settings.DEFAULT_SQLITE).resolve()
    )


def is_demo_database() -> bool:
    return MARKER_TABLE in connection.introspection.table_names()


def _mark() -> None:
    quote = connection.ops.quote_name
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE {quote(MARKER_TABLE)} (marked_at VARCHAR(40) NOT NULL, note VARCHAR(200) NOT NULL)"
        )
        cursor.execute(
            f"INSERT INTO {quote(MARKER_TABLE)} (marked_at, note) VALUES (%s, %s)",
            [timezone.now().isoformat(), "made by manage.py demo: demo data only"],
        )


def demo_database_claim() -> None:
    """Mark this database as the demo's if it may be one; NotADemoDatabase saying why not.

    Read before anything is written: a refused database is left exactly as it was.
    """
    tables = connection.introspection.table_names()
    if MARKER_TABLE in tables:
        return
    if not tables or _own_sqlite_file():
        _mark()
        return
    where = f"SQLite file {database_label()!r}" if db.is_sqlite() else f"database {database_label()!r}"
    raise NotADemoDatabase(f"{where} has {len(tables)} tables and no demo marker: the demo did not make it")


def demo_admin_ensure() -> str | None:
    """Create the demo's admin user and return its new password, if no user has its name;
    an existing user of that name is never changed (None)."""
    users = get_user_model().objects
    if users.filter(username=DEMO_ADMIN_USERNAME).exists():
        return None
    password = secrets.token_urlsafe(9)
    try:
        with transaction.atomic():
            users.create_superuser(DEMO_ADMIN_USERNAME, "admin@example.com", password)
    except IntegrityError:  # made meanwhile by another process: theirs, untouched
        return None
    return password
