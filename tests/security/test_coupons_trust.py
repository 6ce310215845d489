"""Trust at the coupon gateway (issue 13, item 6), against real processes.

The attack: "The coupon gateway has no authentication and no `--curve`: `issuer.add`,
`coupon.define`, `member.price` (set to 0 → basket total 0 → "paid" without a
charge), `member.history`, `checkout.reverse` are open to any caller, and it trusts
the till's unit prices."

Here `lanecore gateway coupons --curve` runs in a subprocess with keys enrolled by
`lanecore keys gen --enrol` (a till, a manager, an attendant), over the store
catalogue in its own data directory (shampoo 30.00, soap 4.50). No payment gateway is
configured: a checkout the coupons pay in full is paid without one, any other fails
(`NO_PAYMENTS`) after it was priced — which shows the price it was given.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lanecore.core.promo.mqr import make_mqr
from lanecore.core.store.orderqr import Signer
from lanecore.gateway.net.client import Client, CurveKeys, ServiceError
from clirun import lanecore

pytestmark = pytest.mark.kernel_free

SHAMPOO = "06901234567892"
SOAP = "06901234567809"
PRICES = {SHAMPOO: 3000, SOAP: 450}
CUSTOMER = "C-7"
DEVICES = {"till-1": "till", "mgr-1": "manager", "att-1": "attendant"}
WALLET = Signer.generate()


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The coupon gateway's data directory: its catalogue, coupons.toml trusting the
    wallet key, the server key and DEVICES enrolled; the devices' keypairs."""
    from lanecore.core.scan.catalog import import_csv
    root = tmp_path_factory.mktemp("ctrust")
    d = root / "coupons"
    d.mkdir(mode=0o700)
    (d / "catalog.csv").write_text(
        "gtin,name,price_minor,unit_weight_g,weight_sd_g,flags\n"
        + "".join(f"{g},item {g},{p},400,4,\n" for g, p in PRICES.items()))
    assert import_csv(d, d / "catalog.csv").rows_bad == 0
    (d / "coupons.toml").write_text(f'store_id = "RM-01"\ncurrency = "GBP"\n'
                                    f'[wallet_keys]\nw1 = "{WALLET.public_key_b64()}"\n')
    lanecore("keys", "gen", "--server", "--data-dir", d)
    for name, role in DEVICES.items():
        lanecore("keys", "gen", "--name", name, "--role", role, "--dir", root / "devices",
                 "--enrol", "--data-dir", d)
    return d, root / "devices"


class Gateway:
    def __init__(self, data: Path, devices: Path, proc, endpoint: str):
        self.data, self.devices, self.proc, self.endpoint = data, devices, proc, endpoint

    def client(self, name: str, timeout_s: float = 10.0, retries: int = 1) -> Client:
        keys = CurveKeys.from_files(self.data / "keys" / "server.key",
                                    self.devices / f"{name}.key_secret")
        return Client(self.endpoint, curve=keys, timeout_s=timeout_s, retries=retries)


