"""One parametrised database fixture for the store suites: every test that takes
``db`` runs twice, ``[sqlite]`` on a WAL file in its temporary directory and
``[postgresql]`` on a new database of the session's real PostgreSQL server
(``chainfix.pg_server``; ``CREATE DATABASE`` costs ~40 ms, so each test gets its own).

``db.connect()`` opens another autocommit connection to the same database (a till of
its own), the way the stores are used: ``lanecore.core.scan.catalog.connect`` for
SQLite, ``lanecore.gateway.db.pg.connect`` for PostgreSQL. Connections are closed at
teardown. A module using it imports ``chain_root, pg_server`` from chainfix too.
"""

from __future__ import annotations

import pytest

DB_KINDS = ("sqlite", "postgresql")


class Db:
    def __init__(self, kind: str, *, path=None, url: str | None = None) -> None:
        self.kind, self.path, self.url = kind, path, url
        self.opened: list = []

    def connect(self, **kw):
        if self.kind == "sqlite":
            from lanecore.core.scan.catalog import connect
            con = connect(self.path, **kw)
        else:
            from lanecore.gateway.db.pg import connect
            con = connect(self.url, lock_key="lanecore-test")
        self.opened.append(con)
        return con

    def close(self) -> None:
        for con in self.opened:
            try:
                con.close()
            except Exception:  # noqa: BLE001 - already closed by the test
                pass


@pytest.fixture(params=DB_KINDS)
def db(request, tmp_path):
    if request.param == "sqlite":
        d = Db("sqlite", path=tmp_path / "store.db")
    else:
        from chainfix import new_database
        d = Db("postgresql", url=new_database(request.getfixturevalue("pg_server"), "s"))
    yield d
    d.close()


# --------------------------------------------------------------------------------------
# The coupon gateway's storage: the same parametrisation, as coupons.toml text
# --------------------------------------------------------------------------------------

def _db_toml(request) -> str:
    if request.param == "sqlite":
        return ""                       # the default: DATA_DIR/coupons.db
    from chainfix import new_database
    url = new_database(request.getfixturevalue("pg_server"), "g")
    return f'\n[db]\nurl = "{url}"\n'


@pytest.fixture(params=DB_KINDS)
def db_toml(request):
    """What to append to a test's coupons.toml: nothing (SQLite) or ``[db] url`` of a
    new PostgreSQL database."""
    return _db_toml(request)


@pytest.fixture(scope="module", params=DB_KINDS)
def db_toml_module(request):
    """:func:`db_toml` for a module-scoped gateway."""
    return _db_toml(request)


def reopen(gw):
    """Another connection to the database a CouponGateway ``gw`` keeps its tables in
    (to look at its rows as another process would)."""
    if gw.db_url is None:
        import sqlite3
        return sqlite3.connect(gw.data_dir / "coupons.db")
    from lanecore.gateway.coupons import CHAIN_LOCK, LOCAL_TABLES
    from lanecore.gateway.db.pg import connect
    return connect(gw.db_url, lock_key=CHAIN_LOCK, store=gw.store_id,
                   local_tables=LOCAL_TABLES)
