"""Dynamic QR end to end (issue 17, Build 4): a wallet's own merchant-presented QR
(``pay.present``) against the wallet's simulator over its real HTTPS API, the payment
gateway's notification listener (gateway/payments/notify.py) on loopback with the
test PKI, the poll, both in either order — paid exactly once — a tampered
notification refused, an expired QR closed at the wallet, and the till's wallet QR
through a gateway process and the customer display on a pty.

The gateway runs in-process (``PaymentGateway(d)``; this test is its loop:
``on_io`` takes the listener's notifications, ``on_idle`` polls) or, for the till,
as ``lanecore gateway payments``."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from lanecore.gateway.net import protocol as P
from lanecore.gateway.net.auth import auth_frame
from lanecore.gateway.payments.gateway import PaymentGateway
from lanecore.gateway.payments.httpapi import HttpsClient

from payfix import wallet, write_config

pytestmark = pytest.mark.kernel_free

PROTOCOLS = ["alipay", "wechatpay-v2"]
KIND = {"alipay": "alipay", "wechatpay-v2": "wechat"}
#: what each wallet's QR content looks like
CODE_URL = {"alipay": "https://qr.alipay.com/", "wechatpay-v2": "weixin://wxpay/bizpayurl"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rig:
    """A wallet simulator (its real protocol), a gateway data directory whose
    channel ``w`` takes ``qr``, and ``[notify]`` on a free loopback port with a
    certificate of the simulator's test CA (the CA the simulator's notifier
    trusts)."""

    def __init__(self, tmp_path: Path, providers, protocol: str, *, expire_s=300.0,
                 poll_every_s=600.0):
        self.protocol = protocol
        self.p = providers("w", KIND[protocol], protocol=protocol)
        tls = Path(self.p.ready["ca_file"]).parent
        self.d = tmp_path / "gw"
        self.d.mkdir()
        self.port = free_port()
        write_config(self.d, {"w": wallet("w", self.p, 1, methods=["auth_code", "qr"])},
                     policy={"poll_every_s": poll_every_s,
                             "give_up_after_s": max(poll_every_s, 30)},
                     pos={"auth": "hmac"})
        with open(self.d / "payments.toml", "a") as f:
            f.write("[notify]\n"
                    f'bind = "127.0.0.1:{self.port}"\n'
                    f'public_url = "https://127.0.0.1:{self.port}"\n'
                    f'cert_file = "{tls / "server.pem"}"\n'
                    f'key_file = "{tls / "server.key"}"\n'
                    f"expire_s = {expire_s}\n")
        self.sim = HttpsClient(self.p.endpoint, ca_file=self.p.ready["ca_file"])
        self.gw: PaymentGateway | None = None

    def start(self, clock=time.time) -> PaymentGateway:
        #: what the gateway publishes on its events (topic, event)
        self.events: list = []
        self.gw = PaymentGateway(self.d, clock=clock,
                                 publish=lambda topic, ev: self.events.append((topic, ev)))
        # the handheld: a terminal with the handheld role, signing every request
        _, self.key = self.gw.terminals.register("HH1", roles="handheld")
        _, self.staff_key = self.gw.terminals.register("AT1", roles="attendant")
        return self.gw

    def call(self, op: str, rid: str, *, who="HH1", key=None, ts=None, **fields) -> dict:
        """``op`` signed by terminal ``who`` (the handheld by default) at ``ts``."""
        payload = P.pack({"op": op, "id": rid, **fields})
        frame = auth_frame(who, key or self.key, payload, ts=ts)
        return P.unpack(self.gw.handle_signed(payload, frame, f"pos:{who}"))

    def present(self, rid: str, order_no: str, amount: int, **kw) -> dict:
        return self.call("pay.present", rid, order_no=order_no, amount_minor=amount,
                         currency="CNY", terminal="HH1", **kw)

    def scan(self, ref: str, outcome: str = "paid") -> dict:
        """The shopper's wallet pays (or cancels) the presented order at the
        simulator, which then sends its signed notification to the notify URL."""
        r = self.sim.request("POST", "/_sim/scan", json.dumps(
            {"merchant_ref": ref, "outcome": outcome}).encode(),
            {"Content-Type": "application/json"})
        assert r is not None and r.status == 200, r
        return json.loads(r.body)

    def pump(self, until, timeout_s: float = 30.0) -> bool:
        """Run the gateway's loop work (notifications in) until ``until()``."""
        end = time.monotonic() + timeout_s
        while not until():
            if time.monotonic() > end:
                return False
            self.gw.on_io(lambda frames: None)
            time.sleep(0.01)
        return True

    def charge(self, ref: str):
        return self.gw.ledger.get(ref)

    def paid_steps(self, ref: str) -> list:
        return [s for s in self.gw.ledger.steps(ref) if s[2] == "paid"]

    def source(self, ref: str) -> str | None:
        return self.gw._presented(ref)["source"]

    def close(self):
        if self.gw is not None:
            self.gw.stop_notify()
            self.gw.ledger.close()


