"""The payment gateway's POS server role (seed 004): terminals registered with an id
and a key, every request authenticated by an HMAC frame, per-terminal limits, and a
terminal that sees only its own transactions — in process (with a settable clock)
and end to end over a real `lanecore gateway payments` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import msgpack
import pytest

from lanecore.gateway.payments import terminals as T
from lanecore.gateway.net.client import Client, ServiceError, TerminalKey
from lanecore.gateway.payments.gateway import PaymentGateway

from payfix import WECHAT_CODE, wallet, write_config

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

NOW = 1_790_000_000.0


class Clock:
    def __init__(self, t=NOW):
        self.t = t

    def __call__(self):
        return self.t


def frames_for(req: dict, terminal: str | None, key: bytes | None, *, ts=None) -> list:
    payload = msgpack.packb(req, use_bin_type=True)
    out = [b"\x00peer", payload]
    if terminal is not None:
        out.append(T.auth_frame(terminal, key, payload, ts=NOW if ts is None else ts))
    return out


def ask(gw, req, terminal=None, key=None, **kw) -> dict:
    reply = gw.on_frames(frames_for(req, terminal, key, **kw))
    assert reply[0] == b"\x00peer"
    return msgpack.unpackb(reply[-1], raw=False)


@pytest.fixture
def gw(tmp_path, providers):
    p = providers("wx", "wechat")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"wx": wallet("wx", p.endpoint, 1)}, pos={"auth": "hmac"})
    g = PaymentGateway(d, clock=Clock())
    g.provider = p
    yield g
    g.ledger.close()


def charge_req(rid, order_no, amount, **kw):
    return {"op": "pay.charge", "id": rid, "order_no": order_no, "amount_minor": amount,
            "currency": "CNY", "method": "auth_code", "auth_code": WECHAT_CODE, **kw}


# --------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------

def test_register_rotate_disable_and_bad_input(tmp_path):
    import sqlite3
    con = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    reg = T.Terminals(con, clock=Clock())
    t, key = reg.register("POS-1", max_payment_minor=5000, methods=["auth_code", "card"])
    assert len(key) == 32 and t.methods == ("auth_code", "card") and not t.admin
    assert "key" not in t.to_dict() and repr(key) not in repr(t)
    assert T.parse_key(T.key_text(key)) == key == T.parse_key(key.hex())
    with pytest.raises(T.TerminalError) as e:
        reg.register("POS-1")
    assert e.value.code == "TERMINAL_EXISTS"
    t2, key2 = reg.register("POS-1", rotate=True, admin=True)
    assert key2 != key and t2.admin and t2.methods is None
    assert reg.disable("POS-1").disabled_at == NOW
    for bad, code in ((dict(terminal_id="has space"), "BAD_TERMINAL_ID"),
                      (dict(terminal_id="x" * 33), "BAD_TERMINAL_ID"),
                      (dict(terminal_id="P", max_payment_minor=0), "BAD_LIMIT"),
                      (dict(terminal_id="P", max_day_minor=True), "BAD_LIMIT"),
                      (dict(terminal_id="P", methods=["bitcoin"]), "BAD_LIMIT"),
                      (dict(terminal_id="P", key=b"short"), "BAD_KEY")):
        with pytest.raises(T.TerminalError) as e:
            reg.register(**bad)
        assert e.value.code == code, bad
    with pytest.raises(T.TerminalError) as e:
        reg.disable("NOPE")
    assert e.value.code == "UNKNOWN_TERMINAL"
    with pytest.raises(T.TerminalError) as e:
        T.parse_key("too-short")
    assert e.value.code == "BAD_KEY"


def test_the_mac_is_the_documented_recipe():
    """The LCA2 recipe and the worked example of docs/protocol.md ("Terminal
    authentication"), hex strings read from the page itself."""
    import hashlib
    import hmac
    import re

    from repo import REPO
    doc = (REPO / "docs" / "protocol.md").read_text()
    section = doc[doc.index("Worked example: key = bytes 0x00"):]
    section = section[:section.index("Rules:")]
    payload_hex, prefix_hex, mac_hex, frame_hex = re.findall(r"`([0-9a-f]{28,})`", section)
    key, nonce = bytes(range(32)), bytes(range(16, 32))
    payload = msgpack.packb({"op": "hello", "id": 1})
    assert payload.hex() == payload_hex
    prefix = bytes.fromhex(prefix_hex)
    assert prefix == b"LCA2\nPOS-1\n1790000000\n" + nonce.hex().encode() + b"\n"
    by_hand = hmac.new(key, prefix + payload, hashlib.sha256).digest()
    assert by_hand.hex() == mac_hex
    assert T.mac(key, "POS-1", 1_790_000_000, nonce, payload) == by_hand
    assert T.auth_frame("POS-1", key, payload, ts=1_790_000_000, nonce=nonce).hex() == \
        frame_hex
    assert msgpack.unpackb(bytes.fromhex(frame_hex)) == {
        "t": "POS-1", "ts": 1_790_000_000, "n": nonce, "mac": by_hand}
    # every frame the library makes has a fresh nonce, and a valid MAC over it
    a, b = (msgpack.unpackb(T.auth_frame("POS-1", key, payload)) for _ in range(2))
    assert a["n"] != b["n"] and len(a["n"]) == 16
    assert a["mac"] == T.mac(key, "POS-1", a["ts"], a["n"], payload)


# --------------------------------------------------------------------------------------
# Authentication, in process
# --------------------------------------------------------------------------------------

def test_every_request_but_hello_needs_a_valid_frame(gw):
    _, key = gw.terminals.register("POS-1")
    _, other = gw.terminals.register("POS-2")
    hello = ask(gw, {"op": "hello", "id": 1})
    assert hello["ok"] and hello["auth"] == "hmac" and "terminal" not in hello
    assert ask(gw, {"op": "hello", "id": 2}, "POS-1", key)["terminal"]["id"] == "POS-1"
    req = charge_req("c1", "A-1", 100)
    assert ask(gw, req)["error"]["code"] == "AUTH_REQUIRED"
    assert ask(gw, req, "POS-1", other)["error"]["code"] == "AUTH_FAILED"   # wrong key
    assert ask(gw, req, "POS-9", key)["error"]["code"] == "AUTH_FAILED"     # no such one
    assert ask(gw, req, "POS-1", key, ts=NOW - 301)["error"]["code"] == "AUTH_EXPIRED"
    assert ask(gw, req, "POS-1", key, ts=NOW + 301)["error"]["code"] == "AUTH_EXPIRED"
    # a MAC over other bytes: the request was changed on the way
    f = frames_for(req, "POS-1", key)
    f[1] = msgpack.packb({**req, "amount_minor": 1})
    assert msgpack.unpackb(gw.on_frames(f)[-1])["error"]["code"] == "AUTH_FAILED"
    for junk in (b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"t": "POS-1", "ts": 1.5,
                                                                  "mac": b"x" * 32})):
        f = frames_for(req, "POS-1", key)
        f[2] = junk
        assert msgpack.unpackb(gw.on_frames(f)[-1])["error"]["code"] == "AUTH_BAD_FRAME"
    assert gw.provider.paid() == {}                     # nothing of that was charged
    r = ask(gw, req, "POS-1", key)
    assert r["ok"] and r["status"] == "paid", r
    gw.terminals.disable("POS-1")
    assert ask(gw, charge_req("c2", "A-2", 100), "POS-1", key)["error"]["code"] == \
        "AUTH_FAILED"
    assert gw.provider.paid() == {"A-1-1": 100}


