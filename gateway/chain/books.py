"""HQ's books (docs/chain.md): every store's ledger against every provider's bills, and
what each manufacturer owes for its coupons redeemed across the chain.

Both read HQ's PostgreSQL only (a psycopg connection; run them inside
:func:`snapshot` so every query sees the same moment):

* :func:`recon` rebuilds one UTC day's ledger rows of each store from ``hq_ledger``
  in the shape :func:`lanecore.core.pay.recon.reconcile` takes — a ``payment`` event
  is a charge ``paid`` on the day of the event, ``reversed`` once a ``reversal`` event
  of the same charge has arrived; a ``refund`` event is a ``type: refund`` row, paid —
  and reconciles it against the latest bill of each (store, channel, day) in
  ``hq_bills`` (sent by each store's link). A cash or stored-value channel (its
  payments' ``method`` is ``cash`` or ``stored_value``) has no provider: its "bill" is
  the ledger itself, as ``local_bill`` does at the store (charges and refunds; HQ
  has no drawer or member-account records, so at HQ such a channel only adds to the
  totals). A channel with paid charges and no bill is named in ``no_bill``.
* :func:`clearing` sums the chain's shared ``coupon_clearing`` table (the coupon
  book's, written by every store's coupon gateway with the ``store_id`` that
  redeemed) per manufacturer (issuer), currency and store, with the meaning of the
  coupon gateway's ``clearing.report``: ``totals`` and ``counts`` over the rows not
  reversed; reversed rows are shown apart (``reversed``), never billed.

Money is integer minor units throughout.
"""

from __future__ import annotations

import contextlib
import datetime as dt

from lanecore.core.errors import LanecoreError
from lanecore.core.pay import recon as R

#: Payment methods whose channel the payment gateway settles itself: no provider bill.
LOCAL_METHODS = ("cash", "stored_value")
#: HQ's schema version these books need (``hq_bills``: gateway/chain/hq.py MIGRATIONS).
SCHEMA_VERSION = 3


class BooksError(LanecoreError):
    """``BAD_DATE``, ``BAD_FIELD``, ``HQ_SCHEMA`` (HQ's tables are older than these
    books: start ``lanecore hq``, which migrates them)."""

    code = "BAD_FIELD"


@contextlib.contextmanager
def snapshot(con):
    """One read-only REPEATABLE READ transaction on ``con`` (idle when called)."""
    with con.transaction():
        con.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield con


def check_schema(con) -> int:
    """HQ's schema version; BooksError ``HQ_SCHEMA`` when it has no ``hq_bills`` yet."""
    have = 0
    if con.execute("SELECT to_regclass('lanecore_schema')").fetchone()[0] is not None:
        row = con.execute("SELECT version FROM lanecore_schema WHERE component = 'hq'"
                          ).fetchone()
        have = row[0] if row else 0
    if have < SCHEMA_VERSION:
        raise BooksError(f"HQ's database is at schema version {have}; its books need "
                         f"{SCHEMA_VERSION}: start `lanecore hq` once (it migrates)",
                         code="HQ_SCHEMA", details={"version": have})
    return have


def day_bounds(day: str) -> tuple[float, float]:
    """Unix seconds of the UTC day ``YYYY-MM-DD``: [start, end); BooksError
    ``BAD_DATE``."""
    try:
        R.check_date(day)
        start = dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
    except (R.ReconError, ValueError):
        raise BooksError(f"date must be a real YYYY-MM-DD, got {day!r}",
                         code="BAD_DATE") from None
    return start.timestamp(), start.timestamp() + 86_400.0


# ----------------------------------------------------------------------------------
# Reconciliation
# ----------------------------------------------------------------------------------
def ledger_rows(con, day: str) -> dict[str, list[dict]]:
    """Per store, the day's ledger rows as ``reconcile`` takes them (see the module)."""
    start, end = day_bounds(day)
    out: dict[str, list[dict]] = {}
    reversed_ = {(s, ref) for s, ref in con.execute(
        "SELECT DISTINCT r.store_id, r.merchant_ref FROM hq_ledger r JOIN hq_ledger p "
        "ON p.store_id = r.store_id AND p.merchant_ref = r.merchant_ref "
        "AND p.kind = 'payment' WHERE r.kind = 'reversal' AND p.at >= %s AND p.at < %s",
        (start, end))}
    for store, ref, channel, amount, currency in con.execute(
            "SELECT store_id, merchant_ref, channel, amount_minor, currency FROM hq_ledger "
            "WHERE kind = 'payment' AND at >= %s AND at < %s ORDER BY at, event_id",
            (start, end)):
        out.setdefault(store, []).append({
            "merchant_ref": ref, "channel": channel, "amount_minor": int(amount),
            "currency": currency,
            "state": R.LEDGER_REVERSED if (store, ref) in reversed_ else R.LEDGER_PAID})
    for store, rref, mref, channel, amount, currency in con.execute(
            "SELECT store_id, ref, merchant_ref, channel, amount_minor, currency FROM "
            "hq_ledger WHERE kind = 'refund' AND at >= %s AND at < %s ORDER BY at, event_id",
            (start, end)):
        out.setdefault(store, []).append({
            "type": "refund", "refund_ref": rref, "merchant_ref": mref, "channel": channel,
            "amount_minor": int(amount), "currency": currency, "state": R.LEDGER_PAID})
    return out