@pytest.fixture(params=PROTOCOLS)
def rig(request, tmp_path, providers):
    r = Rig(tmp_path, providers, request.param)
    yield r
    r.close()


def test_same_qr_asked_again_and_one_wallet_order(rig):
    rig.start()
    first = rig.present("p1", "HH-1", 1234)
    assert first["ok"] and first["status"] == "pending", first
    assert first["code_url"].startswith(CODE_URL[rig.protocol])
    assert first["merchant_ref"] == "HH-1-1" and first["channel"] == "w"
    assert first["expires_at"] > time.time()
    again = rig.present("p2", "HH-1", 1234)             # a new request, same order
    assert (again["merchant_ref"], again["code_url"]) == (first["merchant_ref"],
                                                          first["code_url"])
    assert [c.merchant_ref for c in rig.gw.ledger.charges()] == ["HH-1-1"]
    assert rig.charge("HH-1-1").method == "qr"
    # another amount for the same order: refused, nothing made
    other = rig.present("p3", "HH-1", 999)
    assert other["error"]["code"] == "ORDER_MISMATCH"
    # an attendant may not present a QR (roles); the handheld may not pay for another
    denied = rig.call("pay.present", "p4", who="AT1", key=rig.staff_key,
                      order_no="AT-1", amount_minor=100, currency="CNY")
    assert denied["error"]["code"] == "FORBIDDEN"
    elsewhere = rig.call("pay.present", "p5", order_no="HH-2", amount_minor=100,
                         currency="CNY", terminal="T9")
    assert elsewhere["error"]["code"] == "FORBIDDEN"
    assert rig.p.paid() == {}


def test_a_handheld_order_paid_notification_first(rig):
    rig.start()
    rig.gw.start_notify()
    r = rig.present("p1", "HH-10", 2500)
    ref = r["merchant_ref"]
    rig.scan(ref)
    # polling is slow (600 s): only the notification can bring the result
    assert rig.pump(lambda: rig.charge(ref).state == "paid"), rig.gw.notifier.counts
    assert rig.source(ref) == "notify"
    # then the poll too: it finds the charge paid and changes nothing
    rig.gw.drive(rig.charge(ref), force=True)
    rig.gw.on_idle()
    assert len(rig.paid_steps(ref)) == 1
    assert rig.gw.notifier.counts["recorded"] >= 1
    s = rig.call("pay.status", "s1", order_no="HH-10")
    assert (s["status"], s["amount_minor"], s["merchant_ref"]) == ("paid", 2500, ref)
    assert s["provider_ref"]
    assert rig.present("p2", "HH-10", 2500)["status"] == "paid"   # no second order
    assert rig.p.paid() == {ref: 2500}
    # the final state, published once
    assert [(t, e["order_no"], e["status"], e["source"]) for t, e in rig.events] == [
        ("payment", "HH-10", "paid", "notify")]


