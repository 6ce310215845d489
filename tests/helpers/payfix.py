"""Payment test helpers: provider simulator processes and gateway configuration
(shared by tests/gateway/payments/test_payments.py and test_pos.py)."""

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


class Provider:
    """A `lanecore sim provider` process. ``curve``: with `--curve`; the test's own
    connector (``conn``) has a keypair enrolled in the provider's `keys/clients/`,
    ``server_key`` is the provider's public key, and :meth:`enrol` lets another client
    key (a gateway's) in."""

    def __init__(self, kind: str, data_dir: Path, sock_dir: Path, *extra: str,
                 curve: bool = False):
        self.kind = kind
        self.data_dir = data_dir
        self.server_key = None
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
        self.conn = connector(self.endpoint, kind, timeout_s=5.0, curve=curve_keys)

    def enrol(self, public_key_path: Path) -> None:
        """Let the client whose public certificate this is in (`--curve`)."""
        from lanecore.core.config import private_dir, write_private
        clients = private_dir(self.data_dir / "keys" / "clients")
        write_private(clients / Path(public_key_path).name,
                      Path(public_key_path).read_bytes())

    def paid(self) -> dict[str, int]:
        """merchant_ref → amount of every trade the provider holds as paid."""
        con = sqlite3.connect(self.data_dir / f"{self.kind}.sqlite")
        try:
            return dict(con.execute("SELECT merchant_ref, amount_minor FROM trades "
                                    "WHERE status IN ('paid', 'refunded')"))
        finally:
            con.close()

    def stop(self):
        self.conn.close()
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def providers(tmp_path):
    made = {}

    def start(name: str, kind: str, *extra: str, curve: bool = False) -> Provider:
        d = tmp_path / f"prov-{name}"
        d.mkdir()
        made[name] = Provider(kind, d, tmp_path, *extra, curve=curve)
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
    t = {"kind": kind, "priority": priority, "methods": ["auth_code"], "currency": "CNY",
         "endpoint": endpoint, "timeout_s": 2.0}
    t.update(limits)
    return t


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
    assert provider.paid() == ledger_paid, "the provider's charges are the ledger's paid ones"
    per_order: dict[str, list] = {}
    for ref in ledger_paid:
        per_order.setdefault(ref.rsplit("-", 1)[0], []).append(ref)
    assert len(per_order) == n_orders and all(len(v) == 1 for v in per_order.values())
    return gw, charges, ledger_paid, per_order
