"""Trust at the verification service (issue 13, item 5), against real processes.

The attacks: "On the verification service any client, including any enrolled device
key, can set `order.status paid` on sequential order numbers and call
`weights.confirm`: twelve requests moved one item's expected weight from 1,064 g to
2,390 g, blinding the weigh-check. Deleting a device key has no effect until a
restart."

Here `lanecore serve --curve` runs in a subprocess over a small catalogue, with device
keys enrolled by `lanecore keys gen --enrol` (handhelds, lanes, an attendant, the
payment gateway, an admin), and each test talks to it with those keys
(`Client(..., curve=CurveKeys.from_files(...))`). The signed receipts come from the
payment gateway's own `pay.receipt` (a cash payment, in process); its `receipt_key`
is trusted in the store's `lanecore.toml`.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from lanecore.gateway.net.client import Client, CurveKeys, ServiceError
from clirun import lanecore
from storefix import stock_store

pytestmark = pytest.mark.kernel_free

#: name -> roles of the device keys every test's store enrols.
DEVICES = {"hh-a": "handheld", "hh-b": "handheld", "lane-a": "lane", "lane-b": "lane",
           "att-1": "attendant", "pay-1": "payments", "boss": "admin"}
#: docs/weigh/learning.md: one confirmation moves the mean at most k sd, N a day.
K_SD, N_PER_DAY = 1.0, 5
#: docs/protocol.md (weigh.config): lanes one identity may configure.
LANES_PER_IDENTITY = 2
GBP_PIECES = (5000, 2000, 1000, 500, 200, 100, 50, 20, 10, 5, 2, 1)


# ----------------------------------------------------------------------------------
# The store: a catalogue, a payment gateway whose receipts it trusts, enrolled keys
# ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def payments(tmp_path_factory):
    """The payment gateway (in process) with a cash channel in GBP: it takes cash
    for an order and signs its receipt (`pay.receipt`) with its receipt key."""
    from lanecore.core.pay.cash import Drawer
    from lanecore.gateway.payments.gateway import PaymentGateway
    d = tmp_path_factory.mktemp("pay")
    (d / "payments.toml").write_text(
        '[channels.cash]\nkind = "cash"\npriority = 1\nmethods = ["cash"]\n'
        'currency = "GBP"\n'
        '[qr]\nmerchant_name = "Riverside Market"\ncity = "London"\ncountry = "GB"\n'
        'gui = "com.example.pay"\naccount = "M000123"\n')
    gw = PaymentGateway(d)
    Drawer(gw.con, drawer_id="K1", currency="GBP").float_in({1: 50}, ref="open")
    ids = iter(range(10 ** 9))

    def call(op, **fields):
        r = gw.handle({"op": op, "id": f"p{next(ids)}", **fields}, client="kiosk-1")
        if not r["ok"]:
            raise ServiceError(r["error"]["code"], r["error"]["message"], r["error"])
        return r

    def pay_cash(order_no: str, amount: int) -> dict:
        """Take exactly ``amount`` in cash for ``order_no``; its signed receipt."""
        pieces, left = {}, amount
        for p in GBP_PIECES:
            if left >= p:
                pieces[str(p)], left = left // p, left % p
        r = call("pay.charge", order_no=order_no, amount_minor=amount, currency="GBP",
                 method="cash", terminal="K1", cash={"tendered": pieces})
        assert r["status"] == "paid", r
        return call("pay.receipt", order_no=order_no)["receipt"]

    call.pay_cash = pay_cash
    call.receipt_key = call("hello")["receipt_key"]
    yield call
    gw.ledger.close()


@pytest.fixture(scope="module")
def store_template(tmp_path_factory, payments):
    """A data directory: a 300-item GB catalogue, lanecore.toml trusting the payment
    gateway's receipt key, the server key and DEVICES enrolled; their keypairs."""
    root = tmp_path_factory.mktemp("trust")
    d = root / "data"
    d.mkdir(mode=0o700)
    rows = stock_store(d, 300, seed=17)
    (d / "lanecore.toml").write_text(
        f'[store]\nregion = "GB"\n[payments]\nreceipt_keys = ["{payments.receipt_key}"]\n')
    lanecore("keys", "gen", "--server", "--data-dir", d)
    for name, role in DEVICES.items():
        lanecore("keys", "gen", "--name", name, "--role", role, "--dir", root / "devices",
                 "--enrol", "--data-dir", d)
    _, stranger = lanecore_keypair(root / "stranger", "stranger")
    return d, root / "devices", stranger, rows