def test_a_terminal_sees_and_touches_only_its_own_transactions(gw):
    _, k1 = gw.terminals.register("POS-1")
    _, k2 = gw.terminals.register("POS-2")
    _, ka = gw.terminals.register("HQ", admin=True)
    assert ask(gw, charge_req("c1", "B-1", 300), "POS-1", k1)["status"] == "paid"
    assert ask(gw, charge_req("c1", "B-2", 400), "POS-2", k2)["status"] == "paid"
    # POS-2 asking about POS-1's order: as if it did not exist
    for op, extra in (("pay.status", {}), ("pay.reverse", {}),
                      ("pay.refund", {"refund_ref": "R1", "amount_minor": 1})):
        r = ask(gw, {"op": op, "id": f"x-{op}", "order_no": "B-1", **extra}, "POS-2", k2)
        assert r["error"]["code"] == "UNKNOWN_ORDER", (op, r)
    # its own "B-1" is its own order (order numbers are per terminal): charged as a new
    # trade, never answered with POS-1's payment; nor may it pay in another's name
    r = ask(gw, charge_req("c2", "B-1", 300), "POS-2", k2)
    assert r["status"] == "paid" and r["merchant_ref"] == "B-1-2", r
    r = ask(gw, charge_req("c3", "B-3", 300, terminal="POS-1"), "POS-2", k2)
    assert r["error"]["code"] == "FORBIDDEN"
    # a request id is the terminal's own: POS-2 re-using POS-1's id (and naming POS-1's
    # client) gets no copy of POS-1's recorded reply
    r = ask(gw, {**charge_req("c1", "B-2", 400), "client": "pos:POS-1"}, "POS-2", k2)
    assert r["order_no"] == "B-2"
    listed = ask(gw, {"op": "pay.list", "id": "l"}, "POS-2", k2)["charges"]
    assert [c["merchant_ref"] for c in listed] == ["B-2-1", "B-1-2"]
    assert ask(gw, {"op": "pay.list", "id": "l2", "terminal": "POS-1"}, "POS-2",
               k2)["error"]["code"] == "FORBIDDEN"
    assert {c["order_no"] for c in ask(gw, {"op": "pay.list", "id": "l"}, "HQ",
                                       ka)["charges"]} == {"B-1", "B-2"}
    assert ask(gw, {"op": "pay.status", "id": "s", "order_no": "B-1"}, "HQ",
               ka)["status"] == "paid"
    # the day's books and the counters are the admin's
    for op, extra in (("recon.run", {"date": "2026-09-21"}), ("stats", {})):
        assert ask(gw, {"op": op, "id": f"a-{op}", **extra}, "POS-1",
                   k1)["error"]["code"] == "FORBIDDEN"
    assert ask(gw, {"op": "stats", "id": "st"}, "HQ", ka)["ok"]
    assert gw.provider.paid() == {"B-1-1": 300, "B-2-1": 400, "B-1-2": 300}


