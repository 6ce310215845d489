"""Rollup tables for the store's analytics, kept up to date by SQLite triggers in the
same transaction as every write the store's processes make.

A store-year holds millions of order lines; a report that ran a ``GROUP BY`` over
them on every view would take seconds. :func:`ensure_rollups` creates small summary
tables (``ru_*``) beside the raw ones, with triggers that move their numbers as rows
land or change (an order submitted, paid, exited or cancelled; a verdict; a device
alarm; an audit; a charge or refund changing state; a coupon redeemed or reversed),
and fills them once from the raw rows (the backfill, in the same transaction as the
triggers' creation, so no write falls between).

**Each database's owner builds its own rollups** at start: the verification service
in ``store.db``, the payment gateway in its ledger (``payments.db``), the coupon
gateway in ``coupons.db``. Readers (the console's analytics,
``gateway/console/analytics.py``) open the databases read-only and never change their
schema; a process of another lanecore version rebuilds a family whose
``ROLLUP_VERSION`` differs.

The rollups, by database (each created only where its source table is):

* ``store.db`` — ``ru_sales_hour`` (epoch hour, order status: orders, items, value),
  ``ru_order_size_day`` / ``ru_order_value_day`` (local day, status, bin: orders,
  value), ``ru_journey_day`` (day, status, journey: orders, items, value),
  ``ru_item_day`` (day, sale 0/1, GTIN: name, units, value), ``ru_gate_day`` (day,
  lane, outcome: n) from ``verdicts`` and the ``alarm`` rows of ``device_events``,
  ``ru_audit_day`` (day, kind, outcome: n) from ``audits``, ``ru_finding_day`` (day,
  source ``audit`` or ``exit``, finding: n) from the findings of discrepant
  ``audits`` (theft, mistake) and of ``alarm_actions`` (theft, mistake, false_alarm);
* ``payments.db`` — ``ru_charge_day`` and ``ru_refund_day`` (day, channel, state: n,
  amount);
* ``coupons.db`` — ``ru_clearing_day`` (day, issuer, currency, reversed: n, amount).

Every daily rollup has a monthly twin (``ru_…_month``, keyed by ``YYYY-MM``) kept by
the same triggers. Money is integer minor units; a "day" is the local calendar date
(SQLite's ``localtime``). Pure SQL over the schemas the domain modules create: this
module imports none of them.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from lanecore.core.errors import LanecoreError

__all__ = ["ensure_rollups", "rollups_built", "ROLLUP_VERSION", "SALES_STATUSES",
           "SIZE_BINS", "VALUE_BINS", "day_sql", "journey_sql", "size_bin_sql",
           "value_bin_sql"]

#: Version of the rollup tables and triggers (``rollup_meta``); a new one rebuilds.
ROLLUP_VERSION = 2
#: Order statuses that are sales (money taken).
SALES_STATUSES = ("paid", "exited")
#: Items per order: (lowest, label) in increasing order.
SIZE_BINS = ((1, "1"), (2, "2"), (3, "3-4"), (5, "5-8"), (9, "9-16"), (17, "17-32"),
             (33, "33-64"), (65, "65+"))
#: Order value (minor units): (lowest, label).
VALUE_BINS = ((0, "< 5"), (500, "5-10"), (1000, "10-20"), (2000, "20-50"),
              (5000, "50-100"), (10000, "100-200"), (20000, "200+"))

# --------------------------------------------------------------------------------------
# SQL pieces shared by the triggers, the backfill (and the benchmark's raw queries)
# --------------------------------------------------------------------------------------

def day_sql(expr: str) -> str:
    """The local calendar date ``YYYY-MM-DD`` of epoch seconds ``expr``."""
    return f"date({expr}, 'unixepoch', 'localtime')"


def _month_sql(expr: str) -> str:
    return f"strftime('%Y-%m', {expr}, 'unixepoch', 'localtime')"


def _sale_sql(status: str) -> str:
    return f"(CASE WHEN {status} IN ('paid', 'exited') THEN 1 ELSE 0 END)"


def _hour_sql(expr: str) -> str:
    return f"CAST(({expr}) / 3600 AS INTEGER)"


def _bin_sql(expr: str, bins) -> str:
    cases = " ".join(f"WHEN {expr} >= {low} THEN {i}"
                     for i, (low, _label) in reversed(list(enumerate(bins))))
    return f"(CASE {cases} ELSE 0 END)"


def size_bin_sql(expr: str) -> str:
    """The index in SIZE_BINS of ``expr`` items."""
    return _bin_sql(expr, SIZE_BINS)


def value_bin_sql(expr: str) -> str:
    """The index in VALUE_BINS of an order value ``expr``."""
    return _bin_sql(expr, VALUE_BINS)


def journey_sql(device: str) -> str:
    """The journey of an order opened on ``device``."""
    return (f"(CASE WHEN {device} LIKE 'HH%' THEN 'handheld' "
            f"WHEN {device} LIKE 'KIOSK%' THEN 'kiosk' "
            f"WHEN {device} LIKE 'TILL%' OR {device} LIKE 'POS%' THEN 'till' "
            f"WHEN {device} LIKE 'VENUE%' THEN 'unattended' ELSE 'other' END)")


def _upsert(table: str, keys: tuple, values: tuple, select: str) -> str:
    """INSERT … SELECT into a rollup, adding to the row of the same keys."""
    cols = ", ".join(keys + values)
    adds = ", ".join(f"{v} = {v} + excluded.{v}" for v in values)
    extra = ", name = max(name, excluded.name)" if "name" in keys else ""
    conflict = ", ".join(k for k in keys if k != "name")
    return (f"INSERT INTO {table} ({cols}) {select} "
            f"ON CONFLICT ({conflict}) DO UPDATE SET {adds}{extra}")


@dataclass(frozen=True)
class _Family:
    """Rollup tables fed by one source table: their DDL, the statements a trigger
    runs for one source row (``ref``: NEW or OLD, ``sign``: +1 or -1), the backfill
    and the triggers' events."""
    name: str
    source: str
    tables: tuple[str, ...]
    row_stmts: Callable[[str, str], list[str]]
    backfill: tuple[str, ...]
    update_of: str | None          # the column whose change moves the row's numbers
    insert_when: str | None = None  # only rows matching (NEW.…) count
    #: built only where the source table has this column (one added to it later: a
    #: reader's older database may not have it yet)
    column: str | None = None


