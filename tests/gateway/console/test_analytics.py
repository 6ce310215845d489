"""The console's analytics against the raw tables: every view on a small generated
store equals an independent computation in plain Python over the raw rows (whole
range and date filters); the triggers keep the rollups right as orders are opened,
submitted, paid, exited and cancelled through the real ``BasketStore`` (and charges,
refunds, coupon redemptions, verdicts, alarms and audits land) after the backfill;
the CSV; the errors; charts with nothing fetched from the network."""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import re
import shutil
import sqlite3
from collections import defaultdict

import pytest

from lanecore.core.errors import LanecoreError
from lanecore.core.pay.ledger import Ledger
from lanecore.core.promo.coupons import CouponBook, Definition
from lanecore.core.scan import catalog as catalog_mod
from lanecore.core.store.audit import AuditDecision, Audits
from lanecore.core.store.basket import BasketStore, atomic
from lanecore.core.store.orderqr import Signer
from lanecore.gateway.console.analytics import VIEWS, Analytics, ensure_rollups

import _store_year as Y  # bench/ is on sys.path (pyproject: pythonpath)

pytestmark = pytest.mark.kernel_free

RANGES = [(None, None), (dt.date(2025, 2, 20), dt.date(2025, 4, 9)),
          (dt.date(2025, 3, 15), dt.date(2025, 3, 15)), (dt.date(2025, 4, 1), None),
          (None, dt.date(2025, 2, 28))]


# --------------------------------------------------------------------------------------
# The independent computation: plain Python over the raw rows
# --------------------------------------------------------------------------------------

def _local(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t)


def _inside(t: float, since, until) -> bool:
    d = _local(t).date()
    return (since is None or d >= since) and (until is None or d <= until)


def _bin(n: int, bins) -> str:
    return [label for low, label in bins if n >= low][-1]


def _journey(device: str) -> str:
    d = device.upper()
    if d.startswith("HH"):
        return "handheld"
    if d.startswith("KIOSK"):
        return "kiosk"
    if d.startswith(("TILL", "POS")):
        return "till"
    if d.startswith("VENUE"):
        return "unattended"
    return "other"


