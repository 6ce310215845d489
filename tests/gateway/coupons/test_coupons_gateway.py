"""The coupon gateway (seed 001) over real processes: a wallet provider simulator,
`lanecore gateway payments`, `lanecore gateway coupons` and `lanecore sim wallet`.

Seed 001's example; forged, expired, replayed and altered QRs each with their own
code; 50 tills racing for one coupon across two gateway processes; a failed payment
leaving every coupon and point unspent; a kill -9 between charging and redeeming;
reversal; members with their prices, points and history. The till sends codes and
quantities; the prices are the store catalogue's (here in the gateway's own data
directory: 30.00 shampoo, 4.50 soap)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import zlib

import pytest

from lanecore.core.promo.mqr import make_mqr
from lanecore.core.scan.catalog import import_csv
from lanecore.core.store.orderqr import Signer
from lanecore.gateway.net.client import Client, CurveKeys, ServiceError
from lanecore.gateway.coupons import CouponGateway

from payfix import start_gateway, wallet, write_config
from chainfix import chain_root, pg_server  # noqa: F401 - the [postgresql] runs
from dbfix import db_toml  # noqa: F401 - [sqlite] and [postgresql]

SHAMPOO = "06901234567892"          # GTIN-14 with a good check digit
SOAP = "06901234567809"
CUSTOMER = "C-1001"
DAY = 86_400
CATALOGUE = ("gtin,name,price_minor,unit_weight_g,weight_sd_g,flags\n"
             f"{SHAMPOO},Shampoo 400 ml,3000,420,4,\n{SOAP},Soap,450,100,2,\n")


def stock_catalogue(data_dir, text: str = CATALOGUE) -> None:
    """The store catalogue the coupon gateway prices lines from (its own data dir)."""
    (data_dir / "catalog.csv").write_text(text)
    assert import_csv(data_dir, data_dir / "catalog.csv").rows_bad == 0


@pytest.fixture
def stack(tmp_path, providers, db_toml):  # noqa: F811 - the dbfix fixture
    """A provider, a payment gateway process, and a coupon gateway data dir that
    trusts a wallet key (in `wallet/`)."""
    p = providers("wx", "wechat")
    pay_dir = tmp_path / "pay"
    pay_dir.mkdir()
    write_config(pay_dir, {"wx": wallet("wx", p.endpoint, 1)})
    pay_ep = f"ipc://{tmp_path}/pay.ipc"
    pay = start_gateway("payments", pay_dir, pay_ep)
    wallet_dir = tmp_path / "wallet"
    wallet_dir.mkdir()
    signer = Signer.load_or_create(wallet_dir)
    cdir = tmp_path / "coupons"
    cdir.mkdir()
    stock_catalogue(cdir)
    (cdir / "coupons.toml").write_text(f'''store_id = "RM-01"
currency = "CNY"
[payments]
endpoint = "{pay_ep}"
terminal = "TILL-1"
timeout_s = 5
[wallet_keys]
w1 = "{signer.public_key_b64()}"
[members]
earn_per_minor = 100
''' + db_toml)
    state = {"provider": p, "pay_dir": pay_dir, "pay_ep": pay_ep, "cdir": cdir,
             "wallet_dir": wallet_dir, "signer": signer, "tmp": tmp_path, "procs": [pay]}
    yield state
    for proc in state["procs"]:
        proc.terminate()
        proc.wait(10)


def setup_coupons(gw_call, n=1, amount=500, gtin=SHAMPOO, customer=CUSTOMER):
    gw_call("issuer.add", issuer_id="ACME", name="Acme Hair Care")
    gw_call("coupon.define", definition=dict(
        coupon_def_id="SHAMPOO-5", issuer_id="ACME", target_gtin=gtin,
        amount_off_minor=amount, currency="CNY", valid_from=0, valid_until=4_000_000_000))
    return [gw_call("coupon.issue", coupon_def_id="SHAMPOO-5", customer_id=customer,
                    coupon_id=f"CPN-{i}")["coupon"]["coupon_id"] for i in range(n)]


def in_process(stack):
    gw = CouponGateway(stack["cdir"])
    counter = iter(range(10 ** 9))

    def call(op, **fields):
        r = gw.handle({"op": op, "id": f"t{next(counter)}", **fields}, "till")
        if not r["ok"]:
            raise ServiceError(r["error"]["code"], r["error"]["message"], r["error"])
        return r
    return gw, call


def mqr(stack, coupons, *, qr_id=None, token="134567890123456789", now=None, ttl_s=120,
        signer=None, customer=CUSTOMER):
    return make_mqr(signer or stack["signer"], key_id="w1", issuer="wallet", customer=customer,
                    token=token, currency="CNY", coupons=coupons, now=now, ttl_s=ttl_s,
                    qr_id=qr_id)


def provider_db(stack):
    return sqlite3.connect(stack["provider"].data_dir / "wechat.sqlite")


def trades(stack) -> dict:
    con = provider_db(stack)
    try:
        return dict(con.execute("SELECT merchant_ref, amount_minor FROM trades WHERE status "
                                "IN ('paid', 'refunded')"))
    finally:
        con.close()


def redemptions(stack) -> list:
    con = provider_db(stack)
    try:
        return con.execute("SELECT merchant_ref, coupon_id, gtin, amount_minor FROM "
                           "redemptions ORDER BY merchant_ref").fetchall()
    finally:
        con.close()


LINES = [{"code": SHAMPOO, "qty": 1}, {"code": SOAP, "qty": 2}]


# --------------------------------------------------------------------------------------

def test_seed_001_one_scan_pays_the_rest_and_the_manufacturer_owes_the_coupon(stack):
    cep = f"ipc://{stack['tmp']}/coupons.ipc"
    proc = start_gateway("coupons", stack["cdir"], cep)
    try:
        with Client(cep, timeout_s=10, retries=1) as c:
            (cid,) = setup_coupons(lambda op, **f: c.call(op, **f))
            # the shopper's wallet downloads the coupon and shows one QR
            out = subprocess.run(
                [sys.executable, "-m", "lanecore", "sim", "wallet", "--coupons", cep,
                 "--customer", CUSTOMER, "--data-dir", str(stack["wallet_dir"]),
                 "--png", str(stack["tmp"] / "mqr.png")],
                capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            shown = json.loads(out.stdout)
            assert shown["coupons"] == [{"coupon_id": cid, "gtin": SHAMPOO,
                                         "amount_minor": 500}]
            assert (stack["tmp"] / "mqr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            # the cashier scanned a 30.00 shampoo; one scan of the QR
            r = c.call("checkout.mqr", order_no="ORD-001", till="TILL-1", mqr=shown["mqr"],
                       lines=[{"code": SHAMPOO, "qty": 1}])
            assert r["status"] == "paid", r
            assert (r["gross_minor"], r["discount_minor"], r["total_minor"]) == \
                (3000, 500, 2500)
            assert r["coupons_applied"][cid]["amount_minor"] == 500
            assert r["payment"]["amount_minor"] == 2500
            # the provider charged 25.00 and recorded the redemption
            assert trades(stack) == {"ORD-001-1": 2500}
            assert redemptions(stack) == [("ORD-001-1", cid, SHAMPOO, 500)]
            # the clearing report: 5.00 owed by the manufacturer
            rep = c.call("clearing.report", issuer_id="ACME")
            assert rep["totals"] == {"ACME": {"CNY": 500}}
            assert [(x["coupon_id"], x["order_no"], x["store_id"], x["amount_minor"])
                    for x in rep["rows"]] == [(cid, "ORD-001", "RM-01", 500)]
            # the wallet no longer offers it; a retry of the scan is the same answer
            assert c.call("wallet.coupons", customer_id=CUSTOMER)["coupons"] == []
            again = c.call("checkout.mqr", order_no="ORD-001", till="TILL-1",
                           mqr=shown["mqr"], lines=[{"code": SHAMPOO, "qty": 1}])
            assert again["status"] == "paid" and trades(stack) == {"ORD-001-1": 2500}
    finally:
        proc.terminate()
        assert proc.wait(10) == 0, proc.stderr.read()


def test_forged_expired_replayed_and_altered_qrs_each_have_their_code(stack):
    gw, call = in_process(stack)
    (cid,) = setup_coupons(call)
    good = mqr(stack, [(cid, SHAMPOO, 500)], qr_id="Q-1")
    one_byte = good[:40] + ("A" if good[40] != "A" else "B") + good[41:]
    forged = mqr(stack, [(cid, SHAMPOO, 500)], signer=Signer.generate(), qr_id="Q-2")
    expired = mqr(stack, [(cid, SHAMPOO, 500)], now=1_000_000, ttl_s=60, qr_id="Q-3")
    codes = {}
    for name, text in (("altered", one_byte), ("forged", forged), ("expired", expired)):
        with pytest.raises(ServiceError) as e:
            call("checkout.mqr", order_no=f"X-{name}", till="TILL-1", mqr=text, lines=LINES)
        codes[name] = e.value.code
    assert call("checkout.mqr", order_no="X-1", till="TILL-1", mqr=good,
                lines=LINES)["status"] == "paid"
    with pytest.raises(ServiceError) as e:         # the same QR at another order
        call("checkout.mqr", order_no="X-2", till="TILL-1", mqr=good, lines=LINES)
    codes["replayed"] = e.value.code
    assert codes == {"altered": "MQR_ALTERED", "forged": "MQR_FORGED",
                     "expired": "MQR_EXPIRED", "replayed": "MQR_REPLAYED"}
    assert len(set(codes.values())) == 4
    assert trades(stack) == {"X-1-1": 3000 + 900 - 500}        # only the good one paid
    # a forger who recomputes the check is a forgery, not an alteration
    head = good[:-9]
    assert zlib.crc32(head.encode()) == int(good[-8:], 16)
    gw.close()


def _authenticated(stack) -> CurveKeys:
    """The stack under authentication: a payment gateway that takes only signed
    requests (the coupon gateway its terminal COUPONS, role coupons, key in
    coupons.toml), and the coupon gateway's callers enrolled CurveZMQ keys — here a
    till identity; its CurveKeys."""
    from curvefix import enrol
    pay_dir = stack["tmp"] / "pay-auth"
    pay_dir.mkdir()
    write_config(pay_dir, {"wx": wallet("wx", stack["provider"].endpoint, 1)},
                 pos={"auth": "hmac"})
    out = subprocess.run([sys.executable, "-m", "lanecore", "terminal", "add", "COUPONS",
                          "--role", "coupons", "--data-dir", str(pay_dir)],
                         capture_output=True, text=True, check=True).stdout
    key = json.loads(out)["key"]
    pay_ep = f"ipc://{stack['tmp']}/pay-auth.ipc"
    stack["procs"].append(start_gateway("payments", pay_dir, pay_ep))
    toml = stack["cdir"] / "coupons.toml"
    text = toml.read_text().replace(f'endpoint = "{stack["pay_ep"]}"\nterminal = "TILL-1"',
                                    f'endpoint = "{pay_ep}"\nterminal = "COUPONS"\n'
                                    f'key = "{key}"')
    assert 'terminal = "COUPONS"' in text
    toml.write_text(text)
    toml.chmod(0o600)                      # it holds a terminal key
    stack["pay_dir"] = pay_dir
    return CurveKeys(*enrol(stack["cdir"], stack["tmp"] / "till-key", "till-1", "till"))


@pytest.mark.parametrize("auth", ["dev", "signed"])
def test_fifty_tills_racing_for_one_coupon_across_two_gateways(stack, auth):
    """In development mode, and again with every caller authenticated: tills by their
    CurveZMQ keys at two coupon gateways, which sign every payment request."""
    curve = _authenticated(stack) if auth == "signed" else None
    _, call = in_process(stack)
    (cid,) = setup_coupons(call)
    eps = [f"ipc://{stack['tmp']}/c{i}.ipc" for i in range(2)]
    procs = [start_gateway("coupons", stack["cdir"], ep, curve=curve) for ep in eps]
    results, go = [], threading.Barrier(50)

    def till(i):
        text = mqr(stack, [(cid, SHAMPOO, 500)], qr_id=f"RACE-{i}",
                   token=f"13{i:016d}")
        with Client(eps[i % 2], timeout_s=30, retries=0, curve=curve) as c:
            go.wait()
            results.append(c.call("checkout.mqr", order_no=f"R-{i:02d}", till=f"T{i}",
                                  mqr=text, lines=LINES[:1]))
    threads = [threading.Thread(target=till, args=(i,)) for i in range(50)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    assert len(results) == 50 and all(r["status"] == "paid" for r in results)
    won = [r for r in results if cid in r["coupons_applied"]]
    assert len(won) == 1 and won[0]["total_minor"] == 2500
    assert sorted(r["coupons_rejected"].get(cid) for r in results
                  if r is not won[0]) == ["COUPON_USED"] * 49
    assert [x[1] for x in redemptions(stack)] == [cid]
    rep = call("clearing.report")
    assert len(rep["rows"]) == 1 and rep["totals"] == {"ACME": {"CNY": 500}}
    assert sum(trades(stack).values()) == 2500 + 49 * 3000


def test_a_failed_payment_leaves_every_coupon_and_point_unspent(stack):
    gw, call = in_process(stack)
    cids = setup_coupons(call, n=2)
    member = call("member.enrol", card_no="88880001", name="Ann")["member"]
    gw.members.adjust(member["member_id"], 1000, ref="welcome", reason="welcome gift",
                      now=gw.clock())
    stack["provider"].conn.configure(next=["NOTENOUGH"])
    text = mqr(stack, [(cids[0], SHAMPOO, 500), (cids[1], SHAMPOO, 500)], qr_id="F-1")
    lines = [{"code": SHAMPOO, "qty": 2}]
    r = call("checkout.mqr", order_no="F-1", till="TILL-1", mqr=text, lines=lines,
             member="88880001", points=300)
    assert r["status"] == "failed" and r["payment"]["decline_code"] == "NOTENOUGH", r
    assert r["points_redeemed"] == 300 and len(r["coupons_applied"]) == 2
    for cid in cids:                                 # both back in the wallet
        assert gw.book.coupon(cid).state == "issued"
    assert call("clearing.report")["rows"] == [] and trades(stack) == {}
    assert gw.members.balance(member["member_id"]) == 1000      # points given back
    # a fresh QR for the same order then pays, with the same coupons
    text2 = mqr(stack, [(cids[0], SHAMPOO, 500), (cids[1], SHAMPOO, 500)], qr_id="F-2")
    r2 = call("checkout.mqr", order_no="F-1", till="TILL-1", mqr=text2, lines=lines,
              member="88880001")
    assert r2["status"] == "paid" and r2["total_minor"] == 5000
    assert {x[1] for x in redemptions(stack)} == set(cids)
    gw.close()


@pytest.mark.parametrize("point", ["after_hold", "after_payment"])
def test_kill_9_between_holding_and_redeeming_charges_once_and_redeems_once(stack, point):
    _, call = in_process(stack)
    (cid,) = setup_coupons(call)
    import os
    cep = f"ipc://{stack['tmp']}/k.ipc"
    env = dict(os.environ, LANECORE_COUPONS_CRASH=point)
    proc = start_gateway("coupons", stack["cdir"], cep, env=env)
    text = mqr(stack, [(cid, SHAMPOO, 500)], qr_id="K-1")
    with Client(cep, timeout_s=3, retries=0) as c:
        with pytest.raises(ServiceError) as e:
            c.call("checkout.mqr", order_no="K-1", till="TILL-1", mqr=text, lines=LINES[:1])
        assert e.value.code == "TIMEOUT"
    assert proc.wait(10) == -9
    expected = {} if point == "after_hold" else {"K-1-1": 2500}
    assert trades(stack) == expected
    proc = start_gateway("coupons", stack["cdir"], cep)        # restart: recovery
    try:
        with Client(cep, timeout_s=10, retries=1) as c:
            r = c.call("checkout.mqr", order_no="K-1", till="TILL-1", mqr=text,
                       lines=LINES[:1])                    # the till asks again
            assert r["status"] == "paid" and r["total_minor"] == 2500
            assert c.call("clearing.report")["totals"] == {"ACME": {"CNY": 500}}
    finally:
        proc.terminate()
        proc.wait(10)
    assert trades(stack) == {"K-1-1": 2500}                     # charged once
    assert [x[1] for x in redemptions(stack)] == [cid]          # redeemed once


def test_reverse_returns_the_coupon_and_the_money(stack):
    gw, call = in_process(stack)
    (cid,) = setup_coupons(call)
    text = mqr(stack, [(cid, SHAMPOO, 500)], qr_id="V-1")
    assert call("checkout.mqr", order_no="V-1", till="TILL-1", mqr=text,
                lines=LINES[:1])["status"] == "paid"
    r = call("checkout.reverse", order_no="V-1")
    assert r["status"] == "reversed"
    assert gw.book.coupon(cid).state == "issued"
    assert call("clearing.report")["totals"] == {}
    assert trades(stack) == {}                          # the provider gave it back
    assert [c["coupon_id"] for c in call("wallet.coupons",
                                         customer_id=CUSTOMER)["coupons"]] == [cid]
    with pytest.raises(ServiceError) as e:
        call("checkout.reverse", order_no="NOPE")
    assert e.value.code == "UNKNOWN_ORDER"
    # a return on another day: refunded in full, the coupon back again
    text = mqr(stack, [(cid, SHAMPOO, 500)], qr_id="V-2", token="134567890123456781")
    assert call("checkout.mqr", order_no="V-2", till="TILL-1", mqr=text,
                lines=LINES[:1])["status"] == "paid"
    assert gw.book.coupon(cid).state == "redeemed"
    r = call("checkout.reverse", order_no="V-2", refund_ref="RET-V-2")
    assert r["status"] == "reversed" and gw.book.coupon(cid).state == "issued"
    con = provider_db(stack)
    assert con.execute("SELECT amount_minor FROM refunds").fetchall() == [(2500,)]
    con.close()
    gw.close()


def test_members_prices_points_and_history(stack):
    gw, call = in_process(stack)
    m = call("member.enrol", card_no="88880002", phone="+8613800138000", name="Bo",
             tier="gold")["member"]
    call("member.price", gtin=SOAP, tier="gold", price_minor=400)
    p = call("price.basket", lines=LINES, member="+8613800138000")["priced"]
    assert p["total_minor"] == 3000 + 2 * 400 and p["member_id"] == m["member_id"]
    assert call("price.basket", lines=LINES)["priced"]["total_minor"] == 3900
    text = mqr(stack, [], qr_id="M-1")
    r = call("checkout.mqr", order_no="M-1", till="TILL-1", mqr=text, lines=LINES,
             member="88880002")
    assert r["status"] == "paid" and r["total_minor"] == 3800
    assert call("member.find", identifier="88880002")["member"]["points"] == 38
    text = mqr(stack, [], qr_id="M-2", token="134567890123456780")
    r = call("checkout.mqr", order_no="M-2", till="TILL-1", mqr=text, lines=LINES[1:],
             member="88880002", points=30)
    assert r["points_redeemed"] == 30 and r["total_minor"] == 800 - 30
    h = call("member.history", identifier="+8613800138000")
    assert [x["order_no"] for x in h["purchases"]] == ["M-2", "M-1"]
    assert h["member"]["points"] == 38 - 30 + 7
    gw.close()


def test_a_printed_gs1_coupon_is_read_at_the_till(stack):
    gw, call = in_process(stack)
    r = call("coupon.parse", code="]C18110012345612345611110123")
    (c,) = r["coupons"]
    assert c["ai"] == "8110" and c["company_prefix"] == "123456" and \
        c["offer_code"] == "123456"
    import msgpack
    msgpack.packb(r)                                     # every value fits the wire
    with pytest.raises(ServiceError) as e:
        call("coupon.parse", code="]C10105012345678900")
    assert e.value.code == "NOT_A_COUPON"
    with pytest.raises(ServiceError) as e:
        call("coupon.parse", code="]C1811001234")
    assert e.value.code in ("COUPON_FORMAT", "BAD_AI_VALUE")
    gw.close()