def lanecore_keypair(directory: Path, name: str):
    from lanecore.gateway.net.security import generate
    return generate(directory, name, {"name": name, "roles": "handheld"})


class Store:
    """A running `lanecore serve --curve` and the keys to talk to it."""

    def __init__(self, data: Path, devices: Path, stranger: Path, rows, proc, endpoint,
                 log: Path):
        self.data, self.devices, self.stranger, self.rows = data, devices, stranger, rows
        self.proc, self.endpoint, self.log = proc, endpoint, log

    def keys(self, name: str) -> CurveKeys:
        secret = self.stranger if name == "stranger" else \
            self.devices / f"{name}.key_secret"
        return CurveKeys.from_files(self.data / "keys" / "server.key", secret)

    def client(self, name: str, timeout_s: float = 10.0, retries: int = 1) -> Client:
        return Client(self.endpoint, curve=self.keys(name), timeout_s=timeout_s,
                      retries=retries)

    def dealer(self, name: str) -> zmq.Socket:
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        self.keys(name).apply(s)
        s.connect(self.endpoint)
        return s

    def items(self, n: int) -> list[dict]:
        return [r for r in self.rows if not r["flags"] and r["unit_weight_g"]][:n]


def raw_call(sock: zmq.Socket, req: dict, timeout_ms: int = 10_000) -> dict:
    sock.send(msgpack.packb(req))
    assert sock.poll(timeout_ms), f"no reply to {req}"
    return msgpack.unpackb(sock.recv())


def start_serve(tmp_path, template, *extra) -> tuple:
    data_src, devices, stranger, rows = template
    d = tmp_path / "data"
    shutil.copytree(data_src, d)
    endpoint = f"ipc://{tmp_path}/svc.ipc"
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lanecore", "serve", "--curve", "--bind", endpoint,
         "--data-dir", str(d), *extra],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.monotonic() + 90
    while b"lanecore serving on" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"serve did not start: {log.read_text()[-3000:]}")
        time.sleep(0.05)
    return Store(d, devices, stranger, rows, proc, endpoint, log)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def store(tmp_path, store_template):
    s = start_serve(tmp_path, store_template, "--events", f"ipc://{tmp_path}/ev.ipc")
    yield s
    stop(s.proc)


def submit_order(c: Client, device: str, items: list[dict], qty: int = 1) -> dict:
    b = c.call("basket.open", device=device)["basket"]["basket_id"]
    c.call("basket.add", basket=b, scans=[{"code": it["gtin"], "qty": qty} for it in items])
    return c.call("basket.submit", basket=b)


def error_of(c: Client, op: str, **fields) -> dict:
    """The error code of a refused request, with its ``details``."""
    with pytest.raises(ServiceError) as e:
        c.call(op, **fields)
    return {"code": e.value.code, **e.value.details.get("details", {})}


# ----------------------------------------------------------------------------------
# order.status paid
# ----------------------------------------------------------------------------------

