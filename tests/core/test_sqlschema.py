"""Schema versions and migrations (core/sqlschema.py) on SQLite and PostgreSQL: a
database made before versions were kept is recognised and stamped, not recreated; a
later step runs once; a newer database than the code knows is refused; the coupon
gateway's per-store tables are versioned per store on a shared database."""

from __future__ import annotations

import sqlite3

import pytest

from chainfix import chain_root, pg_server  # noqa: F401 - the [postgresql] runs
from dbfix import db  # noqa: F401 - one fixture, [sqlite] and [postgresql]
from lanecore.core.promo import coupons as C
from lanecore.core.promo.coupons import CouponBook
from lanecore.core.sqlschema import migrate, version

pytestmark = pytest.mark.kernel_free

V1 = ("CREATE TABLE IF NOT EXISTS widgets (widget_id TEXT PRIMARY KEY, "
      "price_minor INTEGER NOT NULL)",)
V2 = ("ALTER TABLE widgets ADD COLUMN note TEXT",
      "UPDATE widgets SET note = 'v2'")


def test_an_existing_database_is_stamped_not_recreated(db):  # noqa: F811
    con = db.connect()
    for stmt in C._SCHEMA:                  # what the code made before versions
        con.execute(stmt)
    con.execute("INSERT INTO coupon_issuers (issuer_id, name) VALUES ('ACME', 'Acme')")
    assert version(con, "coupons") == 0
    book = CouponBook(con)
    assert version(con, "coupons") == 1
    assert [i.issuer_id for i in book.issuers()] == ["ACME"]   # kept


def test_steps_run_once_in_order_and_a_newer_database_is_refused(db):  # noqa: F811
    con = db.connect()
    assert migrate(con, "widgets", (V1,)) == 0
    con.execute("INSERT INTO widgets (widget_id, price_minor) VALUES (?, ?)",
                ("w", 3_000_000_000))                     # past 2^31: BIGINT
    assert migrate(con, "widgets", (V1,)) == 1            # nothing to do
    assert migrate(con, "widgets", (V1, V2)) == 1
    assert migrate(con, "widgets", (V1, V2)) == 2         # V2 did not run again
    assert con.execute("SELECT price_minor, note FROM widgets").fetchall() == \
        [(3_000_000_000, "v2")]
    with pytest.raises(sqlite3.OperationalError, match="version 2"):
        migrate(con, "widgets", (V1,))
    assert not con.in_transaction


def test_a_failing_step_leaves_the_version_and_the_tables(db):  # noqa: F811
    con = db.connect()
    migrate(con, "widgets", (V1,))
    bad = ("ALTER TABLE widgets ADD COLUMN extra TEXT", "ALTER TABLE nowhere ADD COLUMN x TEXT")
    with pytest.raises(sqlite3.OperationalError):
        migrate(con, "widgets", (V1, bad))
    assert version(con, "widgets") == 1 and not con.in_transaction
    con.execute("ALTER TABLE widgets ADD COLUMN extra TEXT")      # rolled back: free