def expected(paths: dict, name: str, since, until) -> list[list]:
    con = sqlite3.connect(paths["store"])
    try:
        orders = [o for o in con.execute(
            "SELECT order_no, basket_id, device, created_at, total_minor, n_items, status "
            "FROM orders") if o[6] in ("paid", "exited") and _inside(o[3], since, until)]
        if name.startswith("sales_by_"):
            acc = defaultdict(lambda: [0, 0, 0])
            for _no, _b, _d, t, total, n, _s in orders:
                lt = _local(t)
                key = {"sales_by_hour": f"{lt.hour:02d}:00",
                       "sales_by_day": lt.date().isoformat(),
                       "sales_by_week": (lt.date() - dt.timedelta(days=lt.weekday()))
                       .isoformat()}[name]
                a = acc[key]
                a[0] += 1
                a[1] += n
                a[2] += total
            return [[k, *acc[k]] for k in sorted(acc)]
        if name in ("basket_size", "basket_value"):
            from lanecore.gateway.console.analytics import SIZE_BINS, VALUE_BINS
            bins = SIZE_BINS if name == "basket_size" else VALUE_BINS
            acc = defaultdict(lambda: [0, 0])
            for _no, _b, _d, _t, total, n, _s in orders:
                a = acc[_bin(n if name == "basket_size" else total, bins)]
                a[0] += 1
                a[1] += total
            return [[label, *acc[label]] for _low, label in bins if label in acc]
        if name == "journeys":
            acc = defaultdict(lambda: [0, 0])
            for _no, _b, device, _t, total, _n, _s in orders:
                acc[_journey(device)][0] += 1
                acc[_journey(device)][1] += total
            n_all = sum(a[0] for a in acc.values())
            return [[j, acc[j][0], round(acc[j][0] / n_all, 6), acc[j][1]]
                    for j in ("handheld", "kiosk", "till", "unattended", "other") if j in acc]
        if name == "top_items":
            sold = {o[1] for o in orders}
            acc: dict[str, list] = {}
            for b, g, nm, q, v in con.execute(
                    "SELECT basket_id, gtin, name, qty, line_price_minor FROM basket_lines"):
                if b in sold:
                    a = acc.setdefault(g, [nm, 0, 0])
                    a[0] = max(a[0], nm)
                    a[1] += q
                    a[2] += v
            top = sorted(acc.items(), key=lambda kv: (-kv[1][1], kv[0]))[:20]
            return [[g, *a] for g, a in top]
        if name in ("alarms", "alarm_rate"):
            acc = defaultdict(int)
            for lane, verdict, t in con.execute("SELECT gate, verdict, at FROM verdicts"):
                if _inside(t, since, until):
                    acc[(lane, "weight_" + verdict)] += 1
            for lane, device, kind, t in con.execute(
                    "SELECT lane, device, kind, at FROM device_events"):
                if kind == "alarm" and _inside(t, since, until):
                    acc[(lane, "alarm_" + device)] += 1
            if name == "alarms":
                return [[lane, c, n] for (lane, c), n in sorted(acc.items())
                        if c != "weight_ok"]
            p_fa = math.erfc(3.29 / math.sqrt(2))
            lanes = sorted({lane for lane, c in acc if c.startswith("weight_")})
            out = []
            for lane in lanes + ["all lanes"]:
                pick = [(k, n) for k, n in acc.items() if k[1].startswith("weight_")
                        and (lane == "all lanes" or k[0] == lane)]
                weighed = sum(n for _k, n in pick)
                alarms = sum(n for k, n in pick if k[1] != "weight_ok")
                if weighed:
                    out.append([lane, weighed, alarms, round(alarms / weighed, 6),
                                round(p_fa, 6), round(weighed * p_fa, 2),
                                round(alarms - weighed * p_fa, 2)])
            return out
        if name == "audits":
            acc = defaultdict(lambda: [0, 0])
            for kind, outcome, t in con.execute(
                    "SELECT kind, outcome, recorded_at FROM audits"):
                if _inside(t, since, until):
                    acc[kind][0] += 1
                    acc[kind][1] += outcome == "discrepancy"
            return [[k, n, hit, round(hit / n, 6)] for k, (n, hit) in sorted(acc.items())]
        if name == "caught":
            acc = defaultdict(int)
            for outcome, finding, t in con.execute(
                    "SELECT outcome, finding, recorded_at FROM audits"):
                if outcome == "discrepancy" and finding and _inside(t, since, until):
                    acc[("audit", finding)] += 1
            for finding, t in con.execute("SELECT finding, at FROM alarm_actions"):
                if finding and _inside(t, since, until):
                    acc[("exit", finding)] += 1
            order = ["audit", "exit", "theft", "mistake", "false_alarm"]
            return [[s, f, n] for (s, f), n in sorted(
                acc.items(), key=lambda kv: (order.index(kv[0][0]), order.index(kv[0][1])))]
    finally:
        con.close()
    if name in ("payments_by_channel", "refunds"):
        if paths.get("ledger") is None:
            return []
        con = sqlite3.connect(paths["ledger"])
        acc = defaultdict(lambda: [0, 0, 0, 0])
        table = "charges" if name == "payments_by_channel" else "refunds"
        for ch, state, amount, t in con.execute(
                f"SELECT channel, state, amount_minor, created_at FROM {table}"):
            if not _inside(t, since, until):
                continue
            a = acc[ch]
            if state == "paid":
                a[0] += 1
                a[1] += amount
            if name == "payments_by_channel":
                a[2] += state == "failed"
                a[3] += state == "reversed"
            else:
                a[2] += state in ("created", "sent", "unknown")
                a[3] += state == "failed"
        con.close()
        return [[ch, *acc[ch]] for ch in sorted(acc)]
    if name == "coupons_by_manufacturer":
        if paths.get("coupons") is None:
            return []
        con = sqlite3.connect(paths["coupons"])
        names = dict(con.execute("SELECT issuer_id, name FROM coupon_issuers"))
        acc = defaultdict(lambda: [0, 0, 0])
        for iss, cur, amount, t, rev in con.execute(
                "SELECT issuer_id, currency, amount_minor, redeemed_at, reversed "
                "FROM coupon_clearing"):
            if _inside(t, since, until):
                a = acc[(iss, cur)]
                if rev:
                    a[2] += 1
                else:
                    a[0] += 1
                    a[1] += amount
        con.close()
        return [[i, names.get(i, ""), c, *acc[(i, c)]] for i, c in sorted(acc)]
    raise AssertionError(f"no independent computation for {name}")


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def year_template(tmp_path_factory):
    d = tmp_path_factory.mktemp("year") / "store"
    info = Y.make_store_year(d, lines=12_000)
    return d, info