def test_an_order_is_paid_by_the_payments_role_or_a_trusted_receipt_only(store, payments):
    items = store.items(6)
    with store.client("hh-a") as hh, store.client("pay-1") as pay, \
            store.client("lane-a") as lane:
        a = submit_order(hh, "HH1", items[:2])
        b = submit_order(hh, "HH1", items[2:4])
        c = submit_order(hh, "HH1", items[4:6])
        # the attack: a handheld key marks its (or any sequential) order paid
        e = error_of(hh, "order.status", order_no=a["order_no"], status="paid")
        assert e["code"] == "FORBIDDEN" and e["roles"] == ["payments"]
        assert hh.call("order.get", order_no=a["order_no"])["order"]["status"] == \
            "submitted"
        # a lane key neither
        assert error_of(lane, "order.status", order_no=a["order_no"],
                        status="paid")["code"] == "FORBIDDEN"

        # A paid in cash at the payment gateway: its signed receipt is the proof
        receipt_a = payments.pay_cash(a["order_no"], a["total_minor"])
        # ... of A only: not for B
        e = error_of(hh, "order.status", order_no=b["order_no"], status="paid",
                     proof=receipt_a)
        assert e["code"] == "PROOF_MISMATCH" and "order_no" in e["fields"]
        # C paid one penny short: its receipt does not pay C
        short = payments.pay_cash(c["order_no"], c["total_minor"] - 1)
        e = error_of(hh, "order.status", order_no=c["order_no"], status="paid",
                     proof=short)
        assert e["code"] == "PROOF_MISMATCH" and e["fields"] == ["total_minor"]
        # altered (a total raised to B's) or signed by another key: not a receipt at all
        altered = {**receipt_a, "receipt": {**receipt_a["receipt"],
                                            "order_no": b["order_no"],
                                            "total_minor": b["total_minor"]}}
        altered["receipt"]["payments"] = [
            {**p, "amount_minor": b["total_minor"], "tendered_minor": b["total_minor"],
             "change_minor": 0} for p in receipt_a["receipt"]["payments"]]
        e = error_of(hh, "order.status", order_no=b["order_no"], status="paid",
                     proof=altered)
        assert e["code"] == "PROOF_INVALID" and e["reason"] == "RECEIPT_SIGNATURE"
        from lanecore.core.pay.receipt import Receipt, sign_receipt
        from lanecore.core.signing import Signer
        forged = sign_receipt(Receipt.from_dict(altered["receipt"]), Signer.generate())
        e = error_of(hh, "order.status", order_no=b["order_no"], status="paid",
                     proof=forged)
        assert e["code"] == "PROOF_INVALID" and e["reason"] == "UNTRUSTED_KEY"
        for order in (b, c):
            assert hh.call("order.get", order_no=order["order_no"])["order"]["status"] \
                == "submitted"

        # the real receipt for A: paid
        r = hh.call("order.status", order_no=a["order_no"], status="paid",
                    proof=receipt_a)
        assert r["order"]["status"] == "paid"
        assert r["proof"] == {"key": payments.receipt_key, "order_no": a["order_no"],
                              "total_minor": a["total_minor"], "currency": "GBP",
                              "terminal": "K1"}
        # once: the same receipt again is a move not allowed
        assert error_of(hh, "order.status", order_no=a["order_no"], status="paid",
                        proof=receipt_a)["code"] == "BAD_STATUS"
        # the payment gateway's own key needs no proof
        assert pay.call("order.status", order_no=b["order_no"],
                        status="paid")["order"]["status"] == "paid"
        # exited only from a lane
        assert error_of(hh, "order.status", order_no=a["order_no"],
                        status="exited")["code"] == "FORBIDDEN"
        assert lane.call("order.status", order_no=a["order_no"],
                         status="exited")["order"]["status"] == "exited"


# ----------------------------------------------------------------------------------
# weights.confirm
# ----------------------------------------------------------------------------------