_ORDER_TABLES = (
    """CREATE TABLE IF NOT EXISTS ru_sales_hour (
        hour INTEGER NOT NULL, status TEXT NOT NULL, orders INTEGER NOT NULL,
        items INTEGER NOT NULL, value INTEGER NOT NULL,
        PRIMARY KEY (hour, status)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS ru_order_size_day (
        day TEXT NOT NULL, status TEXT NOT NULL, bin INTEGER NOT NULL,
        orders INTEGER NOT NULL, value INTEGER NOT NULL,
        PRIMARY KEY (day, status, bin)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS ru_order_value_day (
        day TEXT NOT NULL, status TEXT NOT NULL, bin INTEGER NOT NULL,
        orders INTEGER NOT NULL, value INTEGER NOT NULL,
        PRIMARY KEY (day, status, bin)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS ru_journey_day (
        day TEXT NOT NULL, status TEXT NOT NULL, journey TEXT NOT NULL,
        orders INTEGER NOT NULL, items INTEGER NOT NULL, value INTEGER NOT NULL,
        PRIMARY KEY (day, status, journey)) WITHOUT ROWID""",
    # sale: 1 for an order paid or exited (SALES_STATUSES), else 0
    """CREATE TABLE IF NOT EXISTS ru_item_day (
        day TEXT NOT NULL, sale INTEGER NOT NULL, gtin TEXT NOT NULL, name TEXT NOT NULL,
        units INTEGER NOT NULL, value INTEGER NOT NULL,
        PRIMARY KEY (day, sale, gtin)) WITHOUT ROWID""",
)


