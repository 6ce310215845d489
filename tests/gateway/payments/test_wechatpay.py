"""WeChat Pay over its own API v2 (XML over HTTPS): the signing against WeChat's
published example, the connector (``gateway/payments/wechatpay.py``) against the
simulator (``lanecore sim provider --kind wechat --protocol wechatpay-v2``) run as a
real process on loopback, notifications to a real local HTTPS receiver, and the bill
in WeChat's format reconciled."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lanecore.core.pay import recon
from lanecore.gateway.payments import wechatpay as W
from lanecore.gateway.payments.httpapi import HttpsClient, HttpsServer
from lanecore.gateway.payments.providers import DECLINES, ProviderError

pytestmark = pytest.mark.kernel_free

CODE = "134567890123456789"            # a WeChat payment code: 18 digits, prefix 13

# WeChat Pay's security spec (pay.weixin.qq.com/wiki/doc/api/micropay.php?chapter=4_3):
# the example parameters, API key, string to sign and both signatures.
DOC_PARAMS = {"appid": "wxd930ea5d5a258f4f", "mch_id": "10000100", "device_info": "1000",
              "body": "test", "nonce_str": "ibuaiVcKdpRxkhJA"}
DOC_KEY = "192006250b4c09247ec02edce69f6a2d"
DOC_STRING = ("appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100&"
              "nonce_str=ibuaiVcKdpRxkhJA&key=192006250b4c09247ec02edce69f6a2d")
DOC_MD5 = "9A0A8659F005D6984697E2CA0A9CF3B7"
DOC_HMAC = "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"


def today() -> str:
    """Today's bill day: WeChat Pay's bills are Beijing time days."""
    return dt.datetime.now(dt.timezone(dt.timedelta(seconds=W.BILL_UTC_OFFSET_S))
                           ).strftime("%Y-%m-%d")


def wait_for(cond, what: str, limit_s: float = 30.0):
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"never: {what}")


class Sim:
    """The simulator process, its ready line and a connector built as the gateway
    builds it (``from_config`` of the ready line's channel)."""

    def __init__(self, d: Path, *extra: str) -> None:
        self.d = d
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lanecore", "sim", "provider", "--kind", "wechat",
             "--protocol", "wechatpay-v2", "--data-dir", str(d), "--fast", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read()
        self.ready = json.loads(line)
        self.channel = dict(self.ready["channel"])
        self.conn = self.connector()

    def connector(self, **over) -> W.WechatPayConnector:
        return W.from_config("wx", {**self.channel, **over}, self.d)

    def trades(self) -> dict:
        con = sqlite3.connect(self.d / "wechat.sqlite")
        try:
            return {r[0]: r[1:] for r in con.execute(
                "SELECT merchant_ref, status, amount_minor, requests FROM trades")}
        finally:
            con.close()

    def raw(self, path: str, fields: dict, *, cert: bool = False, key: str | None = None,
            tamper: dict | None = None) -> dict:
        """A hand-made signed request (``tamper``: fields changed after signing)."""
        ch = self.channel
        req = {"appid": ch["appid"], "mch_id": ch["mch_id"], "nonce_str": W.nonce(),
               "sign_type": "HMAC-SHA256", **fields}
        api_key = key or Path(ch["key_file"]).read_text().strip()
        req["sign"] = W.sign(req, api_key)
        req.update(tamper or {})
        kw = {"cert_file": ch["client_cert_file"], "key_file": ch["client_key_file"]} \
            if cert else {}
        client = HttpsClient(ch["endpoint"], ca_file=ch["ca_file"], **kw)
        reply = client.request("POST", path, W.to_xml(req), {"Content-Type": "text/xml"})
        assert reply is not None and reply.status == 200
        return W.from_xml(reply.body)

    def stop(self) -> None:
        self.conn.close()
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def sim(tmp_path):
    s = Sim(tmp_path / "wx")
    yield s
    s.stop()


# ----------------------------------------------------------------------------------
# signing and XML
# ----------------------------------------------------------------------------------
def test_the_published_signing_example_byte_for_byte():
    assert W._sign_input(DOC_PARAMS, DOC_KEY) == DOC_STRING.encode()
    assert W.sign(DOC_PARAMS, DOC_KEY, "MD5") == DOC_MD5
    assert W.sign(DOC_PARAMS, DOC_KEY, "HMAC-SHA256") == DOC_HMAC
    assert W.sign(DOC_PARAMS, DOC_KEY) == DOC_HMAC            # the default
    assert W.verify({**DOC_PARAMS, "sign": DOC_MD5}, DOC_KEY, "MD5")
    assert W.verify({**DOC_PARAMS, "sign": DOC_HMAC}, DOC_KEY, "HMAC-SHA256")
    # the document's own sign_type decides, else MD5 (the v2 default)
    assert W.verify({**DOC_PARAMS, "sign": DOC_MD5}, DOC_KEY)
    # empty values and sign itself are not signed; the order of the fields is not
    same = {"sign": "X", "attach": "", **dict(reversed(list(DOC_PARAMS.items())))}
    assert W.sign(same, DOC_KEY, "MD5") == DOC_MD5


@pytest.mark.parametrize("sign_type,good", [("MD5", DOC_MD5), ("HMAC-SHA256", DOC_HMAC)])
def test_a_tampered_field_or_signature_does_not_verify(sign_type, good):
    assert W.verify({**DOC_PARAMS, "sign": good}, DOC_KEY, sign_type)
    assert not W.verify({**DOC_PARAMS, "body": "tesT", "sign": good}, DOC_KEY, sign_type)
    assert not W.verify({**DOC_PARAMS, "extra": "1", "sign": good}, DOC_KEY, sign_type)
    assert not W.verify({**DOC_PARAMS, "sign": good[:-1] + "0"}, DOC_KEY, sign_type)
    assert not W.verify({**DOC_PARAMS, "sign": good}, DOC_KEY[::-1], sign_type)
    assert not W.verify(dict(DOC_PARAMS), DOC_KEY, sign_type)            # no sign
    other = "MD5" if sign_type == "HMAC-SHA256" else "HMAC-SHA256"
    assert not W.verify({**DOC_PARAMS, "sign": good}, DOC_KEY, other)
    with pytest.raises(ProviderError) as e:
        W.sign(DOC_PARAMS, DOC_KEY, "SHA1")
    assert e.value.code == "BAD_SIGN_TYPE"


def test_xml_round_trip_and_hostile_xml_refused():
    doc = {"body": "店-深圳 <QQ> & ]]> 公仔", "total_fee": "888", "empty": ""}
    raw = W.to_xml(doc)
    assert raw.startswith(b"<xml><body><![CDATA[")
    assert W.from_xml(raw) == doc
    bombs = [
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]>'
        b"<xml><body>&b;</body></xml>",
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        b"<xml><body>&e;</body></xml>",
        b"<root><a>1</a></root>", b"<xml><a><b>1</b></a></xml>", b"<xml><a>1</a><a>2</a></xml>",
        b"not xml", b"<xml><a>1</a>",
    ]
    for bad in bombs:
        with pytest.raises(ProviderError) as e:
            W.from_xml(bad)
        assert e.value.code == "BAD_XML", bad


