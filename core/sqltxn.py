"""One transaction shape for every SQLite store of lanecore: ``BEGIN IMMEDIATE`` …
``COMMIT`` (``ROLLBACK`` on any exception), or a savepoint inside a transaction the
caller already holds, so a change is all or nothing either way. IMMEDIATE takes the
write lock before anything is read, so two tills (threads or processes) changing the
same rows are served one after the other.

Each store wraps it with its savepoint name and its own error factory, so a failing
database is its store's ``DB_ERROR`` / ``DB_BUSY`` (``error(exc, what)``).

:func:`private_database` is what every opener of a database file calls before
``sqlite3.connect``: the file and its ``-wal``/``-shm`` are the owner's alone (mode
0600), whatever the umask and whatever an older process left behind.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from typing import Callable

from lanecore.core.errors import LanecoreError

ErrorFactory = Callable[[sqlite3.Error, str], LanecoreError]


class Txn:
    """``with Txn(con, "drawer_txn", _db_error, "drawer"):`` — see the module."""

    def __init__(self, con: sqlite3.Connection, savepoint: str, error: ErrorFactory,
                 what: str, *, wrap_body_errors: bool = False) -> None:
        self.con, self.savepoint, self.error, self.what = con, savepoint, error, what
        #: True: a sqlite3.Error raised inside the block leaves as the store's own
        #: error; False: as it was raised (for stores that tell its kinds apart).
        self.wrap_body_errors = wrap_body_errors
        self.outer = False

    def __enter__(self) -> "Txn":
        try:
            if self.con.in_transaction:
                self.con.execute(f"SAVEPOINT {self.savepoint}")
            else:
                self.con.execute("BEGIN IMMEDIATE")
                self.outer = True
        except sqlite3.Error as exc:
            raise self.error(exc, f"cannot start a {self.what} transaction") from exc
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self.outer:
                self.con.execute("COMMIT" if exc_type is None else "ROLLBACK")
            elif exc_type is None:
                self.con.execute(f"RELEASE {self.savepoint}")
            else:
                self.con.execute(f"ROLLBACK TO {self.savepoint}")
                self.con.execute(f"RELEASE {self.savepoint}")
        except sqlite3.Error as err:
            if self.outer and self.con.in_transaction:
                try:
                    self.con.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if exc_type is None:       # the change did not land: say so
                raise self.error(err, f"cannot end a {self.what} transaction") from err
            # else the original exception goes on (it explains more than this one)
        if self.wrap_body_errors and exc_type is not None and \
                issubclass(exc_type, sqlite3.Error):
            # the database refused the change: the store's own error, rolled back
            raise self.error(exc, f"the {self.what} tables refused the change") from exc


#: The files SQLite keeps beside a database (WAL mode, and a rollback journal).
SIDE_FILES = ("-wal", "-shm", "-journal")


def private_database(path: str | os.PathLike) -> None:
    """Before ``sqlite3.connect(path)``: the database file exists at mode 0600 (an
    empty file is an empty database), so SQLite, which gives a new ``-wal`` and
    ``-shm`` the database's own mode, makes them 0600 too; an existing database and
    its ``-wal``, ``-shm`` and ``-journal`` (a process under a wider umask may have
    made them 0644) are made 0600. ``":memory:"`` and ``file:`` URIs (read-only
    opens) are left alone; a file this process cannot create or change is left to
    SQLite to report when it opens it."""
    where = os.fspath(path)
    if not where or where == ":memory:" or where.startswith("file:"):
        return
    try:
        fd = os.open(where, os.O_RDONLY | os.O_CREAT | os.O_NONBLOCK, 0o600)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, 0o600)
    except OSError:
        pass
    finally:
        os.close(fd)
    for suffix in SIDE_FILES:
        side = where + suffix
        try:
            st = os.lstat(side)
            if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
                os.chmod(side, 0o600)
        except OSError:
            pass
