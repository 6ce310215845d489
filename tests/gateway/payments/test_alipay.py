"""Alipay over its OpenAPI (gateway/payments/alipay.py) against the Alipay simulator
process (`lanecore sim provider --kind alipay --protocol alipay`, gateway/sim/alipay.py):
the RSA2 signing rules (Alipay's published sign-string example byte for byte),
tampering refused both ways, every code mapping, bar-code pay / user paying /
system error / repeats, cancel, refunds and their query, precreate + scan + the
notification delivered (with Alipay's retries) to a real local HTTPS receiver, the
bill zip downloaded, parsed and reconciled, and the configuration's key checks."""

from __future__ import annotations

import io
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import urllib.parse
import zipfile
from datetime import datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lanecore.core.pay import recon
from lanecore.gateway.payments import alipay as A
from lanecore.gateway.payments.httpapi import HttpsClient, HttpsServer
from lanecore.gateway.payments.providers import DECLINES, OTHER_CODES, ProviderError

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

AUTH = "286543210987654321"          # an Alipay payment code: 25–30 + 14–22 digits


class Sim:
    """A running `lanecore sim provider --kind alipay --protocol alipay` process."""

    def __init__(self, data_dir, *knobs: str) -> None:
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lanecore", "sim", "provider", "--kind", "alipay",
             "--protocol", "alipay", "--data-dir", str(data_dir), "--fast", *knobs],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read()
        self.ready = json.loads(line)
        self.channel = self.ready["channel"]

    def connector(self, **over) -> A.AlipayConnector:
        return A.from_config("ali", {**self.channel, **over}, self.data_dir)

    def trades(self) -> list[tuple]:
        con = sqlite3.connect(self.data_dir / "alipay.sqlite")
        try:
            return con.execute("SELECT merchant_ref, status, amount_minor, requests "
                               "FROM trades ORDER BY created_at").fetchall()
        finally:
            con.close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def sims(tmp_path):
    made: list[Sim] = []

    def start(*knobs: str) -> Sim:
        d = tmp_path / f"alipay-{len(made)}"
        d.mkdir()
        made.append(Sim(d, *knobs))
        return made[-1]
    yield start
    for s in made:
        s.stop()


@pytest.fixture
def sim(sims):
    return sims()


@pytest.fixture
def conn(sim):
    c = sim.connector()
    yield c
    c.close()


def _key():
    from cryptography.hazmat.primitives.asymmetric import rsa
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# -- signing -------------------------------------------------------------------------
def test_sign_string_of_alipays_published_example():
    """The request of Alipay's "自行实现签名" page (alipay.mobile.public.menu.add) and
    the string to sign it gives, byte for byte (sign excluded, sorted, unencoded)."""
    biz = ('{"button":[{"actionParam":"ZFB_HFCZ","actionType":"out","name":"话费充值"},'
           '{"name":"查询","subButton":[{"actionParam":"ZFB_YECX","actionType":"out",'
           '"name":"余额查询"},{"actionParam":"ZFB_LLCX","actionType":"out","name":"流量查询"},'
           '{"actionParam":"ZFB_HFCX","actionType":"out","name":"话费查询"}]},'
           '{"actionParam":"http://m.alipay.com","actionType":"link","name":"最新优惠"}]}')
    params = {"app_id": "2014072300007148", "method": "alipay.mobile.public.menu.add",
              "charset": "GBK", "sign_type": "RSA2", "timestamp": "2014-07-24 03:07:50",
              "biz_content": biz,
              "sign": "e9zEAe4TTQ4LPLQvETPoLGXTiURcxiAKfMVQ6Hrrsx2hmyIEGvSfAQzbLxHrhyZ48wOJXTsD"
                      "4FPnt+YGdK57+fP1BCbf9rIVycfjhYCqlFhbTu9pFnZgT55W+xbAFb9y7vL0MyAxwXUXvZtQV"
                      "qEwW7pURtKilbcBTEW7TAxzgro=",
              "version": "1.0"}
    expected = ("app_id=2014072300007148&biz_content=" + biz + "&charset=GBK&method=alipay."
                "mobile.public.menu.add&sign_type=RSA2&timestamp=2014-07-24 03:07:50"
                "&version=1.0")
    assert A.sign_content(params).encode("utf-8") == expected.encode("utf-8")
    # empty values are left out; notifications also leave out sign_type
    assert A.sign_content({"b": "", "a": "1", "sign": "x", "sign_type": "RSA2"},
                          exclude=("sign", "sign_type")) == "a=1"


def test_request_params_are_signed_rsa2_and_any_change_breaks_them():
    key = _key()
    p = A.request_params("2021000000000001", "alipay.trade.query", {"out_trade_no": "商户-1"},
                         key, now=datetime(2026, 12, 8, 2, 0, 0).astimezone())
    assert p["format"] == "JSON" and p["charset"] == "utf-8" and p["version"] == "1.0"
    assert p["sign_type"] == "RSA2" and p["biz_content"] == '{"out_trade_no":"商户-1"}'
    assert len(p["timestamp"]) == 19
    pub = key.public_key()
    assert A.rsa2_verify(A.sign_content(p), p["sign"], pub)
    for field in ("biz_content", "timestamp", "app_id", "method", "sign_type"):
        assert not A.rsa2_verify(A.sign_content({**p, field: p[field] + "x"}), p["sign"], pub)
    other = _key().public_key()
    assert not A.rsa2_verify(A.sign_content(p), p["sign"], other)
    assert not A.rsa2_verify(A.sign_content(p), "not base64!", pub)