def test_per_terminal_limits(gw):
    _, key = gw.terminals.register("POS-1", max_payment_minor=1000, max_day_minor=1500,
                                   methods=["auth_code"])
    r = ask(gw, charge_req("1", "L-1", 1001), "POS-1", key)
    assert r["error"]["code"] == "TERMINAL_LIMIT" and r["error"]["limit"] == \
        "max_payment_minor" and r["error"]["limit_minor"] == 1000
    assert ask(gw, charge_req("2", "L-2", 1000), "POS-1", key)["status"] == "paid"
    r = ask(gw, charge_req("3", "L-3", 501), "POS-1", key)
    assert r["error"]["code"] == "TERMINAL_LIMIT" and r["error"]["limit"] == \
        "max_day_minor" and r["error"]["used_minor"] == 1000
    q = ask(gw, {"op": "pay.quote", "id": "q", "amount_minor": 501, "currency": "CNY",
                 "method": "auth_code", "auth_code": WECHAT_CODE}, "POS-1", key)
    assert q["terminal_limit"] and not any(c["eligible"] for c in q["channels"])
    assert ask(gw, charge_req("4", "L-4", 500), "POS-1", key)["status"] == "paid"
    r = ask(gw, {**charge_req("5", "L-5", 10), "method": "cash",
                 "cash": {"tendered": {"100": 1}}}, "POS-1", key)
    assert r["error"]["code"] == "TERMINAL_LIMIT" and r["error"]["limit"] == "methods"
    # a retry of a paid order is answered even now the terminal is at its limit
    assert ask(gw, charge_req("6", "L-2", 1000), "POS-1", key)["status"] == "paid"
    gw.clock.t += 86_400                               # a new day, a new allowance
    assert ask(gw, charge_req("7", "L-7", 900, ), "POS-1", key, ts=gw.clock.t)["status"] \
        == "paid"
    assert gw.provider.paid() == {"L-2-1": 1000, "L-4-1": 500, "L-7-1": 900}


def test_limits_apply_to_a_registered_terminal_without_auth(tmp_path, providers):
    p = providers("wx", "wechat")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"wx": wallet("wx", p.endpoint, 1)})
    gw = PaymentGateway(d)
    gw.terminals.register("T1", max_payment_minor=100)
    gw.terminals.register("T2")
    gw.terminals.disable("T2")
    r = gw.handle({**charge_req("1", "N-1", 101), "terminal": "T1"}, "c")
    assert r["error"]["code"] == "TERMINAL_LIMIT"
    r = gw.handle({**charge_req("2", "N-2", 10), "terminal": "T2"}, "c")
    assert r["error"]["code"] == "TERMINAL_DISABLED"
    assert gw.handle({**charge_req("3", "N-3", 10), "terminal": "T9"}, "c")["status"] == \
        "paid"                                          # not registered: channel limits only
    gw.ledger.close()


# --------------------------------------------------------------------------------------
# End to end: the CLI registers, a real gateway process, the client signs
# --------------------------------------------------------------------------------------

def lanecore(*args, data_dir):
    out = subprocess.run([sys.executable, "-m", "lanecore", *args, "--data-dir",
                          str(data_dir)], capture_output=True, text=True, timeout=60)
    return out.returncode, out.stdout, out.stderr