def _order_stmts(r: str, s: str) -> list[str]:
    at = f"{r}.created_at"
    one = f"SELECT {day_sql(at)}, {r}.status"
    lines = (f"FROM basket_lines WHERE basket_id = {r}.basket_id GROUP BY gtin")
    return [
        _upsert("ru_sales_hour", ("hour", "status"), ("orders", "items", "value"),
                f"SELECT {_hour_sql(at)}, {r}.status, {s}, {s} * {r}.n_items, "
                f"{s} * {r}.total_minor"),
        _upsert("ru_order_size_day", ("day", "status", "bin"), ("orders", "value"),
                f"{one}, {size_bin_sql(r + '.n_items')}, {s}, {s} * {r}.total_minor"),
        _upsert("ru_order_value_day", ("day", "status", "bin"), ("orders", "value"),
                f"{one}, {value_bin_sql(r + '.total_minor')}, {s}, {s} * {r}.total_minor"),
        _upsert("ru_journey_day", ("day", "status", "journey"), ("orders", "items", "value"),
                f"{one}, {journey_sql(r + '.device')}, {s}, {s} * {r}.n_items, "
                f"{s} * {r}.total_minor"),
        _upsert("ru_item_day", ("day", "sale", "gtin", "name"), ("units", "value"),
                f"SELECT {day_sql(at)}, {_sale_sql(r + '.status')}, gtin, max(name), "
                f"{s} * sum(qty), {s} * sum(line_price_minor) {lines}"),
    ]


_ORDERS_BACKFILL = (
    f"""INSERT INTO ru_sales_hour (hour, status, orders, items, value)
        SELECT {_hour_sql('created_at')} AS h, status, count(*), sum(n_items),
               sum(total_minor) FROM orders GROUP BY h, status""",
    f"""INSERT INTO ru_order_size_day (day, status, bin, orders, value)
        SELECT {day_sql('created_at')} AS d, status, {size_bin_sql('n_items')} AS b,
               count(*), sum(total_minor) FROM orders GROUP BY d, status, b""",
    f"""INSERT INTO ru_order_value_day (day, status, bin, orders, value)
        SELECT {day_sql('created_at')} AS d, status, {value_bin_sql('total_minor')} AS b,
               count(*), sum(total_minor) FROM orders GROUP BY d, status, b""",
    f"""INSERT INTO ru_journey_day (day, status, journey, orders, items, value)
        SELECT {day_sql('created_at')} AS d, status, {journey_sql('device')} AS j,
               count(*), sum(n_items), sum(total_minor) FROM orders GROUP BY d, status, j""",
    f"""INSERT INTO ru_item_day (day, sale, gtin, name, units, value)
        SELECT {day_sql('o.created_at')} AS d, {_sale_sql('o.status')} AS sl, l.gtin,
               max(l.name), sum(l.qty), sum(l.line_price_minor)
        FROM orders o JOIN basket_lines l ON l.basket_id = o.basket_id
        GROUP BY d, sl, l.gtin""",
)

_GATE_TABLE = """CREATE TABLE IF NOT EXISTS ru_gate_day (
    day TEXT NOT NULL, lane TEXT NOT NULL, outcome TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (day, lane, outcome)) WITHOUT ROWID"""

_FINDING_TABLE = """CREATE TABLE IF NOT EXISTS ru_finding_day (
    day TEXT NOT NULL, source TEXT NOT NULL, finding TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (day, source, finding)) WITHOUT ROWID"""

