"""Member points for a store's own sales accrue through HQ (issue 16, "Offline": a store
cut off from HQ "accrues points to send later").

Real PostgreSQL and nats-server (fixtures), `lanecore hq` and the store's `lanecore
link` as processes, the link's NATS path through a relay the test cuts. The store's
orders are made with the service's own order API (``BasketStore``: open a basket with
the member, scan, submit, mark paid / exited / cancelled) on a real store.db. The
member is enrolled in the chain's database through the storage seam, as the coupon
gateways see it; the points are read back the same way."""

from __future__ import annotations

import sqlite3
import time
import uuid

import psycopg
import pytest

from chainfix import chain_root, nats_server, pg_server, pg_url  # noqa: F401
from chainstack import start_hq, start_link, stop, wait_for
from storefix import stock_store
from lanecore.core.promo.members import Members
from lanecore.core.scan.catalog import Catalog
from lanecore.core.store.basket import BasketStore, atomic
from lanecore.core.store.orderqr import Signer
from lanecore.gateway.chain import hq as HQ
from lanecore.gateway.db import pg
from lanecore.gateway.db.relay import Relay
from lanecore.gateway.net.client import Client

pytestmark = pytest.mark.slow

CARD = "88880000011"            # the member's card, as a handheld scans it
PHONE = "+8613800138000"        # the same member's phone number
UNKNOWN_CARD = "99990000077"    # a card the chain never enrolled
MEMBER_ID = "MCHAIN-0001"


def test_hq_lock_is_the_coupon_and_payment_gateways_lock():
    from lanecore.gateway import coupons
    from lanecore.gateway.db import pg
    from lanecore.gateway.payments import gateway
    assert HQ.CHAIN_LOCK == coupons.CHAIN_LOCK == gateway.CHAIN_LOCK == pg.CHAIN_LOCK


class Store:
    """One store's orders, written with the service's order API on its store.db."""

    def __init__(self, d, store_id: str):
        self.rows = [r for r in stock_store(d, 60, seed=16, region="GB") if not r["flags"]]
        self.cat = Catalog.open(d)
        self.api = BasketStore(self.cat.connection, self.cat.table, region="GB",
                               item=self.cat.item, store=store_id)
        self.signer = Signer.generate()
        self.n = 0

    def order(self, member: str | None, status: str | None = "paid") -> dict:
        """A submitted order (of a few items, at least 1.00) moved on to ``status``."""
        self.n += 1
        with atomic(self.api.con):
            b = self.api.open(f"HH{self.n}", member=member)
        scans = [{"code": r["gtin"], "qty": 1 + (self.n + i) % 3}
                 for i, r in enumerate(self.rows[self.n % 20:self.n % 20 + 3])]
        with atomic(self.api.con):
            self.api.add(b["basket_id"], scans)
        with atomic(self.api.con):
            o = self.api.submit(b["basket_id"], self.signer)
        assert o["total_minor"] >= 100
        if status is not None:
            self.status(o["order_no"], status)
        return o

    def status(self, order_no: str, status: str) -> None:
        with atomic(self.api.con):
            self.api.set_order_status(order_no, status)

    def close(self) -> None:
        self.cat.close()