def test_yuan_and_fen_are_exact():
    assert W.fen("12.34") == 1234 and W.fen("0.01") == 1 and W.fen("-3.00") == -300
    assert W.fen("0.07000", exact=False) == 7 and W.fen("0.00600", exact=False) == 1
    assert W.fen("0.00400", exact=False) == 0
    for bad in ("0.005", "abc", "NaN", ""):
        with pytest.raises(ValueError):
            W.fen(bad)
    assert [W.yuan(x) for x in (0, 1, 1234, -5, 100000001)] == \
        ["0.00", "0.01", "12.34", "-0.05", "1000000.01"]


def test_the_code_tables_map_onto_the_wallet_decline_table():
    wallet = DECLINES["wallet"]
    for err, (code, outcome, meaning) in W.ERR_CODES.items():
        assert outcome in ("unknown", "failed", "query") and meaning, err
        got = W.WechatPayConnector._err({"err_code": err})
        assert got[:2] == (code, outcome), err
        if code in wallet:       # where the decline table has the word, the same outcome
            assert wallet[code][0] == ("unknown" if outcome == "unknown" else "failed"), err
    assert W.ERR_CODES["AUTHCODEEXPIRE"][0] == "AUTH_CODE_EXPIRED"
    assert W.ERR_CODES["ORDERREVERSED"][:2] == ("ORDERCLOSED", "failed")
    for err in ("USERPAYING", "SYSTEMERROR", "BANKERROR"):
        assert W.ERR_CODES[err][1] == "unknown"
    assert W.WechatPayConnector._err({"err_code": "SOMETHING_NEW"})[:2] == \
        ("SOMETHING_NEW", "failed")
    assert {k: v[0] for k, v in W.TRADE_STATES.items()} == {
        "SUCCESS": "paid", "REFUND": "refunded", "NOTPAY": "unknown", "USERPAYING": "unknown",
        "ACCEPT": "unknown", "CLOSED": "reversed", "REVOKED": "reversed", "PAYERROR": "failed"}