def test_the_response_signature_covers_the_raw_json_text():
    """The answer is verified over the response object's text exactly as sent —
    spacing and member order included — never over a re-serialisation."""
    key = _key()
    raw = '{"code":"10000", "msg":"Success",  "trade_no":"2026","out_trade_no":"中-1"}'
    sign = A.rsa2_sign(raw, key)
    body = ('{ "alipay_trade_query_response" : ' + raw + ' ,\n "sign":"' + sign + '" }')
    resp = A.verify_response(body.encode(), "alipay.trade.query", key.public_key())
    assert resp == {"code": "10000", "msg": "Success", "trade_no": "2026",
                    "out_trade_no": "中-1"}
    # the same object re-serialised does not verify: the raw text is what counts
    compact = json.dumps(resp, ensure_ascii=False, separators=(",", ":"))
    assert not A.rsa2_verify(compact, sign, key.public_key())
    for bad in (body.replace("10000", "10001"), body.replace(sign, sign[::-1]),
                body.replace('"sign"', '"sig"'), body[:-3], "[]", ""):
        assert A.verify_response(bad.encode(), "alipay.trade.query", key.public_key()) is None
    members = A.response_json_text(body)
    assert members["alipay_trade_query_response"][1] == raw


# -- money ------------------------------------------------------------------------------
@settings(max_examples=1500, deadline=None)
@given(st.integers(min_value=-(10 ** 15), max_value=10 ** 15))
def test_yuan_and_fen_convert_exactly(fen):
    text = A.fen_to_yuan(fen)
    assert Decimal(text) * 100 == fen
    assert A.yuan_to_fen(text) == fen
    assert len(text.split(".")[1]) == 2


def test_yuan_amounts_are_parsed_strictly():
    assert A.yuan_to_fen("0.01") == 1 and A.yuan_to_fen("12.3") == 1230
    assert A.yuan_to_fen("100") == 10000 and A.yuan_to_fen("-0.06") == -6
    assert A.yuan_to_fen("99999999.99") == 9999999999
    for bad in ("1.234", "1e3", " 1.00", "01.00", "", "1.", ".5", "NaN", "1,00", "+1.00",
                "１.00", None, 1.5, 100):
        with pytest.raises(ProviderError) as e:
            A.yuan_to_fen(bad)
        assert e.value.code == "BAD_AMOUNT"
    for bad in (1.5, True, "100"):
        with pytest.raises(ProviderError):
            A.fen_to_yuan(bad)


# -- the code mapping -------------------------------------------------------------------
def test_every_code_maps_onto_lanecores_codes():
    for sub, (ours, kind) in A.SUB_CODES.items():
        assert ours in DECLINES["wallet"] or ours in OTHER_CODES, sub
        r = A.map_response("alipay.trade.pay", {"code": "40004", "msg": "Business Failed",
                                                "sub_code": sub, "sub_msg": "x"})
        assert r["ok"] is True
        assert r["code"] == ours
        want = {"failed": "failed", "unknown": "unknown", "not_found": "not_found",
                "repeat": "repeat"}[kind]
        assert r["status"] == want, sub
    # the wallet decline table's outcomes agree with ours
    for sub, (ours, kind) in A.SUB_CODES.items():
        if ours in DECLINES["wallet"] and kind in ("failed", "unknown"):
            assert DECLINES["wallet"][ours][0] == kind, sub
    ok = A.map_response("alipay.trade.pay", {"code": "10000", "msg": "Success"})
    assert ok["status"] == "ok"
    paying = A.map_response("alipay.trade.pay", {"code": "10003", "trade_no": "20X"})
    assert (paying["status"], paying["code"], paying["provider_ref"]) == \
        ("paying", "USERPAYING", "20X")
    down = A.map_response("alipay.trade.pay", {"code": "20000", "sub_code": "isp.unknow-error"})
    assert (down["status"], down["code"]) == ("unknown", "SYSTEMERROR")
    odd = A.map_response("alipay.trade.pay", {"code": "12345"})
    assert odd["status"] == "unknown"
    for code, sub, what in (("40002", "isv.invalid-signature", "BAD_SIGNATURE"),
                            ("40002", "isv.invalid-signature-type", "BAD_SIGNATURE"),
                            ("40002", "isv.invalid-app-id", "BAD_CONFIG"),
                            ("40001", "isv.missing-method", "BAD_REQUEST"),
                            ("40006", "isv.insufficient-isv-permissions", "BAD_CONFIG"),
                            ("20001", "aop.invalid-auth-token", "BAD_CONFIG"),
                            ("40004", "ACQ.INVALID_PARAMETER", "BAD_REQUEST")):
        r = A.map_response("alipay.trade.pay", {"code": code, "sub_code": sub})
        assert r["ok"] is False and r["error"]["code"] == what, (code, sub)
    assert A.map_response("alipay.trade.pay", None) is None
    assert set(A.RESULT_CODES) == {"10000", "10003", "20000", "20001", "40001", "40002",
                                   "40004", "40006"}


