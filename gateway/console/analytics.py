"""The merchant's analytics: sales, baskets, payments, items, alarms, audits, what
staff caught, coupons and journeys, read from **rollup tables kept up to date by
SQLite triggers**.

The views read only the rollup tables (``ru_*``) of ``core/rollups.py``, which lists
them: small summaries that triggers keep in the same transaction as every write the
store's processes make, each database's owner building them when it starts (the
service in ``store.db``, the payment gateway in ``payments.db``, the coupon gateway
in ``coupons.db``). This module only reads them, over read-only connections; a range
reads whole months from the monthly twins and only its ragged edges from the days.
(DuckDB's SQLite scanner was the other candidate engine; it downloads its extension
at run time and the store's servers have no network, so it is not used.)

Conventions: money is integer minor units; a "day" is the local calendar date
(SQLite's ``localtime``, so the store's processes and the console must share the
server's time zone); hours are whole epoch hours shown in local time. Sales are
orders ``paid`` or ``exited``; an order's lines count on the day the order was
created. "Sales by hour" is the profile of the day (00:00-23:00 summed over the
range); "by day" and "by week" (weeks from Monday) are the timelines. The journey
of an order comes from the device that opened its basket (``HH-..`` handheld,
``KIOSK-..`` kiosk, ``TILL-..``/``POS-..`` till, ``VENUE-..`` unattended, anything
else ``other``). Alarms: weight verdicts other than ``ok`` per exit lane, and the
``alarm`` events of lane devices (the EAS gate); the alarm-rate view sets each
lane's weight-alarm rate beside the policy's false-alarm rate (``erfc(k/√2)``): the
data holds no ground truth of who was honest, so the observed rate is the ceiling
of the honest-alarm rate and the excess over the expected honest alarms is what
thefts and mistakes explain. Audits are read where the service keeps them, in
``store.db``. "Thefts and mistakes caught" counts what staff found: audits recorded
as a discrepancy with a finding (``theft`` or ``mistake``, on the day of the result)
and exit alarms resolved with a finding (``theft``, ``mistake`` or ``false_alarm``,
on the day of the action), from ``ru_finding_day``.

Charts are server-rendered SVG drawn by pygal, with no script and no reference to
the network (``js=[]``, no XML declaration; pygal's comments and its inline config
script stripped).
"""

from __future__ import annotations

import calendar
import csv
import datetime as _dt
import io
import math
import re
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lanecore.core.errors import LanecoreError
from lanecore.core.rollups import (  # noqa: F401 - re-exported: the views' vocabulary
    ROLLUP_VERSION, SALES_STATUSES, SIZE_BINS, VALUE_BINS, _table_names, day_sql,
    ensure_rollups, journey_sql, rollups_built, size_bin_sql, value_bin_sql)
from lanecore.core.weigh.verify import VerifyPolicy

__all__ = ["Analytics", "ensure_rollups", "VIEWS", "SALES_STATUSES", "ROLLUP_VERSION",
           "SIZE_BINS", "VALUE_BINS", "TOP_ITEMS", "policy_false_alarm_rate",
           "journey_sql", "size_bin_sql", "value_bin_sql", "day_sql", "JOURNEYS",
           "alarm_rate_rows", "FINDING_SOURCES", "FINDINGS"]

#: Rows of the top-items view.
TOP_ITEMS = 20


def policy_false_alarm_rate(policy: VerifyPolicy | None = None) -> float:
    """The share of honest exits the weigh-check policy alarms: a two-sided Gaussian
    tail beyond k·σ (``erfc(k/√2)``; 0.1 % for the default k = 3.29)."""
    return math.erfc((policy or VerifyPolicy()).k / math.sqrt(2))