def test_a_handheld_order_paid_poll_first(rig):
    rig.start()                                  # the listener is not up yet
    r = rig.present("p1", "HH-20", 3100)
    ref = r["merchant_ref"]
    rig.scan(ref)                                # its notification finds nobody
    rig.gw.drive(rig.charge(ref), force=True)    # the poll
    assert rig.charge(ref).state == "paid" and rig.source(ref) == "poll"
    rig.gw.start_notify()
    # the wallet's retries arrive now: acknowledged, nothing changes
    assert rig.pump(lambda: rig.gw.notifier.counts["recorded"] >= 1), \
        rig.gw.notifier.counts
    assert len(rig.paid_steps(ref)) == 1 and rig.source(ref) == "poll"
    assert rig.p.paid() == {ref: 3100}


def test_a_handheld_order_paid_both_at_once(rig):
    rig.start()
    rig.gw.start_notify()
    r = rig.present("p1", "HH-30", 4200)
    ref = r["merchant_ref"]
    rig.scan(ref)
    # the poll and the notification race: whichever comes first, paid once
    assert rig.pump(lambda: rig.gw.notifier.counts["received"] >= 1)
    rig.gw.drive(rig.charge(ref), force=True)
    assert rig.pump(lambda: rig.gw.notifier.counts["recorded"] >= 1)
    rig.gw.drive(rig.charge(ref), force=True)
    assert rig.charge(ref).state == "paid"
    assert len(rig.paid_steps(ref)) == 1 and rig.source(ref) in ("poll", "notify")
    assert rig.p.paid() == {ref: 4200}


