"""A price or a promotion changed at HQ is in effect in every running store within 2 s
(issue 16, "Done when").

Real processes: PostgreSQL and nats-server (fixtures), `lanecore hq` with its ops, and
three stores, each with its verification service (`lanecore serve`), its coupon
gateway and its `lanecore link`. The test asks HQ (`price.set`, `promotion.set`,
`promotion.end`) and then each store's own answers: the service's `scan` price, the
coupon gateway's `price.basket`."""

from __future__ import annotations

import time

from chainfix import chain_root, nats_server, pg_server, pg_url  # noqa: F401
from chainstack import start_hq, start_link, stop
from lanecore.core.scan.catalog import import_csv
from lanecore.gateway.net.client import Client, ServiceError
from payfix import start_gateway

DEADLINE_S = 2.0          # the line: in effect in every store within 2 s
SHAMPOO = "4006381333931"
SOAP = "5000112637922"
STORES = ("p1", "p2", "p3")


def _in_time(check, t0: float, what: str):
    """``check()`` true before ``t0 + DEADLINE_S``; the seconds it took."""
    while True:
        if check():
            return time.monotonic() - t0
        if time.monotonic() - t0 > DEADLINE_S:
            raise AssertionError(f"{what}: not in effect within {DEADLINE_S} s")
        time.sleep(0.02)


def test_hq_prices_and_promotions_are_live_in_every_store_within_2_s(
        tmp_path, pg_url, nats_server, serve):  # noqa: F811
    hq_ep = f"ipc://{tmp_path}/hq.ipc"
    hq = start_hq(pg_url, nats_server.url, tmp_path, bind=hq_ep)
    stores, procs = {}, []
    try:
        for sid in STORES:
            d = tmp_path / sid
            d.mkdir()
            (d / "catalog.csv").write_text(
                "gtin,name,price_minor,unit_weight_g,weight_sd_g,flags\n"
                f"{SHAMPOO},Shampoo 400 ml,3000,420,4,\n{SOAP},Soap,450,100,2,\n")
            assert import_csv(d, d / "catalog.csv").rows_bad == 0
            (d / "coupons.toml").write_text('currency = "CNY"\n')
            served = serve(data_dir=d)
            coupons_ep = f"ipc://{tmp_path}/coupons-{sid}.ipc"
            procs.append(start_gateway("coupons", d, coupons_ep))
            procs.append(start_link(sid, d, nats_server.url, coupons=coupons_ep))
            stores[sid] = (Client(served.endpoint, timeout_s=2, retries=1),
                           Client(coupons_ep, timeout_s=2, retries=1))

        def scan_price(sid, gtin=SHAMPOO) -> int:
            return stores[sid][0].call("scan", lane="L1", code=gtin)["item"]["price_minor"]

        def basket(sid) -> dict:
            return stores[sid][1].call("price.basket", lines=[{"code": SOAP, "qty": 2}]
                                       )["priced"]["promotions_applied"]

        assert {scan_price(s) for s in STORES} == {3000}
        assert all(basket(s) == {} for s in STORES)
        took = []
        with Client(hq_ep, timeout_s=5, retries=1) as h:
            # -- a price, twice over ------------------------------------------------------
            for price in (2790, 2650):
                t0 = time.monotonic()
                r = h.call("price.set", gtin=SHAMPOO, price_minor=price)
                assert r["changed"] and r["gtin"] == "0" + SHAMPOO
                for sid in STORES:
                    took.append(_in_time(lambda: scan_price(sid) == price, t0,
                                         f"{sid} price {price}"))
                assert scan_price(STORES[0], SOAP) == 450      # nothing else moved
            again = h.call("price.set", gtin=SHAMPOO, price_minor=2650)
            assert again["changed"] is False and again["change_id"] == r["change_id"]
            assert h.call("price.get", gtin=SHAMPOO)["price_minor"] == 2650

            # -- a promotion made, then ended --------------------------------------------
            t0 = time.monotonic()
            p = h.call("promotion.set", promo_id="HQ-SOAP",
                       definition={"kind": "item", "gtin": SOAP, "amount_off_minor": 50})
            assert p["changed"]
            for sid in STORES:
                took.append(_in_time(lambda: basket(sid) == {"HQ-SOAP": 100}, t0,
                                     f"{sid} promotion"))
            same = h.call("promotion.set", promo_id="HQ-SOAP",
                          definition={"kind": "item", "gtin": SOAP, "amount_off_minor": 50})
            assert same["changed"] is False
            try:
                h.call("promotion.set", promo_id="HQ-SOAP",
                       definition={"kind": "item", "gtin": SOAP, "amount_off_minor": 60})
                raise AssertionError("another promotion under the same id was taken")
            except ServiceError as exc:
                assert exc.code == "PROMO_EXISTS"
            t0 = time.monotonic()
            h.call("promotion.end", promo_id="HQ-SOAP")
            for sid in STORES:
                took.append(_in_time(lambda: basket(sid) == {}, t0, f"{sid} promotion ended"))
        print(f"chain prices test: in effect in every store after "
              f"{', '.join(f'{t:.2f}' for t in took)} s")
    finally:
        for s, c in stores.values():
            s.close()
            c.close()
        for p in procs:
            stop(p)
        stop(hq)
