"""A synthetic store-year for the analytics benchmark and tests: ``store.db`` (the
catalogue, baskets, lines, orders, verdicts, device events, audits and alarm actions,
with findings), ``payments.db`` (charges, refunds) and ``coupons.db`` (issuers,
redemptions), every table created by the module that owns it (``Catalog``,
``BasketStore``, the service's schema, ``Audits``, ``Ledger``, ``CouponBook``) and
filled in bulk (``executemany`` in one transaction per table chunk, no triggers: the
rollups are built once afterwards by ``ensure_rollups``' backfill).

Also the raw-table baselines of the benchmark: for each analytics view, the same
aggregate as a plain ``GROUP BY`` over the raw tables (``RAW``), giving the very rows
the view gives.
"""

from __future__ import annotations

import datetime as _dt
import sqlite3
from pathlib import Path

import numpy as np

from lanecore.core.pay.ledger import Ledger
from lanecore.core.promo.coupons import CouponBook
from lanecore.core.scan import catalog as catalog_mod
from lanecore.core.scan.synth import write_catalog_csv
from lanecore.core.store.audit import Audits
from lanecore.core.store.basket import BasketStore
from lanecore.gateway.console import analytics as A
from lanecore.gateway.service import _SCHEMA_SQL as SERVICE_SCHEMA

# In ASCII order, so ids made of these digits sort as their numbers do (and they are
# all in the basket ids' base32 alphabet).
_ID_DIGITS = "234567ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DEVICES = [f"HH-{n:02d}" for n in range(1, 41)] + ["KIOSK-B1", "KIOSK-B2", "TILL-1",
                                                   "POS-1", "VENUE-1", "MANUAL"]
_DEVICE_P = np.array([0.6 / 40] * 40 + [0.1, 0.1, 0.08, 0.06, 0.05, 0.01])
LANES = ("EXIT-A1", "EXIT-A2", "EXIT-A3", "EXIT-A4")
CHANNELS = (("wechat", "auth_code"), ("alipay", "auth_code"), ("card", "card"),
            ("cash", "cash"))
ISSUERS = [(f"MFR-{i:02d}", f"Manufacturer {i}") for i in range(1, 13)]
START = _dt.date(2025, 1, 1)


def basket_id(i: int) -> str:
    out = []
    for _ in range(12):
        i, r = divmod(i, 32)
        out.append(_ID_DIGITS[r])
    return "".join(reversed(out))


def _catalogue(data_dir: Path, n_items: int, seed: int) -> list[tuple]:
    csv = data_dir / "items.csv"
    write_catalog_csv(csv, n_items, seed=seed)
    with catalog_mod.Catalog.open(data_dir) as cat:
        cat.import_csv(csv)
    csv.unlink()
    con = sqlite3.connect(catalog_mod.database_path(data_dir))
    items = con.execute("SELECT gtin, name, price_minor FROM items "
                        "WHERE flags & 2 = 0 AND price_minor > 0 ORDER BY gtin").fetchall()
    con.close()
    return items


