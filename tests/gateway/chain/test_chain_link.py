"""A store cut off from HQ keeps selling; when the link returns HQ's books equal every
store's ledger exactly (issue 16: "A store cut off from HQ for 60 s (its NATS link
stopped) keeps selling; after reconnection HQ's totals equal the sum of every store's
ledger exactly, with no event lost or applied twice").

Real processes: PostgreSQL and nats-server (fixtures), `lanecore hq`, and per store a
payment gateway over a provider simulator, the verification service and `lanecore
link`, whose NATS connection goes through a relay (gateway/db/relay.py) that the
test cuts for 60 s and restores."""

from __future__ import annotations

import random
import threading
import time

import pytest

from chainfix import chain_root, nats_server, pg_server, pg_url  # noqa: F401
from chainstack import (hq_books, start_hq, start_link, start_payments, stop, store_books,
                        wait_for)
from lanecore.gateway.db.relay import Relay
from lanecore.gateway.net.client import Client, ServiceError
from payfix import WECHAT_CODE, wallet, write_config

pytestmark = pytest.mark.slow

CUT_S = 60.0


class Shopper(threading.Thread):
    """Light, steady selling at one store: charges, now and then a refund of an
    earlier order, and a device fault reported to the service."""

    def __init__(self, store: str, gw: str, service: str, seed: int):
        super().__init__(daemon=True)
        self.store, self.gw, self.service = store, gw, service
        self.rng = random.Random(seed)
        self.stopping = threading.Event()
        self.paid: list[str] = []
        self.errors: list = []
        self.n = 0

    def run(self) -> None:
        with Client(self.gw, timeout_s=5, retries=2) as pay, \
                Client(self.service, timeout_s=5, retries=2) as svc:
            while not self.stopping.is_set():
                self.n += 1
                order = f"{self.store}-{self.n}"
                try:
                    r = pay.call("pay.charge", order_no=order,
                                 amount_minor=self.rng.randint(100, 9_999), currency="CNY",
                                 method="auth_code", terminal="T1", auth_code=WECHAT_CODE)
                    if r.get("status") == "paid":
                        self.paid.append(order)
                    if self.n % 4 == 0 and self.paid:
                        o = self.rng.choice(self.paid)
                        pay.call("pay.refund", order_no=o, refund_ref=f"{o}-R{self.n}",
                                 amount_minor=self.rng.randint(1, 50))
                    if self.n % 3 == 0:
                        svc.call("device.event", lane="L1", device="scale", kind="fault",
                                 code="DRIFT", message=f"drift {self.n}")
                except ServiceError as exc:
                    if exc.code not in ("REFUND_EXCEEDS_PAID",):
                        self.errors.append(repr(exc))
                self.stopping.wait(0.25)


def test_a_store_cut_off_for_60_s_sells_on_and_hq_balances_after(
        tmp_path, pg_url, nats_server, providers, serve):  # noqa: F811
    hq = start_hq(pg_url, nats_server.url, tmp_path)
    stores = {}
    try:
        for i, sid in enumerate(("s1", "s2")):
            prov = providers(f"wx{sid}", "wechat")
            pay_dir = tmp_path / f"pay-{sid}"
            pay_dir.mkdir()
            write_config(pay_dir, {"wx": wallet("wx", prov.endpoint, 1)})
            gw_ep = f"ipc://{tmp_path}/gw-{sid}.ipc"
            gw = start_payments(pay_dir, gw_ep)
            served = serve()
            relay = Relay(nats_server.port).start()
            if sid == "s1":
                link = start_link(sid, served.data_dir, relay.url, payments_dir=pay_dir)
            else:           # a store that names HQ in its lanecore.toml
                (served.data_dir / "lanecore.toml").write_text(
                    f'[chain]\nstore_id = "{sid}"\nnats = "{relay.url}"\n'
                    f'payments_dir = "{pay_dir}"\n')
                link = start_link(sid, served.data_dir, None)
            shopper = Shopper(sid, gw_ep, served.endpoint, seed=16 + i)
            stores[sid] = dict(pay_dir=pay_dir, gw=gw, served=served, relay=relay,
                               link=link, shopper=shopper)
        for s in stores.values():
            s["shopper"].start()

        def books(sid):
            s = stores[sid]
            return store_books(s["pay_dir"] / "payments.db", s["served"].data_dir / "store.db")

        def at_hq(sid):
            return hq_books(pg_url).get(sid, {"net_minor": 0, "events": {}})

        time.sleep(3)
        wait_for(lambda: at_hq("s1")["events"].get("payment"), 20, "s1 reaches HQ")

        # -- s1 cut off: its link's TCP path to NATS is severed for 60 s -------------
        stores["s1"]["relay"].cut()
        cut_at = time.monotonic()
        time.sleep(2)                   # what was in flight when the link was cut lands
        hq_s1_at_cut = at_hq("s1")
        sold_at_cut = books("s1")
        hq_s2_at_cut = at_hq("s2")
        time.sleep(CUT_S - (time.monotonic() - cut_at))
        sold_cut_off = books("s1")
        # s1 sold on meanwhile, none of it reached HQ; s2 went on reaching HQ
        assert sold_cut_off["events"]["payment"] > sold_at_cut["events"]["payment"] + 50
        assert stores["s1"]["shopper"].is_alive()
        assert at_hq("s1") == hq_s1_at_cut
        assert at_hq("s2")["events"]["payment"] > hq_s2_at_cut["events"].get("payment", 0)
        assert stores["s1"]["link"].poll() is None, "the link waits, it does not give up"

        # -- the link returns ----------------------------------------------------------
        stores["s1"]["relay"].restore()
        time.sleep(2)
        for s in stores.values():
            s["shopper"].stopping.set()
        for s in stores.values():
            s["shopper"].join(30)
            assert s["shopper"].errors == []

        def balanced():
            hq_now = hq_books(pg_url)
            want = {sid: books(sid) for sid in stores}
            return hq_now == want and hq_now
        final = wait_for(balanced, 30, "HQ equals every store's ledger")
        for sid in stores:
            ev = final[sid]["events"]
            assert ev["payment"] >= 100 and ev["refund"] >= 10 and ev["fault"] >= 20, ev
        # totals exactly the sums of the stores' ledgers, each event once
        assert sum(v["net_minor"] for v in final.values()) == sum(
            books(sid)["net_minor"] for sid in stores)
    finally:
        for s in stores.values():
            s["shopper"].stopping.set()
            stop(s["link"])
            s["relay"].cut()
            stop(s["gw"])
        stop(hq)