# --------------------------------------------------------------------------------------
# The views
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Range:
    since: _dt.date | None
    until: _dt.date | None

    def days(self, col: str = "day") -> tuple[str, list]:
        """A WHERE fragment on a local-date column, and its parameters."""
        where, args = [], []
        if self.since is not None:
            where.append(f"{col} >= ?")
            args.append(self.since.isoformat())
        if self.until is not None:
            where.append(f"{col} <= ?")
            args.append(self.until.isoformat())
        return (" AND ".join(where) or "1"), args

    def epoch(self) -> tuple[float | None, float | None]:
        """[start, end) in epoch seconds: local midnight of since, of until + 1."""
        def midnight(d):
            return _dt.datetime(d.year, d.month, d.day).timestamp()
        return (None if self.since is None else midnight(self.since),
                None if self.until is None else
                midnight(self.until + _dt.timedelta(days=1)))


_SALES_IN = "status IN ('paid', 'exited')"


def _hours_where(rng: _Range) -> tuple[str, list]:
    start, end = rng.epoch()
    where, args = [_SALES_IN], []
    if start is not None:
        where.append("hour >= ?")
        args.append(math.ceil(start / 3600))
    if end is not None:
        where.append("hour < ?")
        args.append(math.ceil(end / 3600))
    return " AND ".join(where), args


def _sales_by(con, rng: _Range, key_sql: str) -> list[list]:
    where, args = _hours_where(rng)
    return [list(r) for r in con.execute(
        f"SELECT {key_sql} AS k, sum(orders), sum(items), sum(value) FROM ru_sales_hour "
        f"WHERE {where} GROUP BY k HAVING sum(orders) > 0 ORDER BY k", args)]


def _v_sales_by_hour(db, rng):
    rows = _sales_by(db["store"], rng,
                     "CAST(strftime('%H', hour * 3600, 'unixepoch', 'localtime') AS INTEGER)")
    return [[f"{h:02d}:00", *rest] for h, *rest in rows]


def _v_sales_by_day(db, rng):
    return _sales_by(db["store"], rng, day_sql("hour * 3600"))


def _v_sales_by_week(db, rng):
    return _sales_by(db["store"], rng,
                     "date(hour * 3600, 'unixepoch', 'localtime', '-6 days', 'weekday 1')")


def _month_cover(con, base: str, rng: _Range) -> tuple[list[str], list[tuple[str, str]]]:
    """The whole months of the range that hold data (read from ``{base}_month``) and
    the day spans left at its edges (read from ``{base}_day``)."""
    # two subqueries: SQLite answers a lone min() or max() from the index, not both
    lo, hi = con.execute(f"SELECT (SELECT min(day) FROM {base}_day), "
                         f"(SELECT max(day) FROM {base}_day)").fetchone()
    if lo is None:
        return [], []
    lo = max(_dt.date.fromisoformat(lo), rng.since or _dt.date.min)
    hi = min(_dt.date.fromisoformat(hi), rng.until or _dt.date.max)
    months, spans = [], []
    d = lo
    while d <= hi:
        last = d.replace(day=calendar.monthrange(d.year, d.month)[1])
        end = min(last, hi)
        # a month is whole when the range covers it, or covers every day it has data
        whole = (rng.since is None or rng.since <= d.replace(day=1)) and \
                (rng.until is None or rng.until >= last)
        if whole:
            months.append(d.strftime("%Y-%m"))
        else:
            spans.append((d.isoformat(), end.isoformat()))
        d = last + _dt.timedelta(days=1)
    return months, spans


def _covered(con, base: str, cols: str, where: str, rng: _Range) -> tuple[str, list]:
    """A subquery of ``cols`` from the rollup ``base`` (``ru_x``) over the range:
    whole months from its monthly table, the edges from its daily one."""
    months, spans = _month_cover(con, base, rng)
    parts, args = [], []
    if months:
        parts.append(f"SELECT {cols} FROM {base}_month WHERE {where} "
                     f"AND month IN ({', '.join('?' * len(months))})")
        args += months
    for a, b in spans:
        parts.append(f"SELECT {cols} FROM {base}_day WHERE {where} AND day BETWEEN ? AND ?")
        args += [a, b]
    if not parts:   # nothing in the range: an empty subquery of the same columns
        parts.append(f"SELECT {cols} FROM {base}_day WHERE 0")
    return "(" + " UNION ALL ".join(parts) + ")", args