@pytest.fixture
def gateway(tmp_path, template):
    src, devices = template
    d = tmp_path / "coupons"
    shutil.copytree(src, d)
    endpoint = f"ipc://{tmp_path}/coupons.ipc"
    proc = subprocess.Popen([sys.executable, "-m", "lanecore", "gateway", "coupons",
                             "--curve", "--bind", endpoint, "--data-dir", str(d)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    gw = Gateway(d, devices, proc, endpoint)
    deadline = time.monotonic() + 60
    with gw.client("till-1", timeout_s=1.0, retries=0) as c:
        while True:
            try:
                assert c.call("hello")["currency"] == "GBP"
                break
            except ServiceError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise AssertionError(f"coupons did not start: {proc.stderr.read()}") \
                        from None
    yield gw
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def refused(c: Client, op: str, **fields) -> str:
    with pytest.raises(ServiceError) as e:
        c.call(op, **fields)
    return e.value.code


def qr(coupons, qr_id: str, token: str = "134567890123456789") -> str:
    return make_mqr(WALLET, key_id="w1", issuer="wallet", customer=CUSTOMER, token=token,
                    currency="GBP", coupons=coupons, qr_id=qr_id)


def soap_coupon(mgr: Client, coupon_id: str) -> str:
    return mgr.call("coupon.issue", coupon_def_id="SOAP-FREE", customer_id=CUSTOMER,
                    coupon_id=coupon_id)["coupon"]["coupon_id"]


DEFINITION = dict(coupon_def_id="SOAP-FREE", issuer_id="ACME", target_gtin=SOAP,
                  amount_off_minor=PRICES[SOAP], currency="GBP", valid_from=0,
                  valid_until=4_000_000_000)


def test_manager_ops_refuse_a_till_key_and_take_a_manager_key(gateway):
    with gateway.client("till-1") as till, gateway.client("mgr-1") as mgr, \
            gateway.client("att-1") as att:
        # the till key: every manager op refused, nothing done
        assert refused(till, "issuer.add", issuer_id="ACME", name="Acme") == "FORBIDDEN"
        assert refused(till, "coupon.define", definition=DEFINITION) == "FORBIDDEN"
        assert refused(till, "member.price", gtin=SHAMPOO, tier="basic",
                       price_minor=0) == "FORBIDDEN"
        m = till.call("member.enrol", card_no="88880007", name="Ann")["member"]
        assert refused(till, "member.history", identifier="88880007") == "FORBIDDEN"
        assert till.call("price.basket", lines=[{"code": SHAMPOO}],
                         member="88880007")["priced"]["total_minor"] == PRICES[SHAMPOO]
        # so the issuer and the coupon do not exist
        assert refused(mgr, "coupon.issue", coupon_def_id="SOAP-FREE",
                       customer_id=CUSTOMER) == "UNKNOWN_COUPON_DEF"

        # the manager key: each one done
        assert mgr.call("issuer.add", issuer_id="ACME", name="Acme")["issuer"][
            "issuer_id"] == "ACME"
        assert mgr.call("coupon.define", definition=DEFINITION)["definition"][
            "coupon_def_id"] == "SOAP-FREE"
        assert mgr.call("member.price", gtin=SOAP, tier="basic",
                        price_minor=400)["price_minor"] == 400
        assert till.call("price.basket", lines=[{"code": SOAP}],
                         member="88880007")["priced"]["total_minor"] == 400
        h = mgr.call("member.history", identifier="88880007")
        assert h["member"]["member_id"] == m["member_id"] and h["purchases"] == []
        assert att.call("member.history", identifier="88880007")["purchases"] == []

        # a checkout the coupon pays in full; only a manager reverses it
        cid = soap_coupon(mgr, "CPN-R1")
        r = till.call("checkout.mqr", order_no="R-1", till="TILL-1",
                      mqr=qr([(cid, SOAP, PRICES[SOAP])], "QR-R1"),
                      lines=[{"code": SOAP, "qty": 1}])
        assert r["status"] == "paid" and r["total_minor"] == 0, r
        assert refused(till, "checkout.reverse", order_no="R-1") == "FORBIDDEN"
        assert refused(att, "checkout.reverse", order_no="R-1") == "FORBIDDEN"
        assert till.call("checkout.status", order_no="R-1")["status"] == "paid"
        assert mgr.call("checkout.reverse", order_no="R-1")["status"] == "reversed"
        assert [c["coupon_id"] for c in till.call(
            "wallet.coupons", customer_id=CUSTOMER)["coupons"]] == [cid]


def test_a_tills_own_prices_cannot_lower_the_total(gateway):
    basket = [{"code": SHAMPOO, "qty": 2}, {"code": SOAP, "qty": 1}]
    catalogue_total = 2 * PRICES[SHAMPOO] + PRICES[SOAP]
    with gateway.client("till-1") as till, gateway.client("mgr-1") as mgr:
        mgr.call("issuer.add", issuer_id="ACME", name="Acme")
        mgr.call("coupon.define", definition=DEFINITION)
        cid = soap_coupon(mgr, "CPN-P1")
        # the attack: the till's own unit prices (or label prices, member prices,
        # families) -- refused, nothing priced, nothing held
        for field, value in (("unit_price_minor", 1), ("amount_minor", 1),
                             ("member_price_minor", 0), ("family", "free")):
            lines = [{**basket[0], field: value}, basket[1]]
            with pytest.raises(ServiceError) as e:
                till.call("price.basket", lines=lines)
            assert e.value.code == "PRICE_NOT_ACCEPTED"
            assert e.value.details["details"] == {"index": 0, "fields": [field]}
            with pytest.raises(ServiceError) as e:
                till.call("checkout.mqr", order_no="P-1", till="TILL-1",
                          mqr=qr([(cid, SOAP, PRICES[SOAP])], "QR-P1"), lines=lines)
            assert e.value.code == "PRICE_NOT_ACCEPTED"
        assert refused(till, "checkout.status", order_no="P-1") == "UNKNOWN_ORDER"
        # codes and quantities: the catalogue's prices
        p = till.call("price.basket", lines=basket)["priced"]
        assert (p["gross_minor"], p["total_minor"]) == (catalogue_total, catalogue_total)
        assert sorted((ln["gtin"], ln["qty"], ln["unit_price_minor"])
                      for ln in p["lines"]) == [(SOAP, 1, PRICES[SOAP]),
                                                (SHAMPOO, 2, PRICES[SHAMPOO])]
        assert refused(till, "price.basket", lines=[{"code": "05901234123457"}]) == \
            "UNKNOWN_ITEM"
        # the same QR (nothing was held by the refusals) at the catalogue's prices:
        # the coupon takes the soap, the rest would be charged (no payment gateway
        # here: the checkout fails, coupon released)
        r = till.call("checkout.mqr", order_no="P-1", till="TILL-1",
                      mqr=qr([(cid, SOAP, PRICES[SOAP])], "QR-P1"), lines=basket)
        assert (r["gross_minor"], r["discount_minor"], r["total_minor"]) == \
            (catalogue_total, PRICES[SOAP], 2 * PRICES[SHAMPOO])
        assert r["status"] == "failed" and r["payment"]["error"]["code"] == "NO_PAYMENTS"
        assert [c["coupon_id"] for c in till.call(
            "wallet.coupons", customer_id=CUSTOMER)["coupons"]] == [cid]


def test_the_wallet_simulator_downloads_with_an_enrolled_key(gateway, tmp_path):
    import json
    with gateway.client("mgr-1") as mgr:
        mgr.call("issuer.add", issuer_id="ACME", name="Acme")
        mgr.call("coupon.define", definition=DEFINITION)
        cid = soap_coupon(mgr, "CPN-W1")
    (tmp_path / "wallet").mkdir(mode=0o700)
    base = ["sim", "wallet", "--coupons", gateway.endpoint, "--customer", CUSTOMER,
            "--currency", "GBP", "--data-dir", tmp_path / "wallet"]
    r = lanecore(*base, "--server-key", gateway.data / "keys" / "server.key",
                 "--key", gateway.devices / "till-1.key_secret")
    assert json.loads(r.stdout)["coupons"] == [{"coupon_id": cid, "gtin": SOAP,
                                                "amount_minor": PRICES[SOAP]}]


def test_a_key_not_enrolled_gets_nothing_and_a_removed_one_is_refused(gateway):
    with gateway.client("att-1", timeout_s=5.0, retries=0) as att:
        assert att.call("hello")["store_id"] == "RM-01"
        (gateway.data / "keys" / "devices" / "att-1.key").unlink()
        removed, code = time.monotonic(), None
        while time.monotonic() - removed < 5.0:
            try:
                att.call("hello")
            except ServiceError as e:
                code = e.code
                break
            time.sleep(0.05)
        assert code == "AUTH_FAILED"
    with Client(gateway.endpoint, timeout_s=1.0, retries=0) as plain:    # no key
        assert refused(plain, "hello") == "TIMEOUT"
    with gateway.client("till-1") as till:
        assert till.call("hello")["currency"] == "GBP"


@pytest.mark.parametrize("args, code", [
    ([], "AUTH_REQUIRED"),
    (["--dev-open", "--bind", "tcp://0.0.0.0:5571"], "PLAIN_NOT_ALLOWED"),
])
def test_the_coupon_gateway_does_not_start_open(tmp_path, template, args, code):
    d = tmp_path / "coupons"
    shutil.copytree(template[0], d)
    bind = [] if "--bind" in args else ["--bind", f"ipc://{tmp_path}/c.ipc"]
    r = lanecore("gateway", "coupons", "--data-dir", d, *bind, *args, check=False)
    assert r.returncode == 2 and code in r.stderr, (r.returncode, r.stderr[-2000:])