@pytest.fixture
def year(year_template, tmp_path):
    """A fresh copy of the small generated store for each test that writes to it."""
    src, info = year_template
    d = tmp_path / "store"
    shutil.copytree(src, d)
    paths = {"store": d / "store.db", "ledger": d / "payments.db",
             "coupons": d / "coupons.db", "dir": d, "next_id": info["next_id"]}
    an = Analytics(paths["store"], paths["ledger"], paths["coupons"])
    yield paths, an
    an.close()


def _all_equal(paths, an, ranges=((None, None),)):
    for since, until in ranges:
        for name in VIEWS:
            assert an.rows(name, since, until) == expected(paths, name, since, until), \
                (name, since, until)


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------

def test_views_list_names_and_titles(year):
    _paths, an = year
    views = an.views()
    names = [n for n, _t in views]
    assert names == list(VIEWS) and len(set(names)) == len(names) == 14
    assert {"sales_by_hour", "sales_by_day", "sales_by_week", "basket_size", "basket_value",
            "payments_by_channel", "refunds", "top_items", "alarms", "alarm_rate", "audits",
            "caught", "coupons_by_manufacturer", "journeys"} == set(names)
    assert all(isinstance(t, str) and t for _n, t in views)


def test_every_view_equals_the_raw_rows_over_every_range(year):
    paths, an = year
    for since, until in RANGES:
        for name in VIEWS:
            got = an.rows(name, since, until)
            want = expected(paths, name, since, until)
            assert got == want, (name, since, until)
            if since is until is None:   # the generated store fills every view
                assert got, name


def test_view_shape_and_filters_narrow(year):
    _paths, an = year
    whole = an.view("sales_by_day", None, None)
    assert whole["title"] == "Sales by day"
    assert whole["columns"] == ["day", "orders", "items", "value_minor"]
    days = [r[0] for r in whole["rows"]]
    assert days == sorted(days) and days[0] >= "2025-01-01" and days[-1] <= "2025-12-31"
    one = an.view("sales_by_day", dt.date(2025, 3, 15), dt.date(2025, 3, 15))
    assert [r[0] for r in one["rows"]] == ["2025-03-15"]
    assert one["rows"][0] == next(r for r in whole["rows"] if r[0] == "2025-03-15")
    none = an.view("sales_by_day", dt.date(2030, 1, 1), dt.date(2030, 1, 2))
    assert none["rows"] == [] and none["svg"] is None
    week = an.rows("sales_by_week", None, None)
    assert all(dt.date.fromisoformat(r[0]).weekday() == 0 for r in week)
    assert sum(r[1] for r in week) == sum(r[1] for r in whole["rows"])