# ----------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------
def test_configuration_refuses_bad_keys_and_plain_endpoints(sim, tmp_path):
    ch = sim.channel
    loose = tmp_path / "loose_key"
    shutil.copy(ch["key_file"], loose)
    os.chmod(loose, 0o644)
    cases = {
        "BAD_PERMISSIONS": {"key_file": str(loose)},
        "KEY_FILE_MISSING": {"key_file": str(tmp_path / "nope")},
        "PLAIN_NOT_ALLOWED": {"endpoint": ch["endpoint"].replace("https", "http")},
        "BAD_CONFIG": {"mch_id": ""},
    }
    short = tmp_path / "short_key"
    short.write_text("abc\n")
    os.chmod(short, 0o600)
    cases["BAD_KEY"] = {"key_file": str(short)}
    loose_client = tmp_path / "loose_client_key"
    shutil.copy(ch["client_key_file"], loose_client)
    os.chmod(loose_client, 0o640)
    for code, over in cases.items():
        with pytest.raises(ProviderError) as e:
            W.from_config("wx", {**ch, **over}, tmp_path)
        assert e.value.code == code, (code, e.value)
    with pytest.raises(ProviderError) as e:
        W.from_config("wx", {**ch, "client_key_file": str(loose_client)}, tmp_path)
    assert e.value.code == "BAD_PERMISSIONS"
    # relative paths are the data directory's
    rel = {**ch, "key_file": os.path.relpath(ch["key_file"], sim.d)}
    assert W.from_config("wx", rel, sim.d).mch_id == ch["mch_id"]
    # the API key is never in the connector's repr
    key = Path(ch["key_file"]).read_text().strip()
    assert key not in repr(sim.conn)


# ----------------------------------------------------------------------------------
# signatures refused both ways
# ----------------------------------------------------------------------------------
def test_the_simulator_refuses_a_tampered_request(sim):
    fields = {"body": "t", "out_trade_no": "T1", "total_fee": "100",
              "spbill_create_ip": "127.0.0.1", "auth_code": CODE}
    bad = sim.raw("/pay/micropay", fields, tamper={"total_fee": "1"})
    assert bad == {"return_code": "FAIL", "return_msg": "签名错误"}
    bad = sim.raw("/pay/micropay", fields, key="x" * 32)
    assert bad["return_code"] == "FAIL" and "sign" not in bad
    assert "T1" not in sim.trades()                      # nothing was processed
    good = sim.raw("/pay/micropay", fields)
    assert (good["return_code"], good["result_code"], good["total_fee"]) == \
        ("SUCCESS", "SUCCESS", "100")
    assert W.verify(good, Path(sim.channel["key_file"]).read_text().strip(), "HMAC-SHA256")
    assert sim.trades()["T1"][:2] == ("paid", 100)


def test_the_connector_refuses_a_tampered_answer(sim, caplog):
    assert sim.conn.configure(tamper_next=1)["tamper_next"] == 1
    with caplog.at_level("DEBUG"):
        r = sim.conn.charge("T2", 250, "CNY", auth_code=CODE)
    assert (r.status, r.decline_code) == ("unknown", "BAD_SIGNATURE")
    assert any("does not verify" in m for m in caplog.messages), caplog.messages
    key = Path(sim.channel["key_file"]).read_text().strip()
    assert not any(key in m or CODE in m for m in caplog.messages)   # no secret logged
    assert sim.trades()["T2"][0] == "paid"       # it happened: only a query may say so
    q = sim.conn.query("T2")
    assert (q.status, q.paid_minor, q.duplicate) == ("paid", 250, False)
    assert sim.conn.stats()["tamper_next"] == 0


# ----------------------------------------------------------------------------------
# micropay, query, the codes
# ----------------------------------------------------------------------------------
def test_micropay_paid_and_a_repeat_charges_once(sim):
    r = sim.conn.charge("P1", 1234, "CNY", auth_code=CODE, terminal="T7")
    assert (r.status, r.paid_minor, r.decline_code) == ("paid", 1234, None)
    assert r.provider_ref and r.provider_ref.startswith("42")
    again = sim.conn.charge("P1", 1234, "CNY", auth_code=CODE, terminal="T7")
    assert (again.status, again.duplicate, again.provider_ref) == ("paid", True, r.provider_ref)
    assert sim.trades()["P1"] == ("paid", 1234, 2)          # one trade, asked twice
    st = sim.conn.stats()
    assert st["charged"] == 1 and st["duplicate_charges"] == 1
    other = sim.conn.charge("P1", 999, "CNY", auth_code=CODE)
    assert (other.status, other.decline_code) == ("failed", "OUT_TRADE_NO_USED")


