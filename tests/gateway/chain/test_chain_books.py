"""HQ's books (issue 16, part 4): every store's ledger against every provider's bills
at HQ, and clearing per manufacturer across stores.

Real processes: PostgreSQL and nats-server (fixtures), `lanecore hq` with its ops, and
a store's payment gateway over a provider simulator whose bills `recon.run` fetches,
shipped to HQ by `lanecore link` with the ledger. Clearing: two stores' redemptions
for two manufacturers written through the coupon book on the chain's PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time

import psycopg
import pytest

from chainfix import chain_root, nats_server, pg_server, pg_url  # noqa: F401
from chainstack import start_hq, start_link, start_payments, stop, wait_for
from lanecore.core.config import write_private
from lanecore.gateway.net.client import Client, ServiceError
from payfix import WECHAT_CODE, wallet, write_config

pytestmark = pytest.mark.slow


def _bill_events(url: str) -> list[str]:
    with psycopg.connect(url) as con:
        return [r[0] for r in con.execute("SELECT event_id FROM hq_events WHERE kind = "
                                          "'bill' ORDER BY received_at, event_id")]


def _events(url: str) -> dict:
    with psycopg.connect(url) as con:
        return dict(con.execute("SELECT kind, COUNT(*) FROM hq_events GROUP BY kind"))


def test_hq_reconciles_a_stores_ledger_against_its_bills_and_names_an_injected_finding(
        tmp_path, pg_url, nats_server, providers):  # noqa: F811
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    hq_ep = f"ipc://{tmp_path}/hq.ipc"
    hq = start_hq(pg_url, nats_server.url, tmp_path, bind=hq_ep)
    prov = providers("wxs1", "wechat")
    pay_dir = tmp_path / "pay-s1"
    pay_dir.mkdir()
    write_config(pay_dir, {"wx": wallet("wx", prov.endpoint, 1)})
    gw_ep = f"ipc://{tmp_path}/gw-s1.ipc"
    gw = start_payments(pay_dir, gw_ep)
    store_dir = tmp_path / "store-s1"
    store_dir.mkdir()
    link = None
    try:
        amounts = [1234, 560, 9900, 4321, 777]
        with Client(gw_ep, timeout_s=5, retries=2) as pay:
            for i, amount in enumerate(amounts):
                r = pay.call("pay.charge", order_no=f"s1-{i}", amount_minor=amount,
                             currency="CNY", method="auth_code", terminal="T1",
                             auth_code=WECHAT_CODE)
                assert r["status"] == "paid", r
            assert pay.call("pay.reverse", order_no="s1-1")["status"] == "reversed"
            r = pay.call("pay.refund", order_no="s1-2", refund_ref="s1-2-R1", amount_minor=900)
            assert r["status"] == "refunded", r
            store = pay.call("recon.run", date=today)       # fetches the bill: bills/wx-…
        assert store["clean"], store
        bill_file = pay_dir / "bills" / f"wx-{today}.csv"
        assert bill_file.is_file()
        assert "provider_ref" in bill_file.read_text().splitlines()[0]

        link = start_link("s1", store_dir, nats_server.url, payments_dir=pay_dir)
        wait_for(lambda: _events(pg_url) == {"payment": 5, "reversal": 1, "refund": 1,
                                             "bill": 1}, 20, "ledger and bill at HQ")
        first = _bill_events(pg_url)
        sha = __import__("hashlib").sha256(bill_file.read_bytes()).hexdigest()[:16]
        assert first == [f"s1/bill/wx-{today}.csv/{sha}"]
        with psycopg.connect(pg_url) as con:       # no provider reference travels
            rows = con.execute("SELECT rows FROM hq_bills").fetchone()[0]
        assert rows and all("provider_ref" not in r for r in rows)
        assert sorted(r["merchant_ref"] for r in rows if r["type"] == "charge") == sorted(
            f"s1-{i}-1" for i in range(5))

        with Client(hq_ep, timeout_s=10, retries=1) as c:
            rep = c.call("hq.recon", date=today)
        s1 = rep["stores"]["s1"]
        # 5 charge lines (one REVERSED, one REFUND) and 1 refund line matched; the
        # reverse line is counted in the totals
        assert s1["clean"] and rep["chain"]["clean"], s1
        assert s1["counts"] == {"matched": 6, "missing_in_ledger": 0,
                                "missing_at_provider": 0, "amount_mismatch": 0,
                                "status_mismatch": 0, "duplicate": 0}
        assert s1["counts"] == store["counts"]          # HQ agrees with the store
        assert s1["channels"] == ["wx"] and s1["no_bill"] == [] and s1["discrepancies"] == []
        t = s1["totals"]["wx"]
        assert t["ledger_paid"] == 4 and t["ledger_paid_minor"] == sum(amounts) - 560
        assert t["charged_minor"] == sum(amounts) and t["reversed_minor"] == 560
        assert t["refunded_minor"] == 900
        assert rep["chain"]["ledger_paid_minor"] == sum(amounts) - 560
        assert rep["chain"]["no_bill"] == []

        # the same file written again (same bytes): the same event, nothing new
        write_private(bill_file, bill_file.read_bytes())
        time.sleep(1.5)
        assert _bill_events(pg_url) == first

        # the bill fetched again, now with one amount changed by the provider
        bill = prov.conn.bill(today, inject={"amount": 1, "seed": 16})
        changed = bill.injected["amount"][0]
        write_private(bill_file, bill.csv_text.encode("utf-8"))
        wait_for(lambda: len(_bill_events(pg_url)) == 2, 20, "the refetched bill at HQ")
        with Client(hq_ep, timeout_s=10, retries=1) as c:
            rep = c.call("hq.recon", date=today)
            with pytest.raises(ServiceError) as bad:
                c.call("hq.recon", date="2026-02-30")
        assert bad.value.code == "BAD_DATE"
        s1 = rep["stores"]["s1"]
        assert not s1["clean"] and not rep["chain"]["clean"]
        assert s1["counts"]["amount_mismatch"] == 1 and s1["counts"]["matched"] == 5
        assert [(f["finding"], f["channel"], f["merchant_ref"], f["ledger_amount_minor"],
                 f["bill_amount_minor"]) for f in s1["discrepancies"]] == [
            ("amount_mismatch", "wx", changed["merchant_ref"], changed["from"],
             changed["to"])]
        assert s1["bills"][0]["event_id"] == _bill_events(pg_url)[1]

        # a day with nothing: no store
        with Client(hq_ep, timeout_s=10, retries=1) as c:
            empty = c.call("hq.recon", date="2001-01-01")
        assert empty["stores"] == {} and empty["chain"]["clean"]

        # the command line shows the same books
        out = subprocess.run([sys.executable, "-m", "lanecore", "hq", "books", "--db", pg_url,
                              "--date", today, "--json"], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        books = json.loads(out.stdout)
        assert books["recon"]["stores"]["s1"]["counts"] == s1["counts"]
        assert books["totals"]["s1"]["net_minor"] == sum(amounts) - 560 - 900
        text = subprocess.run([sys.executable, "-m", "lanecore", "hq", "books", "--db",
                               pg_url, "--date", today], capture_output=True, text=True,
                              timeout=60)
        assert text.returncode == 0, text.stderr
        assert "amount_mismatch" in text.stdout and changed["merchant_ref"] in text.stdout
        assert f"{sum(amounts) - 560 - 900:,}" in text.stdout
    finally:
        stop(link)
        stop(gw)
        stop(hq)


def test_a_store_without_a_bill_is_named_and_not_clean(tmp_path, pg_url):  # noqa: F811
    """Ledger events applied through HQ's own ingest, no bill: the channel is named."""
    from lanecore.gateway.chain import books, hq
    ing = hq.Ingest(pg_url)
    day = "2026-03-04"
    at = dt.datetime(2026, 3, 4, 10, tzinfo=dt.timezone.utc).timestamp()
    ev = [("s9/payment/1", "s9", "payment", {"id": 1, "merchant_ref": "o1-1", "order_no": "o1",
                                              "amount_minor": 500, "currency": "CNY",
                                              "method": "auth_code", "channel": "ali",
                                              "at": at}),
          ("s9/payment/2", "s9", "payment", {"id": 2, "merchant_ref": "o2-1", "order_no": "o2",
                                              "amount_minor": 700, "currency": "CNY",
                                              "method": "cash", "channel": "drawer",
                                              "at": at + 5})]
    assert ing.apply(ev) == 2
    ing.close()
    con = hq.connect(pg_url)
    try:
        with books.snapshot(con):
            rep = books.recon(con, day)
    finally:
        con.close()
    s9 = rep["stores"]["s9"]
    assert s9["local"] == ["drawer"] and s9["channels"] == []
    assert s9["no_bill"] == [{"channel": "ali", "charges": 1}] and not s9["clean"]
    assert s9["totals"]["drawer"]["ledger_paid_minor"] == 700
    assert rep["chain"]["no_bill"] == [{"store": "s9", "channel": "ali", "charges": 1}]