def _binned(db, rng, base, bins):
    sub, args = _covered(db["store"], base, "bin, orders, value", _SALES_IN, rng)
    got = {b: (n, v) for b, n, v in db["store"].execute(
        f"SELECT bin, sum(orders), sum(value) FROM {sub} "
        "GROUP BY bin HAVING sum(orders) > 0", args)}
    return [[label, *got[i]] for i, (_low, label) in enumerate(bins) if i in got]


def _v_basket_size(db, rng):
    return _binned(db, rng, "ru_order_size", SIZE_BINS)


def _v_basket_value(db, rng):
    return _binned(db, rng, "ru_order_value", VALUE_BINS)


def _v_payments_by_channel(db, rng):
    con = db.get("ledger")
    if con is None:
        return []
    sub, args = _covered(con, "ru_charge", "channel, state, n, amount", "1", rng)
    return [list(r) for r in con.execute(
        "SELECT channel, sum(CASE WHEN state = 'paid' THEN n ELSE 0 END), "
        "sum(CASE WHEN state = 'paid' THEN amount ELSE 0 END), "
        "sum(CASE WHEN state = 'failed' THEN n ELSE 0 END), "
        "sum(CASE WHEN state = 'reversed' THEN n ELSE 0 END) "
        f"FROM {sub} GROUP BY channel HAVING sum(n) > 0 ORDER BY channel", args)]


def _v_refunds(db, rng):
    con = db.get("ledger")
    if con is None:
        return []
    sub, args = _covered(con, "ru_refund", "channel, state, n, amount", "1", rng)
    return [list(r) for r in con.execute(
        "SELECT channel, sum(CASE WHEN state = 'paid' THEN n ELSE 0 END), "
        "sum(CASE WHEN state = 'paid' THEN amount ELSE 0 END), "
        "sum(CASE WHEN state IN ('created', 'sent', 'unknown') THEN n ELSE 0 END), "
        "sum(CASE WHEN state = 'failed' THEN n ELSE 0 END) "
        f"FROM {sub} GROUP BY channel HAVING sum(n) > 0 ORDER BY channel", args)]


def _v_top_items(db, rng):
    con = db["store"]
    sub, args = _covered(con, "ru_item", "gtin, name, units, value", "sale = 1", rng)
    return [list(r) for r in con.execute(
        f"SELECT gtin, max(name), sum(units) AS u, sum(value) FROM {sub} "
        f"GROUP BY gtin HAVING u > 0 ORDER BY u DESC, gtin LIMIT {TOP_ITEMS}", args)]


def _gate_rows(db, rng):
    con = db["store"]
    if "ru_gate_day" not in _table_names(con):
        return []
    sub, args = _covered(con, "ru_gate", "lane, outcome, n", "1", rng)
    return con.execute(f"SELECT lane, outcome, sum(n) FROM {sub} "
                       "GROUP BY lane, outcome HAVING sum(n) > 0 ORDER BY lane, outcome",
                       args).fetchall()


def _v_alarms(db, rng):
    return [[lane, cause, n] for lane, cause, n in _gate_rows(db, rng)
            if cause != "weight_ok"]


def alarm_rate_rows(gate_rows, p_fa: float) -> list[list]:
    """Per lane (and "all lanes"): weighed exits, weight alarms, their rate, the
    policy's false-alarm rate, the alarms it explains, and the excess over it."""
    per: dict[str, list[int]] = {}
    for lane, outcome, n in gate_rows:
        if outcome.startswith("weight_"):
            w = per.setdefault(lane, [0, 0])
            w[0] += n
            w[1] += n if outcome != "weight_ok" else 0
    out = []
    total = [sum(w[0] for w in per.values()), sum(w[1] for w in per.values())]
    for lane, (weighed, alarms) in [*sorted(per.items()), ("all lanes", total)]:
        if not weighed:
            continue
        expected = weighed * p_fa
        out.append([lane, weighed, alarms, round(alarms / weighed, 6), round(p_fa, 6),
                    round(expected, 2), round(alarms - expected, 2)])
    return out


def _v_alarm_rate(db, rng):
    return alarm_rate_rows(_gate_rows(db, rng), policy_false_alarm_rate())


