"""Writers that load the generator's chunks: COPY on PostgreSQL, bulk_create elsewhere.

Each gives the generator its time stamp and NULL, so rows come out already in the writer's encoding.
"""
from __future__ import annotations

import io
from datetime import datetime, timezone as dt_timezone

from django.db import connection

from checkout.db import is_postgres
from ops.demo.data.plan import HOUR

_NULL = "\\N"
_MINUTE_SECOND = tuple(f"{m:02d}:{sec:02d}+00" for m in range(60) for sec in range(60))


class _CopyWriter:
    """PostgreSQL: COPY ... FROM STDIN (text format) from an in-memory chunk."""

    method = "copy"
    null = _NULL

    def __init__(self) -> None:
        self.stamp = self._stamper()

    @staticmethod
    def _stamper():
        """Epoch seconds as a timestamptz literal, from a cached "date hour:" prefix.

        A closure over locals: it runs a few times per row, the hottest call of the generator.
        """
        hours: dict[int, str] = {}
        cached = hours.get

        def stamp(epoch: int | None) -> str:
            if epoch is None:
                return _NULL
            hour = epoch // HOUR
            prefix = cached(hour)
            if prefix is None:
                prefix = hours[hour] = datetime.fromtimestamp(hour * HOUR, dt_timezone.utc).strftime("%Y-%m-%d %H:")
            return prefix + _MINUTE_SECOND[epoch - hour * HOUR]

        return stamp

    @staticmethod
    def encode(model, columns, rows) -> io.BytesIO:
        # Values are ints, bools, \N, or plain strings without tabs, newlines or backslashes, so
        # %-formatting a whole row at once is a valid text-format line (and the cheapest to make).
        # Held as bytes while queued: a StringIO would keep four bytes a character.
        line = "\t".join(["%s"] * len(columns)) + "\n"
        return io.BytesIO("".join([line % row for row in rows]).encode())

    @staticmethod
    def load(model, columns, payload: io.BytesIO) -> None:
        table = connection.ops.quote_name(model._meta.db_table)
        column_list = ", ".join(connection.ops.quote_name(model._meta.get_field(c).column) for c in columns)
        with connection.cursor() as cursor:
            cursor.copy_expert(f"COPY {table} ({column_list}) FROM STDIN", payload)


class _BulkWriter:
    """Any other database: bulk_create in batches."""

    method = "bulk_create"
    null = None

    @staticmethod
    def stamp(epoch: int | None) -> datetime | None:
        return None if epoch is None else datetime.fromtimestamp(epoch, dt_timezone.utc)

    @staticmethod
    def encode(model, columns, rows) -> list:
        return [model(**dict(zip(columns, row))) for row in rows]

    @staticmethod
    def load(model, columns, payload: list) -> None:
        model.objects.bulk_create(payload, batch_size=1000)


def writer_for(method: str | None):
    method = method or ("copy" if is_postgres() else "bulk_create")
    if method == "copy":
        if not is_postgres():
            raise ValueError("COPY needs PostgreSQL")
        return _CopyWriter()
    if method == "bulk_create":
        return _BulkWriter()
    raise ValueError(f"unknown load method {method!r}")
