"""Payment test helpers: provider simulator processes and gateway configuration
(shared by tests/gateway/payments/test_payments.py, test_pos.py and
test_real_protocols.py).

A provider simulator speaks one protocol (``providers(name, kind, protocol=...)``):

* ``"lanecore"`` (default): lanecore's own ZeroMQ link, ``--kind wechat|alipay|bank``;
* ``"wechatpay-v2"`` / ``"alipay"``: the wallets' HTTPS APIs (``--kind wechat|alipay
  --protocol …``), whose ready line names the channel's keys (``channel_table()``);
* ``"iso8583"``: the acquirer host (``--kind acquirer``), TCP with 2-byte framing.

:func:`wallet` and :func:`card` write a payments.toml channel for any of them, and
:func:`run_kill_9` is the kill -9 exactly-once loop the suites share."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from lanecore.gateway.payments.providers import connector

WECHAT_CODE = "134567890123456789"     # 18 digits, prefix 13
ALIPAY_CODE = "2812345678901234"       # 16 digits, prefix 28
PAN = "4111111111111111"               # a test card (the acquirer's PIN: 1234)
#: The test card's acquirer merchant and terminal ids (fields 42 and 41).
ISO_MERCHANT_ID, ISO_TERMINAL_ID = "M000000000123", "T0000001"
#: Protocol → the simulator's ``--kind`` (None: the kind given).
PROTOCOLS = {"lanecore": None, "wechatpay-v2": None, "alipay": None, "iso8583": "acquirer"}
#: Protocol → the payments.toml channel kind that speaks it ("" any).
PROTOCOL_KIND = {"lanecore": "", "wechatpay-v2": "wechat", "alipay": "alipay",
                 "iso8583": "card"}


class Provider:
    """A `lanecore sim provider` process. ``curve``: with `--curve`; the test's own
    connector (``conn``) has a keypair enrolled in the provider's `keys/clients/`,
    ``server_key`` is the provider's public key, and :meth:`enrol` lets another client
    key (a gateway's) in.

    ``protocol`` (see the module docstring): which link the simulator serves.
    ``ready`` is its JSON ready line, :meth:`channel_table` the payments.toml keys of a
    channel to it, ``conn`` a connector over that protocol (the wallets' and the
    lanecore one's :meth:`configure` set the simulator's fault knobs; an acquirer's
    knobs are its command-line options, ``extra``)."""

    def __init__(self, kind: str, data_dir: Path, sock_dir: Path, *extra: str,
                 curve: bool = False, protocol: str = "lanecore"):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
        self.protocol = protocol
        self.kind = PROTOCOLS[protocol] or kind
        self.data_dir = data_dir
        self.server_key = None
        if protocol != "lanecore":
            if curve:
                raise ValueError("curve is lanecore's ZeroMQ link's")
            self._start_real(*extra)
            return
        endpoint = f"ipc://{sock_dir}/{kind}-{data_dir.name}.ipc"
        keys = None
        if curve:
            from lanecore.gateway.net.security import generate, load_keypair
            pub, sec = generate(data_dir.parent / f"{data_dir.name}-tester", "tester")
            self.enrol(pub)
            keys = load_keypair(sec)
            extra = ("--curve", *extra)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lanecore", "sim", "provider", "--kind", kind,
             "--bind", endpoint, "--data-dir", str(data_dir), "--fast", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read()
        ready = json.loads(line)
        self.endpoint = ready["endpoint"]
        curve_keys = None
        if curve:
            from lanecore.gateway.net.client import CurveKeys
            self.server_key = ready["server_key"]
            curve_keys = CurveKeys(self.server_key.encode(), *keys)
        self.ready = ready
        self.conn = connector(self.endpoint, kind, timeout_s=5.0, curve=curve_keys)

    def _start_real(self, *extra: str) -> None:
        """The simulator of a provider's own protocol, and a connector to it."""
        cmd = [sys.executable, "-m", "lanecore", "sim", "provider", "--kind", self.kind,
               "--data-dir", str(self.data_dir), "--fast"]
        if self.protocol == "iso8583":
            cmd += ["--bind", "tcp://127.0.0.1:0"]
        else:
            cmd += ["--protocol", self.protocol, "--bind", "127.0.0.1:0"]
        self.proc = subprocess.Popen([*cmd, *extra], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read()
        self.ready = json.loads(line)
        self.endpoint = self.ready["endpoint"]
        if self.protocol == "iso8583":
            from lanecore.gateway.payments.iso8583 import Iso8583Connector
            self.conn = Iso8583Connector(
                self.endpoint, timeout_s=5.0, merchant_id=ISO_MERCHANT_ID,
                terminal_id="TESTER01", state_path=self.data_dir.parent /
                f"{self.data_dir.name}-tester-iso8583.sqlite")
        else:
            self.conn = real_connector(self.channel_table(), self.data_dir)

    def channel_table(self) -> dict:
        """The payments.toml keys of a channel to this simulator, besides kind,
        priority, methods, currency and limits: its endpoint and, for the providers'
        own protocols, ``protocol`` and the credentials (the HTTPS simulators' ready
        line ``channel``: merchant ids, key files, the test CA; absolute paths)."""
        if self.protocol == "lanecore":
            return {"endpoint": self.endpoint}
        if self.protocol == "iso8583":
            return {"endpoint": self.endpoint, "protocol": "iso8583",
                    "merchant_id": ISO_MERCHANT_ID, "terminal_id": ISO_TERMINAL_ID}
        table = dict(self.ready["channel"])
        table.setdefault("protocol", self.protocol)
        table.setdefault("endpoint", self.endpoint)
        return table

    def sim_admin(self, method: str, path: str, doc: dict | None = None):
        """A wallet simulator's own admin path (``/_sim/…``: not the provider's API),
        JSON both ways, over HTTPS verified against its test CA."""
        from lanecore.gateway.payments.httpapi import HttpsClient
        if self.protocol not in ("wechatpay-v2", "alipay"):
            raise ValueError("/_sim/ paths are the HTTPS simulators'")
        client = HttpsClient(self.endpoint, ca_file=self.ready["ca_file"], timeout_s=10.0)
        body = None if doc is None else json.dumps(doc).encode()
        reply = client.request(method, path, body,
                               {"Content-Type": "application/json"} if body else None)
        assert reply is not None and reply.status == 200, (path, reply)
        return json.loads(reply.body)

    def inject_bill(self, date: str, spec: dict) -> dict:
        """Discrepancies (``core.pay.recon.inject``'s spec) in the next download of
        the provider's bill of ``date`` (one download; the next is honest again);
        returns the injection record (what was dropped, added, changed, doubled)."""
        out = self.sim_admin("POST", "/_sim/bill_inject", {"date": date, "inject": spec})
        return out.get("injected", out) if isinstance(out, dict) else out

    def enrol(self, public_key_path: Path) -> None:
        """Let the client whose public certificate this is in (`--curve`)."""
        from lanecore.core.config import private_dir, write_private
        clients = private_dir(self.data_dir / "keys" / "clients")
        write_private(clients / Path(public_key_path).name,
                      Path(public_key_path).read_bytes())

    def paid(self, gateway_dir: Path | None = None) -> dict[str, int]:
        """merchant_ref → amount of every trade the provider holds as paid.

        An acquirer knows a trade by terminal id + STAN + transmission time, not by
        merchant_ref: ``gateway_dir`` is the payment gateway whose ISO 8583 records
        (``iso8583.sqlite``) map its trades back (required for ``iso8583``)."""
        if self.protocol == "iso8583":
            return self._acquirer_paid(gateway_dir)
        con = sqlite3.connect(self.data_dir / f"{self.kind}.sqlite")
        try:
            return dict(con.execute("SELECT merchant_ref, amount_minor FROM trades "
                                    "WHERE status IN ('paid', 'refunded')"))
        finally:
            con.close()

    def _acquirer_paid(self, gateway_dir: Path | None) -> dict[str, int]:
        from lanecore.gateway.payments.gateway import ISO8583_STATE
        from lanecore.gateway.sim.acquirer import trade_key
        if gateway_dir is None:
            raise ValueError("an acquirer's trades map to merchant_refs through the "
                             "gateway's iso8583.sqlite: pass gateway_dir")
        con = sqlite3.connect(self.data_dir / "acquirer.sqlite")
        try:
            held = dict(con.execute("SELECT key, amount_minor FROM trades "
                                    "WHERE status = 'paid'"))
        finally:
            con.close()
        refs = {}
        state = Path(gateway_dir) / ISO8583_STATE
        if state.exists():
            con = sqlite3.connect(state)
            try:
                refs = {trade_key(t, s, x): ref for ref, t, s, x in con.execute(
                    "SELECT merchant_ref, terminal_id, stan, tx_time FROM iso_attempts")}
            finally:
                con.close()
        # a trade no attempt of this gateway's made stays under its host key
        return {refs.get(k, k): amount for k, amount in held.items()}

    def stop(self):
        self.conn.close()
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def providers(tmp_path):
    made = {}

    def start(name: str, kind: str, *extra: str, curve: bool = False,
              protocol: str = "lanecore") -> Provider:
        d = tmp_path / f"prov-{name}"
        d.mkdir()
        made[name] = Provider(kind, d, tmp_path, *extra, curve=curve, protocol=protocol)
        return made[name]
    yield start
    for p in made.values():
        p.stop()


def write_config(d: Path, channels: dict, policy: dict | None = None,
                 pos: dict | None = None) -> None:
    lines = []
    if pos:
        lines.append("[pos]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in pos.items()]
    for name, t in channels.items():
        lines.append(f"[channels.{name}]")
        for k, v in t.items():
            lines.append(f"{k} = {json.dumps(v)}")
    if policy:
        lines.append("[policy]")
        lines += [f"{k} = {v}" for k, v in policy.items()]
    lines += ["[qr]", 'merchant_name = "Riverside Market"', 'city = "Hangzhou"',
              'country = "CN"', 'gui = "com.example.pay"', 'account = "M000123"']
    (d / "payments.toml").write_text("\n".join(lines) + "\n")


def wallet(name, endpoint, priority, kind="wechat", **limits):
    """A wallet channel's table. ``endpoint``: the provider's endpoint (lanecore's
    link), or a :class:`Provider` — then its :meth:`~Provider.channel_table` (any
    protocol) and, for a wallet's own protocol, its kind."""
    if isinstance(endpoint, Provider):
        link = endpoint.channel_table()
        kind = PROTOCOL_KIND.get(endpoint.protocol) or kind
    else:
        link = {"endpoint": endpoint}
    t = {"kind": kind, "priority": priority, "methods": ["auth_code"], "currency": "CNY",
         **link, "timeout_s": 2.0}
    t.update(limits)
    return t


def card(name, provider: Provider, priority, **extra):
    """A card channel's table to ``provider`` (ISO 8583 to an acquirer, or lanecore's
    link to a ``bank`` simulator)."""
    t = {"kind": "card", "priority": priority, "methods": ["card"], "currency": "CNY",
         **provider.channel_table(), "timeout_s": 2.0}
    t.update(extra)
    return t


def real_connector(table: dict, data_dir: Path):
    """The gateway's connector for a channel ``table`` over a wallet's own protocol
    (``protocol = "wechatpay-v2" | "alipay"``), as the gateway builds it."""
    import importlib

    from lanecore.gateway.payments.gateway import PROTOCOL_KIND as GATEWAY_PROTOCOLS
    protocol = table["protocol"]
    module = GATEWAY_PROTOCOLS[protocol][1]        # the gateway's own choice of module
    mod = importlib.import_module(f"lanecore.gateway.payments.{module}")
    return mod.from_config(f"test-{protocol}", dict(table), Path(data_dir))


def card_request(rid: str, order_no: str, amount_minor: int, pin: str | None = "1234",
                 pan: str = PAN) -> dict:
    """A ``pay.charge`` request map paying by the test card (chip, with a PIN block
    under the simulators' test key unless ``pin`` is None)."""
    from lanecore.gateway.sim.provider import pin_block
    c = {"entry": "chip", "pan": pan}
    if pin is not None:
        c["pin_block"] = pin_block(pin, pan)
    return {"op": "pay.charge", "id": rid, "order_no": order_no,
            "amount_minor": amount_minor, "currency": "CNY", "method": "card",
            "terminal": "T1", "card": c}


def wallet_request(rid: str, order_no: str, amount_minor: int,
                   code: str = WECHAT_CODE) -> dict:
    """A ``pay.charge`` request map paying by a wallet's payment code."""
    return {"op": "pay.charge", "id": rid, "order_no": order_no,
            "amount_minor": amount_minor, "currency": "CNY", "method": "auth_code",
            "terminal": "T1", "auth_code": code}


def start_gateway(kind: str, data_dir: Path, endpoint: str, env=None,
                  curve=None) -> subprocess.Popen:
    """`lanecore gateway KIND` in a process, answering `hello` before this returns.
    ``curve``: the CurveKeys of an identity enrolled in ``data_dir`` — the gateway then
    runs ``--curve`` and is asked hello as that identity."""
    import time

    from lanecore.gateway.net.client import Client, ServiceError
    # --dev-open: tests that do not configure authentication talk to it as the
    # development principal (loopback/ipc only); configured HMAC still applies
    mode = "--curve" if curve is not None else "--dev-open"
    proc = subprocess.Popen([sys.executable, "-m", "lanecore", "gateway", kind, "--bind",
                             endpoint, "--data-dir", str(data_dir), mode],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)
    deadline = time.monotonic() + 60
    while True:
        # a fresh client (socket) each try: a hello sent before the gateway bound its
        # socket is not left queued in front of the next one
        try:
            with Client(endpoint, timeout_s=1.0, retries=0, curve=curve) as c:
                c.call("hello")
            return proc
        except ServiceError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"gateway {kind} did not start: "
                                     f"{proc.stderr.read()}") from None


def books_after_recovery(d: Path, provider, n_orders: int):
    """After a kill -9 run: one last start of the gateway over ``d`` with no faults
    drives every open payment final; then the provider's paid trades are the ledger's
    paid charges, and each of the ``n_orders`` orders was paid exactly once. Returns
    (gateway, charges, {merchant_ref: amount} paid, {order: [merchant_ref]}); the
    caller closes the gateway's ledger."""
    import time

    from lanecore.gateway.payments.gateway import PaymentGateway
    gw = PaymentGateway(d)
    for _ in range(50):
        if not gw.ledger.open_charges():
            break
        gw.on_idle()
        time.sleep(0.2)
    charges = gw.ledger.charges()
    assert gw.ledger.open_charges() == [], "every payment is final"
    ledger_paid = {c.merchant_ref: c.amount_minor for c in charges if c.state == "paid"}
    held = provider.paid(d) if getattr(provider, "protocol", None) == "iso8583" \
        else provider.paid()
    assert held == ledger_paid, "the provider's charges are the ledger's paid ones"
    per_order: dict[str, list] = {}
    for ref in ledger_paid:
        per_order.setdefault(ref.rsplit("-", 1)[0], []).append(ref)
    assert len(per_order) == n_orders and all(len(v) == 1 for v in per_order.values())
    return gw, charges, ledger_paid, per_order


# ----------------------------------------------------------------------------------
# kill -9 at random steps

#: Where the served gateway kills itself -9 and how often (gateway.py's
#: LANECORE_PAY_CRASH): after the ledger wrote the intent, after the provider
#: answered (before the outcome is written), before the reply leaves.
CRASH_POINTS = "after_ledger:0.04,after_provider:0.04,before_reply:0.04"


def call_sock(sock, req: dict, timeout_s: float, dead, sign=None):
    """One request on a DEALER; None when no reply came in time or the gateway died
    meanwhile. ``sign``: (terminal, key) to send it with a fresh authentication
    frame."""
    import time

    import msgpack

    from lanecore.gateway.net.auth import auth_frame
    payload = msgpack.packb(req)
    if sign is None:
        sock.send(payload)
    else:
        sock.send_multipart([payload, auth_frame(*sign, payload)])
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if sock.poll(50):
            return msgpack.unpackb(sock.recv())
        if dead():
            return None
    return None


def run_kill_9(tmp_path: Path, d: Path, n: int, request_for, *, sign=None,
               crash: str = CRASH_POINTS, reply_timeout_s: float = 5.0) -> dict:
    """Pay ``n`` orders through a served gateway over ``d`` that kills itself -9 at
    random ``crash`` points (a new seed each start), restarting it whenever it is
    dead. ``request_for(i)`` is order ``i``'s ``pay.charge`` request (its own id,
    order ``K0000``…); each is retried with the same id (a fresh socket after a lost
    reply) until final, and must end ``paid`` (an attempt settled otherwise — over ISO
    8583, which has no query, a lost answer is reversed by advice — leaves the order
    unpaid, and the same request then makes the next attempt).

    Returns {"starts", "kills"}; the caller checks the books
    (:func:`books_after_recovery`)."""
    import os
    import signal
    import time

    import zmq
    endpoint = f"ipc://{tmp_path}/pay.ipc"
    env = dict(os.environ, LANECORE_PAY_CRASH=crash)
    log = open(tmp_path / "gw.log", "w")
    state = {"proc": None, "starts": 0, "kills": 0}

    def ensure_up():
        proc = state["proc"]
        if proc is not None and proc.poll() is None:
            return
        if proc is not None and proc.returncode == -signal.SIGKILL:
            state["kills"] += 1
        state["starts"] += 1
        env["LANECORE_PAY_CRASH_SEED"] = str(state["starts"])
        state["proc"] = subprocess.Popen(
            [sys.executable, "-m", "lanecore", "gateway", "payments", "--dev-open",
             "--bind", endpoint, "--data-dir", str(d)], stdout=log, stderr=log, env=env)

    ctx = zmq.Context.instance()
    sock = None
    try:
        for i in range(n):
            req = request_for(i)
            order = req["order_no"]
            for _ in range(200):                          # retries, same id
                ensure_up()
                if sock is None:
                    sock = ctx.socket(zmq.DEALER)
                    sock.setsockopt(zmq.LINGER, 0)
                    sock.connect(endpoint)
                reply = call_sock(sock, req, reply_timeout_s,
                                  lambda: state["proc"].poll() is not None, sign)
                if reply is None:                         # lost: a fresh socket, again
                    sock.close(0)
                    sock = None
                    continue
                assert reply["ok"], reply
                if reply["status"] != "pending":
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(f"{order} never became final")
            assert reply["status"] == "paid", reply
    finally:
        if sock is not None:
            sock.close(0)
        proc = state["proc"]
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(20)
        log.close()
    return {k: v for k, v in state.items() if k != "proc"}
