"""The console's analytics across stores: ``lanecore console --hq postgresql://…``
reads HQ's tables (docs/chain.md: ``hq_ledger``, ``hq_verdicts``, ``hq_alarms``,
``hq_audits``, filled by ``lanecore hq`` from every store's events) and the chain's
shared ``coupon_clearing`` table, and shows them on ``/hq`` (docs/console.md).

:class:`HQAnalytics` has the interface of :class:`~lanecore.gateway.console.analytics.
Analytics` (``views``, ``rows``, ``view``, ``csv``): each view is a table, a
server-rendered pygal chart (no script, nothing from the network) and a CSV. Days are
UTC calendar days (stores of one chain may sit in several time zones; HQ's
reconciliation uses UTC days too); a range is ``since``..``until``, both inclusive.
Money is integer minor units.

psycopg is imported here only (this room never imports the chain's: the SQL is its
own, read-only, in one REPEATABLE READ transaction per view).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import re
import threading
from dataclasses import dataclass
from typing import Callable

from lanecore.core.errors import LanecoreError
from lanecore.gateway.console.i18n import N_

#: What staff found, in the order the views list them.
FINDINGS = ("theft", "mistake", "false_alarm")


@dataclass(frozen=True)
class _View:
    title: str
    columns: tuple[str, ...]
    rows: Callable
    x: int                     # the column along the chart's x axis
    series: int | None         # the column naming a series (None: one series)
    y: int                     # the column charted


def _bounds(since, until) -> tuple[float | None, float | None]:
    """[start, end) in Unix seconds of UTC days ``since``..``until`` (inclusive)."""
    def midnight(d):
        return _dt.datetime(d.year, d.month, d.day, tzinfo=_dt.timezone.utc).timestamp()
    return (None if since is None else midnight(since),
            None if until is None else midnight(until + _dt.timedelta(days=1)))


def _where(col: str, since, until) -> tuple[str, list]:
    start, end = _bounds(since, until)
    where, args = ["TRUE"], []
    if start is not None:
        where.append(f"{col} >= %s")
        args.append(start)
    if end is not None:
        where.append(f"{col} < %s")
        args.append(end)
    return " AND ".join(where), args


_DAY = "to_char(to_timestamp(at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


def _v_sales(con, since, until) -> list[list]:
    where, args = _where("at", since, until)
    return [[d, s, int(n), int(p), int(rv), int(rf), int(net)] for d, s, n, p, rv, rf, net in
            con.execute(
                f"SELECT {_DAY} AS day, store_id, "
                "COUNT(*) FILTER (WHERE kind = 'payment'), "
                "COALESCE(SUM(amount_minor) FILTER (WHERE kind = 'payment'), 0), "
                "COALESCE(SUM(amount_minor) FILTER (WHERE kind = 'reversal'), 0), "
                "COALESCE(SUM(amount_minor) FILTER (WHERE kind = 'refund'), 0), "
                f"COALESCE(SUM(signed_minor), 0) FROM hq_ledger WHERE {where} "
                "GROUP BY 1, 2 ORDER BY 1, 2", args)]


def _v_verdicts(con, since, until) -> list[list]:
    where, args = _where("at", since, until)
    return [[s, v or "", int(n)] for s, v, n in con.execute(
        f"SELECT store_id, verdict, COUNT(*) FROM hq_verdicts WHERE {where} "
        "GROUP BY 1, 2 ORDER BY 1, 2", args)]


def _v_alarms(con, since, until) -> list[list]:
    where, args = _where("at", since, until)
    return [[s, a or "", int(n)] for s, a, n in con.execute(
        f"SELECT store_id, action, COUNT(*) FROM hq_alarms WHERE {where} "
        "GROUP BY 1, 2 ORDER BY 1, 2", args)]


def _v_caught(con, since, until) -> list[list]:
    """What staff found, per store: audits recorded as a discrepancy with a finding
    (theft or mistake) and exit alarms resolved with one (theft, mistake or false
    alarm) — the store console's "Thefts and mistakes caught", per store."""
    where, args = _where("at", since, until)
    rows = [[s, "audit", f, int(n)] for s, f, n in con.execute(
        f"SELECT store_id, finding, COUNT(*) FROM hq_audits WHERE {where} AND "
        "outcome = 'discrepancy' AND finding IN ('theft', 'mistake') GROUP BY 1, 2", args)]
    rows += [[s, "exit", f, int(n)] for s, f, n in con.execute(
        f"SELECT store_id, finding, COUNT(*) FROM hq_alarms WHERE {where} AND "
        "finding = ANY(%s) GROUP BY 1, 2", [*args, list(FINDINGS)])]
    return sorted(rows, key=lambda r: (r[0], r[1], FINDINGS.index(r[2])))


def _v_clearing(con, since, until) -> list[list]:
    if con.execute("SELECT to_regclass('public.coupon_clearing')").fetchone()[0] is None:
        return []
    start, end = _bounds(since, until)
    where, args = ["TRUE"], []
    if start is not None:
        where.append("c.redeemed_at >= %s")
        args.append(int(start))
    if end is not None:
        where.append("c.redeemed_at < %s")
        args.append(int(end))
    return [[i, name or "", s, cur, int(n), int(amt), int(rn), int(ramt)]
            for i, name, s, cur, n, amt, rn, ramt in con.execute(
                "SELECT c.issuer_id, i.name, c.store_id, c.currency, "
                "COUNT(*) FILTER (WHERE c.reversed = 0), "
                "COALESCE(SUM(c.amount_minor) FILTER (WHERE c.reversed = 0), 0), "
                "COUNT(*) FILTER (WHERE c.reversed <> 0), "
                "COALESCE(SUM(c.amount_minor) FILTER (WHERE c.reversed <> 0), 0) "
                "FROM public.coupon_clearing c LEFT JOIN public.coupon_issuers i "
                f"ON i.issuer_id = c.issuer_id WHERE {' AND '.join(where)} "
                "GROUP BY 1, 2, 3, 4 ORDER BY 1, 3, 4", args)]