def test_userpaying_then_the_query_says_paid(sim):
    sim.conn.configure(next=["userpaying"])
    r = sim.conn.charge("U1", 500, "CNY", auth_code=CODE)
    assert (r.status, r.decline_code) == ("unknown", "USERPAYING")
    q = sim.conn.query("U1")          # --fast: the password is typed at once
    assert (q.status, q.paid_minor) == ("paid", 500)


def test_userpaying_then_cancelled_is_a_failed_query(sim):
    sim.conn.configure(next=["usercancel"])
    r = sim.conn.charge("U2", 500, "CNY", auth_code=CODE)
    assert (r.status, r.decline_code) == ("unknown", "USERPAYING")
    q = sim.conn.query("U2")
    assert (q.status, q.decline_code) == ("failed", "PAYERROR")
    again = sim.conn.charge("U2", 500, "CNY", auth_code=CODE)       # a new attempt, please
    assert (again.status, again.decline_code) == ("failed", "ORDERCLOSED")


def test_systemerror_then_the_query(sim):
    sim.conn.configure(next=["systemerror"])
    r = sim.conn.charge("S1", 700, "CNY", auth_code=CODE)
    assert (r.status, r.decline_code) == ("unknown", "SYSTEMERROR")
    assert sim.conn.query("S1").status == "paid"
    assert sim.conn.query("NEVER-SEEN").status == "not_found"


@pytest.mark.parametrize("outcome,status,code", [
    ("NOTENOUGH", "failed", "NOTENOUGH"),
    ("AUTH_CODE_EXPIRED", "failed", "AUTH_CODE_EXPIRED"),
    ("TRADE_ERROR", "failed", "TRADE_ERROR"),
    ("EXCEED_LIMIT", "failed", "EXCEED_LIMIT"),
    ("systemerror", "unknown", "SYSTEMERROR"),
    ("userpaying", "unknown", "USERPAYING"),
])
def test_every_engine_outcome_maps_onto_the_decline_table(sim, outcome, status, code):
    sim.conn.configure(next=[outcome])
    r = sim.conn.charge("C1", 321, "CNY", auth_code=CODE)
    assert (r.status, r.decline_code) == (status, code)
    if status == "failed":
        assert DECLINES["wallet"][code][0] == "failed"


def test_an_invalid_code_and_a_reversed_order(sim):
    r = sim.conn.charge("C2", 100, "CNY", auth_code="994567890123456789")
    assert (r.status, r.decline_code) == ("failed", "AUTH_CODE_INVALID")
    assert sim.conn.charge("C3", 100, "CNY", auth_code=CODE).status == "paid"
    assert sim.conn.reverse("C3").status == "reversed"
    again = sim.conn.charge("C3", 100, "CNY", auth_code=CODE)
    assert (again.status, again.decline_code) == ("failed", "ORDERCLOSED")
    with pytest.raises(ProviderError):            # refused before anything is sent
        sim.conn.charge("C4", 100, "CNY", auth_code="not-digits")
    with pytest.raises(ProviderError):
        sim.conn.charge("C/5", 100, "CNY", auth_code=CODE)
    assert "C4" not in sim.trades()


def test_an_unanswered_charge_is_unknown_and_the_query_finds_it(sim):
    quick = sim.connector(timeout_s=0.5)
    try:
        sim.conn.configure(next=["timeout"])
        r = quick.charge("N1", 800, "CNY", auth_code=CODE)
        assert (r.status, r.decline_code) == ("unknown", "TIMEOUT")
        assert quick.query("N1").status == "paid"
        sim.conn.configure(next=["drop"])
        r = quick.charge("N2", 800, "CNY", auth_code=CODE)
        assert (r.status, r.decline_code) == ("unknown", "TIMEOUT")
        assert quick.query("N2").status == "not_found"
        assert quick.reverse("N2").status == "reversed"     # closed: can never pay later
        assert quick.query("N2").status == "reversed"
    finally:
        quick.close()


