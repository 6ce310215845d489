"""Real services for the gateway tests: `lanecore serve` in a subprocess, on ipc
sockets in the test's temporary directory, over a store with a generated catalogue."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import pytest
import zmq

from curvefix import enrol
from payfix import providers  # noqa: F401  (provider simulator processes, a fixture)
from storefix import stock_store


@pytest.fixture(scope="session")
def store_template(tmp_path_factory):
    """A data directory with a 2,000-item GB catalogue, and the catalogue's rows."""
    d = tmp_path_factory.mktemp("store")
    return d, stock_store(d, 2000, seed=11)


@dataclass
class Served:
    endpoint: str
    events: str
    data_dir: Path
    proc: subprocess.Popen
    log: Path
    rows: list = field(default_factory=list)
    #: With ``--curve``: (server public, client public, client secret) of an enrolled
    #: test identity, for plain pyzmq sockets (``secure(sock)``).
    curve: tuple[bytes, bytes, bytes] | None = None

    def secure(self, sock: zmq.Socket) -> zmq.Socket:
        """Give ``sock`` the test identity's CurveZMQ keys when the service uses them."""
        if self.curve is not None:
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = self.curve
        return sock

    def call(self, req: dict, timeout_ms: int = 10_000) -> dict:
        """One request over a fresh DEALER (plain pyzmq: no lanecore client)."""
        ctx = zmq.Context.instance()
        s = self.secure(ctx.socket(zmq.DEALER))
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.endpoint)
        try:
            s.send(msgpack.packb(req))
            if not s.poll(timeout_ms):
                raise TimeoutError(f"no reply to {req.get('op')} in {timeout_ms} ms")
            return msgpack.unpackb(s.recv())
        finally:
            s.close(0)

    def items(self, n: int, *, plain: bool = True) -> list[dict]:
        """Catalogue rows of ordinary weighed items."""
        out = [r for r in self.rows if not r["flags"] and r["unit_weight_g"]] if plain \
            else list(self.rows)
        return out[:n]

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        return self.proc.returncode


def _wait_ready(served: Served, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if served.proc.poll() is not None:
            raise RuntimeError(f"service exited: {served.log.read_text()[-3000:]}")
        try:
            r = served.call({"op": "hello", "id": uuid.uuid4().hex}, timeout_ms=500)
            if r.get("ok"):
                return
        except TimeoutError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"service not ready: {served.log.read_text()[-3000:]}")


@pytest.fixture
def serve(tmp_path, store_template):
    """serve(*args) starts `lanecore serve` on a copy of the store; stopped after the test."""
    started: list[Served] = []

    def start(*args, data_dir: Path | None = None, curve_roles: str | None = None) -> Served:
        """``curve_roles``: run ``--curve`` with a test identity holding these roles."""
        src, rows = store_template
        d = data_dir or tmp_path / f"data{len(started)}"
        if data_dir is None:
            shutil.copytree(src, d)
        curve = None
        if curve_roles is not None:
            curve = enrol(d, tmp_path / f"client{len(started)}", "tests", curve_roles)
            args = (*args, "--curve")
        sock = tmp_path / f"s{len(started)}"
        endpoint, events = f"ipc://{sock}.ipc", f"ipc://{sock}-events.ipc"
        log = tmp_path / f"serve{len(started)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "lanecore", "serve", "--bind", endpoint, "--events",
             events, "--data-dir", str(d), *map(str, args)],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        served = Served(endpoint, events, d, proc, log, rows, curve)
        started.append(served)
        _wait_ready(served)
        return served

    yield start
    for s in started:
        s.stop()