_FAMILIES = (
    _Family("orders", "orders", _ORDER_TABLES, _order_stmts,
            _ORDERS_BACKFILL, update_of="status"),
    _Family("verdicts", "verdicts", (_GATE_TABLE,),
            lambda r, s: [_upsert("ru_gate_day", ("day", "lane", "outcome"), ("n",),
                                  f"SELECT {day_sql(r + '.at')}, {r}.gate, "
                                  f"'weight_' || {r}.verdict, {s}")],
            (f"""INSERT INTO ru_gate_day (day, lane, outcome, n)
                 SELECT {day_sql('at')} AS d, gate, 'weight_' || verdict AS o, count(*)
                 FROM verdicts WHERE true GROUP BY d, gate, o
                 ON CONFLICT (day, lane, outcome) DO UPDATE SET n = n + excluded.n""",),
            update_of=None),
    _Family("device_alarms", "device_events", (_GATE_TABLE,),
            lambda r, s: [_upsert("ru_gate_day", ("day", "lane", "outcome"), ("n",),
                                  f"SELECT {day_sql(r + '.at')}, {r}.lane, "
                                  f"'alarm_' || {r}.device, {s} WHERE {r}.kind = 'alarm'")],
            (f"""INSERT INTO ru_gate_day (day, lane, outcome, n)
                 SELECT {day_sql('at')} AS d, lane, 'alarm_' || device AS o, count(*)
                 FROM device_events WHERE kind = 'alarm' GROUP BY d, lane, o
                 ON CONFLICT (day, lane, outcome) DO UPDATE SET n = n + excluded.n""",),
            update_of=None),
    _Family("audits", "audits",
            ("""CREATE TABLE IF NOT EXISTS ru_audit_day (
                day TEXT NOT NULL, kind TEXT NOT NULL, outcome TEXT NOT NULL,
                n INTEGER NOT NULL, PRIMARY KEY (day, kind, outcome)) WITHOUT ROWID""",),
            lambda r, s: [_upsert("ru_audit_day", ("day", "kind", "outcome"), ("n",),
                                  f"SELECT {day_sql(r + '.recorded_at')}, {r}.kind, "
                                  f"{r}.outcome, {s}")],
            (f"""INSERT INTO ru_audit_day (day, kind, outcome, n)
                 SELECT {day_sql('recorded_at')} AS d, kind, outcome, count(*)
                 FROM audits GROUP BY d, kind, outcome""",),
            update_of="outcome"),
    # what staff made of it: an audit's discrepancy (source 'audit', on the day it was
    # recorded) and an exit alarm's resolution (source 'exit', on the day of the action)
    _Family("audit_findings", "audits", (_FINDING_TABLE,),
            lambda r, s: [_upsert("ru_finding_day", ("day", "source", "finding"), ("n",),
                                  f"SELECT {day_sql(r + '.recorded_at')}, 'audit', "
                                  f"{r}.finding, {s} WHERE {r}.outcome = 'discrepancy' "
                                  f"AND {r}.finding IS NOT NULL")],
            (f"""INSERT INTO ru_finding_day (day, source, finding, n)
                 SELECT {day_sql('recorded_at')} AS d, 'audit', finding, count(*)
                 FROM audits WHERE outcome = 'discrepancy' AND finding IS NOT NULL
                 GROUP BY d, finding
                 ON CONFLICT (day, source, finding) DO UPDATE SET n = n + excluded.n""",),
            update_of="finding", column="finding"),
    _Family("exit_findings", "alarm_actions", (_FINDING_TABLE,),
            lambda r, s: [_upsert("ru_finding_day", ("day", "source", "finding"), ("n",),
                                  f"SELECT {day_sql(r + '.at')}, 'exit', {r}.finding, "
                                  f"{s} WHERE {r}.finding IS NOT NULL")],
            (f"""INSERT INTO ru_finding_day (day, source, finding, n)
                 SELECT {day_sql('at')} AS d, 'exit', finding, count(*)
                 FROM alarm_actions WHERE finding IS NOT NULL GROUP BY d, finding
                 ON CONFLICT (day, source, finding) DO UPDATE SET n = n + excluded.n""",),
            update_of="finding", column="finding"),
    _Family("charges", "charges",
            ("""CREATE TABLE IF NOT EXISTS ru_charge_day (
                day TEXT NOT NULL, channel TEXT NOT NULL, state TEXT NOT NULL,
                n INTEGER NOT NULL, amount INTEGER NOT NULL,
                PRIMARY KEY (day, channel, state)) WITHOUT ROWID""",),
            lambda r, s: [_upsert("ru_charge_day", ("day", "channel", "state"),
                                  ("n", "amount"),
                                  f"SELECT {day_sql(r + '.created_at')}, {r}.channel, "
                                  f"{r}.state, {s}, {s} * {r}.amount_minor")],
            (f"""INSERT INTO ru_charge_day (day, channel, state, n, amount)
                 SELECT {day_sql('created_at')} AS d, channel, state, count(*),
                        sum(amount_minor) FROM charges GROUP BY d, channel, state""",),
            update_of="state"),
    _Family("refunds", "refunds",
            ("""CREATE TABLE IF NOT EXISTS ru_refund_day (
                day TEXT NOT NULL, channel TEXT NOT NULL, state TEXT NOT NULL,
                n INTEGER NOT NULL, amount INTEGER NOT NULL,
                PRIMARY KEY (day, channel, state)) WITHOUT ROWID""",),
            lambda r, s: [_upsert("ru_refund_day", ("day", "channel", "state"),
                                  ("n", "amount"),
                                  f"SELECT {day_sql(r + '.created_at')}, {r}.channel, "
                                  f"{r}.state, {s}, {s} * {r}.amount_minor")],
            (f"""INSERT INTO ru_refund_day (day, channel, state, n, amount)
                 SELECT {day_sql('created_at')} AS d, channel, state, count(*),
                        sum(amount_minor) FROM refunds GROUP BY d, channel, state""",),
            update_of="state"),
    _Family("clearing", "coupon_clearing",
            ("""CREATE TABLE IF NOT EXISTS ru_clearing_day (
                day TEXT NOT NULL, issuer_id TEXT NOT NULL, currency TEXT NOT NULL,
                reversed INTEGER NOT NULL, n INTEGER NOT NULL, amount INTEGER NOT NULL,
                PRIMARY KEY (day, issuer_id, currency, reversed)) WITHOUT ROWID""",),
            lambda r, s: [_upsert("ru_clearing_day",
                                  ("day", "issuer_id", "currency", "reversed"),
                                  ("n", "amount"),
                                  f"SELECT {day_sql(r + '.redeemed_at')}, {r}.issuer_id, "
                                  f"{r}.currency, {r}.reversed, {s}, "
                                  f"{s} * {r}.amount_minor")],
            (f"""INSERT INTO ru_clearing_day (day, issuer_id, currency, reversed, n, amount)
                 SELECT {day_sql('redeemed_at')} AS d, issuer_id, currency, reversed,
                        count(*), sum(amount_minor) FROM coupon_clearing
                 GROUP BY d, issuer_id, currency, reversed""",),
            update_of="reversed"),
)