def test_end_to_end_over_a_real_gateway(tmp_path, providers):
    p = providers("wx", "wechat")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"wx": wallet("wx", p.endpoint, 1)}, pos={"auth": "hmac"})
    rc, out, err = lanecore("terminal", "add", "POS-1", "--max-payment-minor", "5000",
                            "--key-file", str(tmp_path / "pos1.key"), data_dir=d)
    assert rc == 0, err
    added = json.loads(out)
    assert added["id"] == "POS-1" and added["max_payment_minor"] == 5000
    assert (tmp_path / "pos1.key").read_text().strip() == added["key"]
    assert os.stat(tmp_path / "pos1.key").st_mode & 0o077 == 0
    assert os.stat(d / "payments.db").st_mode & 0o077 == 0        # it holds the keys
    rc, _, err = lanecore("terminal", "add", "POS-1", data_dir=d)
    assert rc != 0 and "TERMINAL_EXISTS" in err
    rc, out, _ = lanecore("terminal", "list", data_dir=d)
    assert [json.loads(x)["id"] for x in out.splitlines()] == ["POS-1"] and "key" not in out
    endpoint = f"ipc://{tmp_path}/pay.ipc"
    proc = subprocess.Popen([sys.executable, "-m", "lanecore", "gateway", "payments",
                             "--bind", endpoint, "--data-dir", str(d)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    key = TerminalKey.from_text("POS-1", added["key"])
    try:
        with Client(endpoint, terminal_key=key, timeout_s=5, retries=2) as c:
            assert c.call("hello")["terminal"]["id"] == "POS-1"
            r = c.call("pay.charge", order_no="E-1", amount_minor=1200, currency="CNY",
                       method="auth_code", auth_code=WECHAT_CODE)
            assert r["status"] == "paid" and r["channel"] == "wx"
            with pytest.raises(ServiceError) as e:
                c.call("pay.charge", order_no="E-2", amount_minor=5001, currency="CNY",
                       method="auth_code", auth_code=WECHAT_CODE)
            assert e.value.code == "TERMINAL_LIMIT"
        with Client(endpoint, timeout_s=5, retries=0) as plain:
            with pytest.raises(ServiceError) as e:
                plain.call("pay.status", order_no="E-1")
            assert e.value.code == "AUTH_REQUIRED"
        rc, _, err = lanecore("terminal", "disable", "POS-1", data_dir=d)
        assert rc == 0, err
        with Client(endpoint, terminal_key=key, timeout_s=5, retries=0) as c:
            with pytest.raises(ServiceError) as e:
                c.call("pay.status", order_no="E-1")
            assert e.value.code == "AUTH_FAILED"
        # a new key for the disabled terminal: roles, limits and state kept
        rc, out, err = lanecore("terminal", "rotate", "POS-1", "--key-file",
                                str(tmp_path / "pos1-new.key"), data_dir=d)
        assert rc == 0, err
        rotated = json.loads(out)
        assert rotated["key"] != added["key"] and rotated["max_payment_minor"] == 5000
        assert rotated["disabled_at"] is not None and rotated["roles"] == added["roles"]
        assert (tmp_path / "pos1-new.key").read_text().strip() == rotated["key"]
        assert os.stat(tmp_path / "pos1-new.key").st_mode & 0o077 == 0
        rc, out, err = lanecore("terminal", "enable", "POS-1", data_dir=d)
        assert rc == 0 and json.loads(out)["disabled_at"] is None, err
        rc, out, err = lanecore("terminal", "limits", "POS-1", "--max-payment-minor", "9000",
                                "--methods", "auth_code", data_dir=d)
        assert rc == 0, err
        assert (json.loads(out)["max_payment_minor"], json.loads(out)["methods"]) == \
            (9000, ["auth_code"])
        with Client(endpoint, terminal_key=key, timeout_s=5, retries=0) as c:
            with pytest.raises(ServiceError) as e:          # the old key: refused
                c.call("pay.status", order_no="E-1")
            assert e.value.code == "AUTH_FAILED"
        new_key = TerminalKey.from_text("POS-1", rotated["key"])
        with Client(endpoint, terminal_key=new_key, timeout_s=5, retries=2) as c:
            r = c.call("pay.charge", order_no="E-3", amount_minor=5001, currency="CNY",
                       method="auth_code", auth_code=WECHAT_CODE)
            assert r["status"] == "paid"                    # the new limit holds
            with pytest.raises(ServiceError) as e:
                c.call("pay.charge", order_no="E-4", amount_minor=9001, currency="CNY",
                       method="auth_code", auth_code=WECHAT_CODE)
            assert e.value.code == "TERMINAL_LIMIT"
        for cmd in ("rotate", "enable", "limits"):
            rc, _, err = lanecore("terminal", cmd, "POS-9", data_dir=d)
            assert rc != 0 and "UNKNOWN_TERMINAL" in err and "Traceback" not in err
    finally:
        proc.terminate()
        assert proc.wait(10) == 0, proc.stderr.read()
    assert p.paid() == {"E-1-1": 1200, "E-3-1": 5001}


def test_plain_tcp_beyond_loopback_is_refused(tmp_path):
    rc, _, err = lanecore("gateway", "payments", "--bind", "tcp://0.0.0.0:5599",
                          data_dir=tmp_path)
    assert rc != 0 and "PLAIN_NOT_ALLOWED" in err
