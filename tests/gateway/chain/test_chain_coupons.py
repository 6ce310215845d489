"""Coupons and members shared chain-wide on PostgreSQL (issue 16, part 1): five stores'
coupon gateways on one database.

* 50 tills over 5 stores race for one single-use chain coupon: exactly one redemption
  (at the provider and in coupon_clearing), 49 ``COUPON_USED``.
* A member spends points in store A and sees the new balance in store B within 1 s.

Real servers: PostgreSQL from the session fixture; a provider simulator and a payment
gateway process (``payfix``); five in-process ``CouponGateway`` instances, each with
its own data directory and ``store_id``, served on ZeroMQ in threads, every one with
``[db] url`` naming the same database."""

from __future__ import annotations

import threading
import time

import pytest

from chainfix import chain_root, pg_server, pg_url  # noqa: F401
from lanecore.core.promo.mqr import make_mqr
from lanecore.core.scan.catalog import import_csv
from lanecore.core.store.orderqr import Signer
from lanecore.gateway.coupons import CouponGateway
from lanecore.gateway.db.pg import connect
from lanecore.gateway.net.client import Client
from payfix import start_gateway, wallet, write_config

SHAMPOO = "06901234567892"
CUSTOMER = "C-1001"
CATALOGUE = ("gtin,name,price_minor,unit_weight_g,weight_sd_g,flags\n"
             f"{SHAMPOO},Shampoo 400 ml,3000,420,4,\n")
STORES = [f"ST-{i}" for i in range(1, 6)]


class Chain:
    """A provider, a payment gateway process, and one served coupon gateway per store
    on the database ``url``."""

    def __init__(self, tmp_path, providers, url: str, stores=STORES) -> None:
        self.tmp, self.url = tmp_path, url
        self.provider = providers("wx", "wechat")
        pay_dir = tmp_path / "pay"
        pay_dir.mkdir()
        write_config(pay_dir, {"wx": wallet("wx", self.provider.endpoint, 1)})
        pay_ep = f"ipc://{tmp_path}/pay.ipc"
        self.procs = [start_gateway("payments", pay_dir, pay_ep)]
        wdir = tmp_path / "wallet"
        wdir.mkdir()
        self.signer = Signer.load_or_create(wdir)
        self.gws: dict[str, CouponGateway] = {}
        self.eps: dict[str, str] = {}
        self.threads: list[threading.Thread] = []
        for store in stores:
            d = tmp_path / store
            d.mkdir()
            (d / "catalog.csv").write_text(CATALOGUE)
            assert import_csv(d, d / "catalog.csv").rows_bad == 0
            (d / "coupons.toml").write_text(f'''store_id = "{store}"
currency = "CNY"
[payments]
endpoint = "{pay_ep}"
terminal = "TILL-1"
timeout_s = 10
[wallet_keys]
w1 = "{self.signer.public_key_b64()}"
[members]
earn_per_minor = 100
[db]
url = "{url}"
''')
            self.gws[store] = CouponGateway(d)

    def serve(self) -> None:
        for store, gw in self.gws.items():
            ep = self.eps[store] = f"ipc://{self.tmp}/{store}.ipc"
            ready = threading.Event()

            def run(gw=gw, ep=ep, ready=ready):
                try:
                    gw.serve(ep, ready=ready.set)
                finally:
                    gw.close()        # on its serving thread (its catalogue's SQLite)
            t = threading.Thread(target=run, daemon=True)
            t.start()
            assert ready.wait(20), store
            self.threads.append(t)

    def call(self, store: str, op: str, **fields) -> dict:
        with Client(self.eps[store], timeout_s=30, retries=0) as c:
            return c.call(op, **fields)

    def mqr(self, coupons, *, qr_id: str, token: str) -> str:
        return make_mqr(self.signer, key_id="w1", issuer="wallet", customer=CUSTOMER,
                        token=token, currency="CNY", coupons=coupons, qr_id=qr_id)

    def close(self) -> None:
        for gw in self.gws.values():
            gw.stop()
        for t in self.threads:
            t.join(10)
        for gw in list(self.gws.values())[len(self.threads):]:
            gw.close()                # never served
        for p in self.procs:
            p.terminate()
            p.wait(10)


@pytest.fixture
def chain(tmp_path, providers, pg_url):  # noqa: F811 - the chainfix fixture
    c = Chain(tmp_path, providers, pg_url)
    try:
        c.serve()
        yield c
    finally:
        c.close()


