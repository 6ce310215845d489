"""Chain coupon checkout p50: the coupon gateway on PostgreSQL against the same gateway
on SQLite, interleaved in one loop (``_paired.paired``: each round one checkout on
each side, the order alternating) — issue 16's "chain coupon checkout p50 on
PostgreSQL against the same on SQLite".

Both sides are the whole one-scan checkout a till asks for over ZeroMQ
(``checkout.mqr``): the QR checked, the chain coupon held (``BEGIN IMMEDIATE``: the
file's write lock on SQLite, the advisory writer lock on PostgreSQL), the basket
priced, the payment gateway process charged through a provider simulator, the coupon
redeemed and its clearing row written. The payment gateway and the provider are the
same processes for both sides; only the coupon gateway's storage differs. Each round's
coupon is issued outside the timed window (``setup``).

Under ``--benchmark-disable`` (CI) a few rounds check every reply (paid, the coupon
applied, one clearing row per coupon) and record no figure."""

from __future__ import annotations

import itertools
import threading

import pytest

from _paired import paired
from chainfix import chain_root, pg_server, pg_url  # noqa: F401
from lanecore.core.promo.mqr import make_mqr
from lanecore.core.scan.catalog import import_csv
from lanecore.core.store.orderqr import Signer
from lanecore.gateway.coupons import CouponGateway
from lanecore.gateway.net.client import Client
from payfix import providers, start_gateway, wallet, write_config  # noqa: F401

SHAMPOO = "06901234567892"
CATALOGUE = ("gtin,name,price_minor,unit_weight_g,weight_sd_g,flags\n"
             f"{SHAMPOO},Shampoo 400 ml,3000,420,4,\n")


@pytest.fixture
def sides(tmp_path, providers, pg_url):  # noqa: F811 - the payfix/chainfix fixtures
    prov = providers("wx", "wechat")
    pay_dir = tmp_path / "pay"
    pay_dir.mkdir()
    write_config(pay_dir, {"wx": wallet("wx", prov.endpoint, 1)})
    pay_ep = f"ipc://{tmp_path}/pay.ipc"
    pay = start_gateway("payments", pay_dir, pay_ep)
    (tmp_path / "wallet").mkdir()
    signer = Signer.load_or_create(tmp_path / "wallet")
    gws, threads, eps = {}, [], {}
    try:
        for side, db in (("sqlite", ""), ("postgresql", f'[db]\nurl = "{pg_url}"\n')):
            d = tmp_path / side
            d.mkdir()
            (d / "catalog.csv").write_text(CATALOGUE)
            assert import_csv(d, d / "catalog.csv").rows_bad == 0
            (d / "coupons.toml").write_text(
                f'store_id = "BENCH-{side}"\ncurrency = "CNY"\n[payments]\n'
                f'endpoint = "{pay_ep}"\nterminal = "TILL-1"\ntimeout_s = 10\n'
                f'[wallet_keys]\nw1 = "{signer.public_key_b64()}"\n' + db)
            gw = gws[side] = CouponGateway(d)
            ep = eps[side] = f"ipc://{tmp_path}/{side}.ipc"
            ready = threading.Event()

            def run(gw=gw, ep=ep, ready=ready):
                try:
                    gw.serve(ep, ready=ready.set)
                finally:
                    gw.close()
            t = threading.Thread(target=run, daemon=True)
            t.start()
            threads.append(t)
            assert ready.wait(20)
        yield eps, signer, {s: gws[s].db_url for s in gws}
    finally:
        for gw in gws.values():
            gw.stop()
        for t in threads:
            t.join(10)
        pay.terminate()
        pay.wait(10)


def test_chain_coupon_checkout_p50_postgresql_vs_sqlite(sides, figures, note, request):
    eps, signer, urls = sides
    real = not request.config.getoption("benchmark_disable")
    clients = {s: Client(ep, timeout_s=30, retries=0) for s, ep in eps.items()}
    try:
        for c in clients.values():
            c.call("issuer.add", issuer_id="ACME", name="Acme Hair Care")
            c.call("coupon.define", definition=dict(
                coupon_def_id="CHAIN-5", issuer_id="ACME", target_gtin=SHAMPOO,
                amount_off_minor=500, currency="CNY", valid_from=0,
                valid_until=4_000_000_000))
        n = itertools.count()
        issued: dict[str, list[str]] = {s: [] for s in clients}

        def setup(r: int, side: str) -> tuple:
            k = next(n)
            customer = f"C{k}"
            cid = clients[side].call("coupon.issue", coupon_def_id="CHAIN-5",
                                     customer_id=customer)["coupon"]["coupon_id"]
            issued[side].append(cid)
            text = make_mqr(signer, key_id="w1", issuer="wallet", customer=customer,
                            token=f"13{k:016d}", currency="CNY",
                            coupons=[(cid, SHAMPOO, 500)], qr_id=f"B{k}")
            return (f"{side[:2].upper()}{k}", text, cid)

        def checkout(side):
            def call(order_no, text, cid):
                r = clients[side].call("checkout.mqr", order_no=order_no, till="T1", mqr=text,
                                       lines=[{"code": SHAMPOO, "qty": 1}])
                return r, cid
            return call

        def check(out: dict) -> None:
            for side, (r, cid) in out.items():
                assert r["status"] == "paid", (side, r)
                assert cid in r["coupons_applied"] and r["total_minor"] == 2500, (side, r)

        rounds = 300 if real else 4
        res = paired({"postgresql": checkout("postgresql"), "sqlite": checkout("sqlite")},
                     rounds=rounds, warmup=20 if real else 1, setup=setup, check=check)
        # every checkout redeemed its coupon: exactly one clearing row each, each side
        for side, c in clients.items():
            rep = c.call("clearing.report")
            assert sorted(row["coupon_id"] for row in rep["rows"]) == sorted(issued[side])
        fig = figures.slowdown("chain coupon checkout p50: PostgreSQL vs SQLite", res,
                               "postgresql", "sqlite")
        pg, sq = res.sides["postgresql"], res.sides["sqlite"]
        note(f"chain coupon checkout (checkout.mqr, payment gateway + provider simulator): "
             f"p50 PostgreSQL {pg.median * 1e3:.2f} ms, SQLite {sq.median * 1e3:.2f} ms → "
             f"{fig['value']:.2f} × (per-round median {fig['median']:.2f} ×); "
             f"{res.rounds} pairs; {res.load}")
    finally:
        for c in clients.values():
            c.close()
