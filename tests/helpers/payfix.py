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
    def __init__(self, kind: str, data_dir: Path, sock_dir: Path, *extra: str):
        self.kind = kind
        self.data_dir = data_dir
        endpoint = f"ipc://{sock_dir}/{kind}-{data_dir.name}.ipc"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lanecore", "sim", "provider", "--kind", kind,
             "--bind", endpoint, "--data-dir", str(data_dir), "--fast", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read()
        self.endpoint = json.loads(line)["endpoint"]
        self.conn = connector(self.endpoint, kind, timeout_s=5.0)

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

    def start(name: str, kind: str, *extra: str) -> Provider:
        d = tmp_path / f"prov-{name}"
        d.mkdir()
        made[name] = Provider(kind, d, tmp_path, *extra)
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


def start_gateway(kind: str, data_dir: Path, endpoint: str, env=None) -> subprocess.Popen:
    """`lanecore gateway KIND` in a process, answering `hello` before this returns."""
    import time

    from lanecore.gateway.net.client import Client, ServiceError
    proc = subprocess.Popen([sys.executable, "-m", "lanecore", "gateway", kind, "--bind",
                             endpoint, "--data-dir", str(data_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)
    deadline = time.monotonic() + 30
    with Client(endpoint, timeout_s=1.0, retries=0) as c:
        while True:
            try:
                c.call("hello")
                return proc
            except ServiceError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise AssertionError(f"gateway {kind} did not start: "
                                         f"{proc.stderr.read()}") from None