def test_triggers_follow_orders_payments_and_floor_events(year):
    paths, an = year
    at = dt.datetime(2025, 3, 15, 10, 30).timestamp()
    day = dt.date(2025, 3, 15)
    before = {n: an.rows(n, day, day) for n in VIEWS}
    con = catalog_mod.connect(paths["store"])
    items = [g for (g,) in con.execute(
        "SELECT gtin FROM items WHERE flags & 2 = 0 AND price_minor > 0 ORDER BY gtin "
        "LIMIT 5")]
    store = BasketStore(con, clock=lambda: at)
    signer = Signer.generate()

    def order(device, codes):
        with atomic(con):
            bid = store.open(device)["basket_id"]
        with atomic(con):
            store.add(bid, [{"code": c[1:], "qty": q} for c, q in codes])
        with atomic(con):
            return store.submit(bid, signer)

    def status(order_no, st):
        with atomic(con):
            store.set_order_status(order_no, st)

    a = order("HH-05", [(items[0], 2), (items[1], 1)])
    _all_equal(paths, an)                             # submitted: not a sale yet
    assert an.rows("sales_by_day", day, day) == before["sales_by_day"]
    status(a["order_no"], "paid")
    _all_equal(paths, an)
    after = an.rows("sales_by_day", day, day)
    assert after[0][1:] == [before["sales_by_day"][0][1] + 1,
                            before["sales_by_day"][0][2] + 3,
                            before["sales_by_day"][0][3] + a["total_minor"]]
    status(a["order_no"], "exited")
    b = order("KIOSK-B1", [(items[2], 4), (items[0], 1)])
    status(b["order_no"], "paid")
    c = order("VENUE-1", [(items[3], 1)])
    status(c["order_no"], "paid")
    _all_equal(paths, an, RANGES[:3])
    status(b["order_no"], "cancelled")                # paid, then cancelled
    status(c["order_no"], "exited")
    with atomic(con):                                 # an abandoned basket: no sale
        bid = store.open("HH-06")["basket_id"]
        store.add(bid, [{"code": items[4][1:], "qty": 3}])
        store.cancel(bid)
    # the lane, the EAS gate and the audit desk, as their modules write them
    con.execute("INSERT INTO verdicts (at, gate, order_no, measured_g, verdict, z, "
                "expected_g, band_g, explanations) VALUES (?, 'EXIT-Z9', ?, 900, 'short', "
                "-5, 1000, 20, '[]')", (at + 60, a["order_no"]))
    con.execute("INSERT INTO verdicts (at, gate, order_no, measured_g, verdict, z, "
                "expected_g, band_g, explanations) VALUES (?, 'EXIT-Z9', ?, 1000, 'ok', "
                "0, 1000, 20, '[]')", (at + 70, c["order_no"]))
    con.execute("INSERT INTO device_events (at, lane, device, kind, code, message) "
                "VALUES (?, 'EXIT-Z9', 'eas_gate', 'alarm', 'EAS', 'tag')", (at + 61,))
    Audits(con, clock=lambda: at + 80).record(
        a["order_no"], AuditDecision(True, "visual", [], "spot_check", 0.05),
        "discrepancy", ["one unscanned"], finding="theft", staff="ann")
    # an attendant resolves the exit alarm and says what it was
    con.execute("INSERT INTO alarm_actions (at, lane, order_no, action, reason, staff, "
                "principal, finding) VALUES (?, 'EXIT-Z9', ?, 'override', 'bag', 'ann', "
                "'key:console', 'mistake')", (at + 90, a["order_no"]))
    ledger = Ledger.open(paths["ledger"], clock=lambda: at)
    charge, _ = ledger.create(a["order_no"], 1, a["total_minor"], "GBP", "auth_code",
                              "wechat", "HANDHELDS")
    ledger.move(charge.merchant_ref, "sent")
    ledger.move(charge.merchant_ref, "paid")
    ledger.create_refund(charge.merchant_ref, "RF-TEST-1", 100)
    ledger.move_refund("RF-TEST-1", "sent")
    ledger.move_refund("RF-TEST-1", "paid")
    bad, _ = ledger.create(b["order_no"], 1, b["total_minor"], "GBP", "card", "card",
                           "KIOSK-B1")
    ledger.move(bad.merchant_ref, "failed")
    ledger.close()
    ccon = sqlite3.connect(paths["coupons"], isolation_level=None)
    book = CouponBook(ccon)
    book.add_issuer("MFR-TEST", "Test Foods")
    now = int(at)
    book.define(Definition(coupon_def_id="D-TEST", issuer_id="MFR-TEST",
                           target_gtin=items[0], amount_off_minor=40, currency="GBP",
                           valid_from=now - 86400, valid_until=now + 86400))
    for cid, o in (("CT1", "CPN-O1"), ("CT2", "CPN-O2")):
        book.issue("D-TEST", "alice", coupon_id=cid, now=now)
        book.reserve([cid], order_no=o, customer_id="alice", now=now)
        book.commit(o, {cid: 40}, store_id="STORE", now=now)
    book.reverse("CPN-O2", now=now + 60)
    ccon.close()
    con.close()
    _all_equal(paths, an, RANGES)
    got = {n: an.rows(n, day, day) for n in VIEWS}
    assert ["EXIT-Z9", "weight_short", 1] in got["alarms"]
    assert ["EXIT-Z9", "alarm_eas_gate", 1] in got["alarms"]
    assert ["MFR-TEST", "Test Foods", "GBP", 1, 40, 1] in got["coupons_by_manufacturer"]
    caught = {(r[0], r[1]): r[2] for r in got["caught"]}
    was = {(r[0], r[1]): r[2] for r in before["caught"]}
    assert caught[("audit", "theft")] == was.get(("audit", "theft"), 0) + 1
    assert caught[("exit", "mistake")] == was.get(("exit", "mistake"), 0) + 1
    wechat = {r[0]: r for r in got["refunds"]}["wechat"]
    assert wechat[1:3] == [1, 100]
    journeys = {r[0]: r[1] for r in got["journeys"]}
    old = {r[0]: r[1] for r in before["journeys"]}
    assert journeys.get("handheld", 0) == old.get("handheld", 0) + 1
    assert journeys.get("unattended", 0) == old.get("unattended", 0) + 1
    assert journeys.get("kiosk", 0) == old.get("kiosk", 0)       # b was cancelled


