"""Calls straight to the database driver, inside SQLAlchemy's transactions, where
SQLAlchemy's own processing cost more than the SQL (the event writer's inserts).

Imports nothing of ours: the models and the store both use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Dialect
from sqlalchemy.exc import DBAPIError


def markers(dialect: Dialect, n: int) -> str:
    """`n` positional parameter markers in the driver's own style: `?` for sqlite3
    (qmark), `%s` for psycopg (format, pyformat)."""
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    return ", ".join([mark] * n)


def executemany(conn: Connection, sql: str, params: Sequence[Sequence[Any]]) -> None:
    """The driver's own executemany, in `conn`'s transaction. SQLAlchemy's
    `exec_driver_sql` looks at every parameter row in Python first: 15% of the time of an
    insert of 5,000 events (scripts/bench scenario 7)."""
    error = conn.dialect.loaded_dbapi.Error
    cur = conn.connection.cursor()
    try:
        cur.executemany(sql, params)
    except error as e:  # as SQLAlchemy would have raised it: callers catch SQLAlchemyError
        raise DBAPIError.instance(sql, None, e, error) from e
    finally:
        cur.close()
