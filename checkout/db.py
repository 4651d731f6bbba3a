"""The differences between the databases the project runs on, in one place.

PostgreSQL is production; SQLite runs the demo with nothing installed. Code that
needs a vendor's feature asks here instead of comparing vendor strings itself.
"""
from __future__ import annotations

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

POSTGRESQL, SQLITE = "postgresql", "sqlite"
SUPPORTED = (POSTGRESQL, SQLITE)
# DATABASE_POOLING=transaction: PgBouncer's transaction pooling, where each transaction may run on
# another server connection ("session", the default: each connection is one server session).
TRANSACTION_POOLING = "transaction"


def vendor(alias: str = DEFAULT_DB_ALIAS) -> str:
    return connections[alias].vendor


def is_postgres(alias: str = DEFAULT_DB_ALIAS) -> bool:
    """PostgreSQL: advisory locks, COPY, UPDATE … FROM (VALUES …), VACUUM, pg_dump."""
    return vendor(alias) == POSTGRESQL


def is_sqlite(alias: str = DEFAULT_DB_ALIAS) -> bool:
    return vendor(alias) == SQLITE


def session_locks_hold(alias: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether a lock taken for a connection's session lasts as long as that connection.

    True on PostgreSQL reached as one session per connection. Behind transaction
    pooling (DATABASE_POOLING=transaction) the server session under a connection
    changes between transactions: a session advisory lock would stay behind on a
    server connection other clients then use, so locks are rows there instead. SQLite
    has no advisory locks at all.
    """
    return is_postgres(alias) and settings.DATABASE_POOLING != TRANSACTION_POOLING


def skip_commit_flush(cursor, alias: str = DEFAULT_DB_ALIAS) -> None:
    """Let this transaction commit without waiting for its WAL flush (PostgreSQL; elsewhere nothing).

    Only for work that is redone whole when a crash loses it: the transaction is
    atomic either way, it may just be lost with the last fraction of a second.
    """
    if is_postgres(alias):
        cursor.execute("SET LOCAL synchronous_commit TO OFF")


def total_seconds_sql(start: str, end: str, alias: str = DEFAULT_DB_ALIAS) -> str:
    """SQL aggregate: the seconds, fractions included, from `start` to `end` summed over a group's rows.

    PostgreSQL sums the intervals and converts once, cheaper per row than converting
    each; SQLite keeps timestamps as text and goes through Julian days (double
    precision: well under a millisecond off per row at today's dates).
    """
    if is_postgres(alias):
        return f"EXTRACT(EPOCH FROM SUM(({end}) - ({start})))"
    return f"SUM((julianday({end}) - julianday({start})) * 86400.0)"
