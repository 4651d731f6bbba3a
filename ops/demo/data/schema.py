"""Secondary indexes and foreign keys set aside for a bulk load on PostgreSQL, then recreated as they were."""
from __future__ import annotations

from django.db import connection

# Sorts for the index builds stay in memory at 1 M rows.
REBUILD_MAINTENANCE_WORK_MEM = "256MB"

_CONSTRAINTS_SET_ASIDE = """
    SELECT c.contype = 'f', format('ALTER TABLE %%s DROP CONSTRAINT %%I', c.conrelid::regclass, c.conname),
           format('ALTER TABLE %%s ADD CONSTRAINT %%I %%s', c.conrelid::regclass, c.conname,
                  pg_get_constraintdef(c.oid))
    FROM pg_constraint c
    WHERE c.conrelid = ANY(%s::regclass[])
      AND (c.contype = 'f'
           -- a unique constraint that a foreign key points at must stay
           OR (c.contype = 'u' AND NOT EXISTS (
               SELECT 1 FROM pg_constraint r WHERE r.contype = 'f' AND r.conindid = c.conindid)))
    -- foreign keys are dropped first and added last
    ORDER BY c.contype = 'f' DESC, c.conrelid::regclass::text, c.conname
"""
# Indexes of their own; the primary key and the unique constraints' indexes go with their constraints.
# Partial and expression indexes stay: their deparsed definitions do not always parse back to the
# same text (`IN (...)` comes back as a differently cast ARRAY), and the ones we have are cheap to
# maintain (few rows, or appended in time order).
_INDEXES_SET_ASIDE = """
    SELECT format('DROP INDEX %%s', i.indexrelid::regclass), pg_get_indexdef(i.indexrelid)
    FROM pg_index i
    WHERE i.indrelid = ANY(%s::regclass[]) AND i.indpred IS NULL AND i.indexprs IS NULL
      AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid)
    ORDER BY i.indrelid::regclass::text, i.indexrelid::regclass::text
"""


def schema_set_aside(tables: list[str]) -> list[str]:
    """Drop the secondary indexes and foreign keys of `tables`; return the statements that recreate them.

    The definitions are read from the catalog just before the drop, so what comes back is exactly
    what the migrations made. Runs inside the loading transaction: a failure before the
    statements have run rolls the drops back with the rows.
    """
    if not tables:
        return []
    with connection.cursor() as cursor:
        cursor.execute(_CONSTRAINTS_SET_ASIDE, [tables])
        constraints = cursor.fetchall()
        cursor.execute(_INDEXES_SET_ASIDE, [tables])
        indexes = cursor.fetchall()
        for drop in [drop for _, drop, _ in constraints] + [drop for drop, _ in indexes]:
            cursor.execute(drop)
    # Indexes, then unique constraints, then the foreign keys, each validated by one join.
    return (
        [create for _, create in indexes]
        + [create for is_fk, _, create in constraints if not is_fk]
        + [create for is_fk, _, create in constraints if is_fk]
    )


def schema_restore(statements: list[str]) -> None:
    with connection.cursor() as cursor:
        if statements:
            cursor.execute(f"SET LOCAL maintenance_work_mem = '{REBUILD_MAINTENANCE_WORK_MEM}'")
        for statement in statements:
            cursor.execute(statement)
