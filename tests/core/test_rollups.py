"""The findings rollup (core/rollups.py, ``ru_finding_day`` and its month twin): what
staff made of a discrepant audit (source ``audit``) or an exit alarm (source
``exit``), kept by triggers, backfilled once, and built only where the source table
has its ``finding`` column."""

from __future__ import annotations

import sqlite3

import pytest

from lanecore.core.rollups import ensure_rollups, rollups_built
from lanecore.core.store.audit import AuditDecision, Audits

pytestmark = pytest.mark.kernel_free

T0 = 1_800_000_000.0
DAY = 86400.0
_ALARM_ACTIONS = """CREATE TABLE alarm_actions (
    action_id INTEGER PRIMARY KEY, at REAL NOT NULL, lane TEXT NOT NULL,
    order_no TEXT NOT NULL, action TEXT NOT NULL, reason TEXT NOT NULL,
    weight_g REAL, staff TEXT NOT NULL, principal TEXT NOT NULL, learning TEXT{extra})"""
VISUAL = AuditDecision(True, "visual", [], "spot_check", 0.1)


def _con():
    return sqlite3.connect(":memory:", isolation_level=None)


def _action(con, at, finding):
    con.execute("INSERT INTO alarm_actions (at, lane, order_no, action, reason, staff, "
                "principal, finding) VALUES (?, 'EXIT-A', 'O-1', 'ack', '', 'Ann', "
                "'key:console', ?)", (at, finding))


def _findings(con, table="ru_finding_day"):
    return sorted(con.execute(f"SELECT * FROM {table} WHERE n != 0"))


def _day(t):
    return sqlite3.connect(":memory:").execute(
        "SELECT date(?, 'unixepoch', 'localtime')", (t,)).fetchone()[0]


def test_findings_are_backfilled_then_kept_by_triggers():
    con = _con()
    con.execute(_ALARM_ACTIONS.format(extra=", finding TEXT"))
    a = Audits(con)
    # before the rollups exist: the backfill counts these
    a.record("O-1", VISUAL, "discrepancy", [{"gtin": "1", "qty": 1}], finding="theft",
             now=T0)
    a.record("O-2", VISUAL, "discrepancy", [], now=T0)            # no finding: not counted
    a.record("O-3", VISUAL, "clean", now=T0)
    _action(con, T0, "false_alarm")
    _action(con, T0, None)
    ensure_rollups(con)
    d0, d1 = _day(T0), _day(T0 + DAY)
    assert _findings(con) == [(d0, "audit", "theft", 1), (d0, "exit", "false_alarm", 1)]
    # the triggers: inserts, a changed finding, a deleted row
    a.record("O-4", VISUAL, "discrepancy", [], finding="mistake", now=T0 + DAY)
    _action(con, T0 + DAY, "theft")
    _action(con, T0 + DAY, "false_alarm")
    con.execute("UPDATE alarm_actions SET finding = 'mistake' WHERE finding = 'false_alarm' "
                "AND at = ?", (T0 + DAY,))
    con.execute("DELETE FROM audits WHERE order_no = 'O-1'")
    assert _findings(con) == [(d0, "exit", "false_alarm", 1), (d1, "audit", "mistake", 1),
                              (d1, "exit", "mistake", 1), (d1, "exit", "theft", 1)]
    months = {}
    for day, source, finding, n in _findings(con):
        months[(day[:7], source, finding)] = months.get((day[:7], source, finding), 0) + n
    assert _findings(con, "ru_finding_month") == sorted(
        (*k, n) for k, n in months.items())
    ensure_rollups(con)                                  # built: nothing doubles
    assert _findings(con, "ru_finding_month") == sorted((*k, n) for k, n in months.items())


def test_an_older_table_without_findings_is_built_once_it_has_the_column():
    con = _con()
    con.execute(_ALARM_ACTIONS.format(extra=""))
    con.execute("""CREATE TABLE audits (
        order_no TEXT PRIMARY KEY, shopper TEXT, kind TEXT NOT NULL, items TEXT NOT NULL,
        reason TEXT NOT NULL, probability REAL NOT NULL, outcome TEXT NOT NULL,
        found TEXT NOT NULL, trust_before REAL, trust_after REAL,
        recorded_at REAL NOT NULL)""")
    con.execute("INSERT INTO audits VALUES ('O-1', NULL, 'visual', '[]', 'spot_check', 0.1, "
                "'discrepancy', '[]', NULL, NULL, ?)", (T0,))
    ensure_rollups(con)                    # an older store: the findings wait for columns
    built = dict(con.execute("SELECT family, version FROM rollup_meta"))
    assert "audits" in built and "audit_findings" not in built
    assert "exit_findings" not in built and rollups_built(con) == []
    a = Audits(con)                        # the migration: staff, finding, principal
    cols = {r[1] for r in con.execute("PRAGMA table_info(audits)")}
    assert {"staff", "finding", "principal"} <= cols
    assert a.get("O-1")["finding"] is None
    con.execute("ALTER TABLE alarm_actions ADD COLUMN finding TEXT")
    assert set(rollups_built(con)) == {"audit_findings", "exit_findings"}
    _action(con, T0, "theft")
    ensure_rollups(con)
    assert rollups_built(con) == []
    assert _findings(con) == [(_day(T0), "exit", "theft", 1)]
    a.record("O-2", VISUAL, "discrepancy", [], finding="theft", staff="Ann",
             principal="key:console", now=T0)
    assert _findings(con) == [(_day(T0), "audit", "theft", 1), (_day(T0), "exit", "theft", 1)]
    rec = a.get("O-2")
    assert (rec["staff"], rec["principal"], rec["finding"]) == ("Ann", "key:console", "theft")
