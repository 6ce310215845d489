"""Schema versions and their migrations, for every store's tables, on SQLite and on
PostgreSQL alike (the connection seam: ``gateway/db/pg.py``).

What Alembic does, in a few lines, because each store already owns its DDL: table
``lanecore_schema (component, version)`` says which version of each component's
tables (``coupons``, ``members``, ``storedvalue``, ``requests``, …) a database holds;
a component's migrations are an ordered list of steps (each a tuple of SQL
statements), step ``i`` taking the tables from version ``i`` to ``i + 1``.
:func:`migrate` applies the missing steps and stamps the new version, all in the
caller's transaction, or in a ``BEGIN IMMEDIATE`` transaction of its own (the writer
lock on both databases: two processes opening one database at once do not both
migrate it).

Version 1 of every component is the schema the stores created before versions were
kept, written with ``CREATE … IF NOT EXISTS``: a database made by that code (no
``lanecore_schema`` yet) has step 1 applied as a no-op and is stamped version 1 — it
is recognised, never recreated. A later step is an ordinary change (``ALTER TABLE …
ADD COLUMN``, a new index, a backfill) and runs once.

A database of a newer version than this code knows is refused
(``sqlite3.OperationalError``: the caller reports it as its store's DB_ERROR) —
running old code on a newer schema would write rows the newer code does not expect.

Pure: no driver is imported here (``core`` never imports psycopg).
"""

from __future__ import annotations

import sqlite3
from typing import Sequence

SCHEMA_TABLE = """CREATE TABLE IF NOT EXISTS lanecore_schema (
    component TEXT PRIMARY KEY, version INTEGER NOT NULL)"""

Steps = Sequence[Sequence[str]]


def schema_key(con, component: str, tables: Sequence[str] = ()) -> str:
    """The key ``component`` is versioned under in ``con``'s database: a store's own
    tables on a database shared by a chain are versioned per store (the seam says)."""
    key = getattr(con, "schema_key", None)
    return key(component, tables) if key is not None else component


def version(con, component: str, tables: Sequence[str] = ()) -> int:
    """The version of ``component`` in ``con``'s database (0: none recorded)."""
    try:
        row = con.execute("SELECT version FROM lanecore_schema WHERE component = ?",
                          (schema_key(con, component, tables),)).fetchone()
    except sqlite3.OperationalError:
        return 0                      # no lanecore_schema yet
    return int(row[0]) if row else 0


def migrate(con, component: str, steps: Steps, *, tables: Sequence[str] = ()) -> int:
    """Bring ``component`` to version ``len(steps)``; returns the version it was at.
    ``tables``: the component's tables (only needed for a store's own tables on a
    shared database). Raises ``sqlite3.Error``."""
    key = schema_key(con, component, tables)
    own = not con.in_transaction
    if own:
        con.execute("BEGIN IMMEDIATE")
    try:
        con.execute(SCHEMA_TABLE)
        row = con.execute("SELECT version FROM lanecore_schema WHERE component = ?",
                          (key,)).fetchone()
        have = int(row[0]) if row else 0
        if have > len(steps):
            raise sqlite3.OperationalError(
                f"the database holds {component} schema version {have}; this lanecore "
                f"knows up to {len(steps)} (upgrade lanecore)")
        for step in steps[have:]:
            for stmt in step:
                con.execute(stmt)
        if have < len(steps):
            con.execute("INSERT INTO lanecore_schema (component, version) VALUES (?, ?) "
                        "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                        (key, len(steps)))
        if own:
            con.execute("COMMIT")
    except BaseException:
        if own and con.in_transaction:
            con.execute("ROLLBACK")
        raise
    return have
