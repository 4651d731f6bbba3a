"""The differences between the databases the project runs on, in one place.

PostgreSQL is production; SQLite runs the demo with nothing installed. Code that
needs a vendor's feature asks here instead of comparing vendor strings itself.
"""
from __future__ import annotations

from django.db import DEFAULT_DB_ALIAS, connections

POSTGRESQL, SQLITE = "postgresql", "sqlite"
SUPPORTED = (POSTGRESQL, SQLITE)


def vendor(alias: str = DEFAULT_DB_ALIAS) -> str:
    return connections[alias].vendor


def is_postgres(alias: str = DEFAULT_DB_ALIAS) -> bool:
    """PostgreSQL: advisory locks, COPY, UPDATE … FROM (VALUES …), VACUUM, pg_dump."""
    return vendor(alias) == POSTGRESQL


def is_sqlite(alias: str = DEFAULT_DB_ALIAS) -> bool:
    return vendor(alias) == SQLITE


def skip_commit_flush(cursor, alias: str = DEFAULT_DB_ALIAS) -> None:
    """Let this transaction commit without waiting for its WAL flush (PostgreSQL; elsewhere nothing).

    Only for work that is redone whole when a crash loses it: the transaction is
    atomic either way, it may just be lost with the last fraction of a second.
    """
    if is_postgres(alias):
        cursor.execute("SET LOCAL synchronous_commit TO OFF")