# -- the simulator: requests --------------------------------------------------------
def _raw_call(sim: Sim, params: dict):
    http = HttpsClient(sim.ready["endpoint"], ca_file=sim.ready["ca_file"])
    reply = http.request("POST", "/gateway.do", urllib.parse.urlencode(params).encode(),
                         {"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"})
    assert reply is not None and reply.status == 200
    return reply


def test_ready_line_channel_and_private_key_modes(sim):
    ch = sim.channel
    assert set(ch) == {"protocol", "endpoint", "ca_file", "app_id", "seller_id",
                       "app_private_key_file", "alipay_public_key_file"}
    assert ch["protocol"] == "alipay" and ch["endpoint"].startswith("https://127.0.0.1:")
    assert ch["seller_id"].startswith("2088") and len(ch["seller_id"]) == 16
    assert os.stat(ch["app_private_key_file"]).st_mode & 0o777 == 0o600
    assert os.stat(sim.data_dir / "alipay" / "alipay_private.pem").st_mode & 0o777 == 0o600
    assert sim.ready["process"] == "provider-alipay" and sim.ready["protocol"] == "alipay"


def test_a_request_with_a_bad_signature_or_a_changed_field_is_refused(sim):
    from lanecore.gateway.payments.httpapi import read_key_file
    app_key = A.load_private_key(read_key_file(sim.channel["app_private_key_file"]))
    alipay_pub = A.load_public_key(open(sim.channel["alipay_public_key_file"], "rb").read())
    biz = {"out_trade_no": "SIG-1", "scene": "bar_code", "auth_code": AUTH,
           "subject": "x", "total_amount": "1.00"}
    # signed with a key that is not the app's
    p = A.request_params(sim.channel["app_id"], "alipay.trade.pay", biz, _key())
    resp = A.verify_response(_raw_call(sim, p).body, "alipay.trade.pay", alipay_pub)
    assert (resp["code"], resp["sub_code"]) == ("40002", "isv.invalid-signature")
    # the app's signature, then the amount changed
    p = A.request_params(sim.channel["app_id"], "alipay.trade.pay", biz, app_key)
    p["biz_content"] = p["biz_content"].replace('"1.00"', '"0.01"')
    resp = A.verify_response(_raw_call(sim, p).body, "alipay.trade.pay", alipay_pub)
    assert (resp["code"], resp["sub_code"]) == ("40002", "isv.invalid-signature")
    # another app_id
    p = A.request_params("2021999999999999", "alipay.trade.pay", biz, app_key)
    resp = A.verify_response(_raw_call(sim, p).body, "alipay.trade.pay", alipay_pub)
    assert resp["sub_code"] == "isv.invalid-app-id"
    assert sim.trades() == []                 # nothing was charged
    # and signed properly it is taken
    p = A.request_params(sim.channel["app_id"], "alipay.trade.pay", biz, app_key)
    resp = A.verify_response(_raw_call(sim, p).body, "alipay.trade.pay", alipay_pub)
    assert resp["code"] == "10000" and resp["total_amount"] == "1.00"
    assert [t[:3] for t in sim.trades()] == [("SIG-1", "paid", 100)]


def test_a_response_with_a_wrong_signature_is_no_answer(sim, conn, caplog):
    conn.configure(tamper_next=1)
    with caplog.at_level(logging.WARNING, logger="lanecore.alipay"):
        r = conn.charge("TAMP-1", 1234, "CNY", auth_code=AUTH)
    assert r.status == "unknown" and r.decline_code == "TIMEOUT"
    assert any("does not verify" in m for m in caplog.messages)
    assert not any(AUTH in m for m in caplog.messages)       # no payment code logged
    q = conn.query("TAMP-1")                   # the trade happened: query says so
    assert (q.status, q.paid_minor) == ("paid", 1234)
    assert conn.stats()["connector"]["bad_signature"] == 1


# -- trades --------------------------------------------------------------------------------
def test_bar_code_pay_is_paid(sim, conn):
    r = conn.charge("PAY-1", 2599, "CNY", auth_code=AUTH, terminal="T7")
    assert r.status == "paid" and r.paid_minor == 2599 and r.decline_code is None
    assert r.provider_ref.startswith("20")
    assert [t[:3] for t in sim.trades()] == [("PAY-1", "paid", 2599)]


def test_user_paying_then_query_paid(sim, conn):
    conn.configure(next=["userpaying"], userpaying_delay_s=0.0)
    r = conn.charge("UP-1", 800, "CNY", auth_code=AUTH)
    assert (r.status, r.decline_code) == ("unknown", "USERPAYING")
    q = conn.query("UP-1")
    assert (q.status, q.paid_minor) == ("paid", 800)