def _v_audits(db, rng):
    con = db["store"]
    if "ru_audit_day" not in _table_names(con):
        return []
    sub, args = _covered(con, "ru_audit", "kind, outcome, n", "1", rng)
    rows = con.execute(
        "SELECT kind, sum(n), sum(CASE WHEN outcome = 'discrepancy' THEN n ELSE 0 END) "
        f"FROM {sub} GROUP BY kind HAVING sum(n) > 0 ORDER BY kind", args).fetchall()
    return [[k, n, hit, round(hit / n, 6)] for k, n, hit in rows]


#: The sources of findings (``ru_finding_day``) and the findings, in display order.
FINDING_SOURCES = ("audit", "exit")
FINDINGS = ("theft", "mistake", "false_alarm")


def _v_caught(db, rng):
    con = db["store"]
    names = _table_names(con)
    if "ru_finding_day" not in names:
        return []
    if "ru_finding_month" in names:
        sub, args = _covered(con, "ru_finding", "source, finding, n", "1", rng)
    else:
        where, args = rng.days()
        sub = f"(SELECT source, finding, n FROM ru_finding_day WHERE {where})"
    got = con.execute(f"SELECT source, finding, sum(n) FROM {sub} "
                      "GROUP BY source, finding HAVING sum(n) > 0", args).fetchall()
    order = {k: i for i, k in enumerate(FINDING_SOURCES + FINDINGS)}
    return sorted(([s, f, n] for s, f, n in got),
                  key=lambda r: (order.get(r[0], 99), r[0], order.get(r[1], 99), r[1]))


def _v_coupons(db, rng):
    con = db.get("coupons")
    if con is None:
        return []
    names = dict(con.execute("SELECT issuer_id, name FROM coupon_issuers"))
    sub, args = _covered(con, "ru_clearing", "issuer_id, currency, reversed, n, amount",
                         "1", rng)
    rows = con.execute(
        "SELECT issuer_id, currency, sum(CASE WHEN reversed = 0 THEN n ELSE 0 END), "
        "sum(CASE WHEN reversed = 0 THEN amount ELSE 0 END), "
        "sum(CASE WHEN reversed = 1 THEN n ELSE 0 END) "
        f"FROM {sub} GROUP BY issuer_id, currency "
        "HAVING sum(n) > 0 ORDER BY issuer_id, currency", args).fetchall()
    return [[i, names.get(i, ""), c, n, amount, rev] for i, c, n, amount, rev in rows]


JOURNEYS = ("handheld", "kiosk", "till", "unattended", "other")


def _v_journeys(db, rng):
    sub, args = _covered(db["store"], "ru_journey", "journey, orders, value", _SALES_IN,
                         rng)
    got = {j: (n, v) for j, n, v in db["store"].execute(
        f"SELECT journey, sum(orders), sum(value) FROM {sub} "
        "GROUP BY journey HAVING sum(orders) > 0", args)}
    total = sum(n for n, _v in got.values())
    return [[j, got[j][0], round(got[j][0] / total, 6), got[j][1]]
            for j in JOURNEYS if j in got]


@dataclass(frozen=True)
class _View:
    title: str
    columns: tuple[str, ...]
    rows: Callable
    chart: str | None          # pygal chart class name
    x: int = 0                 # the column of the labels
    y: int = 1                 # the column charted