def test_fifty_tills_over_five_stores_race_for_one_chain_coupon(chain):
    first = STORES[0]
    chain.call(first, "issuer.add", issuer_id="ACME", name="Acme Hair Care")
    chain.call(first, "coupon.define", definition=dict(
        coupon_def_id="CHAIN-5", issuer_id="ACME", target_gtin=SHAMPOO,
        amount_off_minor=500, currency="CNY", valid_from=0, valid_until=4_000_000_000))
    cid = chain.call(first, "coupon.issue", coupon_def_id="CHAIN-5", customer_id=CUSTOMER,
                     coupon_id="CHAIN-CPN-1")["coupon"]["coupon_id"]
    # every store sees the chain coupon in the shopper's wallet
    for store in STORES:
        assert [c["coupon_id"] for c in chain.call(store, "wallet.coupons",
                                                   customer_id=CUSTOMER)["coupons"]] == [cid]
    results: list[tuple[str, dict]] = []
    crashes: list[BaseException] = []
    lock = threading.Lock()
    go = threading.Barrier(50)

    def till(i: int) -> None:
        store = STORES[i % 5]                  # 10 tills per store
        try:
            text = chain.mqr([(cid, SHAMPOO, 500)], qr_id=f"RACE-{i}", token=f"13{i:016d}")
            with Client(chain.eps[store], timeout_s=60, retries=0) as c:
                go.wait()
                r = c.call("checkout.mqr", order_no=f"{store}-R{i:02d}", till=f"T{i}",
                           mqr=text, lines=[{"code": SHAMPOO, "qty": 1}])
            with lock:
                results.append((store, r))
        except BaseException as exc:  # noqa: BLE001 - reported below
            with lock:
                crashes.append(exc)

    threads = [threading.Thread(target=till, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not crashes, crashes[:3]
    assert len(results) == 50 and all(r["status"] == "paid" for _, r in results)
    won = [(s, r) for s, r in results if cid in r["coupons_applied"]]
    assert len(won) == 1 and won[0][1]["total_minor"] == 2500
    lost = [r["coupons_rejected"].get(cid) for _, r in results if r is not won[0][1]]
    assert lost == ["COUPON_USED"] * 49
    # one redemption at the provider, one clearing row (the winner's store), one
    # coupon redeemed, in the one shared database
    db = connect(chain.url, lock_key="test-reader")
    try:
        rows = db.execute("SELECT coupon_id, store_id, order_no, amount_minor, reversed "
                          "FROM coupon_clearing").fetchall()
        assert rows == [(cid, won[0][0], won[0][1]["order_no"], 500, 0)]
        assert db.execute("SELECT state, order_no FROM coupons WHERE coupon_id = ?",
                          (cid,)).fetchone() == ("redeemed", won[0][1]["order_no"])
    finally:
        db.close()
    import sqlite3
    prov = sqlite3.connect(chain.provider.data_dir / "wechat.sqlite")
    try:
        [(ref, coupon)] = prov.execute("SELECT merchant_ref, coupon_id FROM redemptions"
                                       ).fetchall()
        assert coupon == cid and ref.startswith(won[0][1]["order_no"] + "-")
        paid = prov.execute("SELECT SUM(amount_minor) FROM trades WHERE status = 'paid'"
                            ).fetchone()[0]
        assert paid == 2500 + 49 * 3000
    finally:
        prov.close()
    # every store's clearing report is the chain's: the one row
    for store in STORES:
        rep = chain.call(store, "clearing.report")
        assert len(rep["rows"]) == 1 and rep["totals"] == {"ACME": {"CNY": 500}}


def test_points_spent_in_store_a_show_in_store_b_within_a_second(chain):
    a, b = STORES[0], STORES[1]
    m = chain.call(a, "member.enrol", card_no="6200123456789", name="Ann")["member"]
    chain.call(a, "member.points", identifier=m["member_id"], points=1000,
               reason="welcome", ref="seed-ann", staff="hq")
    assert chain.call(b, "member.find", identifier="6200123456789")["member"]["points"] \
        == 1000
    r = chain.call(a, "checkout.mqr", order_no="A-1", till="T1",
                   mqr=chain.mqr([], qr_id="PTS-1", token="131234567890123456"),
                   lines=[{"code": SHAMPOO, "qty": 1}], member="6200123456789",
                   points=300)
    assert r["status"] == "paid" and r["points_redeemed"] == 300
    assert r["total_minor"] == 2700
    expected = 1000 - 300 + 2700 // 100          # spent 300, earned 27 on 27.00 paid
    seen_at = time.monotonic()
    deadline = seen_at + 1.0
    while True:
        got = chain.call(b, "member.find", identifier="6200123456789")["member"]["points"]
        if got == expected or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert got == expected, f"store B sees {got} points, not {expected}"
    assert time.monotonic() - seen_at <= 1.0
    # and the purchase (made in store A) is in the member's history seen from store B
    hist = chain.call(b, "member.history", identifier="6200123456789")
    assert "A-1" in str(hist)