def test_backfill_runs_once_and_a_new_analytics_reads_the_same(year):
    paths, an = year
    rows = {n: an.rows(n, None, None) for n in VIEWS}
    con = sqlite3.connect(paths["store"], isolation_level=None)
    ensure_rollups(con)                               # already built: nothing doubles
    ensure_rollups(con)
    families = dict(con.execute("SELECT family, version FROM rollup_meta"))
    assert {"orders", "verdicts", "device_alarms", "audits"} <= set(families)
    con.close()
    again = Analytics(paths["store"], paths["ledger"], paths["coupons"])
    try:
        assert {n: again.rows(n, None, None) for n in VIEWS} == rows
    finally:
        again.close()


def test_a_new_rollup_version_rebuilds_from_the_raw_rows(year):
    paths, an = year
    con = sqlite3.connect(paths["store"], isolation_level=None)
    con.execute("UPDATE ru_sales_hour SET orders = orders + 1000")   # a damaged rollup
    con.execute("UPDATE rollup_meta SET version = 0 WHERE family = 'orders'")
    ensure_rollups(con)
    con.close()
    _all_equal(paths, an)


def test_a_new_store_is_empty_then_counts_its_first_sale(tmp_path):
    """A store whose owner (the service) built its rollups at start and has sold
    nothing: every view empty; its first sale counted by the triggers, read by the
    console over its read-only connection."""
    path = tmp_path / "store.db"
    con = catalog_mod.connect(path)                   # a catalogue, no sale yet
    at = dt.datetime(2025, 6, 1, 9, 5).timestamp()
    store = BasketStore(con, clock=lambda: at)        # the order tables, as the service
    ensure_rollups(con)                               # ... and its rollups at start
    an = Analytics(path)
    try:
        for name in VIEWS:
            v = an.view(name, None, None)
            assert v["rows"] == [] and v["svg"] is None, name
        con.execute("INSERT INTO items (gtin, name, price_minor, flags) "
                    "VALUES ('05000000000012', 'Tea', 250, 0)")
        with atomic(con):
            bid = store.open("TILL-1")["basket_id"]
            store.add(bid, [{"code": "5000000000012", "qty": 2}])
            no = store.submit(bid, Signer.generate())["order_no"]
            store.set_order_status(no, "paid")
        con.close()
        assert an.rows("sales_by_hour", None, None) == [["09:00", 1, 2, 500]]
        assert an.rows("journeys", None, None) == [["till", 1, 1.0, 500]]
        assert an.rows("top_items", None, None) == [["05000000000012", "Tea", 2, 500]]
        assert an.rows("alarms", None, None) == []
    finally:
        an.close()


