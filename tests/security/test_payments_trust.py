"""Payments you can trust (issue 13, item 4, and item 2's provider links): against a
real `lanecore gateway payments` process and `lanecore sim provider` processes.

- A cheap payment never answers for a dearer one: a 1-fen stored-value charge on an
  order, then a 5,000 cash charge of the same order, is ORDER_MISMATCH with nothing
  taken, and a caller that checks the answer (not only `status`) sees it is not its
  payment.
- Order numbers are per terminal: terminal B charging terminal A's next order number
  first neither blocks nor answers A's charge.
- A captured signed request is AUTH_REPLAYED inside the clock window (and after a
  restart), the card charged once by the provider's own count; a `max_skew_s` not
  below the reply retention stops the gateway from starting.
- Stored value: top-ups only by a manager, within its terminal's limits; the PIN state
  only for admin.
- Receipts: lines from the ledger, never the request; SMS only to the member's number
  on file or from a till/POS, and rate-limited.
- Provider links over CurveZMQ end to end; a plain client of a CURVE provider gets
  nothing; `recon.run` never opens a path a provider names.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
import subprocess
import sys
import threading
import time

import msgpack
import pytest
import zmq
from payfix import WECHAT_CODE, providers, start_gateway, wallet, write_config  # noqa: F401

from lanecore.core.pay.ledger import payment_mismatch
from lanecore.gateway.net.client import Client, ServiceError, TerminalKey

pytestmark = pytest.mark.kernel_free

SV = {"kind": "stored_value", "priority": 5, "methods": ["stored_value"], "currency": "CNY"}
CASH = {"kind": "cash", "priority": 9, "methods": ["cash"], "currency": "CNY"}
CARD_TOKEN = "tok_trustTEST0001"


def lanecore(*args, data_dir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lanecore", *args, "--data-dir",
                           str(data_dir)], capture_output=True, text=True, timeout=60)


def terminal(d, tid: str, *opts: str) -> TerminalKey:
    out = lanecore("terminal", "add", tid, *opts, data_dir=d)
    assert out.returncode == 0, out.stderr
    return TerminalKey.from_text(tid, json.loads(out.stdout)["key"])


def receipt_config(d, **limits) -> None:
    with open(d / "payments.toml", "a") as f:
        f.write("[receipt]\n" + "".join(f"{k} = {v}\n" for k, v in limits.items()))


@contextlib.contextmanager
def gateway(d, tmp_path, name="pay"):
    endpoint = f"ipc://{tmp_path}/{name}.ipc"
    proc = start_gateway("payments", d, endpoint)
    try:
        yield endpoint
    finally:
        proc.terminate()
        assert proc.wait(10) == 0, proc.stderr.read()


def call(endpoint, key, op, **fields) -> dict:
    """One request from terminal ``key``: the result, or {"error": {code, details}}."""
    with Client(endpoint, terminal_key=key, timeout_s=10, retries=0) as c:
        try:
            return c.call(op, **fields)
        except ServiceError as exc:
            return {"error": {"code": exc.code, **exc.details}}


def today() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")


def auth_config(d, channels) -> None:
    write_config(d, channels, pos={"auth": "hmac"})


# --------------------------------------------------------------------------------------
# A cheap payment never answers for a dearer one
# --------------------------------------------------------------------------------------

def test_a_one_fen_charge_does_not_answer_the_5000_cash_charge(tmp_path):
    from lanecore.core.pay.cash import Drawer
    d = tmp_path / "gw"
    d.mkdir()
    auth_config(d, {"sv": SV, "cash": CASH})
    kiosk = terminal(d, "KIOSK-1", "--role", "kiosk")
    mgr = terminal(d, "MGR", "--role", "manager")
    con = sqlite3.connect(d / "payments.db", isolation_level=None)
    Drawer(con, drawer_id="KIOSK-1", currency="CNY").float_in({100: 20, 500: 10},
                                                             ref="opening")
    con.close()
    order = "K1-20260921-0042"
    with gateway(d, tmp_path) as ep:
        assert call(ep, mgr, "sv.open", member="M-7", currency="CNY")["account"]
        assert call(ep, mgr, "sv.topup", member="M-7", currency="CNY", amount_minor=10_000,
                    ref="slip-1")["balance_minor"] == 10_000
        cheap = call(ep, kiosk, "pay.charge", order_no=order, amount_minor=1, currency="CNY",
                     method="stored_value", payer="M-7")
        assert cheap["status"] == "paid" and cheap["amount_minor"] == 1, cheap
        dear = call(ep, kiosk, "pay.charge", order_no=order, amount_minor=5_000,
                    currency="CNY", method="cash", cash={"tendered": {"5000": 1}})
        assert dear["error"]["code"] == "ORDER_MISMATCH", dear
        differs = dear["error"]["details"]["differs"]
        assert differs["amount_minor"] == {"charged": 1, "asked": 5_000}
        assert differs["method"] == {"charged": "stored_value", "asked": "cash"}
        # the same payment asked again is answered (a retry by order, not an error)
        again = call(ep, kiosk, "pay.charge", order_no=order, amount_minor=1,
                     currency="CNY", method="stored_value", payer="M-7")
        assert again["status"] == "paid" and again["merchant_ref"] == cheap["merchant_ref"]
        # nothing was taken the second time: one charge, the drawer untouched, 1 fen off
        listed = call(ep, kiosk, "pay.list")["charges"]
        assert [(c["order_no"], c["amount_minor"]) for c in listed] == [(order, 1)]
        assert call(ep, mgr, "sv.balance", member="M-7",
                    currency="CNY")["account"]["balance_minor"] == 9_999
        # the caller's side: the gateway's own status of the order says "paid" — for 1,
        # which a kiosk that asked for 5,000 must not take as its payment
        status = call(ep, kiosk, "pay.status", order_no=order)
        assert status["status"] == "paid"
        assert payment_mismatch(status, order, 5_000, "CNY") is not None
        assert payment_mismatch(status, order, 1, "CNY") is None
        assert payment_mismatch({**status, "order_no": "K1-OTHER"}, order, 1, "CNY")
        assert payment_mismatch({**status, "currency": "GBP"}, order, 1, "CNY")
    con = sqlite3.connect(d / "payments.db")
    moves = con.execute("SELECT ref FROM drawer_moves WHERE drawer_id = 'KIOSK-1'").fetchall()
    con.close()
    assert moves == [("opening",)]


def test_order_numbers_are_per_terminal(tmp_path, providers):  # noqa: F811
    wx = providers("wx", "wechat")
    d = tmp_path / "gw"
    d.mkdir()
    auth_config(d, {"wx": wallet("wx", wx.endpoint, 1)})
    a = terminal(d, "KIOSK-A", "--role", "kiosk")
    b = terminal(d, "KIOSK-B", "--role", "kiosk")
    order = "KA-20260921-0042"                      # A's next, predictable number
    with gateway(d, tmp_path) as ep:
        squat = call(ep, b, "pay.charge", order_no=order, amount_minor=1, currency="CNY",
                     method="auth_code", auth_code=WECHAT_CODE)
        assert squat["status"] == "paid"
        real = call(ep, a, "pay.charge", order_no=order, amount_minor=5_000,
                    currency="CNY", method="auth_code", auth_code=WECHAT_CODE)
        assert real["status"] == "paid" and real["amount_minor"] == 5_000, real
        assert real["merchant_ref"] != squat["merchant_ref"]
        assert payment_mismatch(real, order, 5_000, "CNY") is None
        # each sees its own order under the number
        assert call(ep, a, "pay.status", order_no=order)["amount_minor"] == 5_000
        assert call(ep, b, "pay.status", order_no=order)["amount_minor"] == 1
        # and A's retry of its charge is A's payment
        again = call(ep, a, "pay.charge", order_no=order, amount_minor=5_000,
                     currency="CNY", method="auth_code", auth_code=WECHAT_CODE)
        assert again["merchant_ref"] == real["merchant_ref"]
    assert wx.paid() == {squat["merchant_ref"]: 1, real["merchant_ref"]: 5_000}


# --------------------------------------------------------------------------------------
# Signed requests: nonces, the clock window
# --------------------------------------------------------------------------------------

def _send(endpoint, frames) -> dict:
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    try:
        s.send_multipart(frames)
        assert s.poll(10_000), "no reply"
        return msgpack.unpackb(s.recv(), raw=False)
    finally:
        s.close(0)


def test_a_captured_signed_request_is_refused_inside_the_window(tmp_path, providers):  # noqa: F811
    from lanecore.gateway.net import auth
    bank = providers("bank", "bank")
    d = tmp_path / "gw"
    d.mkdir()
    auth_config(d, {"card": {"kind": "card", "priority": 1, "methods": ["card"],
                             "currency": "CNY", "endpoint": bank.endpoint}})
    pos = terminal(d, "POS-1")
    fields = {"order_no": "R-1", "amount_minor": 2_500, "currency": "CNY",
              "method": "card", "card": {"entry": "nfc", "token": CARD_TOKEN}}
    req = {"op": "pay.charge", "id": "pos1:charge:1", **fields}
    payload = msgpack.packb(req, use_bin_type=True)
    captured = pos.frames(payload)                   # what went over the wire
    with gateway(d, tmp_path) as ep:
        first = _send(ep, captured)
        assert first["ok"] and first["status"] == "paid", first
        # the shopper cancels; the attacker sends the captured frames again
        assert call(ep, pos, "pay.reverse", order_no="R-1")["status"] == "reversed"
        replay = _send(ep, captured)
        assert replay["ok"] is False and replay["error"]["code"] == "AUTH_REPLAYED", replay
        # a legitimate retry (same request, fresh frame) gets the record of the first
        retry = _send(ep, pos.frames(payload))
        assert retry == first
        # the pre-nonce recipe is refused outright
        old = msgpack.packb({"t": "POS-1", "ts": int(time.time()), "mac": b"\0" * 32})
        assert _send(ep, [payload, old])["error"]["code"] == "AUTH_OLD_FRAME"
        # a frame with a nonce but a MAC of another recipe is no frame of this terminal
        n = b"\x01" * 16
        ts = int(time.time())
        forged = msgpack.packb({"t": "POS-1", "ts": ts, "n": n,
                                "mac": auth.mac(pos.key, "POS-1", ts, b"\x02" * 16,
                                                payload)})
        assert _send(ep, [payload, forged])["error"]["code"] == "AUTH_FAILED"
    with gateway(d, tmp_path, "pay2") as ep:         # the nonces survive a restart
        assert _send(ep, captured)["error"]["code"] == "AUTH_REPLAYED"
    stats = bank.conn.stats()
    assert stats["requests"]["charge"] == 1          # the card was charged once
    assert stats["trades"] == {"reversed": 1}


@pytest.mark.parametrize("skew", [600, 900, 0])
def test_a_clock_window_not_below_the_reply_retention_stops_the_start(tmp_path, skew):
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"cash": CASH}, pos={"auth": "hmac", "max_skew_s": skew})
    out = subprocess.run([sys.executable, "-m", "lanecore", "gateway", "payments", "--bind",
                          f"ipc://{tmp_path}/pay.ipc", "--data-dir", str(d), "--dev-open"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "BAD_CONFIG" in out.stderr and "max_skew_s" in out.stderr


def test_a_clock_window_below_the_retention_starts(tmp_path):
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"cash": CASH}, pos={"auth": "hmac", "max_skew_s": 599})
    admin = terminal(d, "HQ", "--admin")
    with gateway(d, tmp_path) as ep:
        assert call(ep, admin, "hello")["terminal"]["id"] == "HQ"


# --------------------------------------------------------------------------------------
# Stored value
# --------------------------------------------------------------------------------------

def test_topups_need_a_manager_within_its_terminals_limits(tmp_path):
    d = tmp_path / "gw"
    d.mkdir()
    auth_config(d, {"sv": SV})
    pos = terminal(d, "POS-1")
    mgr = terminal(d, "DESK-1", "--role", "manager", "--max-payment-minor", "10000",
                   "--max-day-minor", "15000")
    with gateway(d, tmp_path) as ep:
        assert call(ep, mgr, "sv.open", member="M-1", currency="CNY")["account"]
        r = call(ep, pos, "sv.topup", member="M-1", currency="CNY", amount_minor=100,
                 ref="P-1")
        assert r["error"]["code"] == "FORBIDDEN"
        r = call(ep, mgr, "sv.topup", member="M-1", currency="CNY", amount_minor=20_000,
                 ref="S-1")
        assert r["error"]["code"] == "TERMINAL_LIMIT" and \
            r["error"]["limit"] == "max_payment_minor", r
        ok = call(ep, mgr, "sv.topup", member="M-1", currency="CNY", amount_minor=10_000,
                  ref="S-2")
        assert ok["balance_minor"] == 10_000
        r = call(ep, mgr, "sv.topup", member="M-1", currency="CNY", amount_minor=6_000,
                 ref="S-3")
        assert r["error"]["code"] == "TERMINAL_LIMIT" and \
            r["error"]["limit"] == "max_day_minor" and r["error"]["used_minor"] == 10_000
        # the slip already topped up, asked again: answered, not refused, not doubled
        again = call(ep, mgr, "sv.topup", member="M-1", currency="CNY", amount_minor=10_000,
                     ref="S-2")
        assert again["balance_minor"] == 10_000 and again["move"] == ok["move"]
        assert call(ep, mgr, "sv.balance", member="M-1",
                    currency="CNY")["account"]["balance_minor"] == 10_000


def test_balance_shows_the_pin_state_only_to_admin(tmp_path):
    d = tmp_path / "gw"
    d.mkdir()
    auth_config(d, {"sv": SV})
    till = terminal(d, "TILL-1", "--role", "till")
    admin = terminal(d, "HQ", "--admin")
    with gateway(d, tmp_path) as ep:
        assert call(ep, till, "sv.open", member="M-2", currency="CNY",
                    pin="864213")["account"]
        seen = call(ep, till, "sv.balance", member="M-2", currency="CNY")["account"]
        assert seen["balance_minor"] == 0
        assert not {"frozen", "has_pin", "pin_failures"} & set(seen)
        full = call(ep, admin, "sv.balance", member="M-2", currency="CNY")["account"]
        assert full["has_pin"] is True and full["pin_failures"] == 0 and \
            full["frozen"] is False


# --------------------------------------------------------------------------------------
# Receipts and SMS
# --------------------------------------------------------------------------------------

LINES = [{"name": "Green tea 500 ml", "qty": 2, "unit_minor": 350, "amount_minor": 700},
         {"name": "Rice 5 kg", "qty": 1, "unit_minor": 4_300, "amount_minor": 4_300}]


def test_receipt_lines_come_from_the_ledger_not_the_request(tmp_path, providers):  # noqa: F811
    from lanecore.core.pay.receipt import verify_receipt
    from lanecore.core.store.orderqr import Verifier
    wx = providers("wx", "wechat")
    d = tmp_path / "gw"
    d.mkdir()
    auth_config(d, {"wx": wallet("wx", wx.endpoint, 1)})
    kiosk = terminal(d, "KIOSK-1", "--role", "kiosk")
    with gateway(d, tmp_path) as ep:
        paid = call(ep, kiosk, "pay.charge", order_no="RC-9", amount_minor=5_000,
                    currency="CNY", method="auth_code", auth_code=WECHAT_CODE, lines=LINES)
        assert paid["status"] == "paid", paid
        forged = [{"name": "Gold bar 1 kg", "qty": 1, "unit_minor": 5_000,
                   "amount_minor": 5_000}]
        r = call(ep, kiosk, "pay.receipt", order_no="RC-9", lines=forged)
        key = call(ep, kiosk, "hello")["receipt_key"]
    rec = verify_receipt(r["receipt"], Verifier(key))
    assert [ln.to_dict() for ln in rec.lines] == LINES
    assert "Gold bar" not in r["text"] and "Green tea 500 ml" in r["text"]
    assert rec.total_minor == 5_000


def test_sms_goes_to_the_number_on_file_or_from_a_till_and_is_rate_limited(tmp_path,
                                                                           providers):  # noqa: F811
    wx = providers("wx", "wechat")
    d = tmp_path / "gw"
    d.mkdir()
    auth_config(d, {"sv": SV, "wx": wallet("wx", wx.endpoint, 1)})
    receipt_config(d, sms_per_order=2, sms_per_terminal_hour=3)
    kiosk = terminal(d, "KIOSK-1", "--role", "kiosk")
    pos = terminal(d, "POS-1", "--role", "pos")
    mgr = terminal(d, "MGR", "--role", "manager")
    member = "+447700900123"                       # the member's id is their number
    with gateway(d, tmp_path) as ep:
        call(ep, mgr, "sv.open", member=member, currency="CNY")
        call(ep, mgr, "sv.topup", member=member, currency="CNY", amount_minor=5_000,
             ref="T-1")
        assert call(ep, kiosk, "pay.charge", order_no="S-1", amount_minor=300,
                    currency="CNY", method="stored_value", payer=member)["status"] == "paid"
        # a kiosk may not text any number it is given …
        r = call(ep, kiosk, "pay.receipt", order_no="S-1", sms_to="+447700900999")
        assert r["error"]["code"] == "SMS_NOT_ALLOWED", r
        # … only the member's number on file
        on_file = call(ep, kiosk, "pay.receipt", order_no="S-1", sms_to="+44 7700 900123")
        assert on_file["sms_queued"]
        # a POS (staffed) may give a number; at most 2 numbers per order
        assert call(ep, pos, "pay.charge", order_no="P-1", amount_minor=100, currency="CNY",
                    method="auth_code", auth_code=WECHAT_CODE)["status"] == "paid"
        first = call(ep, pos, "pay.receipt", order_no="P-1", sms_to="+447700900001")
        assert first["sms_queued"]
        assert call(ep, pos, "pay.receipt", order_no="P-1",
                    sms_to="+447700900002")["sms_queued"]
        r = call(ep, pos, "pay.receipt", order_no="P-1", sms_to="+447700900003")
        assert r["error"]["code"] == "SMS_RATE_LIMITED" and \
            r["error"]["details"]["limit"] == "sms_per_order", r
        # the same number again is the same message: answered, not counted
        assert call(ep, pos, "pay.receipt", order_no="P-1",
                    sms_to="+447700900001")["sms_queued"] == first["sms_queued"]
        # at most 3 per terminal in an hour: POS-1 has 2, one more, then refused
        for order in ("P-2", "P-3"):
            assert call(ep, pos, "pay.charge", order_no=order, amount_minor=100,
                        currency="CNY", method="auth_code",
                        auth_code=WECHAT_CODE)["status"] == "paid"
        assert call(ep, pos, "pay.receipt", order_no="P-2",
                    sms_to="+447700900004")["sms_queued"]
        r = call(ep, pos, "pay.receipt", order_no="P-3", sms_to="+447700900005")
        assert r["error"]["code"] == "SMS_RATE_LIMITED" and \
            r["error"]["details"]["limit"] == "sms_per_terminal_hour", r
        assert r["error"]["details"]["retry_after_s"] > 0
        # the receipt itself is still given without an SMS
        assert call(ep, pos, "pay.receipt", order_no="P-3")["sms_queued"] is None
    con = sqlite3.connect(d / "payments.db")
    phones = sorted(p for (p,) in con.execute("SELECT phone FROM sms_outbox"))
    con.close()
    assert phones == ["+447700900001", "+447700900002", "+447700900004", member]


# --------------------------------------------------------------------------------------
# Provider links: CurveZMQ; bills from the gateway's own directory
# --------------------------------------------------------------------------------------

def test_provider_link_over_curve_end_to_end(tmp_path, providers):  # noqa: F811
    from lanecore.gateway.net.security import generate
    from lanecore.gateway.payments.providers import connector
    bank = providers("bank", "bank", curve=True)
    d = tmp_path / "gw"
    d.mkdir()
    client_pub, _ = generate(d / "keys", "provider_client")     # the gateway's own key
    bank.enrol(client_pub)
    auth_config(d, {"card": {"kind": "card", "priority": 1, "methods": ["card"],
                             "currency": "CNY", "endpoint": bank.endpoint,
                             "server_key": bank.server_key}})
    pos = terminal(d, "POS-1")
    admin = terminal(d, "HQ", "--admin")
    with gateway(d, tmp_path) as ep:
        r = call(ep, pos, "pay.charge", order_no="C-1", amount_minor=1_234, currency="CNY",
                 method="card", card={"entry": "nfc", "token": CARD_TOKEN})
        assert r["status"] == "paid" and r["provider_ref"], r
        rep = call(ep, admin, "recon.run", date=today())
        assert rep["channels"] == ["card"] and rep["clean"], rep
    assert bank.paid() == {"C-1-1": 1_234}
    assert (d / "bills" / f"card-{today()}.csv").read_text().count("C-1-1") == 1
    # a plain client of the CURVE provider gets nothing: no answer, no trade
    with connector(bank.endpoint, "bank", timeout_s=1.0) as plain:
        assert plain.ping() is False
        from lanecore.gateway.payments.providers import Card
        res = plain.charge("PLAIN-1", 500, "CNY", card=Card("nfc", token=CARD_TOKEN))
        assert res.status == "unknown" and res.decline_code == "TIMEOUT"
    # … nor does a CURVE client the provider has not enrolled
    from lanecore.gateway.net.client import CurveKeys
    from lanecore.gateway.net.security import load_keypair
    _, stranger = generate(tmp_path / "stranger", "stranger")
    keys = CurveKeys(bank.server_key.encode(), *load_keypair(stranger))
    with connector(bank.endpoint, "bank", timeout_s=1.0, curve=keys) as other:
        assert other.ping() is False
    assert bank.paid() == {"C-1-1": 1_234}
    assert bank.conn.stats()["requests"]["charge"] == 1


def test_a_plain_provider_link_beyond_loopback_is_refused(tmp_path):
    d = tmp_path / "gw"
    d.mkdir()
    auth_config(d, {"wx": wallet("wx", "tcp://192.0.2.10:7001", 1)})
    out = subprocess.run([sys.executable, "-m", "lanecore", "gateway", "payments", "--bind",
                          f"ipc://{tmp_path}/pay.ipc", "--data-dir", str(d)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "PLAIN_NOT_ALLOWED" in out.stderr, out.stderr


class PathProvider:
    """A provider that answers `bill` with a path on this machine and no bill text."""

    def __init__(self, endpoint: str, path: str):
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.path = path
        self.asked: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            if not self.sock.poll(100):
                continue
            ident, payload = self.sock.recv_multipart()
            req = msgpack.unpackb(payload, raw=False)
            self.asked.append(req.get("op"))
            if req.get("op") == "bill":
                reply = {"id": req["id"], "ok": True, "date": req["date"],
                         "path": self.path, "rows": 1, "injected": None}
            else:
                reply = {"id": req.get("id"), "ok": False,
                         "error": {"code": "UNKNOWN_OP", "message": "no"}}
            self.sock.send_multipart([ident, msgpack.packb(reply)])

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close(0)


def test_recon_never_opens_a_path_the_provider_names(tmp_path, providers):  # noqa: F811
    from lanecore.core.pay import recon
    day = today()
    # a bill-shaped file the gateway must never read: its line would be a finding
    secret = tmp_path / "elsewhere" / "stolen.csv"
    secret.parent.mkdir()
    row = recon.BillRow(f"{day}T10:00:00Z", "STOLEN-1", "42STOLEN", "charge", 999, "CNY",
                        "SUCCESS", 6, "", "wechat").to_csv()
    secret.write_text(",".join(recon.BILL_COLUMNS) + "\n" +
                      ",".join(str(row[c]) for c in recon.BILL_COLUMNS) + "\n")
    fake = PathProvider(f"ipc://{tmp_path}/fake.ipc", str(secret))
    # and a real provider whose bill is too large for one reply: fetched in parts
    wx = providers("wx", "wechat", "--max-bill-reply", "0")
    d = tmp_path / "gw"
    d.mkdir()
    auth_config(d, {"wx": wallet("wx", wx.endpoint, 1),
                    "evil": wallet("evil", f"ipc://{tmp_path}/fake.ipc", 2, kind="alipay")})
    pos = terminal(d, "POS-1")
    admin = terminal(d, "HQ", "--admin")
    try:
        with gateway(d, tmp_path) as ep:
            assert call(ep, pos, "pay.charge", order_no="B-1", amount_minor=700,
                        currency="CNY", method="auth_code",
                        auth_code=WECHAT_CODE)["status"] == "paid"
            rep = call(ep, admin, "recon.run", date=day)
    finally:
        fake.close()
    assert "bill" in fake.asked
    # the honest channel reconciles without a finding; the day is not clean while
    # the other channel's bill is missing
    assert rep["channels"] == ["wx"] and rep["discrepancies"] == [], rep
    assert rep["clean"] is False, rep
    assert [(m["channel"], m["code"]) for m in rep["no_bill"]] == [("evil", "BAD_BILL")]
    assert "STOLEN" not in json.dumps(rep)
    assert not (d / "bills" / f"evil-{day}.csv").exists()
    ours = (d / "bills" / f"wx-{day}.csv").read_text()
    theirs = (wx.data_dir / "bills" / f"wechat-{day}.csv").read_text()
    assert ours == theirs and "B-1-1" in ours