def test_user_cancel_ends_closed(sim, conn):
    conn.configure(next=["usercancel"], userpaying_delay_s=0.0)
    assert conn.charge("UC-1", 800, "CNY", auth_code=AUTH).decline_code == "USERPAYING"
    q = conn.query("UC-1")
    assert q.status == "reversed" and q.paid_minor == 0


@pytest.mark.parametrize("how", ["20000", "ACQ.SYSTEM_ERROR"])
def test_system_error_then_query(sim, conn, how):
    conn.configure(next=["systemerror"], systemerror_code=how)
    r = conn.charge("SE-1", 500, "CNY", auth_code=AUTH)
    assert (r.status, r.decline_code) == ("unknown", "SYSTEMERROR")
    assert conn.query("SE-1").status == "paid"


def test_no_answer_at_all_then_query(sim):
    c = sim.connector(timeout_s=1.0)
    c.configure(next=["timeout"])
    r = c.charge("TO-1", 700, "CNY", auth_code=AUTH)
    assert (r.status, r.decline_code) == ("unknown", "TIMEOUT")
    assert c.query("TO-1").status == "paid"
    c.configure(next=["drop"])
    assert c.charge("DR-1", 700, "CNY", auth_code=AUTH).status == "unknown"
    assert c.query("DR-1").status == "not_found"
    c.close()


def test_a_repeat_of_a_paid_trade_charges_once(sim, conn):
    first = conn.charge("REP-1", 1500, "CNY", auth_code=AUTH)
    again = conn.charge("REP-1", 1500, "CNY", auth_code=AUTH)
    assert first.status == again.status == "paid"
    assert again.duplicate and again.paid_minor == 1500
    assert again.provider_ref == first.provider_ref
    assert sim.trades() == [("REP-1", "paid", 1500, 2)]
    assert conn.stats()["charged"] == 1


def test_declines_map_to_lanecores_codes(sim, conn):
    conn.configure(next=["NOTENOUGH", "TRADE_ERROR", "AUTH_CODE_EXPIRED"])
    assert conn.charge("D-1", 100, "CNY", auth_code=AUTH).decline_code == "NOTENOUGH"
    assert conn.charge("D-2", 100, "CNY", auth_code=AUTH).decline_code == "TRADE_ERROR"
    assert conn.charge("D-3", 100, "CNY", auth_code=AUTH).decline_code == "AUTH_CODE_INVALID"
    bad = conn.charge("D-4", 100, "CNY", auth_code="1234")
    assert (bad.status, bad.decline_code) == ("failed", "AUTH_CODE_INVALID")
    conn.configure(max_amount_minor=1000)
    assert conn.charge("D-5", 1001, "CNY", auth_code=AUTH).decline_code == "EXCEED_LIMIT"
    conn.charge("D-6", 100, "CNY", auth_code=AUTH)
    other = conn.charge("D-6", 200, "CNY", auth_code=AUTH)
    assert (other.status, other.decline_code) == ("failed", "OUT_TRADE_NO_USED")
    assert conn.reverse("D-7").status == "reversed"
    closed = conn.charge("D-7", 100, "CNY", auth_code=AUTH)
    assert (closed.status, closed.decline_code) == ("failed", "ORDERCLOSED")
    with pytest.raises(ProviderError):
        conn.charge("D-8", 100, "USD", auth_code=AUTH)       # refused before sending
    assert conn.query("D-8").status == "not_found"


def test_cancel_gives_back_a_paid_trade_and_closes_an_open_one(sim, conn):
    conn.charge("CX-1", 900, "CNY", auth_code=AUTH)
    r = conn.reverse("CX-1")
    assert r.status == "reversed" and r.message == "action refund"
    assert conn.query("CX-1").status == "reversed"
    r = conn.reverse("CX-2")                  # never seen: closed so it can never pay
    assert r.status == "reversed" and r.message == "action close"
    assert conn.charge("CX-2", 100, "CNY", auth_code=AUTH).decline_code == "ORDERCLOSED"
    assert dict((t[0], t[1]) for t in sim.trades()) == {"CX-1": "reversed", "CX-2": "closed"}


def test_refund_refund_query_and_over_refund(sim, conn):
    conn.charge("RF-1", 1000, "CNY", auth_code=AUTH)
    r = conn.refund("RF-1", "RF-1-r1", 300)
    assert (r.status, r.refunded_minor, r.duplicate) == ("refunded", 300, False)
    again = conn.refund("RF-1", "RF-1-r1", 300)
    assert (again.status, again.refunded_minor, again.duplicate) == ("refunded", 300, True)
    q = conn.refund_query("RF-1", "RF-1-r1")
    assert (q.status, q.refunded_minor) == ("refunded", 300)
    assert conn.refund_query("RF-1", "RF-1-r9").status == "not_found"
    over = conn.refund("RF-1", "RF-1-r2", 800)
    assert (over.status, over.decline_code) == ("failed", "REFUND_EXCEEDS_PAID")
    used = conn.refund("RF-1", "RF-1-r1", 200)
    assert (used.status, used.decline_code) == ("failed", "REFUND_REF_USED")
    r = conn.refund("RF-1", "RF-1-r3", 700)
    assert (r.status, r.refunded_minor) == ("refunded", 1000)
    assert conn.query("RF-1").status == "reversed"        # TRADE_CLOSED once all given back
    nope = conn.refund("RF-9", "RF-9-r1", 100)
    assert nope.status == "not_found"
    # a refunded trade is not cancelled; a closed one is not refunded
    no = conn.reverse("RF-1")
    assert (no.status, no.decline_code) == ("failed", "TRADE_STATUS_ERROR")
    conn.reverse("RF-2")
    no = conn.refund("RF-2", "RF-2-r1", 100)
    assert (no.status, no.decline_code) == ("failed", "TRADE_STATUS_ERROR")