def test_the_non_blocking_path(sim):
    rid, frame = sim.conn.prepare_charge("A1", 640, "CNY", auth_code=CODE)
    sock = sim.conn.async_socket()
    assert sim.conn.post(frame)
    assert sock.poll(10_000)
    [answer] = sim.conn.answers()
    assert answer["id"] == rid and answer["status"] == "paid"
    res = sim.conn.result("charge", "A1", answer)
    assert (res.status, res.paid_minor) == ("paid", 640)


# ----------------------------------------------------------------------------------
# reverse, refunds, mutual TLS
# ----------------------------------------------------------------------------------
def test_reverse_gives_a_paid_trade_back(sim):
    assert sim.conn.charge("R1", 900, "CNY", auth_code=CODE).status == "paid"
    assert sim.conn.reverse("R1").status == "reversed"
    q = sim.conn.query("R1")
    assert q.status == "reversed" and sim.trades()["R1"][0] == "reversed"


def test_refund_refund_query_and_over_refund(sim):
    assert sim.conn.charge("F1", 1000, "CNY", auth_code=CODE).status == "paid"
    r1 = sim.conn.refund("F1", "F1-R1", 300)
    assert (r1.status, r1.refunded_minor) == ("refunded", 300) and r1.provider_ref
    again = sim.conn.refund("F1", "F1-R1", 300)                  # the same refund
    assert (again.status, again.provider_ref) == ("refunded", r1.provider_ref)
    over = sim.conn.refund("F1", "F1-R2", 701)
    assert (over.status, over.decline_code) == ("failed", "REFUND_EXCEEDS_PAID")
    other = sim.conn.refund("F1", "F1-R1", 200)
    assert (other.status, other.decline_code) == ("failed", "REFUND_REF_USED")
    assert sim.conn.refund("F1", "F1-R3", 700).status == "refunded"
    rq = sim.conn.refund_query("F1-R1")
    assert (rq.status, rq.provider_ref, rq.refunded_minor) == \
        ("refunded", r1.provider_ref, 1000)
    assert sim.conn.refund_query("F1-NONE").status == "not_found"
    q = sim.conn.query("F1")
    assert (q.status, q.paid_minor, q.refunded_minor) == ("refunded", 1000, 1000)
    nope = sim.conn.refund("F-NONE", "F-NONE-R", 1)
    assert nope.status == "not_found"


def test_secapi_needs_the_merchants_client_certificate(sim, tmp_path):
    assert sim.conn.charge("M1", 500, "CNY", auth_code=CODE).status == "paid"
    refused = sim.raw("/secapi/pay/reverse", {"out_trade_no": "M1"})
    assert refused["return_code"] == "FAIL" and "证书" in refused["return_msg"]
    refused = sim.raw("/secapi/pay/refund", {"out_trade_no": "M1", "out_refund_no": "M1-R",
                                             "total_fee": "500", "refund_fee": "500"})
    assert refused["return_code"] == "FAIL"
    assert sim.trades()["M1"][0] == "paid"                      # nothing reversed
    # a certificate of the same CA but not this merchant's (CN = another mch_id)
    from lanecore.gateway.payments.httpapi import TestPki, issue_client_cert
    pki_dir = Path(sim.ready["ca_file"]).parent
    pki = TestPki(pki_dir / "ca.pem", pki_dir / "server.pem", pki_dir / "server.key")
    cert, key = issue_client_cert(pki, "1234567890", tmp_path / "o.pem", tmp_path / "o.key")
    stranger = sim.connector(client_cert_file=str(cert), client_key_file=str(key))
    try:
        r = stranger.reverse("M1")
        assert (r.status, r.decline_code) == ("unknown", "RETURN_FAIL")
    finally:
        stranger.close()
    assert sim.trades()["M1"][0] == "paid"
    ok = sim.raw("/secapi/pay/reverse", {"out_trade_no": "M1"}, cert=True)
    assert (ok["return_code"], ok["result_code"], ok["recall"]) == ("SUCCESS", "SUCCESS", "N")
    # a connector without the certificate cannot even try
    no_cert = W.WechatPayConnector(
        sim.channel["endpoint"], appid=sim.channel["appid"], mch_id=sim.channel["mch_id"],
        api_key=Path(sim.channel["key_file"]).read_text().strip(),
        ca_file=sim.channel["ca_file"])
    with pytest.raises(ProviderError) as e:
        no_cert.reverse("M2")
    assert e.value.code == "NO_CLIENT_CERT"
    no_cert.close()