def test_clearing_per_manufacturer_across_stores(tmp_path, pg_url):  # noqa: F811
    from lanecore.core.promo.coupons import CouponBook, Definition
    from lanecore.gateway.chain import books, hq
    from lanecore.gateway.db.pg import CHAIN_LOCK, connect
    from lanecore.gateway.net.identity import Principal

    con = connect(pg_url, lock_key=CHAIN_LOCK)
    book = CouponBook(con)
    book.add_issuer("M1", "Acme Foods")
    book.add_issuer("M2", "Brio Drinks")
    for def_id, issuer, off in (("D1", "M1", 150), ("D2", "M2", 80)):
        book.define(Definition(coupon_def_id=def_id, issuer_id=issuer, target_family="F1",
                               amount_off_minor=off, currency="CNY", valid_from=0,
                               valid_until=2**31 - 1))
    # (store, order, coupon, definition, amount deducted, redeemed at)
    plan = [("s1", "s1-1", "C1", "D1", 150, 1000), ("s1", "s1-2", "C2", "D1", 120, 1010),
            ("s1", "s1-3", "C3", "D2", 80, 1020), ("s2", "s2-1", "C4", "D1", 150, 2000),
            ("s2", "s2-2", "C5", "D2", 80, 2010), ("s2", "s2-3", "C6", "D2", 80, 2020)]
    for store, order, cid, def_id, amount, t in plan:
        book.issue(def_id, f"cust-{cid}", coupon_id=cid, now=t - 100)
        book.reserve([cid], order_no=order, customer_id=f"cust-{cid}", now=t - 1)
        book.commit(order, {cid: amount}, store_id=store, now=t)
    book.reverse("s2-3", now=2100)                      # refunded: not billed
    one_store = book.clearing()                         # the coupon gateway's report
    con.close()

    pg = hq.connect(pg_url)
    try:
        with books.snapshot(pg):
            cl = books.clearing(pg)
            later = books.clearing(pg, since=1500)
            m2 = books.clearing(pg, issuer_id="M2", until=2015)
    finally:
        pg.close()
    assert cl["coupon_book"] is True
    assert cl["issuers"]["M1"] == {
        "name": "Acme Foods", "totals": {"CNY": 420}, "counts": {"CNY": 3}, "reversed": {},
        "stores": {"s1": {"totals": {"CNY": 270}, "counts": {"CNY": 2}, "reversed": {}},
                   "s2": {"totals": {"CNY": 150}, "counts": {"CNY": 1}, "reversed": {}}}}
    assert cl["issuers"]["M2"] == {
        "name": "Brio Drinks", "totals": {"CNY": 160}, "counts": {"CNY": 2},
        "reversed": {"CNY": {"count": 1, "amount_minor": 80}},
        "stores": {"s1": {"totals": {"CNY": 80}, "counts": {"CNY": 1}, "reversed": {}},
                   "s2": {"totals": {"CNY": 80}, "counts": {"CNY": 1},
                          "reversed": {"CNY": {"count": 1, "amount_minor": 80}}}}}
    assert cl["totals"] == {"CNY": 580} and cl["counts"] == {"CNY": 5}
    # the same meaning as the one-store clearing.report over the same rows
    assert {i: v["totals"] for i, v in cl["issuers"].items()} == one_store.totals
    assert {i: v["counts"] for i, v in cl["issuers"].items()} == one_store.counts
    assert set(later["issuers"]) == {"M1", "M2"}
    assert later["issuers"]["M1"]["stores"] == {
        "s2": {"totals": {"CNY": 150}, "counts": {"CNY": 1}, "reversed": {}}}
    assert set(m2["issuers"]) == {"M2"}
    assert m2["issuers"]["M2"]["totals"] == {"CNY": 160}
    assert m2["issuers"]["M2"]["reversed"] == {}

    # the op: role hq only, its fields checked
    srv = hq.HQ(pg_url, tmp_path / "hq-data")
    try:
        who = Principal("key:books", frozenset({"hq"}))
        r = srv.handle({"op": "hq.clearing", "id": 1, "issuer_id": "M1"}, "c", who)
        assert r["ok"], r
        assert r["issuers"]["M1"]["totals"] == {"CNY": 420}
        r = srv.handle({"op": "hq.clearing", "id": 2}, "c",
                       Principal("key:mgr", frozenset({"manager"})))
        assert r["error"]["code"] == "FORBIDDEN", r
        r = srv.handle({"op": "hq.clearing", "id": 3, "since": -1}, "c", who)
        assert not r["ok"] and r["error"]["code"] == "BAD_FIELD", r
    finally:
        srv.close()