def _bills(con, day: str) -> dict[str, dict[str, dict]]:
    """store → channel → the latest bill of the day (event id, file, rows)."""
    out: dict[str, dict[str, dict]] = {}
    for store, channel, eid, file, fetched_at, rows in con.execute(
            "SELECT store_id, channel, event_id, file, fetched_at, rows FROM hq_bills "
            "WHERE day = %s ORDER BY store_id, channel", (day,)):
        out.setdefault(store, {})[channel] = {"event_id": eid, "file": file,
                                              "fetched_at": fetched_at, "rows": rows}
    return out


def _local_lines(rows: list[dict], channel: str) -> list[R.BillRow]:
    """The ledger as its own bill for a channel without a provider."""
    paid = {r["merchant_ref"]: r["amount_minor"] for r in rows
            if r.get("type", "charge") == "charge" and r["channel"] == channel
            and r["state"] == R.LEDGER_PAID}
    out = R.local_bill(rows, paid, channel, source="ledger")
    out += [R.BillRow(trade_time="", merchant_ref=r["merchant_ref"], provider_ref="",
                      type="refund", amount_minor=r["amount_minor"],
                      currency=r["currency"], status="SUCCESS", fee_minor=0,
                      refund_ref=r["refund_ref"], channel=channel)
            for r in rows if r.get("type") == "refund" and r["channel"] == channel]
    return out


def recon(con, day: str) -> dict:
    """The day's reconciliation of every store, and of the chain.

    ``{"date", "stores": {store: {"channels": [billed…], "local": [...],
    "no_bill": [{"channel", "charges"}…], "bills": [{"channel", "event_id", "file",
    "rows"}…], "clean", "counts", "discrepancies", "totals", "unreconciled",
    "refunds_checked"}}, "chain": {"clean", "stores", "counts", "ledger_paid",
    "ledger_paid_minor", "charged_minor", "refunded_minor", "fee_minor", "net_minor",
    "no_bill": [{"store", "channel", "charges"}…]}}``."""
    check_schema(con)
    day_bounds(day)
    rows_by_store = ledger_rows(con, day)
    bills_by_store = _bills(con, day)
    local_by_store: dict[str, set[str]] = {}
    for store, channel in con.execute(
            "SELECT DISTINCT store_id, channel FROM hq_ledger WHERE kind = 'payment' "
            "AND method = ANY(%s) AND channel IS NOT NULL", (list(LOCAL_METHODS),)):
        local_by_store.setdefault(store, set()).add(channel)
    chain = {"clean": True, "stores": 0, "counts": {}, "ledger_paid": 0,
             "ledger_paid_minor": 0, "charged_minor": 0, "refunded_minor": 0,
             "fee_minor": 0, "net_minor": 0, "no_bill": []}
    stores: dict[str, dict] = {}
    for store in sorted(set(rows_by_store) | set(bills_by_store)):
        rows = rows_by_store.get(store, [])
        bills = bills_by_store.get(store, {})
        lines: list[R.BillRow] = []
        for channel, bill in bills.items():
            lines += [R.BillRow(trade_time=str(r.get("trade_time") or ""),
                                merchant_ref=r["merchant_ref"], provider_ref="",
                                type=r["type"], amount_minor=int(r["amount_minor"]),
                                currency=r["currency"], status=r["status"],
                                fee_minor=int(r.get("fee_minor") or 0),
                                refund_ref=r.get("refund_ref") or "", channel=channel)
                      for r in bill["rows"]]
        used = {r["channel"] for r in rows}
        local = sorted((local_by_store.get(store, set()) & used) - set(bills))
        for channel in local:
            lines += _local_lines(rows, channel)
        report = R.reconcile(rows, lines, channels=sorted(bills) + local)
        out = report.to_dict()
        no_bill = [{"channel": ch, "charges": n} for ch, n in sorted(report.unreconciled.items())]
        refund_only = sorted({r["channel"] for r in rows if r.get("type") == "refund"}
                             - set(bills) - set(local) - set(report.unreconciled))
        no_bill += [{"channel": ch, "charges": 0} for ch in refund_only]
        stores[store] = {"channels": sorted(bills), "local": local, "no_bill": no_bill,
                         "bills": [{"channel": ch, "event_id": b["event_id"],
                                    "file": b["file"], "rows": len(b["rows"])}
                                   for ch, b in sorted(bills.items())],
                         **out}
        if refund_only:
            stores[store]["clean"] = False
        chain["stores"] += 1
        chain["clean"] = chain["clean"] and stores[store]["clean"]
        for k, v in out["counts"].items():
            chain["counts"][k] = chain["counts"].get(k, 0) + v
        for t in out["totals"].values():
            chain["ledger_paid"] += t["ledger_paid"]
            chain["ledger_paid_minor"] += t["ledger_paid_minor"]
            chain["charged_minor"] += t["charged_minor"]
            chain["refunded_minor"] += t["refunded_minor"]
            chain["fee_minor"] += t["fee_minor"]
            chain["net_minor"] += t["net_minor"]
        chain["no_bill"] += [{"store": store, **nb} for nb in no_bill]
    return {"date": day, "stores": stores, "chain": chain}