_SALES_COLS = ("orders", "items", "value_minor")
VIEWS: dict[str, _View] = {
    "sales_by_hour": _View("Sales by hour", ("hour",) + _SALES_COLS,
                           _v_sales_by_hour, "Bar", y=3),
    "sales_by_day": _View("Sales by day", ("day",) + _SALES_COLS, _v_sales_by_day,
                          "Line", y=3),
    "sales_by_week": _View("Sales by week", ("week_from",) + _SALES_COLS,
                           _v_sales_by_week, "Bar", y=3),
    "basket_size": _View("Basket size distribution (items per order)",
                         ("items_per_order", "orders", "value_minor"), _v_basket_size, "Bar"),
    "basket_value": _View("Basket value distribution",
                          ("value_band", "orders", "value_minor"), _v_basket_value, "Bar"),
    "payments_by_channel": _View("Payments by channel",
                                 ("channel", "paid", "amount_minor", "failed", "reversed"),
                                 _v_payments_by_channel, "Pie", y=2),
    "refunds": _View("Refunds by channel",
                     ("channel", "refunded", "amount_minor", "pending", "failed"),
                     _v_refunds, "Bar", y=2),
    "top_items": _View(f"Top {TOP_ITEMS} items by units sold",
                       ("gtin", "name", "units", "value_minor"), _v_top_items,
                       "HorizontalBar", x=1, y=2),
    "alarms": _View("Alarms per lane and cause", ("lane", "cause", "alarms"), _v_alarms,
                    "StackedBar", y=2),
    "alarm_rate": _View("Weight-alarm rate against the policy's false-alarm rate",
                        ("lane", "weighed", "weight_alarms", "alarm_rate", "policy_rate",
                         "expected_honest_alarms", "excess_alarms"), _v_alarm_rate,
                        "Bar", y=3),
    "audits": _View("Audit hit rate", ("kind", "audits", "discrepancies", "hit_rate"),
                    _v_audits, "Bar", y=3),
    "caught": _View("Thefts and mistakes caught", ("source", "finding", "n"), _v_caught,
                    "StackedBar", y=2),
    "coupons_by_manufacturer": _View(
        "Coupon redemptions per manufacturer",
        ("issuer_id", "name", "currency", "redemptions", "amount_minor", "reversed"),
        _v_coupons, "Bar", y=3),
    "journeys": _View("Journeys: handheld, kiosk, till and unattended shares",
                      ("journey", "orders", "share", "value_minor"), _v_journeys, "Pie"),
}


def _svg(view: _View, name: str, rows: list[list]) -> str | None:
    if view.chart is None or not rows:
        return None
    import pygal  # imported on first chart: the views themselves need no pygal

    opts = dict(js=[], disable_xml_declaration=True, show_legend=view.chart in
                ("Pie", "StackedBar"), width=800, height=400, explicit_size=True,
                print_values=False, truncate_label=24)
    chart = getattr(pygal, view.chart)(**opts)
    chart.title = view.title
    if view.chart == "Pie":
        for r in rows:
            chart.add(str(r[view.x]), r[view.y])
    elif view.chart == "StackedBar":      # lanes (sources) along x, a series per cause
        lanes = sorted({r[0] for r in rows})
        chart.x_labels = lanes
        for cause in sorted({r[1] for r in rows}):
            n = {r[0]: r[2] for r in rows if r[1] == cause}
            chart.add(cause, [n.get(lane, 0) for lane in lanes])
    else:
        chart.x_labels = [str(r[view.x]) for r in rows]
        chart.add(view.columns[view.y], [r[view.y] for r in rows])
    svg = chart.render(is_unicode=True)
    svg = re.sub(r"<!--.*?-->", "", svg, flags=re.DOTALL)       # pygal's credits, with URLs
    # pygal inlines its config for its (absent) tooltip script: a static chart needs
    # neither, and a page that inlines the SVG must run no script from it
    svg = re.sub(r"<script\b.*?</script>", "", svg, flags=re.DOTALL)
    # a stable id for the page and its tests (chart-<name>), in the styles too
    uid = re.search(r'id="(chart-[0-9a-f-]+)"', svg)
    if uid is not None:
        svg = svg.replace(uid.group(1), f"chart-{name}")
    return svg.replace("<svg ", f'<svg data-testid="chart-{name}" ', 1)


class ViewTables:
    """What every set of analytics views gives the console: a view's rows with its
    chart, and its CSV. A subclass has ``views`` (name → view with ``title`` and
    ``columns``), ``draw(view, name, rows)`` (its chart) and ``rows(name, since,
    until)``."""

    VIEWS: dict = {}

    @staticmethod
    def draw(view, name: str, rows: list[list]) -> str | None:
        return None

    def view(self, name: str, since: _dt.date | None, until: _dt.date | None) -> dict:
        """``{"title", "columns", "rows", "svg"}``: the view's rows and its chart
        (a static SVG document, None when there is nothing to draw)."""
        rows = self.rows(name, since, until)
        v = self.VIEWS[name]
        return {"title": v.title, "columns": list(v.columns), "rows": rows,
                "svg": self.draw(v, name, rows)}

    def csv(self, name: str, since, until) -> str:
        """The view's rows as CSV (RFC 4180, ``\\r\\n``), with the column names first."""
        rows = self.rows(name, since, until)
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(self.VIEWS[name].columns)
        w.writerows(rows)
        return out.getvalue()