# ----------------------------------------------------------------------------------
# native order, the notification
# ----------------------------------------------------------------------------------
class Receiver:
    """The merchant's notify URL: a real HTTPS server on loopback (the simulator's
    test CA's server certificate) that refuses the first ``nack`` notifications."""

    def __init__(self, sim: Sim, nack: int) -> None:
        self.bodies: list[bytes] = []
        self.nack = nack
        self.lock = threading.Lock()
        pki = Path(sim.ready["ca_file"]).parent
        self.server = HttpsServer(self.handle, cert_file=pki / "server.pem",
                                  key_file=pki / "server.key").start()
        self.conn = sim.conn

    def handle(self, method, target, headers, body, cert):
        with self.lock:
            self.bodies.append(body)
            n = len(self.bodies)
        try:
            self.conn.notification(headers, body)
            ok = n > self.nack
        except ProviderError:
            ok = False
        status, ctype, out = self.conn.notification_ack(ok)
        return status, {"Content-Type": ctype}, out

    @property
    def url(self) -> str:
        return self.server.url + "/wx/notify"


def test_native_order_scan_and_the_notification_until_acknowledged(sim):
    rx = Receiver(sim, nack=2)
    try:
        r = sim.conn.precreate("Q1", 1990, "CNY", subject="Riverside 1", notify_url=rx.url)
        assert (r.status, r.decline_code) == ("unknown", "USERPAYING")
        assert r.code_url.startswith("weixin://wxpay/bizpayurl?pr=")
        again = sim.conn.precreate("Q1", 1990, "CNY", notify_url=rx.url)
        assert again.code_url == r.code_url                  # the same order
        q = sim.conn.query("Q1")
        assert (q.status, q.decline_code) == ("unknown", "USERPAYING")      # NOTPAY
        assert rx.bodies == []
        sim.conn.scan("Q1", "paid")
        wait_for(lambda: sim.conn.stats()["notifications"]["acked"] == 1, "acknowledged")
        st = sim.conn.stats()["notifications"]
        assert st == {"queued": 1, "attempts": 3, "acked": 1, "gave_up": 0, "pending": 0}
        assert len(rx.bodies) == 3 and len(set(rx.bodies)) == 1    # the same message
        n = sim.conn.notification({"content-type": "text/xml"}, rx.bodies[0])
        assert (n.status, n.merchant_ref, n.paid_minor) == ("paid", "Q1", 1990)
        assert n.provider_ref == sim.conn.query("Q1").provider_ref
        doc = W.from_xml(rx.bodies[0])
        assert doc["trade_type"] == "NATIVE" and doc["result_code"] == "SUCCESS"
    finally:
        rx.server.stop()


def test_a_tampered_notification_is_refused(sim):
    rx = Receiver(sim, nack=0)
    try:
        sim.conn.precreate("Q2", 500, "CNY", notify_url=rx.url)
        sim.conn.scan("Q2", "paid")
        body = wait_for(lambda: rx.bodies and rx.bodies[0], "a notification")
    finally:
        rx.server.stop()
    key = Path(sim.channel["key_file"]).read_text().strip()
    doc = W.from_xml(body)
    cases = {
        "BAD_SIGNATURE": W.to_xml({**doc, "total_fee": "1"}),
        "BAD_NOTIFICATION": b"<xml><a>",
    }
    other = {**doc, "mch_id": "1234567890"}
    other["sign"] = W.sign(other, key, doc.get("sign_type", "MD5"))
    cases["BAD_NOTIFICATION "] = W.to_xml(other)
    for code, raw in cases.items():
        with pytest.raises(ProviderError) as e:
            sim.conn.notification({}, raw)
        assert e.value.code == code.strip(), code
    assert W.from_xml(sim.conn.notification_ack(True)[2])["return_code"] == "SUCCESS"
    assert W.from_xml(sim.conn.notification_ack(False)[2])["return_code"] == "FAIL"