def test_twelve_confirmations_cannot_move_an_item_past_the_bound(store):
    plain = store.items(300)
    item = min(plain, key=lambda r: abs(float(r["unit_weight_g"]) - 1064.0))
    gtin = item["gtin"].zfill(14)
    w0 = float(item["unit_weight_g"])
    sd0 = float(item["weight_sd_g"] or 0.0)
    sigma_ref = max(sd0, 0.5, 0.01 * w0)          # the most sigma the bound may use
    attack_g = w0 * 2390.0 / 1064.0
    with store.client("att-1") as att, store.client("hh-a") as hh:
        # a handheld key may not teach weights at all
        assert error_of(hh, "weights.confirm", gtin=gtin, weight_g=attack_g)["code"] == \
            "FORBIDDEN"
        # the attack as observed: twelve confirmations of the wrong weight
        codes = [error_of(att, "weights.confirm", gtin=gtin, weight_g=attack_g)["code"]
                 for _ in range(12)]
        assert codes == ["CONFIRM_TOO_FAR"] * 12
        # a patient attacker: each confirmation as far as the bound lets it go
        # (the service says how far it lets a step go: the attacker uses it)
        mean, n, step, accepted, refused = w0, 3.0, K_SD * sigma_ref, [], []
        for _ in range(12):
            try:
                try:
                    ln = att.call("weights.confirm", gtin=gtin,
                                  weight_g=mean + 0.99 * step * (n + 3.0) / 3.0)
                except ServiceError as e:
                    if e.code != "CONFIRM_TOO_FAR":
                        raise
                    step = e.details["details"]["max_step_g"]
                    ln = att.call("weights.confirm", gtin=gtin,
                                  weight_g=mean + 0.99 * step * (n + 3.0) / 3.0)
            except ServiceError as e:
                assert e.code == "CONFIRM_DAILY_LIMIT", e
                refused.append(e.code)
                continue
            learning = ln["learning"]
            assert learning["code"] == "LEARNED"
            conf = learning["confirmation"]
            assert conf["confirmed_by"] == "key:att-1"
            assert abs(conf["mean_after_g"] - conf["mean_before_g"]) <= \
                K_SD * sigma_ref * (1 + 1e-9)
            mean, n = learning["mean_g"], learning["n"]
            accepted.append(conf)
        assert len(accepted) == N_PER_DAY
        assert refused == ["CONFIRM_DAILY_LIMIT"] * (12 - N_PER_DAY)
        # the item's expected weight (what verdicts use) stays within N k sigma
        shown = hh.call("scan", lane="L1", code=item["gtin"])["item"]["unit_weight_g"]
        assert abs(shown - w0) <= N_PER_DAY * K_SD * sigma_ref * (1 + 1e-9)
        assert abs(mean - w0) <= N_PER_DAY * K_SD * sigma_ref * (1 + 1e-9)
        assert shown < w0 + 0.25 * (attack_g - w0)
    # who confirmed is recorded, with each confirmation
    con = sqlite3.connect(store.data / "store.db")
    try:
        rows = con.execute("SELECT confirmed_by, mean_before_g, mean_after_g FROM "
                           "weight_confirmations WHERE gtin = ? ORDER BY "
                           "confirmation_id", (gtin,)).fetchall()
    finally:
        con.close()
    assert [r[0] for r in rows] == ["key:att-1"] * len(accepted)
    assert [r[2] for r in rows] == [c["mean_after_g"] for c in accepted]


# ----------------------------------------------------------------------------------
# weigh.config
# ----------------------------------------------------------------------------------

def test_a_lane_key_configures_at_most_its_own_lanes(store):
    with store.client("lane-a") as a, store.client("lane-b") as b, \
            store.client("boss") as boss, store.client("hh-a") as hh:
        assert error_of(hh, "weigh.config", lane="LANE-A")["code"] == "FORBIDDEN"
        for k in range(LANES_PER_IDENTITY):
            assert a.call("weigh.config", lane=f"LANE-A{k}", config={"e_g": 5})["lane"] == \
                f"LANE-A{k}"
        e = error_of(a, "weigh.config", lane="LANE-X")
        assert e["code"] == "LANE_QUOTA" and e["max"] == LANES_PER_IDENTITY
        assert sorted(e["lanes"]) == [f"LANE-A{k}" for k in range(LANES_PER_IDENTITY)]
        for k in range(50):               # the attack: slot after slot
            assert error_of(a, "weigh.config", lane=f"GRAB-{k}")["code"] == "LANE_QUOTA"
        # its own lanes, again and again
        assert a.call("weigh.config", lane="LANE-A0", config={"e_g": 2})["config"]["e_g"] \
            == 2
        # another lane key has its own slots; an admin is not bounded
        assert b.call("weigh.config", lane="LANE-B0")["lane"] == "LANE-B0"
        boss_lanes = LANES_PER_IDENTITY + 3
        for k in range(boss_lanes):
            assert boss.call("weigh.config", lane=f"BOSS-{k}")["lane"] == f"BOSS-{k}"
        # nothing of the 51 refused took a slot of the service
        assert boss.call("stats")["lanes"] == LANES_PER_IDENTITY + 1 + boss_lanes


# ----------------------------------------------------------------------------------
# Replies bound to identity
# ----------------------------------------------------------------------------------