def test_the_outbox_of_bills_is_the_file_list(tmp_path):
    """Each bill file is one event until acked; an unreadable one is left out and
    blocks nothing; a changed file is a new event; no provider reference travels."""
    from lanecore.gateway.chain.link import Outbox
    bills = tmp_path / "pay" / "bills"
    bills.mkdir(parents=True)
    head = "trade_time,merchant_ref,provider_ref,type,amount_minor,currency,status," \
           "fee_minor,refund_ref\n"
    good = bills / "wx-2026-03-04.csv"
    good.write_text(head + "2026-03-04T10:00:00Z,o1-1,P-SECRET-1,charge,500,CNY,SUCCESS,3,\n")
    (bills / "ali-2026-03-04.csv").write_text(head + "x,o2-1,P2,bogus,1,CNY,SUCCESS,0,\n")
    (bills / "notes.txt").write_text("not a bill")
    box = Outbox("s1", tmp_path / "store", tmp_path / "pay", link_db=tmp_path / "link.db")
    try:
        [(source, last, msgs)] = [p for p in box.pending() if p[0] == "bills"]
        assert [(k, rid.split("/")[0]) for k, rid, _b in msgs] == [("bill", good.name)]
        body = msgs[0][2]
        assert (body["channel"], body["date"], body["rows"]) == (
            "wx", "2026-03-04",
            [["2026-03-04T10:00:00Z", "o1-1", "charge", 500, "CNY", "SUCCESS", 3, ""]])
        assert "P-SECRET-1" not in repr(body)
        box.advance(source, last)
        assert [p for p in box.pending() if p[0] == "bills"] == []
        good.write_text(good.read_text() + "2026-03-04T11:00:00Z,o3-1,P3,charge,700,CNY,"
                                           "SUCCESS,4,\n")
        [(_s, last2, msgs2)] = [p for p in box.pending() if p[0] == "bills"]
        assert len(msgs2) == 1 and msgs2[0][1] != msgs[0][1] and len(msgs2[0][2]["rows"]) == 2
    finally:
        box.close()