def forged_notifications(rig, ref: str, amount_minor: int) -> tuple[dict, list, bytes]:
    """Notifications of the order as the wallet would sign them, each then altered
    (the amount changed after signing; the signature of another key; none at all),
    the content type the wallet sends, and the genuine signed one (paid). Signed
    here with the simulator's own wallet-side key, through the connector module's
    signing functions."""
    d = rig.p.data_dir
    if rig.protocol == "alipay":
        from lanecore.gateway.payments import alipay as A
        ch = rig.p.ready["channel"]
        params = {"notify_type": "trade_status_sync", "notify_id": "n1", "app_id":
                  ch["app_id"], "seller_id": ch["seller_id"], "charset": "utf-8",
                  "version": "1.0", "sign_type": "RSA2", "out_trade_no": ref,
                  "trade_no": "2026120822001", "trade_status": "TRADE_SUCCESS",
                  "total_amount": A.fen_to_yuan(amount_minor)}
        key = A.load_private_key((d / "alipay" / "alipay_private.pem").read_bytes())
        signed = dict(params, sign=A.rsa2_sign(A.sign_content(
            params, exclude=("sign", "sign_type")), key))
        tampered = dict(signed, total_amount="0.01")
        other = A.load_private_key((d / "alipay" / "app_private.pem").read_bytes())
        wrong_key = dict(params, sign=A.rsa2_sign(A.sign_content(
            params, exclude=("sign", "sign_type")), other))
        bodies = [urllib.parse.urlencode(b).encode() for b in (tampered, wrong_key,
                                                               params, signed)]
        return ({"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
                bodies[:-1], bodies[-1])
    from lanecore.gateway.payments import wechatpay as W
    ch = rig.p.ready["channel"]
    key_file = Path(ch["key_file"])
    key = (key_file if key_file.is_absolute() else d / key_file).read_text().strip()
    sign_type = ch.get("sign_type", "HMAC-SHA256")
    doc = {"return_code": "SUCCESS", "result_code": "SUCCESS", "appid": ch["appid"],
           "mch_id": ch["mch_id"], "nonce_str": W.nonce(), "sign_type": sign_type,
           "out_trade_no": ref, "total_fee": str(amount_minor), "fee_type": "CNY",
           "transaction_id": "4200000000202612080001", "trade_type": "NATIVE",
           "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "time_end": "20261208120000"}
    signed = dict(doc, sign=W.sign(doc, key, sign_type))
    tampered = dict(signed, total_fee="1")
    wrong_key = dict(doc, sign=W.sign(doc, "0" * 32, sign_type))
    return ({"Content-Type": "text/xml"}, [W.to_xml(b) for b in (tampered, wrong_key, doc)],
            W.to_xml(signed))


def post_notification(rig, client, body: bytes, headers: dict):
    """POST a notification to the listener while this test runs the gateway's loop
    (the listener answers once the loop has taken it)."""
    done = {}
    t = threading.Thread(target=lambda: done.update(
        reply=client.request("POST", "/notify/w", body, headers)))
    t.start()
    assert rig.pump(lambda: not t.is_alive(), timeout_s=20)
    t.join()
    return done["reply"]


def test_a_tampered_or_unsigned_notification_is_refused(rig):
    rig.start()
    rig.gw.start_notify()
    r = rig.present("p1", "HH-40", 5000)
    ref = r["merchant_ref"]
    client = HttpsClient(f"https://127.0.0.1:{rig.port}", ca_file=rig.p.ready["ca_file"])
    headers, bodies, _ = forged_notifications(rig, ref, 5000)
    for body in bodies:
        reply = post_notification(rig, client, body, headers)
        assert reply is not None and b"success" not in reply.body.lower()
    counts = rig.gw.notifier.counts
    refused = {k: v for k, v in counts.items() if k.startswith("refused:")}
    assert refused.get("refused:BAD_SIGNATURE", 0) >= 2, refused
    assert sum(refused.values()) == len(bodies) and counts["recorded"] == 0, counts
    assert rig.charge(ref).state in ("sent", "unknown")     # nothing recorded
    # a path of no channel: refused too
    nobody = client.request("POST", "/notify/nosuch", bodies[0], headers)
    assert nobody is not None and nobody.status == 404
    # a body over the listener's limit is never read, let alone recorded
    from lanecore.gateway.payments.notify import MAX_NOTIFICATION_BYTES
    huge = client.request("POST", "/notify/w", bodies[0] + b" " * MAX_NOTIFICATION_BYTES,
                          headers)
    assert huge is not None and huge.status == 413
    assert rig.gw.notifier.counts["received"] == len(bodies)
    stats = rig.gw.handle({"op": "stats", "id": "st"}, client="admin")["notify"]
    assert stats["refused:BAD_SIGNATURE"] == refused["refused:BAD_SIGNATURE"]
    # the genuine one still pays it
    rig.scan(ref)
    assert rig.pump(lambda: rig.charge(ref).state == "paid"), rig.gw.notifier.counts
    assert rig.p.paid() == {ref: 5000}


def test_an_unpaid_qr_expires_and_is_closed_at_the_wallet(rig):
    now = [time.time()]
    rig.start(clock=lambda: now[0])
    r = rig.present("p1", "HH-50", 800)
    ref = r["merchant_ref"]
    rig.gw.on_idle()                              # polled: still waiting
    assert rig.charge(ref).state in ("unknown", "queried")
    now[0] = r["expires_at"] + 1                  # the QR's life is over
    rig.gw.on_idle()
    c = rig.charge(ref)
    assert (c.state, c.reason) == ("failed", "EXPIRED")
    assert rig.gw._presented(ref)["closed_at"] is not None
    s = rig.call("pay.status", "s1", order_no="HH-50", ts=now[0])
    assert (s["status"], s["decline_code"]) == ("failed", "EXPIRED")
    # the shopper scans too late: the wallet's order is closed, nothing is taken
    late = rig.scan(ref)
    assert late.get("changed") is not True
    assert rig.p.paid() == {}
    # a (validly signed) paid notification after the close: a late result — the
    # ledger keeps its final state, the notification is acknowledged, and the trade
    # is given back at the wallet
    rig.gw.start_notify()
    client = HttpsClient(f"https://127.0.0.1:{rig.port}", ca_file=rig.p.ready["ca_file"])
    headers, _, genuine = forged_notifications(rig, ref, 800)
    reply = post_notification(rig, client, genuine, headers)
    assert reply is not None and rig.gw.notifier.counts["recorded"] == 1
    assert rig.gw.present_late == 1
    assert (rig.charge(ref).state, rig.charge(ref).reason) == ("failed", "EXPIRED")
    assert rig.paid_steps(ref) == [] and rig.p.paid() == {}
    # asked again, the order gets a new QR (a new attempt)
    again = rig.present("p2", "HH-50", 800, ts=now[0])
    assert again["status"] == "pending" and again["merchant_ref"] == "HH-50-2"
    assert again["code_url"] and again["code_url"] != r["code_url"]


def test_cancel_closes_the_pending_qr(rig):
    rig.start()
    r = rig.present("p1", "HH-60", 900)
    out = rig.present("p2", "HH-60", 900, cancel=True)
    assert (out["status"], out["decline_code"]) == ("failed", "CANCELLED")
    assert rig.scan(r["merchant_ref"]).get("changed") is not True
    assert rig.p.paid() == {}


def test_no_notify_section_no_presented_qr(tmp_path, providers):
    p = providers("w", "alipay", protocol="alipay")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"w": wallet("w", p, 1, methods=["auth_code", "qr"])})
    gw = PaymentGateway(d)
    try:
        r = gw.handle({"op": "pay.present", "id": "1", "order_no": "N-1",
                       "amount_minor": 100, "currency": "CNY", "terminal": "T1"},
                      client="t")
        assert r["error"]["code"] == "NO_NOTIFY_URL"
        assert gw.ledger.charges() == []
    finally:
        gw.ledger.close()
    base = (d / "payments.toml").read_text()
    (d / "payments.toml").write_text(base + '[notify]\npublic_url = "http://127.0.0.1:1"\n')
    with pytest.raises(Exception) as e:
        PaymentGateway(d)                        # a wallet posts over TLS only
    assert getattr(e.value, "code", None) == "BAD_CONFIG"
    # the listener's TLS key readable by others: the gateway does not start
    tls = Path(p.ready["ca_file"]).parent
    key = d / "notify.key"
    key.write_bytes((tls / "server.key").read_bytes())
    key.chmod(0o644)
    (d / "payments.toml").write_text(
        base + '[notify]\nbind = "127.0.0.1:0"\npublic_url = "https://127.0.0.1:1"\n'
        f'cert_file = "{tls / "server.pem"}"\nkey_file = "notify.key"\n')
    with pytest.raises(Exception) as e:
        PaymentGateway(d)
    assert getattr(e.value, "code", None) == "BAD_PERMISSIONS"
    key.chmod(0o600)
    gw = PaymentGateway(d)                       # relative to the data directory: fine
    gw.ledger.close()