def test_a_handheld_cannot_read_another_devices_submit_reply(store):
    items = store.items(2)
    a, b = store.dealer("hh-a"), store.dealer("hh-b")
    try:
        bid = raw_call(a, {"op": "basket.open", "id": "o1", "device": "HH-A"})["basket"][
            "basket_id"]
        assert raw_call(a, {"op": "basket.add", "id": "a1", "basket": bid,
                            "scans": [{"code": it["gtin"]} for it in items]})["ok"]
        mine = raw_call(a, {"op": "basket.submit", "id": "s1", "client": "lane-a",
                            "basket": bid})
        assert mine["ok"] and mine["qr"].startswith("LCO1.")
        # hh-b names hh-a's identity (and the client hh-a sent) and id: its own answer
        for client in ("key:hh-a", "lane-a", None):
            req = {"op": "basket.submit", "id": "s1", "basket": bid}
            if client is not None:
                req["client"] = client
            theirs = raw_call(b, req)
            assert theirs["ok"] is False and theirs["error"]["code"] == "BASKET_CLOSED"
            assert "qr" not in theirs and mine["qr"] not in repr(theirs)
        # hh-a's own retry still gets its reply
        assert raw_call(a, {"op": "basket.submit", "id": "s1", "client": "lane-a",
                            "basket": bid}) == mine
    finally:
        a.close(0)
        b.close(0)


# ----------------------------------------------------------------------------------
# Revocation
# ----------------------------------------------------------------------------------

def test_a_removed_key_is_refused_within_5_s_and_cannot_connect_again(store):
    with store.client("hh-b", timeout_s=5.0, retries=0) as victim, \
            store.client("hh-a") as other:
        assert victim.call("hello")["protocol"] == 1
        (store.data / "keys" / "devices" / "hh-b.key").unlink()
        removed = time.monotonic()
        code = None
        while time.monotonic() - removed < 5.0:
            try:
                victim.call("hello")
            except ServiceError as e:
                code = e.code
                break
            time.sleep(0.05)
        assert code == "AUTH_FAILED", code
        # refused from then on, on the open connection, for every op
        with pytest.raises(ServiceError) as e:
            victim.call("scan", lane="L1", code=store.items(1)[0]["gtin"])
        assert e.value.code == "AUTH_FAILED"
        # the other key is still served
        assert other.call("health")["status"] == "ok"
    # a new connection with the removed key gets no reply at all (ZAP refuses it)
    with store.client("hh-b", timeout_s=1.0, retries=0) as again:
        with pytest.raises(ServiceError) as e:
            again.call("hello")
        assert e.value.code == "TIMEOUT"
    with store.client("hh-a") as other:
        assert other.call("hello")["protocol"] == 1


# ----------------------------------------------------------------------------------
# Events
# ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_curve_events_reach_enrolled_keys_only(tmp_path, store_template):
    port = free_port()
    s = start_serve(tmp_path, store_template, "--events", f"tcp://0.0.0.0:{port}")
    ctx = zmq.Context.instance()
    subs = {}
    try:
        for name in ("att-1", "stranger", "plain"):
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            if name != "plain":
                s.keys(name).apply(sub)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(f"tcp://127.0.0.1:{port}")
            subs[name] = sub
        got = []
        with s.client("lane-a") as lane:
            deadline = time.monotonic() + 60
            k = 0
            # publish until the enrolled subscriber has 5 events (PUB/SUB: the first
            # ones go before the subscription reaches the publisher)
            while len(got) < 5:
                assert time.monotonic() < deadline, "the enrolled key got no event"
                lane.call("device.event", lane="LANE-A", device="scale", kind="fault",
                          code=f"F{k}")
                k += 1
                while subs["att-1"].poll(100):
                    got.append(subs["att-1"].recv_multipart())
        assert all(topic == b"device" for topic, _ in got)
        assert msgpack.unpackb(got[-1][1])["lane"] == "LANE-A"
        for name in ("stranger", "plain"):      # the same events, none for them
            assert subs[name].poll(0) == 0, name
    finally:
        for sub in subs.values():
            sub.close(0)
        stop(s.proc)


@pytest.mark.parametrize("extra", [[], ["--allow-plain"]])
def test_plain_serve_does_not_publish_events_beyond_loopback(tmp_path, store_template,
                                                             extra):
    d = tmp_path / "data"
    shutil.copytree(store_template[0], d)
    r = lanecore("serve", "--bind", f"ipc://{tmp_path}/s.ipc", "--events",
                 f"tcp://0.0.0.0:{free_port()}", "--data-dir", d, *extra, check=False)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "PLAIN_NOT_ALLOWED" in r.stderr


def test_a_stranger_key_gets_nothing(store):
    with store.client("stranger", timeout_s=1.0, retries=0) as c:
        with pytest.raises(ServiceError) as e:
            c.call("hello")
        assert e.value.code == "TIMEOUT"