def test_a_database_without_its_rollups_is_refused_and_left_as_it_was(tmp_path):
    """The console never changes another process's database: one whose owner has not
    built the rollups (an older lanecore) is refused ROLLUPS_MISSING, untouched."""
    path = tmp_path / "store.db"
    con = catalog_mod.connect(path)
    BasketStore(con)
    tables = sorted(r[0] for r in con.execute("SELECT name FROM sqlite_master"))
    con.close()
    with pytest.raises(LanecoreError) as err:
        Analytics(path)
    assert err.value.code == "ROLLUPS_MISSING" and "orders" in err.value.message
    con = catalog_mod.connect(path)
    try:
        assert sorted(r[0] for r in con.execute("SELECT name FROM sqlite_master")) == tables
    finally:
        con.close()


def test_ledger_and_coupon_views_are_empty_without_their_databases(year):
    paths, _an = year
    only = Analytics(paths["store"])
    try:
        for name in ("payments_by_channel", "refunds", "coupons_by_manufacturer"):
            v = only.view(name, None, None)
            assert v["rows"] == [] and v["svg"] is None, name
        assert only.rows("sales_by_day", None, None)
    finally:
        only.close()


def test_csv_has_the_header_and_the_rows(year):
    _paths, an = year
    for name in VIEWS:
        text = an.csv(name, dt.date(2025, 2, 1), dt.date(2025, 5, 31))
        got = list(csv.reader(io.StringIO(text)))
        assert got[0] == list(VIEWS[name].columns)
        rows = an.rows(name, dt.date(2025, 2, 1), dt.date(2025, 5, 31))
        assert got[1:] == [[str(x) for x in r] for r in rows]
    assert "Manufacturer 1" in an.csv("coupons_by_manufacturer", None, None)


def test_unknown_view_and_bad_range(year):
    _paths, an = year
    for call in (lambda: an.view("sales_by_month", None, None),
                 lambda: an.csv("nope", None, None), lambda: an.rows("", None, None)):
        with pytest.raises(LanecoreError) as e:
            call()
        assert e.value.code == "UNKNOWN_VIEW"
    for since, until in ((dt.date(2025, 3, 2), dt.date(2025, 3, 1)),
                         ("2025-03-01", None), (None, 20250301)):
        with pytest.raises(LanecoreError) as e:
            an.view("sales_by_day", since, until)
        assert e.value.code == "BAD_RANGE"
    with pytest.raises(LanecoreError) as e:
        an.csv("top_items", dt.date(2025, 3, 2), dt.date(2025, 3, 1))
    assert e.value.code == "BAD_RANGE"