def test_an_unpaid_native_order_is_closed_and_never_paid(sim):
    sim.conn.precreate("Q3", 700, "CNY", notify_url="https://127.0.0.1:9/n")
    r = sim.conn.reverse("Q3")
    assert (r.status, r.decline_code) == ("reversed", "ORDERCLOSED")
    assert sim.conn.scan("Q3", "paid")["changed"] is False
    assert sim.conn.query("Q3").status == "reversed"                 # CLOSED
    # a fresh connector (no memory of the order) closes it too: reverse → TRADE_ERROR
    sim.conn.precreate("Q4", 700, "CNY", notify_url="https://127.0.0.1:9/n")
    fresh = sim.connector()
    try:
        assert fresh.reverse("Q4").status == "reversed"
    finally:
        fresh.close()
    # a paid native order: close_order keeps the payment (a sale), reverse gives it
    # back by one full refund (WeChat cannot reverse a native order), once
    sim.conn.precreate("Q8", 880, "CNY", notify_url="https://127.0.0.1:9/n")
    sim.conn.scan("Q8", "paid")
    kept = sim.conn.close_order("Q8")
    assert (kept.status, kept.paid_minor) == ("paid", 880)
    for _ in range(2):
        back = sim.conn.reverse("Q8")
        assert (back.status, back.decline_code) == ("reversed", "REFUNDED")
    assert sim.trades()["Q8"][0] == "refunded"
    q = sim.conn.query("Q8")
    assert (q.status, q.refunded_minor) == ("refunded", 880)
    assert sim.conn.stats()["refunds"] == 1
    # the shopper cancels in the wallet: no notification, the query says failed
    queued = sim.conn.stats()["notifications"]["queued"]       # Q8's
    sim.conn.precreate("Q7", 700, "CNY", notify_url="https://127.0.0.1:9/n")
    assert sim.conn.scan("Q7", "cancel")["changed"] is True
    assert (sim.conn.query("Q7").status, sim.conn.query("Q7").decline_code) == \
        ("failed", "PAYERROR")
    assert sim.conn.stats()["notifications"]["queued"] == queued == 1
    with pytest.raises(ProviderError) as e:
        sim.connector().precreate("Q5", 1, "CNY")
    assert e.value.code == "NO_NOTIFY_URL"
    # a QR asked for a reference already paid by payment code: its state, and the
    # payment-code trade is still reversed as one
    assert sim.conn.charge("Q6", 300, "CNY", auth_code=CODE).status == "paid"
    dup = sim.conn.precreate("Q6", 300, "CNY", notify_url="https://127.0.0.1:9/n")
    assert (dup.status, dup.duplicate, dup.code_url) == ("paid", True, None)
    used = sim.conn.precreate("Q6", 301, "CNY", notify_url="https://127.0.0.1:9/n")
    assert (used.status, used.decline_code) == ("failed", "OUT_TRADE_NO_USED")
    assert sim.conn.reverse("Q6").status == "reversed"
    assert sim.trades()["Q6"][0] == "reversed"


# ----------------------------------------------------------------------------------
# the bill
# ----------------------------------------------------------------------------------
def a_day(sim: Sim) -> list[dict]:
    """Paid, refunded and reversed trades; the ledger rows that match them."""
    ledger = []
    for i in range(8):
        ref, amount = f"D{i}", 101 + 37 * i
        assert sim.conn.charge(ref, amount, "CNY", auth_code=CODE).status == "paid"
        ledger.append({"merchant_ref": ref, "channel": "wx", "amount_minor": amount,
                       "currency": "CNY", "state": "paid"})
    assert sim.conn.refund("D1", "D1-R1", 20).status == "refunded"
    ledger.append({"type": "refund", "refund_ref": "D1-R1", "merchant_ref": "D1",
                   "channel": "wx", "amount_minor": 20, "currency": "CNY", "state": "paid"})
    assert sim.conn.reverse("D2").status == "reversed"
    ledger[2]["state"] = "reversed"
    return ledger