def dev_open(rig: Rig) -> None:
    """No terminal authentication: the caller is the development principal."""
    text = (rig.d / "payments.toml").read_text().replace('[pos]\nauth = "hmac"\n', "")
    (rig.d / "payments.toml").write_text(text)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_killed_between_the_ledger_and_the_wallet(tmp_path, providers, protocol):
    """The gateway process is killed -9 after writing the attempt and before asking
    the wallet: restarted, the same order gets its QR under the same merchant
    reference (never a second wallet order) and is paid once."""
    import os
    import signal

    from lanecore.gateway.net.client import Client, ServiceError

    from payfix import start_gateway
    rig = Rig(tmp_path, providers, protocol)
    dev_open(rig)
    endpoint = f"ipc://{tmp_path}/pay.ipc"
    env = dict(os.environ, LANECORE_PAY_CRASH="after_ledger:1")
    proc = start_gateway("payments", rig.d, endpoint, env=env)
    fields = dict(order_no="K-1", amount_minor=700, currency="CNY", terminal="T1")
    with Client(endpoint, timeout_s=3.0, retries=0) as c:
        with pytest.raises(ServiceError):
            c.call("pay.present", **fields)
    assert proc.wait(10) == -signal.SIGKILL
    con = sqlite3.connect(rig.d / "payments.db")
    try:
        assert con.execute("SELECT merchant_ref, state, method FROM charges").fetchall() \
            == [("K-1-1", "sent", "qr")]                     # written, nothing asked
    finally:
        con.close()
    proc = start_gateway("payments", rig.d, endpoint)
    try:
        with Client(endpoint, timeout_s=10.0) as c:
            r = c.call("pay.present", **fields)
            assert (r["merchant_ref"], r["status"]) == ("K-1-1", "pending")
            assert r["code_url"].startswith(CODE_URL[protocol])
            assert c.call("pay.present", **fields)["code_url"] == r["code_url"]
            rig.scan("K-1-1")
            end = time.monotonic() + 30
            while c.call("pay.status", order_no="K-1")["status"] != "paid":
                assert time.monotonic() < end, "paid by the notification"
                time.sleep(0.1)
            s = c.call("pay.status", order_no="K-1")
            assert [a["merchant_ref"] for a in s["attempts"]] == ["K-1-1"]
        assert rig.p.paid() == {"K-1-1": 700}
    finally:
        proc.terminate()
        proc.wait(10)