def test_a_request_alipay_refuses_raises_with_its_code(sim, tmp_path):
    """40002 isv.invalid-signature (the app key is not the one Alipay holds): a
    ProviderError, nothing charged."""
    from cryptography.hazmat.primitives import serialization
    from lanecore.core.config import write_private
    wrong = tmp_path / "wrong.pem"
    write_private(wrong, _key().private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    c = sim.connector(app_private_key_file=str(wrong))
    with pytest.raises(ProviderError) as e:
        c.charge("WK-1", 100, "CNY", auth_code=AUTH)
    assert e.value.code == "BAD_SIGNATURE"
    with pytest.raises(ProviderError) as e:
        c.query("WK-1")
    assert e.value.code == "BAD_SIGNATURE"
    c.close()
    assert sim.trades() == []


def test_the_async_path_answers(sim, conn):
    rid, frame = conn.prepare_charge("AS-1", 4321, "CNY", auth_code=AUTH)
    sock = conn.async_socket()
    assert conn.post(frame)
    assert sock.poll(15000)
    [answer] = conn.answers()
    assert answer["id"] == rid and answer["status"] == "paid" and answer["paid_minor"] == 4321


# -- precreate and notifications -------------------------------------------------------
def _eventually(get, done, tries: int = 600):
    """``get()`` once ``done`` holds for it (the simulator's side of an exchange the
    test already saw may still be finishing); the last value after ``tries``."""
    import time
    for _ in range(tries):
        value = get()
        if done(value):
            return value
        time.sleep(0.05)
    return value


class Receiver:
    """The merchant's notify URL: a real HTTPS server on loopback (the simulator's test
    CA's certificate) that hands each notification to the connector and refuses the
    first ``refuse`` of them (Alipay sends again until it reads ``success``)."""

    def __init__(self, conn: A.AlipayConnector, tls_dir, refuse: int) -> None:
        self.conn, self.refuse = conn, refuse
        self.bodies: list[bytes] = []
        self.results = []
        self.acked = threading.Event()
        self.server = HttpsServer(self.handle, cert_file=tls_dir / "server.pem",
                                  key_file=tls_dir / "server.key").start()
        self.url = self.server.url + "/pay/alipay/notify"

    def handle(self, method, target, headers, body, cert):
        self.bodies.append(body)
        try:
            res = self.conn.notification(headers, body)
            ok = len(self.bodies) > self.refuse
            self.results.append(res)
        except ProviderError:
            ok = False
        status, ctype, out = self.conn.notification_ack(ok)
        if ok:
            self.acked.set()
        return status, {"Content-Type": ctype}, out


def test_precreate_scan_and_the_notification_until_acknowledged(sim, conn):
    rx = Receiver(conn, sim.data_dir / "pki", refuse=2)
    try:
        r = conn.precreate("QR-1", 1888, "CNY", notify_url=rx.url, subject="lane 3")
        assert (r.status, r.decline_code) == ("unknown", "USERPAYING")
        assert r.code_url.startswith("https://qr.alipay.com/")
        assert conn.precreate("QR-1", 1888, "CNY").code_url == r.code_url   # same order
        assert conn.query("QR-1").decline_code == "USERPAYING"
        scanned = conn._sim("POST", "/_sim/scan", {"merchant_ref": "QR-1", "outcome": "paid"})
        assert scanned["notified"] == rx.url
        assert rx.acked.wait(60)
        assert len(rx.bodies) == 3                            # refused twice, then taken
        assert len(set(rx.bodies)) == 1                       # the same notification
        for res in rx.results:
            assert (res.status, res.paid_minor, res.merchant_ref) == ("paid", 1888, "QR-1")
        params = dict(urllib.parse.parse_qsl(rx.bodies[0].decode()))
        assert params["notify_type"] == "trade_status_sync"
        assert params["trade_status"] == "TRADE_SUCCESS"
        assert params["seller_id"] == sim.channel["seller_id"]
        assert params["sign_type"] == "RSA2"
        stats = _eventually(lambda: conn.stats()["notifications"],
                            lambda s: s["acked"] or s["gave_up"])
        assert (stats["acked"], stats["attempts"], stats["pending"]) == (1, 3, 0)
        assert conn.query("QR-1").status == "paid"
    finally:
        rx.server.stop()


def test_precreate_of_a_paid_order_answers_its_state(sim, conn):
    conn.charge("QR-9", 300, "CNY", auth_code=AUTH)
    r = conn.precreate("QR-9", 300, "CNY")
    assert (r.status, r.duplicate, r.code_url) == ("paid", True, None)
    r = conn.precreate("QR-9", 301, "CNY")
    assert (r.status, r.decline_code) == ("failed", "OUT_TRADE_NO_USED")


def test_a_tampered_or_foreign_notification_is_refused(sim, conn):
    rx = Receiver(conn, sim.data_dir / "pki", refuse=0)
    try:
        conn.precreate("QR-2", 500, "CNY", notify_url=rx.url)
        conn._sim("POST", "/_sim/scan", {"merchant_ref": "QR-2", "outcome": "paid"})
        assert rx.acked.wait(60)
    finally:
        rx.server.stop()
    body = rx.bodies[0]
    form = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    assert conn.notification(form, body).status == "paid"
    params = dict(urllib.parse.parse_qsl(body.decode()))
    for change in ({"total_amount": "5000.00"}, {"trade_status": "TRADE_CLOSED"},
                   {"out_trade_no": "QR-3"}, {"sign": params["sign"][:-4] + "AAA="}):
        with pytest.raises(ProviderError) as e:
            conn.notification(form, urllib.parse.urlencode({**params, **change}).encode())
        assert e.value.code == "BAD_SIGNATURE"
    no_sign = {k: v for k, v in params.items() if k != "sign"}
    with pytest.raises(ProviderError) as e:
        conn.notification(form, urllib.parse.urlencode(no_sign).encode())
    assert e.value.code == "BAD_SIGNATURE"
    # properly signed by Alipay, but for another app or another merchant
    alipay_key = A.load_private_key((sim.data_dir / "alipay" / "alipay_private.pem").read_bytes())
    for change in ({"app_id": "2021999999999999"}, {"seller_id": "2088999999999999"}):
        p = {**params, **change}
        p["sign"] = A.rsa2_sign(A.sign_content(p, exclude=("sign", "sign_type")), alipay_key)
        with pytest.raises(ProviderError) as e:
            conn.notification(form, urllib.parse.urlencode(p).encode())
        assert e.value.code == "BAD_NOTIFICATION"
    with pytest.raises(ProviderError) as e:
        conn.notification({"Content-Type": "application/json"}, body)
    assert e.value.code == "BAD_NOTIFICATION"
    assert conn.notification_ack(True) == (200, "text/plain; charset=utf-8", b"success")
    assert conn.notification_ack(False)[2] != b"success"


def _receiver_pki(d):
    """A CA of its own name (httpapi.make_test_pki's CAs all share one subject, which
    a client trusting two of them cannot tell apart) and a 127.0.0.1 certificate."""
    import datetime as dt
    import ipaddress
    from types import SimpleNamespace
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from lanecore.core.config import write_private
    now = dt.datetime.now(dt.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("alipay test receiver CA"))
          .issuer_name(name("alipay test receiver CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    write_private(d / "ca.pem", ca.public_bytes(pem))
    write_private(d / "server.pem", cert.public_bytes(pem))
    write_private(d / "server.key", key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    return SimpleNamespace(ca_file=d / "ca.pem")


def test_a_cancelled_qr_notifies_closed_to_a_receiver_of_another_ca(sim, conn, tmp_path):
    """The notify URL's certificate comes from the receiver's own CA, which the
    simulator is told to trust (notify_ca_file)."""
    own = tmp_path / "receiver-pki"
    own.mkdir(mode=0o700)
    pki = _receiver_pki(own)
    with pytest.raises(ProviderError) as e:
        conn.configure(notify_ca_file=str(own / "missing.pem"))
    assert e.value.code == "BAD_FIELD"
    assert conn.configure(notify_ca_file=str(pki.ca_file))["notify_ca_file"] == \
        str(pki.ca_file)
    rx = Receiver(conn, own, refuse=0)
    try:
        conn.precreate("QR-4", 500, "CNY", notify_url=rx.url)
        conn._sim("POST", "/_sim/scan", {"merchant_ref": "QR-4", "outcome": "cancel"})
        assert rx.acked.wait(60)
        assert rx.results[0].status == "reversed"
        assert conn.query("QR-4").status == "reversed"
    finally:
        rx.server.stop()


# -- bills ------------------------------------------------------------------------------
def _today() -> str:
    return datetime.now(A.CHINA_TZ).strftime("%Y-%m-%d")


def test_the_bill_zip_is_downloaded_parsed_and_reconciled(sim, conn):
    for i, amount in enumerate((1000, 2345, 99, 5000), 1):
        assert conn.charge(f"B-{i}", amount, "CNY", auth_code=AUTH).status == "paid"
    assert conn.refund("B-1", "B-1-r1", 400).status == "refunded"
    assert conn.reverse("B-2").status == "reversed"
    conn.configure(next=["NOTENOUGH"])
    assert conn.charge("B-5", 700, "CNY", auth_code=AUTH).status == "failed"
    date = _today()
    bill = conn.bill(date)
    assert bill.suffix == "zip" and bill.raw.startswith(b"PK")
    pid = sim.channel["seller_id"]
    assert bill.path == f"{pid}_{date.replace('-', '')}.csv.zip"
    zf = zipfile.ZipFile(io.BytesIO(bill.raw))
    names = sorted(zf.namelist())
    ymd = date.replace("-", "")
    assert names == [f"{pid}_{ymd}_业务明细(汇总).csv", f"{pid}_{ymd}_业务明细.csv"]
    detail = zf.read(f"{pid}_{ymd}_业务明细.csv")
    with pytest.raises(UnicodeDecodeError):
        detail.decode("utf-8")                               # GBK, as Alipay's
    text = detail.decode("gbk")
    assert text.startswith("#支付宝业务明细查询\r\n#账号：[" + pid)
    assert ",".join(A.BILL_DETAIL_COLUMNS) in text
    assert "#交易合计：4笔" in text and "#退款合计：2笔" in text
    rows = conn.bill_rows(bill, "ali")
    got = sorted((r.type, r.merchant_ref, r.amount_minor, r.status, r.refund_ref)
                 for r in rows)
    assert got == [("charge", "B-1", 1000, "REFUND", ""), ("charge", "B-2", 2345,
                   "REVERSED", ""), ("charge", "B-3", 99, "SUCCESS", ""),
                   ("charge", "B-4", 5000, "SUCCESS", ""), ("refund", "B-1", 400,
                   "SUCCESS", "B-1-r1"), ("reverse", "B-2", 2345, "SUCCESS", "")]
    fees = {(r.type, r.merchant_ref): r.fee_minor for r in rows}
    assert fees[("charge", "B-4")] == 30 and fees[("reverse", "B-2")] == -14
    ledger = [{"merchant_ref": "B-1", "channel": "ali", "amount_minor": 1000,
               "currency": "CNY", "state": "paid"},
              {"merchant_ref": "B-2", "channel": "ali", "amount_minor": 2345,
               "currency": "CNY", "state": "reversed"},
              {"merchant_ref": "B-3", "channel": "ali", "amount_minor": 99,
               "currency": "CNY", "state": "paid"},
              {"merchant_ref": "B-4", "channel": "ali", "amount_minor": 5000,
               "currency": "CNY", "state": "paid"},
              {"merchant_ref": "B-5", "channel": "ali", "amount_minor": 700,
               "currency": "CNY", "state": "failed"},
              {"type": "refund", "refund_ref": "B-1-r1", "merchant_ref": "B-1",
               "channel": "ali", "amount_minor": 400, "currency": "CNY", "state": "paid"}]
    clean = recon.reconcile(ledger, rows, channels=["ali"])
    assert not (clean.missing_in_ledger or clean.missing_at_provider or clean.amount_mismatch
                or clean.status_mismatch or clean.duplicates)
    # the same day with a discrepancy injected: found
    bad = conn.bill(date, inject={"amount": 1, "seed": 7})
    [changed] = bad.injected["amount"]
    report = recon.reconcile(ledger, conn.bill_rows(bad, "ali"), channels=["ali"])
    assert [(f.merchant_ref, f.ledger_amount_minor, f.bill_amount_minor)
            for f in report.amount_mismatch] == \
        [(changed["merchant_ref"], changed["from"], changed["to"])]
    # the injection was for one download: the next is true again
    again = recon.reconcile(ledger, conn.bill_rows(conn.bill(date), "ali"), channels=["ali"])
    assert not again.amount_mismatch


def test_another_merchants_bill_is_refused(sims):
    a, b = sims(), sims()
    ca, cb = a.connector(), b.connector()
    try:
        assert a.channel["seller_id"] != b.channel["seller_id"]
        cb.charge("OB-1", 100, "CNY", auth_code=AUTH)
        theirs = cb.bill(_today())
        assert [r.merchant_ref for r in cb.bill_rows(theirs, "b")] == ["OB-1"]
        with pytest.raises(ProviderError) as e:
            ca.bill_rows(theirs, "a")
        assert e.value.code == "BILL_MERCHANT_MISMATCH"
        no_pid = a.connector(seller_id=None)
        with pytest.raises(ProviderError) as e:
            no_pid.bill_rows(theirs, "a")
        assert e.value.code == "BAD_CONFIG"
        no_pid.close()
        # a future day has no bill yet
        with pytest.raises(ProviderError) as e:
            ca.bill("2099-01-01")
        assert e.value.code == "NO_BILL"
    finally:
        ca.close()
        cb.close()


def test_a_broken_bill_is_refused():
    def zipped(name: str, text: str, enc: str = "gbk") -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as zf:
            zf.writestr(name, text.encode(enc))
        return out.getvalue()
    head = "#支付宝业务明细查询\r\n#账号：[20881234567890120156]\r\n" + \
        ",".join(A.BILL_DETAIL_COLUMNS) + "\r\n"
    line = ",".join(["2026\t", "R-1\t", "交易", "x", "2026-12-08 10:00:00",
                     "2026-12-08 10:00:00", "", "", "", "", "", "1.00", "1.00", "0.00", "0.00",
                     "0.00", "0.00", "", "", "0.00", "0.00", "", "-0.01", "0.00", ""])
    good = zipped("2088123456789012_20261208_业务明细.csv", head + line + "\r\n")
    [row] = A.parse_bill_zip(good, pid="2088123456789012", channel="c")[1]
    assert (row.merchant_ref, row.provider_ref, row.amount_minor, row.fee_minor,
            row.trade_time) == ("R-1", "2026", 100, 1, "2026-12-08T02:00:00Z")
    for raw in (b"not a zip",
                zipped("2088123456789012_20261208_业务明细.csv", head + line, "utf-8"),
                zipped("2088999999999999_20261208_业务明细.csv", head + line),
                zipped("2088123456789012_20261208_other.csv", head + line),
                zipped("2088123456789012_20261208_业务明细.csv",
                       head + line.replace("1.00,1.00", "1.00,1.0.0"))):
        with pytest.raises(ProviderError) as e:
            A.parse_bill_zip(raw, pid=None, channel="c")
        assert e.value.code == "BAD_BILL"


def test_a_bill_download_url_is_signed(sim, conn):
    resp = conn.call_api("alipay.data.dataservice.bill.downloadurl.query",
                         {"bill_type": "trade", "bill_date": _today()})
    url = resp["bill_download_url"]
    http = HttpsClient(sim.ready["endpoint"], ca_file=sim.ready["ca_file"])
    assert http.request("GET", url).status == 200
    forged = url.replace("bizType=trade", "bizType=signcustomer")
    assert http.request("GET", forged).status == 403


# -- configuration ----------------------------------------------------------------------
def test_configuration_refuses_loose_keys_and_plain_http(sim, tmp_path):
    ch = sim.channel
    loose = tmp_path / "loose.pem"
    loose.write_bytes(open(ch["app_private_key_file"], "rb").read())
    os.chmod(loose, 0o644)
    with pytest.raises(ProviderError) as e:
        A.from_config("ali", {**ch, "app_private_key_file": str(loose)}, sim.data_dir)
    assert e.value.code == "BAD_PERMISSIONS"
    with pytest.raises(ProviderError) as e:
        A.from_config("ali", {**ch, "app_private_key_file": "nope.pem"}, sim.data_dir)
    assert e.value.code == "KEY_FILE_MISSING"
    with pytest.raises(ProviderError) as e:
        A.from_config("ali", {**ch, "endpoint": ch["endpoint"].replace("https", "http")},
                      sim.data_dir)
    assert e.value.code == "PLAIN_NOT_ALLOWED"
    for key in ("app_id", "alipay_public_key_file"):
        with pytest.raises(ProviderError) as e:
            A.from_config("ali", {k: v for k, v in ch.items() if k != key}, sim.data_dir)
        assert e.value.code == "BAD_CONFIG"
    with pytest.raises(ProviderError) as e:
        A.from_config("ali", {**ch, "seller_id": "12345"}, sim.data_dir)
    assert e.value.code == "BAD_CONFIG"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from lanecore.core.config import write_private
    ec_key = tmp_path / "ec.pem"
    write_private(ec_key, ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(ProviderError) as e:
        A.from_config("ali", {**ch, "app_private_key_file": str(ec_key)}, sim.data_dir)
    assert e.value.code == "BAD_KEY"
    # Alipay's public key as its console shows it (base64 DER, no PEM lines) loads
    pem = open(ch["alipay_public_key_file"], "rb").read()
    bare = tmp_path / "alipay_public.txt"
    bare.write_bytes(b"".join(pem.split(b"\n")[1:-2]))
    c = A.from_config("ali", {**ch, "alipay_public_key_file": str(bare),
                              "endpoint": ch["endpoint"] + "/gateway.do"}, sim.data_dir)
    assert c.query("nobody").status == "not_found"
    c.close()
    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(b"not a key")
    with pytest.raises(ProviderError) as e:
        A.from_config("ali", {**ch, "alipay_public_key_file": str(garbage)}, sim.data_dir)
    assert e.value.code == "BAD_KEY"
    # relative paths are relative to the data directory
    rel = {**ch, "app_private_key_file": "alipay/app_private.pem",
           "alipay_public_key_file": "alipay/alipay_public.pem", "ca_file": "pki/ca.pem"}
    c = A.from_config("ali", rel, sim.data_dir)
    assert c.ping()
    c.close()


def test_the_docs_print_the_code_table():
    """docs/pay/alipay.md prints SUB_CODES and RESULT_CODES as they are."""
    from pathlib import Path
    doc = (Path(A.__file__).resolve().parents[2] / "docs" / "pay" / "alipay.md").read_text()
    for sub, (ours, kind) in A.SUB_CODES.items():
        assert f"| `{sub}` | `{ours}` | {kind} |" in doc, sub
    for code, (outcome, meaning) in A.RESULT_CODES.items():
        assert f"| `{code}` | {outcome} | {meaning} |" in doc, code