# ----------------------------------------------------------------------------------
# Clearing
# ----------------------------------------------------------------------------------
def _add(d: dict, currency: str, n: int, amount: int, reversed_: bool) -> None:
    if reversed_:
        r = d["reversed"].setdefault(currency, {"count": 0, "amount_minor": 0})
        r["count"] += n
        r["amount_minor"] += amount
    else:
        d["totals"][currency] = d["totals"].get(currency, 0) + amount
        d["counts"][currency] = d["counts"].get(currency, 0) + n


def _empty() -> dict:
    return {"totals": {}, "counts": {}, "reversed": {}}


def clearing(con, since: int | None = None, until: int | None = None,
             issuer_id: str | None = None) -> dict:
    """What each manufacturer owes, across stores: the coupon book's clearing rows
    redeemed in ``since <= redeemed_at < until`` (Unix seconds, either optional), of
    ``issuer_id`` or of all.

    ``{"issuers": {issuer_id: {"name", "totals": {currency: amount_minor},
    "counts": {currency: n}, "reversed": {currency: {"count", "amount_minor"}},
    "stores": {store_id: {"totals", "counts", "reversed"}}}}, "totals": {currency:
    amount_minor}, "counts": {currency: n}, "coupon_book": bool}``: ``totals`` and
    ``counts`` over the rows not reversed (what the manufacturer is billed for), as
    the coupon gateway's ``clearing.report``; reversed rows apart. ``coupon_book``
    false: no coupon gateway has made its tables in this database yet."""
    for name, v in (("since", since), ("until", until)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise BooksError(f"{name} is Unix seconds ≥ 0, got {v!r}", code="BAD_FIELD",
                             details={"field": name})
    out: dict = {"issuers": {}, "totals": {}, "counts": {}, "coupon_book": False}
    if con.execute("SELECT to_regclass('public.coupon_clearing')").fetchone()[0] is None:
        return out
    out["coupon_book"] = True
    where, params = [], []
    for cond, v in (("c.issuer_id = %s", issuer_id), ("c.redeemed_at >= %s", since),
                    ("c.redeemed_at < %s", until)):
        if v is not None:
            where.append(cond)
            params.append(v)
    sql = ("SELECT c.issuer_id, i.name, c.store_id, c.currency, c.reversed <> 0, "
           "COUNT(*), COALESCE(SUM(c.amount_minor), 0) FROM public.coupon_clearing c "
           "LEFT JOIN public.coupon_issuers i ON i.issuer_id = c.issuer_id"
           + (" WHERE " + " AND ".join(where) if where else "")
           + " GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 3, 4, 5")
    for issuer, name, store, currency, rev, n, amount in con.execute(sql, params):
        n, amount = int(n), int(amount)
        iss = out["issuers"].setdefault(issuer, {"name": name or "", **_empty(),
                                                 "stores": {}})
        _add(iss, currency, n, amount, rev)
        _add(iss["stores"].setdefault(store, _empty()), currency, n, amount, rev)
        if not rev:
            out["totals"][currency] = out["totals"].get(currency, 0) + amount
            out["counts"][currency] = out["counts"].get(currency, 0) + n
    return out


# ----------------------------------------------------------------------------------
# `lanecore hq books`
# ----------------------------------------------------------------------------------
def books(con, day: str) -> dict:
    """Everything ``lanecore hq books`` shows: per store HQ's totals (net and events),
    the day's reconciliation and clearing per manufacturer (every redemption)."""
    from lanecore.gateway.chain.hq import totals
    with snapshot(con):
        check_schema(con)
        return {"date": day, "totals": totals(con), "recon": recon(con, day),
                "clearing": clearing(con)}


def _money(v: int) -> str:
    return f"{v:,}"


def render(b: dict) -> str:
    """:func:`books` as text."""
    lines = [f"HQ's books for {b['date']} (UTC)", "", "per store (every event HQ holds):",
             f"  {'store':<12} {'net':>14} {'payments':>14} {'reversals':>12} "
             f"{'refunds':>12}  events"]
    for store, t in sorted(b["totals"].items()):
        ev = ", ".join(f"{k} {n}" for k, n in sorted(t["events"].items()))
        lines.append(f"  {store:<12} {_money(t['net_minor']):>14} "
                     f"{_money(t['payment_minor']):>14} {_money(t['reversal_minor']):>12} "
                     f"{_money(t['refund_minor']):>12}  {ev}")
    if not b["totals"]:
        lines.append("  (no store has sent anything yet)")
    rc = b["recon"]
    lines += ["", f"reconciliation of {rc['date']}: "
              + ("clean" if rc["chain"]["clean"] else "DISCREPANCIES")
              + f" ({rc['chain']['stores']} store(s))"]
    for store, s in rc["stores"].items():
        lines.append(f"  {store}: " + ("clean" if s["clean"] else "NOT CLEAN") + "; "
                     + ", ".join(f"{k} {v}" for k, v in s["counts"].items()))
        lines.append(f"    {'channel':<12} {'bill':<8} {'charges':>8} {'charged':>12} "
                     f"{'reversed':>10} {'refunded':>10} {'fee':>8} {'net':>12} "
                     f"{'ledger paid':>12}")
        for ch, t in s["totals"].items():
            bill = "bill" if ch in s["channels"] else ("ledger" if ch in s["local"]
                                                       else "none")
            lines.append(f"    {ch:<12} {bill:<8} {t['charges']:>8} "
                         f"{_money(t['charged_minor']):>12} {_money(t['reversed_minor']):>10} "
                         f"{_money(t['refunded_minor']):>10} "
                         f"{_money(t['fee_minor']):>8} {_money(t['net_minor']):>12} "
                         f"{_money(t['ledger_paid_minor']):>12}")
        for nb in s["no_bill"]:
            lines.append(f"    {nb['channel']:<12} no bill yet: {nb['charges']} paid "
                         "charge(s) not reconciled")
        for f in s["discrepancies"]:
            ref = f["merchant_ref"] + (f" refund {f['refund_ref']}" if f["refund_ref"] else "")
            led = "-" if f["ledger_amount_minor"] is None else f["ledger_amount_minor"]
            bil = "-" if f["bill_amount_minor"] is None else f["bill_amount_minor"]
            lines.append(f"    {f['finding']:<20} {f['channel']:<10} {ref}: ledger {led} "
                         f"({f['ledger_state'] or '-'}), bill {bil} ({f['bill_status'] or '-'})")
    if not rc["stores"]:
        lines.append("  (no ledger rows and no bills on that day)")
    cl = b["clearing"]
    lines += ["", "clearing per manufacturer (every redemption, every store; reversed "
                  "rows not billed):"]
    if not cl["coupon_book"]:
        lines.append("  (no coupon book in this database)")
    for issuer, i in cl["issuers"].items():
        owed = ", ".join(f"{_money(v)} {c} ({i['counts'][c]} coupon(s))"
                         for c, v in sorted(i["totals"].items())) or "nothing"
        lines.append(f"  {issuer} {i['name']}: owes {owed}")
        for store, s in i["stores"].items():
            owed = ", ".join(f"{_money(v)} {c} ({s['counts'][c]})"
                             for c, v in sorted(s["totals"].items())) or "nothing"
            rev = "; ".join(f"reversed {r['count']} ({_money(r['amount_minor'])} {c})"
                            for c, r in sorted(s["reversed"].items()))
            lines.append(f"    {store:<12} {owed}" + (f"; {rev}" if rev else ""))
    if cl["coupon_book"] and not cl["issuers"]:
        lines.append("  (no redemptions)")
    return "\n".join(lines)