class Analytics(ViewTables):
    """The analytics views over a store's databases. ``store_db``: the store's
    ``store.db``; ``ledger_db`` (payments.db) and ``coupons_db`` (coupons.db) are
    optional: their views are empty without them. Each is opened **read-only**: its
    owner (the service, the payment gateway, the coupon gateway) built its rollups at
    start (``core/rollups.py``) and its triggers keep them; a database whose rollups
    are missing or of another version is refused with ``ROLLUPS_MISSING``."""

    VIEWS = VIEWS
    draw = staticmethod(_svg)

    def __init__(self, store_db: Path, ledger_db: Path | None = None,
                 coupons_db: Path | None = None):
        self._lock = threading.Lock()
        self._db: dict[str, sqlite3.Connection | None] = {}
        for key, path in (("store", store_db), ("ledger", ledger_db),
                          ("coupons", coupons_db)):
            if path is None:
                self._db[key] = None
                continue
            try:
                con = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True,
                                      isolation_level=None, timeout=10.0,
                                      check_same_thread=False)
                missing = rollups_built(con)
            except (sqlite3.Error, LanecoreError) as exc:
                raise LanecoreError(f"cannot open {path} for reading: {exc}",
                                    code="DB_ERROR") from exc
            if missing:
                con.close()
                raise LanecoreError(
                    f"{path} has no analytics rollups for {', '.join(missing)} at version "
                    f"{ROLLUP_VERSION}: they are built by the process that owns it when it "
                    f"starts (lanecore serve, gateway payments, gateway coupons of this "
                    f"version)", code="ROLLUPS_MISSING")
            self._db[key] = con

    def close(self) -> None:
        for con in self._db.values():
            if con is not None:
                con.close()

    def views(self) -> list[tuple[str, str]]:
        """``(name, English title)`` of every view, in menu order."""
        return [(name, v.title) for name, v in VIEWS.items()]

    def rows(self, name: str, since: _dt.date | None = None,
             until: _dt.date | None = None) -> list[list]:
        """The rows of view ``name`` over local dates ``since``..``until`` (both
        inclusive, either open). Raises UNKNOWN_VIEW, BAD_RANGE, DB_ERROR."""
        view = VIEWS.get(name)
        if view is None:
            raise LanecoreError(f"no analytics view {name!r:.60}; one of "
                                f"{', '.join(VIEWS)}", code="UNKNOWN_VIEW",
                                details={"view": str(name)[:60]})
        for what, d in (("since", since), ("until", until)):
            if d is not None and not isinstance(d, _dt.date):
                raise LanecoreError(f"{what} must be a date, not {type(d).__name__}",
                                    code="BAD_RANGE", details={"field": what})
        if isinstance(since, _dt.datetime):
            since = since.date()
        if isinstance(until, _dt.datetime):
            until = until.date()
        if since is not None and until is not None and since > until:
            raise LanecoreError(f"since {since} is after until {until}", code="BAD_RANGE",
                                details={"since": since.isoformat(),
                                         "until": until.isoformat()})
        rng = _Range(since, until)
        try:
            with self._lock:
                try:
                    return view.rows(self._db, rng)
                except sqlite3.OperationalError as exc:
                    if "no such table" not in str(exc):
                        raise
                # a source table that appeared after opening (a new store): build
                # its rollups now; a table still missing means nothing to show
                for con in self._db.values():
                    if con is not None:
                        ensure_rollups(con)
                try:
                    return view.rows(self._db, rng)
                except sqlite3.OperationalError as exc:
                    if "no such table" not in str(exc):
                        raise
                    return []
        except sqlite3.Error as exc:
            raise LanecoreError(f"cannot read view {name}: {exc}", code="DB_ERROR") from exc
