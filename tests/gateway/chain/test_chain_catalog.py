"""Items pushed at HQ (``catalog.push``: the store's own price-list CSV) are in every
store's catalogue within 2 s — new items added, listed ones replaced — and a push
with a row a store's import would refuse is refused at HQ, reaching no store
(issue 16, Build 2: HQ publishes catalogue changes every store applies live).

Real PostgreSQL and nats-server (fixtures), `lanecore hq` with its ops and two
stores' `lanecore link` over their own `store.db`. What the test reads is each
store's catalogue (``core/scan/catalog.py`` ``item``); the running service's reload
on the catalogue's version is the price test's (`test_chain_prices.py`)."""

from __future__ import annotations


import pytest

from chainfix import chain_root, nats_server, pg_server, pg_url  # noqa: F401
from chainstack import start_hq, start_link, stop, wait_for
from lanecore.core.scan.catalog import import_csv, item
from lanecore.gateway.net.client import Client, ServiceError

pytestmark = pytest.mark.kernel_free

DEADLINE_S = 2.0          # the line: in force in every store within 2 s

HEADER = "gtin,name,price_minor,unit_weight_g,weight_sd_g,flags\n"
SHAMPOO, SOAP, TEA = "4006381333931", "5000112637922", "9780201379624"
STORES = ("c1", "c2")


def test_hq_catalogue_push_reaches_every_store_and_a_bad_one_none(
        tmp_path, pg_url, nats_server):  # noqa: F811
    hq_ep = f"ipc://{tmp_path}/hq.ipc"
    hq = start_hq(pg_url, nats_server.url, tmp_path, bind=hq_ep)
    procs, dirs = [], {}
    try:
        for sid in STORES:
            d = dirs[sid] = tmp_path / sid
            d.mkdir()
            (d / "catalog.csv").write_text(HEADER + f"{SHAMPOO},Shampoo 400 ml,3000,420,4,\n"
                                           f"{SOAP},Soap,450,100,2,\n")
            assert import_csv(d, d / "catalog.csv").rows_bad == 0
            procs.append(start_link(sid, d, nats_server.url))
        with Client(hq_ep, timeout_s=5, retries=1) as h:
            r = h.call("catalog.push", csv=HEADER + f"{SOAP},Soap 2-pack,800,200,3,\n"
                                                    f"{TEA},Green tea 50 bags,399,110,2,\n")
            assert r["rows"] == 2 and r["change_id"] > 0
            for sid in STORES:
                db = dirs[sid] / "store.db"
                wait_for(lambda db=db: (item(db, TEA) or {}).get("price_minor") == 399,
                        DEADLINE_S, f"the new item in {sid}")
                soap, tea, shampoo = item(db, SOAP), item(db, TEA), item(db, SHAMPOO)
                assert (soap["name"], soap["price_minor"]) == ("Soap 2-pack", 800)
                assert (tea["name"], tea["unit_weight_g"]) == ("Green tea 50 bags", 110)
                assert shampoo["price_minor"] == 3000          # not in the push: kept
            # a row the store's import refuses: refused at HQ, sent nowhere
            with pytest.raises(ServiceError) as e:
                h.call("catalog.push", csv=HEADER + f"{TEA},Green tea,12.50,110,2,\n")
            assert e.value.code == "BAD_CATALOG"
            assert e.value.details["details"]["errors"][0]["code"] == "BAD_PRICE"
            with pytest.raises(ServiceError) as e:
                h.call("catalog.push", csv="name,price_minor\nTea,399\n")
            assert e.value.code == "BAD_CATALOG"
            # the next good push still arrives after the refused ones (nothing stuck)
            h.call("catalog.push", csv=HEADER + f"{SHAMPOO},Shampoo 400 ml,2900,420,4,\n")
            for sid in STORES:
                db = dirs[sid] / "store.db"
                wait_for(lambda db=db: item(db, SHAMPOO)["price_minor"] == 2900,
                        DEADLINE_S, f"the second push in {sid}")
                assert item(db, TEA)["price_minor"] == 399
    finally:
        for p in procs:
            stop(p)
        stop(hq)