# --------------------------------------------------------------------------------------
# The till: a gateway process, the display on a pty
# --------------------------------------------------------------------------------------

def test_the_till_shows_the_wallet_qr_and_its_result(tmp_path, providers):
    from lanecore.drivers.qrdisplay import ShowResult
    from lanecore.drivers.sim.qrdisplay import QrDisplaySim
    from lanecore.gateway.net.client import Client
    from lanecore.gateway.till import Register

    from payfix import start_gateway
    rig = Rig(tmp_path, providers, "alipay", poll_every_s=600.0)
    dev_open(rig)               # the till is the development principal here
    endpoint = f"ipc://{tmp_path}/pay.ipc"
    proc = start_gateway("payments", rig.d, endpoint)
    sim = QrDisplaySim().start()
    pay = Client(endpoint, client_id="till-7", timeout_s=5.0)
    reg = Register(sim.path, store_db_path=tmp_path / "store.db", register_no="7",
                   payments=pay).start()
    try:
        reg.sell("T7-1", [("Tea", 1, 1500)], total_minor=1500)

        def shopper():                     # scans what the display shows, and pays
            end = time.monotonic() + 30
            while sim.payload is None and time.monotonic() < end:
                time.sleep(0.02)
            assert sim.payload and sim.register_qr
            rig.scan("T7-1-1")
        t = threading.Thread(target=shopper)
        t.start()
        sale = reg.wallet_pay(timeout_s=60)
        t.join()
        assert (sale.status, sale.channel, sale.amount_minor) == ("paid", "qr", 1500)
        assert sale.txn_ref and reg.transaction("T7-1").status == "paid"
        assert reg.shown.payload.startswith(CODE_URL["alipay"])
        assert sim.shown_result == ShowResult("T7-1", "paid", 1500, "CNY")
        assert sim.payload is None and sim.state == "RESULT"     # the QR is down
        assert rig.p.paid() == {"T7-1-1": 1500}
        # the gateway learnt it from the notification (its poll is 600 s)
        con = sqlite3.connect(rig.d / "payments.db")
        try:
            assert con.execute("SELECT source FROM presented_qr WHERE merchant_ref = ?",
                               ("T7-1-1",)).fetchone() == ("notify",)
        finally:
            con.close()
        # nobody scans the next one: the register's wait ends, it closes the QR at
        # the wallet, the display shows "cancelled" and the row says so
        reg.sell("T7-2", [("Cake", 1, 900)], total_minor=900)
        sale = reg.wallet_pay(timeout_s=0.5)
        assert (sale.status, sale.reason, sale.txn_ref) == ("cancelled", "CANCELLED", None)
        assert sim.shown_result == ShowResult("T7-2", "cancelled", 900, "CNY")
        assert sim.payload is None
        assert rig.scan("T7-2-1").get("changed") is not True      # closed for good
        assert rig.p.paid() == {"T7-1-1": 1500}
    finally:
        reg.close()
        pay.close()
        sim.stop()
        proc.terminate()
        proc.wait(10)