def make_store_year(data_dir: Path, *, lines: int, days: int = 365, seed: int = 1,
                    n_items: int = 5_000, progress=None) -> dict:
    """Write a store-year into the empty directory ``data_dir``: about ``lines``
    order lines over ``days`` days. Returns ``{"store", "ledger", "coupons"}``
    (paths) and counts."""
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = _catalogue(data_dir, n_items, seed)
    n_cat = len(items)
    pop = 1.0 / (np.arange(n_cat) + 20.0)          # a long tail of slow sellers
    pop /= pop.sum()
    store_path = catalog_mod.database_path(data_dir)
    con = catalog_mod.connect(store_path)
    BasketStore(con)
    for stmt in SERVICE_SCHEMA:
        con.execute(stmt)
    # what staff found behind an alarm (alarm.resolve's finding): a column the
    # service adds to an older alarm_actions table when it opens it
    if "finding" not in {r[1] for r in con.execute("PRAGMA table_info(alarm_actions)")}:
        con.execute("ALTER TABLE alarm_actions ADD COLUMN finding TEXT")
    Audits(con)
    ledger_path = data_dir / "payments.db"
    ledger = Ledger.open(ledger_path)
    lcon = ledger.con
    coupons_path = data_dir / "coupons.db"
    ccon = sqlite3.connect(coupons_path, isolation_level=None)
    CouponBook(ccon)
    for c in (con, lcon, ccon):
        c.execute("PRAGMA synchronous = OFF")

    mean_lines = 10.0
    t0 = _dt.datetime(START.year, START.month, START.day).timestamp()
    counts = dict(orders=0, lines=0, verdicts=0, charges=0)
    chunk = 20_000
    oid = 0
    ccon.executemany("INSERT INTO coupon_issuers (issuer_id, name) VALUES (?, ?)", ISSUERS)
    while counts["lines"] < lines:
        n = min(chunk, int((lines - counts["lines"]) / mean_lines) + 1)
        day = rng.integers(0, days, n)
        # open 08:00-22:00, busier at noon and in the evening
        hour = np.clip(rng.normal(rng.choice([12.0, 18.0], n), 2.5), 8, 21.999)
        # local days: step by calendar day so a DST change keeps hours in place
        created = np.array([_dt.datetime.combine(START + _dt.timedelta(days=int(d)),
                                                 _dt.time()).timestamp() + h * 3600.0
                            for d, h in zip(day.tolist(), hour.tolist())])
        k = np.maximum(1, rng.poisson(mean_lines - 1, n) + 1)
        dev = rng.choice(len(DEVICES), n, p=_DEVICE_P / _DEVICE_P.sum())
        status = rng.choice(4, n, p=[0.02, 0.08, 0.85, 0.05])   # sub, paid, exit, canc
        which = rng.choice(n_cat, int(k.sum()), p=pop)
        qty = np.where(rng.random(len(which)) < 0.85, 1, rng.integers(2, 5, len(which)))
        baskets, blines, orders, verdicts, events, audits = [], [], [], [], [], []
        actions = []
        charges, refunds, clearing = [], [], []
        pos = 0
        for j in range(n):
            oid += 1
            bid = basket_id(oid)
            at = float(created[j])
            device = DEVICES[dev[j]]
            kj = int(k[j])
            total = units = 0
            for no in range(kj):
                g, name, price = items[which[pos + no]]
                q = int(qty[pos + no])
                blines.append((bid, no + 1, g[1:], g, g, name, q, price, q * price, None,
                               None, 0, 0, at - 60.0 * (kj - no)))
                total += q * price
                units += q
            pos += kj
            st = ("submitted", "paid", "exited", "cancelled")[status[j]]
            order_no = f"{device.replace('-', '')[:16]}-{oid:08d}"
            baskets.append((bid, device, None, "submitted", kj + 1, at - 60.0 * kj, at))
            orders.append((order_no, bid, device, None, at, at, total, "GBP", units,
                           "0" * 64, st, "-"))
            u = (oid * 2654435761 % 1000) / 1000.0          # a cheap per-order draw
            if st == "exited":
                lane = LANES[oid % len(LANES)]
                v = "ok" if u < 0.994 else ("short" if u < 0.997 else "over")
                verdicts.append((at + 120, lane, order_no, 1000.0, v, 0.0, 1000.0, 20.0,
                                 "[]"))
                if v != "ok":
                    # staff resolve the alarm; most say what it was, some do not
                    act = ("ack", "override", "rescan")[oid % 3]
                    actions.append((at + 180, lane, order_no, act,
                                    "checked" if act == "override" else "", None,
                                    f"staff{oid % 4}", "key:console", None,
                                    (None, "theft", "mistake", "false_alarm",
                                     "false_alarm")[oid % 5]))
                if oid % 331 == 0:
                    events.append((at + 121, lane, "eas_gate", "alarm", "EAS", "tag"))
                if oid % 97 == 0:
                    events.append((at + 122, lane, "scale", "fault", "E1", "drift"))
            if oid % 29 == 0:
                out = "discrepancy" if oid % 7 == 0 else "clean"
                # a discrepancy's finding; an older record (before findings) has none
                finding = None if out == "clean" else (
                    None, "theft", "mistake", "mistake")[oid % 4]
                audits.append((order_no, None, "visual" if oid % 2 else "rescan", "[]",
                               "random", 0.03, out, "[1]" if out == "discrepancy" else "[]",
                               None, None, at + 90, finding))
            if st in ("paid", "exited") or (st == "cancelled" and oid % 2):
                ch, method = CHANNELS[oid % len(CHANNELS)]
                cstate = "paid" if st != "cancelled" else "reversed"
                charges.append((f"{order_no}-1", order_no, 1, total, "GBP", method, ch,
                                "T1", None, cstate, None, None, at + 30, at + 31, at + 33,
                                at + 33, 0, 0))
                if oid % 53 == 0:
                    charges.append((f"{order_no}-2", order_no, 2, total, "GBP", method, ch,
                                    "T1", None, "failed", None, "DECLINED", at + 20, at + 21,
                                    None, at + 22, 0, 0))
                if st != "cancelled" and oid % 211 == 0:
                    rstate = "paid" if oid % 5 else ("failed" if oid % 2 else "sent")
                    refunds.append((f"R{oid}", f"{order_no}-1", max(1, total // 3), "GBP",
                                    ch, rstate, None, None, at + 86400, None, at + 86400))
            if oid % 19 == 0:
                iss = ISSUERS[oid % len(ISSUERS)][0]
                clearing.append((iss, f"C{oid}", f"D{oid % 40}", "STORE", order_no,
                                 50 + oid % 150, "GBP", int(at), int(oid % 31 == 0),
                                 int(at) + 600 if oid % 31 == 0 else None))
        con.execute("BEGIN")
        con.executemany("INSERT INTO baskets (basket_id, device, member, status, "
                        "next_line_no, opened_at, updated_at) VALUES (?,?,?,?,?,?,?)",
                        baskets)
        con.executemany("INSERT INTO basket_lines (basket_id, line_no, code, gtin, "
                        "scan_gtin, name, qty, unit_price_minor, line_price_minor, "
                        "weight_g, count, label, flags, added_at) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", blines)
        con.executemany("INSERT INTO orders (order_no, basket_id, device, member, "
                        "created_at, updated_at, total_minor, currency, n_items, "
                        "lines_digest, status, qr) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                        orders)
        con.executemany("INSERT INTO verdicts (at, gate, order_no, measured_g, verdict, z, "
                        "expected_g, band_g, explanations) VALUES (?,?,?,?,?,?,?,?,?)",
                        verdicts)
        con.executemany("INSERT INTO device_events (at, lane, device, kind, code, message) "
                        "VALUES (?,?,?,?,?,?)", events)
        con.executemany("INSERT INTO audits (order_no, shopper, kind, items, reason, "
                        "probability, outcome, found, trust_before, trust_after, "
                        "recorded_at, finding) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", audits)
        con.executemany("INSERT INTO alarm_actions (at, lane, order_no, action, reason, "
                        "weight_g, staff, principal, learning, finding) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?)", actions)
        con.execute("COMMIT")
        lcon.execute("BEGIN")
        lcon.executemany("INSERT INTO charges (merchant_ref, order_no, attempt, "
                         "amount_minor, currency, method, channel, terminal, payer, state, "
                         "provider_ref, reason, created_at, sent_at, paid_at, updated_at, "
                         "queries, reversals) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                         charges)
        lcon.executemany("INSERT INTO refunds (refund_ref, merchant_ref, amount_minor, "
                         "currency, channel, state, provider_ref, reason, created_at, "
                         "done_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)", refunds)
        lcon.execute("COMMIT")
        ccon.execute("BEGIN")
        ccon.executemany("INSERT INTO coupon_clearing (issuer_id, coupon_id, coupon_def_id, "
                         "store_id, order_no, amount_minor, currency, redeemed_at, reversed, "
                         "reversed_at) VALUES (?,?,?,?,?,?,?,?,?,?)", clearing)
        ccon.execute("COMMIT")
        counts["orders"] += n
        counts["lines"] += len(blines)
        counts["verdicts"] += len(verdicts)
        counts["charges"] += len(charges)
        if progress is not None:
            progress(counts["lines"], lines)
    # a few abandoned baskets with lines and no order: never in any sales figure
    con.execute("BEGIN")
    for i in range(20):
        oid += 1
        bid = basket_id(oid)
        g, name, price = items[i]
        con.execute("INSERT INTO baskets VALUES (?, 'HH-01', NULL, 'cancelled', 2, ?, ?)",
                    (bid, t0, t0))
        con.execute("INSERT INTO basket_lines (basket_id, line_no, code, gtin, scan_gtin, "
                    "name, qty, unit_price_minor, line_price_minor, weight_g, count, label, "
                    "flags, added_at) VALUES (?, 1, ?, ?, ?, ?, 1, ?, ?, NULL, NULL, 0, 0, ?)",
                    (bid, g[1:], g, g, name, price, price, t0))
    con.execute("COMMIT")
    for c in (con, lcon, ccon):
        c.execute("PRAGMA synchronous = FULL")
        A.ensure_rollups(c)
        c.execute("ANALYZE")
    con.close()
    ledger.close()
    ccon.close()
    return {"store": store_path, "ledger": ledger_path, "coupons": coupons_path,
            "next_id": oid + 1, **counts}


# --------------------------------------------------------------------------------------
# The raw-table baselines: each view's rows by a plain GROUP BY over the raw tables
# --------------------------------------------------------------------------------------

_SALES = "status IN ('paid', 'exited')"


def _epoch_where(rng, col: str) -> tuple[str, list]:
    start, end = A._Range(*rng).epoch()
    where, args = [], []
    if start is not None:
        where.append(f"{col} >= ?")
        args.append(start)
    if end is not None:
        where.append(f"{col} < ?")
        args.append(end)
    return " AND ".join(where) or "1", args


def _day_where(rng, expr: str) -> tuple[str, list]:
    where, args = A._Range(*rng).days(expr)
    return where, args


def _raw_sales(db, rng, key):
    where, args = _epoch_where(rng, "created_at")
    return [list(r) for r in db["store"].execute(
        f"SELECT {key} AS k, count(*), sum(n_items), sum(total_minor) FROM orders "
        f"WHERE {_SALES} AND {where} GROUP BY k ORDER BY k", args)]


def raw_sales_by_hour(db, rng):
    rows = _raw_sales(db, rng, "CAST(strftime('%H', created_at, 'unixepoch', 'localtime') "
                               "AS INTEGER)")
    return [[f"{h:02d}:00", *rest] for h, *rest in rows]


def raw_sales_by_day(db, rng):
    return _raw_sales(db, rng, A.day_sql("created_at"))


def raw_sales_by_week(db, rng):
    return _raw_sales(db, rng, "date(created_at, 'unixepoch', 'localtime', '-6 days', "
                               "'weekday 1')")


def _raw_binned(db, rng, bin_sql, bins):
    where, args = _day_where(rng, A.day_sql("created_at"))
    got = {b: (n, v) for b, n, v in db["store"].execute(
        f"SELECT {bin_sql} AS b, count(*), sum(total_minor) FROM orders "
        f"WHERE {_SALES} AND {where} GROUP BY b", args)}
    return [[label, *got[i]] for i, (_low, label) in enumerate(bins) if i in got]


def raw_basket_size(db, rng):
    return _raw_binned(db, rng, A.size_bin_sql("n_items"), A.SIZE_BINS)


def raw_basket_value(db, rng):
    return _raw_binned(db, rng, A.value_bin_sql("total_minor"), A.VALUE_BINS)


def raw_payments_by_channel(db, rng):
    where, args = _day_where(rng, A.day_sql("created_at"))
    return [list(r) for r in db["ledger"].execute(
        "SELECT channel, sum(state = 'paid'), sum(CASE WHEN state = 'paid' THEN "
        "amount_minor ELSE 0 END), sum(state = 'failed'), sum(state = 'reversed') "
        f"FROM charges WHERE {where} GROUP BY channel ORDER BY channel", args)]


def raw_refunds(db, rng):
    where, args = _day_where(rng, A.day_sql("created_at"))
    return [list(r) for r in db["ledger"].execute(
        "SELECT channel, sum(state = 'paid'), sum(CASE WHEN state = 'paid' THEN "
        "amount_minor ELSE 0 END), sum(state IN ('created', 'sent', 'unknown')), "
        f"sum(state = 'failed') FROM refunds WHERE {where} GROUP BY channel "
        "ORDER BY channel", args)]


def raw_top_items(db, rng):
    where, args = _day_where(rng, A.day_sql("o.created_at"))
    return [list(r) for r in db["store"].execute(
        "SELECT l.gtin, max(l.name), sum(l.qty) AS u, sum(l.line_price_minor) "
        "FROM orders o JOIN basket_lines l ON l.basket_id = o.basket_id "
        f"WHERE o.{_SALES} AND {where} GROUP BY l.gtin "
        f"ORDER BY u DESC, l.gtin LIMIT {A.TOP_ITEMS}", args)]


def _raw_gate(db, rng):
    w1, a1 = _day_where(rng, A.day_sql("at"))
    return db["store"].execute(
        "SELECT lane, outcome, count(*) FROM ("
        f"SELECT gate AS lane, 'weight_' || verdict AS outcome FROM verdicts WHERE {w1} "
        f"UNION ALL SELECT lane, 'alarm_' || device FROM device_events "
        f"WHERE kind = 'alarm' AND {w1}) GROUP BY lane, outcome ORDER BY lane, outcome",
        a1 + a1).fetchall()


def raw_alarms(db, rng):
    return [[lane, c, n] for lane, c, n in _raw_gate(db, rng) if c != "weight_ok"]


def raw_alarm_rate(db, rng):
    return A.alarm_rate_rows(_raw_gate(db, rng), A.policy_false_alarm_rate())


def raw_audits(db, rng):
    where, args = _day_where(rng, A.day_sql("recorded_at"))
    return [[k, n, hit, round(hit / n, 6)] for k, n, hit in db["store"].execute(
        "SELECT kind, count(*), sum(outcome = 'discrepancy') FROM audits "
        f"WHERE {where} GROUP BY kind ORDER BY kind", args)]


def raw_caught(db, rng):
    w1, a1 = _day_where(rng, A.day_sql("recorded_at"))
    w2, a2 = _day_where(rng, A.day_sql("at"))
    got = db["store"].execute(
        "SELECT source, finding, count(*) FROM ("
        f"SELECT 'audit' AS source, finding FROM audits WHERE outcome = 'discrepancy' "
        f"AND finding IS NOT NULL AND {w1} UNION ALL "
        f"SELECT 'exit', finding FROM alarm_actions WHERE finding IS NOT NULL AND {w2}) "
        "GROUP BY source, finding", a1 + a2).fetchall()
    order = {k: i for i, k in enumerate(A.FINDING_SOURCES + A.FINDINGS)}
    return sorted(([s, f, n] for s, f, n in got),
                  key=lambda r: (order.get(r[0], 99), r[0], order.get(r[1], 99), r[1]))


def raw_coupons_by_manufacturer(db, rng):
    where, args = _day_where(rng, A.day_sql("c.redeemed_at"))
    return [list(r) for r in db["coupons"].execute(
        "SELECT c.issuer_id, COALESCE(i.name, ''), c.currency, sum(c.reversed = 0), "
        "sum(CASE WHEN c.reversed = 0 THEN c.amount_minor ELSE 0 END), sum(c.reversed) "
        "FROM coupon_clearing c LEFT JOIN coupon_issuers i ON i.issuer_id = c.issuer_id "
        f"WHERE {where} GROUP BY c.issuer_id, c.currency ORDER BY c.issuer_id, c.currency",
        args)]


def raw_journeys(db, rng):
    where, args = _day_where(rng, A.day_sql("created_at"))
    got = {j: (n, v) for j, n, v in db["store"].execute(
        f"SELECT {A.journey_sql('device')} AS j, count(*), sum(total_minor) FROM orders "
        f"WHERE {_SALES} AND {where} GROUP BY j", args)}
    total = sum(n for n, _v in got.values())
    return [[j, got[j][0], round(got[j][0] / total, 6), got[j][1]]
            for j in A.JOURNEYS if j in got]


RAW = {name: globals()[f"raw_{name}"] for name in A.VIEWS}