def earned(*orders) -> int:
    """What the orders earn by the members' rule (HQ's: ``Members``' default)."""
    return sum(o["total_minor"] // HQ.EARN_PER_MINOR for o in orders)


def test_sales_earn_points_through_hq_once_and_after_a_cut(
        tmp_path, pg_url, nats_server):  # noqa: F811
    assert HQ.EARN_PER_MINOR == Members.__init__.__kwdefaults__["earn_per_minor"]
    chain = pg.connect(pg_url, lock_key=HQ.CHAIN_LOCK)
    members = Members(chain)
    members.enrol(card_no=CARD, phone=PHONE, member_id=MEMBER_ID, name="Ada",
                  now=time.time())

    def balance() -> int:
        return members.balance(MEMBER_ID)

    def sales_at_hq() -> dict:
        with psycopg.connect(pg_url) as con:
            return {r[0]: r[1] for r in con.execute(
                "SELECT row_id, event_id FROM hq_events WHERE kind = 'sale'")}

    hq_ep = f"ipc://{tmp_path}/hq.ipc"
    hq = start_hq(pg_url, nats_server.url, tmp_path, bind=hq_ep)
    d = tmp_path / "s1"
    d.mkdir()
    store = Store(d, "s1")
    relay = Relay(nats_server.port).start()
    link = None
    try:
        # a store's paid and exited member orders; a cancelled one; an unknown member's
        # sale BEFORE a good one; an order without a member; one given by phone number
        a = store.order(CARD)
        cancelled = store.order(CARD, status="cancelled")
        unknown = store.order(UNKNOWN_CARD)
        b = store.order(CARD)
        store.status(b["order_no"], "exited")
        store.order(None)
        by_phone = store.order(PHONE)
        waiting = store.order(CARD, status=None)           # submitted: not paid yet
        assert balance() == 0

        link = start_link("s1", d, relay.url)
        want = earned(a, b)
        wait_for(lambda: balance() == want, 20, "the paid sales earn at HQ")
        # exactly: one earn per sale, keyed by store and order, nothing for the rest
        wait_for(lambda: len(sales_at_hq()) == 3, 10, "the three sales at HQ")
        assert set(sales_at_hq()) == {a["order_no"], unknown["order_no"], b["order_no"]}
        assert cancelled["order_no"] not in sales_at_hq()
        assert by_phone["order_no"] not in sales_at_hq()
        moves = members.moves(MEMBER_ID)
        assert [(m.kind, m.order_no, m.points) for m in moves] == [
            ("earn", f"s1:{o['order_no']}", o["total_minor"] // 100) for o in (a, b)]
        bought = {p.order_no: p for p in members.history(MEMBER_ID)}
        assert set(bought) == {f"s1:{a['order_no']}", f"s1:{b['order_no']}"}
        assert bought[f"s1:{b['order_no']}"].total_minor == b["total_minor"]
        with Client(hq_ep, timeout_s=5) as c:
            assert c.call("hq.stats")["sales"] == {"earned": 2, "skipped": 1}
            assert c.call("hq.totals", store="s1")["stores"]["s1"]["events"]["sale"] == 3

        # the order that was waiting is paid: it goes on the next pass
        store.status(waiting["order_no"], "paid")
        want += earned(waiting)
        wait_for(lambda: balance() == want, 20, "the order paid later earns")

        # the link restarted from nothing: every row is published again (same ids)
        stop(link)
        (d / "link.db").unlink()
        for side in ("-wal", "-shm"):
            (d / f"link.db{side}").unlink(missing_ok=True)
        link = start_link("s1", d, relay.url)
        time.sleep(4)
        assert balance() == want
        assert len(members.moves(MEMBER_ID)) == 3

        # HQ given the same sale again, after JetStream's duplicate window too: its
        # event id is known; and under a new event id, Members' order key holds
        ing = HQ.Ingest(pg_url)
        try:
            body = {"store": "s1", "kind": "sale", "id": a["order_no"],
                    "order_no": a["order_no"], "member": CARD,
                    "total_minor": a["total_minor"], "currency": a["currency"],
                    "at": time.time()}
            assert ing.apply([(f"s1/sale/{a['order_no']}", "s1", "sale", body)]) == 0
            assert ing.apply([(f"s1/sale/{a['order_no']}/{uuid.uuid4().hex}", "s1",
                               "sale", body)]) == 1
            assert ing.sales_earned == 1 and ing.sales_skipped == 0
        finally:
            ing.close()
        assert balance() == want
        assert len(members.moves(MEMBER_ID)) == 3

        # -- the store cut off from HQ: it sells on, the points wait ------------------
        relay.cut()
        time.sleep(1)
        cut = [store.order(CARD) for _ in range(3)]
        store.status(cut[0]["order_no"], "exited")
        store.order(CARD, status="cancelled")
        time.sleep(4)
        assert balance() == want, "nothing reaches HQ while the store is cut off"
        with sqlite3.connect(d / "link.db") as lk:
            assert lk.execute("SELECT COUNT(*) FROM pending_sales").fetchone()[0] >= 3
        relay.restore()
        want += earned(*cut)
        wait_for(lambda: balance() == want, 30, "the points of the cut-off sales arrive")
        time.sleep(2)
        assert balance() == want
        assert len(members.moves(MEMBER_ID)) == 6
        with Client(hq_ep, timeout_s=5) as c:
            # (and the sale given again under a new event id above: its purchase)
            assert c.call("hq.stats")["sales"] == {"earned": 7, "skipped": 1}
        with sqlite3.connect(d / "link.db") as lk:
            assert lk.execute("SELECT COUNT(*) FROM pending_sales").fetchone()[0] == 0

        # no member identifier in HQ's log (the skipped sale is named by its event)
        log = (tmp_path / "hq.log").read_text()
        assert f"s1/sale/{unknown['order_no']}" in log
        assert UNKNOWN_CARD not in log and CARD not in log and PHONE not in log
    finally:
        stop(link)
        relay.cut()
        stop(hq)
        store.close()
        chain.close()