def test_the_bill_downloaded_parsed_and_reconciled(sim):
    ledger = a_day(sim)
    bill = sim.conn.bill(today())
    assert bill.suffix == "txt" and bill.rows == 10        # 8 paid, a refund, a reversal
    text = bill.raw.decode("utf-8")
    lines = text.split("\r\n")
    assert lines[0] == W.BILL_HEADER and lines[-3] == W.BILL_SUMMARY_HEADER
    assert all(ln.startswith("`") for ln in lines[1:-3])
    assert lines[-2].startswith("`10,")
    rows = sim.conn.bill_rows(bill, "wx")
    kinds = sorted((r.type, r.merchant_ref, r.status) for r in rows)
    assert ("charge", "D1", "REFUND") in kinds and ("charge", "D2", "REVERSED") in kinds
    assert ("reverse", "D2", "SUCCESS") in kinds and ("refund", "D1", "SUCCESS") in kinds
    rep = recon.reconcile(ledger, rows, channels=["wx"])
    assert rep.clean, rep.summary()
    assert len(rep.matched) == 9
    # the same rows as the engine's own bill: nothing lost in WeChat's format
    assert sorted(rows, key=lambda r: (r.type, r.merchant_ref)) == sorted(
        (r.__class__(**{**r.__dict__, "channel": "wx"}) for r in _engine_rows(sim)),
        key=lambda r: (r.type, r.merchant_ref))

    spec = {"drop": 1, "extra": 1, "amount": 1, "duplicate": 1, "seed": 5}
    hurt = sim.conn.bill(today(), inject=spec)
    record = hurt.injected
    rep = recon.reconcile(ledger, sim.conn.bill_rows(hurt, "wx"), channels=["wx"])
    got = {k: sorted(f.merchant_ref for f in getattr(rep, k)) for k in
           ("missing_at_provider", "missing_in_ledger", "duplicates")}
    assert got == {"missing_at_provider": record["drop"], "missing_in_ledger": record["extra"],
                   "duplicates": record["duplicate"]}
    assert [(f.merchant_ref, f.ledger_amount_minor, f.bill_amount_minor)
            for f in rep.amount_mismatch] == \
        [(a["merchant_ref"], a["from"], a["to"]) for a in record["amount"]]
    assert len(rep.discrepancies) == 4
    # an injection is for one download: the next is the honest bill again; one
    # asked for and taken back never reaches a download
    assert recon.reconcile(ledger, sim.conn.bill_rows(sim.conn.bill(today()), "wx"),
                           channels=["wx"]).clean
    assert sim.conn.inject_bill(today(), spec) == record
    assert sim.conn.inject_bill(today(), None) is None
    assert recon.reconcile(ledger, sim.conn.bill_rows(sim.conn.bill(today()), "wx"),
                           channels=["wx"]).clean


def _engine_rows(sim: Sim):
    from lanecore.gateway.sim.provider import Behaviour, Provider
    p = Provider("wechat", sim.d, Behaviour())
    try:
        return p.bill_rows(today(), W.BILL_UTC_OFFSET_S)
    finally:
        p.close()


def test_a_bill_of_another_merchant_or_altered_is_refused(sim):
    a_day(sim)
    bill = sim.conn.bill(today())
    mch = sim.channel["mch_id"]
    text = bill.raw.decode("utf-8")
    other = text.replace(f",`{mch},", ",`1999999999,")
    with pytest.raises(ProviderError) as e:
        sim.conn.bill_rows(type(bill)(**{**bill.__dict__, "raw": other.encode()}), "wx")
    assert e.value.code == "BILL_MERCHANT_MISMATCH"
    lines = text.split("\r\n")
    cut = "\r\n".join(lines[:3] + lines[-3:])                 # lines lost on the way
    with pytest.raises(ProviderError) as e:
        W.parse_bill(cut, "wx", mch)
    assert e.value.code == "BAD_BILL"
    with pytest.raises(ProviderError) as e:
        W.parse_bill(text.replace("`", "", 3), "wx", mch)
    assert e.value.code == "BAD_BILL"


def test_no_bill_exist_is_an_empty_bill(sim):
    empty = sim.conn.bill("2001-01-01")
    assert empty.rows == 0 and sim.conn.bill_rows(empty, "wx") == []


def test_the_docs_print_the_code_tables():
    """docs/pay/wechatpay.md prints ERR_CODES and TRADE_STATES as they are."""
    doc = (Path(__file__).resolve().parents[3] / "docs" / "pay" / "wechatpay.md").read_text()
    for err, (code, outcome, meaning) in W.ERR_CODES.items():
        assert f"| `{err}` | `{code}` | {outcome} | {meaning} |" in doc, err
    for state, (status, code) in W.TRADE_STATES.items():
        assert f"| `{state}` | {status} | {code or '—'} |" in doc, state
    assert W.BILL_HEADER in doc and W.BILL_SUMMARY_HEADER in doc


def test_the_test_merchant_is_made_once_private_and_kept(tmp_path):
    d = tmp_path / "wx"
    first = Sim(d)
    try:
        ch = first.channel
        for key in ("key_file", "client_cert_file", "client_key_file", "ca_file"):
            assert os.stat(ch[key]).st_mode & 0o077 == 0, key
        assert os.stat(d / "merchant").st_mode & 0o077 == 0
        assert len(Path(ch["key_file"]).read_text().strip()) == 32
        assert ch["appid"].startswith("wx") and ch["mch_id"].isdigit()
        assert first.conn.charge("K1", 100, "CNY", auth_code=CODE).status == "paid"
    finally:
        first.stop()
    again = Sim(d)                      # restarted over the same data directory
    try:
        same = {k: v for k, v in again.channel.items() if k != "endpoint"}
        assert same == {k: v for k, v in ch.items() if k != "endpoint"}
        assert again.conn.query("K1").status == "paid"
    finally:
        again.stop()