VIEWS: dict[str, _View] = {
    "sales": _View(N_("Sales per store per day"),
                   ("day", "store", "payments", "payment_minor", "reversal_minor",
                    "refund_minor", "net_minor"), _v_sales, x=0, series=1, y=6),
    "verdicts": _View(N_("Exit verdicts per store"), ("store", "verdict", "n"), _v_verdicts,
                      x=0, series=1, y=2),
    "alarms": _View(N_("Alarms per store"), ("store", "action", "n"), _v_alarms,
                    x=0, series=1, y=2),
    "caught": _View(N_("Thefts and mistakes caught per store"),
                    ("store", "source", "finding", "n"), _v_caught, x=0, series=2, y=3),
    "clearing": _View(N_("Coupon clearing per manufacturer across stores"),
                      ("issuer_id", "name", "store", "currency", "redemptions",
                       "amount_minor", "reversed", "reversed_minor"), _v_clearing,
                      x=0, series=2, y=5),
}


def _svg(view: _View, name: str, rows: list[list]) -> str | None:
    """A stacked bar chart: ``view.x`` along x, a series per ``view.series``."""
    if not rows:
        return None
    import pygal
    chart = pygal.StackedBar(js=[], disable_xml_declaration=True, show_legend=True,
                             width=800, height=400, explicit_size=True,
                             print_values=False, truncate_label=24)
    chart.title = view.title
    xs = sorted({str(r[view.x]) for r in rows})
    chart.x_labels = xs
    for s in sorted({str(r[view.series]) for r in rows}):
        got: dict[str, int] = {}
        for r in rows:
            if str(r[view.series]) == s:
                got[str(r[view.x])] = got.get(str(r[view.x]), 0) + r[view.y]
        chart.add(s, [got.get(x, 0) for x in xs])
    svg = chart.render(is_unicode=True)
    svg = re.sub(r"<!--.*?-->", "", svg, flags=re.DOTALL)       # pygal's credits, with URLs
    svg = re.sub(r"<script\b.*?</script>", "", svg, flags=re.DOTALL)   # no script inlined
    uid = re.search(r'id="(chart-[0-9a-f-]+)"', svg)
    if uid is not None:
        svg = svg.replace(uid.group(1), f"chart-hq-{name}")
    return svg.replace("<svg ", f'<svg data-testid="chart-hq-{name}" ', 1)


class HQAnalytics:
    """The views over HQ's PostgreSQL at ``url`` (one connection, read only, opened
    on first use and again after it broke). Errors: ``UNKNOWN_VIEW``, ``BAD_RANGE``,
    ``DB_UNAVAILABLE`` (HQ's database cannot be reached), ``DB_ERROR``."""

    VIEWS = VIEWS
    draw = staticmethod(_svg)

    def __init__(self, url: str) -> None:
        self.url = url
        self._con = None
        self._lock = threading.Lock()

    def _connect(self):
        import psycopg
        if self._con is None or self._con.closed:
            try:
                self._con = psycopg.connect(self.url, connect_timeout=5)
            except psycopg.Error as exc:
                from lanecore.gateway.db.pg import redact
                raise LanecoreError(f"cannot reach HQ's database at {redact(self.url)}",
                                    code="DB_UNAVAILABLE") from exc
        return self._con

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def views(self) -> list[tuple[str, str]]:
        return [(name, v.title) for name, v in VIEWS.items()]

    def rows(self, name: str, since: _dt.date | None = None,
             until: _dt.date | None = None) -> list[list]:
        import psycopg
        view = VIEWS.get(name)
        if view is None:
            raise LanecoreError(f"no HQ view {name!r:.60}; one of {', '.join(VIEWS)}",
                                code="UNKNOWN_VIEW", details={"view": str(name)[:60]})
        if since is not None and until is not None and since > until:
            raise LanecoreError(f"since {since} is after until {until}", code="BAD_RANGE")
        with self._lock:
            con = self._connect()
            try:
                with con.transaction():
                    con.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    return view.rows(con, since, until)
            except psycopg.errors.UndefinedTable:
                return []                # HQ has not made its tables yet: nothing to show
            except psycopg.OperationalError as exc:
                con.close()
                raise LanecoreError("HQ's database went away", code="DB_UNAVAILABLE") from exc
            except psycopg.Error as exc:
                raise LanecoreError(f"cannot read HQ view {name}: {type(exc).__name__}",
                                    code="DB_ERROR") from exc

    def view(self, name: str, since: _dt.date | None, until: _dt.date | None) -> dict:
        rows = self.rows(name, since, until)
        v = VIEWS[name]
        return {"title": v.title, "columns": list(v.columns), "rows": rows,
                "svg": _svg(v, name, rows)}

    def csv(self, name: str, since, until) -> str:
        rows = self.rows(name, since, until)
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(VIEWS[name].columns)
        w.writerows(rows)
        return out.getvalue()