def _table_names(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _sources(con: sqlite3.Connection) -> set[str]:
    """The families whose source ``con``'s database holds (with its column, for a
    family that needs one)."""
    have = _table_names(con)
    out = set()
    for f in _FAMILIES:
        if f.source in have and (f.column is None or f.column in {
                r[1] for r in con.execute(f"PRAGMA table_info({f.source})")}):
            out.add(f.name)
    return out


def _triggers(f: _Family) -> list[str]:
    def body(*parts) -> str:
        return " ".join(stmt + ";" for part in parts for stmt in part)

    def rows(ref, sign):
        return _with_months(f.row_stmts(ref, sign))

    out = [(f"CREATE TRIGGER ru_{f.name}_ins AFTER INSERT ON {f.source} BEGIN "
            f"{body(rows('NEW', '1'))} END"),
           (f"CREATE TRIGGER ru_{f.name}_del AFTER DELETE ON {f.source} BEGIN "
            f"{body(rows('OLD', '-1'))} END")]
    if f.update_of is not None:
        out.append(f"CREATE TRIGGER ru_{f.name}_upd AFTER UPDATE OF {f.update_of} "
                   f"ON {f.source} WHEN OLD.{f.update_of} IS NOT NEW.{f.update_of} BEGIN "
                   f"{body(rows('OLD', '-1'), rows('NEW', '1'))} END")
    return out


_DAY_KEY = re.compile(r"date\(([^,]+), 'unixepoch', 'localtime'\)")


def _month_twin(sql: str) -> str | None:
    """The statement for the monthly twin (``ru_x_month``, keyed by ``month``
    YYYY-MM) of a daily rollup's DDL or upsert, or None for other statements."""
    m = re.search(r"\b(ru_\w+)_day \((\s*)day\b", sql)
    if m is None:
        return None
    out = sql.replace(f"{m.group(1)}_day (", f"{m.group(1)}_month (", 1)
    out = re.sub(r"\(\s*day TEXT NOT NULL", "(\n        month TEXT NOT NULL", out, count=1)
    out = re.sub(r"\((\s*)day\b", r"(\1month", out, count=1)
    out = out.replace("PRIMARY KEY (day,", "PRIMARY KEY (month,")
    out = out.replace("ON CONFLICT (day,", "ON CONFLICT (month,")
    return _DAY_KEY.sub(lambda k: _month_sql(k.group(1)), out, count=1)


def _with_months(stmts) -> list[str]:
    out = []
    for stmt in stmts:
        out.append(stmt)
        twin = _month_twin(stmt)
        if twin is not None:
            out.append(twin)
    return out


def _month_backfill(con: sqlite3.Connection, day_table: str) -> None:
    cols = list(con.execute(f"PRAGMA table_info({day_table})"))
    keys = [c[1] for c in cols if c[5] and c[1] != "day"]
    vals = [c[1] for c in cols if not c[5]]
    month = day_table[:-len("_day")] + "_month"
    agg = ", ".join(f"max({v})" if v == "name" else f"sum({v})" for v in vals)
    con.execute(f"INSERT INTO {month} (month, {', '.join(keys + vals)}) "
                f"SELECT substr(day, 1, 7) AS m, {', '.join(keys)}, {agg} "
                f"FROM {day_table} GROUP BY m, {', '.join(keys)}")


def ensure_rollups(con: sqlite3.Connection) -> None:
    """Create the rollup tables and triggers for the source tables ``con``'s database
    holds (store.db: orders and lines, verdicts, device alarms, audits, findings of
    audits and alarm actions; payments.db:
    charges and refunds; coupons.db: coupon redemptions) and backfill them from the
    raw rows, once: ``rollup_meta`` records each family built. A family of an older
    ROLLUP_VERSION is dropped and rebuilt. All in one ``BEGIN IMMEDIATE``
    transaction (``con`` in autocommit mode). Raises LanecoreError DB_ERROR."""
    try:
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute("CREATE TABLE IF NOT EXISTS rollup_meta (family TEXT PRIMARY KEY, "
                        "version INTEGER NOT NULL)")
            built = dict(con.execute("SELECT family, version FROM rollup_meta"))
            have = _sources(con)
            todo = [f for f in _FAMILIES if f.name in have
                    and built.get(f.name) != ROLLUP_VERSION]
            # families sharing a rollup table (the gate's, the findings') are rebuilt
            # together
            shared = {t for f in todo for t in f.tables}
            todo += [f for f in _FAMILIES if f not in todo and f.name in have
                     and shared & set(f.tables)]
            for f in todo:
                for kind in ("ins", "del", "upd"):
                    con.execute(f"DROP TRIGGER IF EXISTS ru_{f.name}_{kind}")
                for ddl in _with_months(f.tables):
                    con.execute("DROP TABLE IF EXISTS "
                                + re.search(r"EXISTS (\w+)", ddl).group(1))
            filled: set[str] = set()
            for f in todo:
                for ddl in _with_months(f.tables):
                    con.execute(ddl)
                for trig in _triggers(f):
                    con.execute(trig)
                for stmt in f.backfill:
                    con.execute(stmt)
            for f in todo:      # the months from the days, once every family is in
                for ddl in f.tables:
                    table = re.search(r"EXISTS (\w+)", ddl).group(1)
                    if table.endswith("_day") and table not in filled:
                        _month_backfill(con, table)
                        filled.add(table)
            for f in todo:
                con.execute("INSERT INTO rollup_meta (family, version) VALUES (?, ?) "
                            "ON CONFLICT (family) DO UPDATE SET version = excluded.version",
                            (f.name, ROLLUP_VERSION))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise LanecoreError(f"cannot build the analytics rollups: {exc}",
                            code="DB_ERROR") from exc


def rollups_built(con: sqlite3.Connection) -> list[str]:
    """The families whose source table ``con``'s database holds but whose rollups
    are not built at this ROLLUP_VERSION (empty: the views can read it)."""
    try:
        built = dict(con.execute("SELECT family, version FROM rollup_meta")) \
            if "rollup_meta" in _table_names(con) else {}
        have = _sources(con)
    except sqlite3.Error as exc:
        raise LanecoreError(f"cannot read the analytics rollups: {exc}",
                            code="DB_ERROR") from exc
    return [f.name for f in _FAMILIES if f.name in have
            and built.get(f.name) != ROLLUP_VERSION]