def test_charts_are_static_svg_with_no_network_reference(year):
    _paths, an = year
    namespaces = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    for name in VIEWS:
        svg = an.view(name, None, None)["svg"]
        assert svg is not None and svg.startswith("<svg"), name
        assert f'data-testid="chart-{name}"' in svg
        refs = set(re.findall(r"https?://[^\s\"'<>)]+", svg))
        assert refs <= namespaces, (name, refs - namespaces)
        assert "<script" not in svg and "<?xml" not in svg
        assert "//" not in re.sub("|".join(map(re.escape, namespaces)), "", svg), name


def test_caught_counts_findings_of_audits_and_exit_alarms_by_hand(tmp_path):
    """"Thefts and mistakes caught": a hand-made store whose owner built its rollups;
    discrepant audits with a finding count on their day (a clean audit and one with
    no finding do not), exit alarms resolved with a finding on the action's day; the
    range filters; the chart and the CSV; ROLLUPS_MISSING for a store without the
    family."""
    from lanecore.gateway.service import _SCHEMA_SQL as SERVICE_SCHEMA
    path = tmp_path / "store.db"
    con = catalog_mod.connect(path)
    BasketStore(con)
    for stmt in SERVICE_SCHEMA:
        con.execute(stmt)
    if "finding" not in {r[1] for r in con.execute("PRAGMA table_info(alarm_actions)")}:
        con.execute("ALTER TABLE alarm_actions ADD COLUMN finding TEXT")  # older schema
    audits = Audits(con)
    ensure_rollups(con)
    d1 = dt.datetime(2025, 5, 3, 10, 0).timestamp()
    d2 = dt.datetime(2025, 5, 4, 15, 0).timestamp()
    look = AuditDecision(True, "visual", [], "random", 0.05)
    for no, outcome, found, finding, t in (
            ("HH1-1", "discrepancy", [{"gtin": "05000000000012", "qty": 1}], "theft", d1),
            ("HH1-2", "discrepancy", [{"gtin": "05000000000012", "qty": 2}], "theft", d2),
            ("HH1-3", "discrepancy", [{"gtin": "05000000000029", "qty": 1}], "mistake", d2),
            ("HH1-4", "discrepancy", [{"gtin": "05000000000029", "qty": 1}], None, d2),
            ("HH1-5", "clean", [], None, d1)):
        audits.record(no, look, outcome, found, finding=finding, staff="ann", now=t)
    for at, finding in ((d1, "false_alarm"), (d1 + 60, "theft"), (d2, "false_alarm"),
                        (d2 + 5, None)):
        con.execute("INSERT INTO alarm_actions (at, lane, order_no, action, reason, "
                    "staff, principal, finding) VALUES (?, 'EXIT-1', 'K-1', 'ack', '', "
                    "'ann', 'key:console', ?)", (at, finding))
    con.close()
    an = Analytics(path)
    try:
        assert an.rows("caught") == [["audit", "theft", 2], ["audit", "mistake", 1],
                                     ["exit", "theft", 1], ["exit", "false_alarm", 2]]
        may4 = dt.date(2025, 5, 4)
        assert an.rows("caught", may4, may4) == [
            ["audit", "theft", 1], ["audit", "mistake", 1], ["exit", "false_alarm", 1]]
        assert an.rows("caught", dt.date(2025, 6, 1), None) == []
        v = an.view("caught", None, None)
        assert 'data-testid="chart-caught"' in v["svg"] and "http" not in re.sub(
            r'xmlns(:\w+)?="[^"]*"', "", v["svg"])
        rows = list(csv.reader(io.StringIO(an.csv("caught", None, None))))
        assert rows[0] == ["source", "finding", "n"] and rows[1] == ["audit", "theft", "2"]
    finally:
        an.close()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("UPDATE rollup_meta SET version = 0 WHERE family = 'exit_findings'")
    con.close()
    with pytest.raises(LanecoreError) as err:
        Analytics(path)
    assert err.value.code == "ROLLUPS_MISSING" and "exit_findings" in err.value.message
