"""``pay.charge`` over the providers' real protocols (issue 17): its round trip p50
through the served payment gateway against each protocol's simulator, next to the bare
round trip to the same simulator in the same run — interleaved (``bench/_paired.py``:
each round one charge and one bare exchange, the order alternating ABBA), so a side's
median is its p50 and both met the same machine.

* **WeChat Pay v2** (XML over HTTPS, ``--protocol wechatpay-v2``): a ``pay.charge``
  by payment code — the till's request over ZeroMQ to the gateway, the ledger's intent
  (WAL, ``synchronous=FULL``), the connector's signed ``/pay/micropay`` over a fresh
  TLS connection to the simulator (which verifies it, records the trade with its own
  fsync and signs its answer), the answer verified and the outcome written — against
  the **bare HTTPS round trip**: the same client class the connector uses
  (``gateway.payments.httpapi.HttpsClient``, same test CA, a fresh TCP + TLS
  connection each request, as the connector makes) doing ``GET /_sim/stats`` on the
  same simulator: connect, handshake, one request and its answer, close. No signing,
  no XML, no trade, no disk.
* **Alipay** (the openapi gateway over HTTPS) the same way; unguarded.
* **Cards over ISO 8583** (``--kind acquirer``, TCP with 2-byte framing): a card
  ``pay.charge`` (chip, PIN block) through the gateway — the connector's 0200 and the
  host's 0210 over a fresh TCP connection, the STAN kept durably — against the **bare
  TCP round trip**: a fresh connection to the same host, a framed 0800 network echo,
  its 0810, close (what the connector does per exchange, minus the trade).

Figures (guarded in ``bench/targets.toml``): ``pay.charge p50 over <protocol>:
charge vs bare <https|tcp> round trip`` ("x time": the charge's p50 over the bare
round trip's). With ``--benchmark-disable`` (CI) a few rounds run and only
correctness is checked: every charge paid, one trade per charge at the simulator.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import _service as S
from _paired import paired

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

WECHAT_CODE = "134567890123456789"
ALIPAY_CODE = "2812345678901234"
PAN = "4111111111111111"
#: protocol → (simulator kind, the bare round trip's name)
PROTOCOLS = {"wechatpay-v2": ("wechat", "https"), "alipay": ("alipay", "https"),
             "iso8583": ("acquirer", "tcp")}


def figure_name(protocol: str) -> str:
    bare = PROTOCOLS[protocol][1]
    return f"pay.charge p50 over {protocol}: charge vs bare {bare} round trip"


@pytest.fixture(scope="module")
def plan(sizes):
    return {"rounds": 1_500 if sizes.real else 20, "warmup": 100 if sizes.real else 3}


def _toml(table: dict) -> str:
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())


def _stack(d: Path, protocol: str) -> dict:
    """The protocol's simulator (``--fast``) and a served payment gateway with one
    channel to it, under ``d``. Returns the Procs and the simulator's ready line."""
    kind, _ = PROTOCOLS[protocol]
    sim_dir = d / "sim"
    sim_dir.mkdir()
    cmd = [sys.executable, "-m", "lanecore", "sim", "provider", "--kind", kind,
           "--data-dir", str(sim_dir), "--fast"]
    cmd += ["--bind", "tcp://127.0.0.1:0"] if protocol == "iso8583" else \
        ["--protocol", protocol, "--bind", "127.0.0.1:0"]
    sim_log = d / "sim.log"
    with open(sim_log, "w") as log:
        popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    sim = S.Proc("sim", popen, sim_log)
    line = popen.stdout.readline()
    if not line:
        sim.stop()
        raise RuntimeError(f"the {protocol} simulator did not start: {sim.tail()}")
    ready = json.loads(line)
    if protocol == "iso8583":
        chan = {"kind": "card", "methods": ["card"], "endpoint": ready["endpoint"],
                "protocol": "iso8583", "merchant_id": "M000000000123",
                "terminal_id": "T0000001"}
    else:
        chan = {"kind": kind, "methods": ["auth_code"], **ready["channel"]}
        chan.setdefault("protocol", protocol)
        chan.setdefault("endpoint", ready["endpoint"])
    chan.update(priority=1, currency="CNY", timeout_s=5.0)
    gw_dir = d / "gateway"
    gw_dir.mkdir()
    (gw_dir / "payments.toml").write_text("[channels.ch]\n" + _toml(chan))
    bind = S.free_tcp_endpoint()
    log = d / "gateway.log"
    gw = S.Proc("gateway", S._popen([sys.executable, "-m", "lanecore", "gateway",
                                     "payments", "--dev-open", "--bind", bind,
                                     "--data-dir", str(gw_dir)], log), log, bind)
    try:
        S.wait_ready(gw)
    except BaseException:
        sim.stop()
        raise
    return {"gateway": gw, "sim": sim, "ready": ready, "sim_dir": sim_dir}


def _charges(protocol: str, prefix: str):
    def make(k: int) -> dict:
        req = {"op": "pay.charge", "id": f"{prefix}{k}", "order_no": f"{prefix}{k:07d}",
               "amount_minor": 100 + k % 900, "currency": "CNY", "terminal": "T1"}
        if protocol == "iso8583":
            from lanecore.gateway.sim.provider import pin_block
            req.update(method="card", card={"entry": "chip", "pan": PAN,
                                            "pin_block": pin_block("1234", PAN)})
        else:
            req.update(method="auth_code",
                       auth_code=WECHAT_CODE if protocol == "wechatpay-v2" else ALIPAY_CODE)
        return req
    return make


class BareHttps:
    """The bare HTTPS round trip: ``GET /_sim/stats`` on the simulator with the
    connector's own client class (fresh TCP + TLS connection each call, verifying the
    simulator's certificate against its test CA)."""

    def __init__(self, ready: dict) -> None:
        from lanecore.gateway.payments.httpapi import HttpsClient
        self.client = HttpsClient(ready["endpoint"], ca_file=ready["ca_file"],
                                  timeout_s=10.0)
        self.ns: list[int] = []
        self.statuses: list[int] = []

    def __call__(self) -> None:
        t0 = time.perf_counter_ns()
        reply = self.client.request("GET", "/_sim/stats")
        self.ns.append(time.perf_counter_ns() - t0)
        self.statuses.append(reply.status if reply is not None else 0)

    def check(self) -> None:
        assert self.statuses and set(self.statuses) == {200}, set(self.statuses)


class BareTcp:
    """The bare TCP round trip: a fresh connection to the acquirer host, a framed
    0800 network echo, its 0810, close."""

    def __init__(self, endpoint: str) -> None:
        from lanecore.gateway.payments import iso8583 as M
        self.M = M
        self.addr = M.parse_endpoint(endpoint)
        self.ns: list[int] = []
        self.codes: list[str] = []
        self.stan = 0

    def __call__(self) -> None:
        M = self.M
        self.stan = self.stan % 999_999 + 1
        doc = {"t": "0800", "7": M.transmission_time(time.time()),
               "11": f"{self.stan:06d}", "41": "BENCHT01"}
        t0 = time.perf_counter_ns()
        with socket.create_connection(self.addr, timeout=10) as s:
            M.send_message(s, doc)
            answer = M.decode(M.read_frame(s))
        self.ns.append(time.perf_counter_ns() - t0)
        self.codes.append((answer["t"], answer["39"]))

    def check(self) -> None:
        assert self.codes and set(self.codes) == {("0810", "00")}, set(self.codes)


def _held(sim_dir: Path, protocol: str) -> int:
    """How many trades the simulator holds as paid."""
    kind = PROTOCOLS[protocol][0]
    con = sqlite3.connect(sim_dir / f"{kind}.sqlite")
    try:
        return con.execute("SELECT COUNT(*) FROM trades WHERE status = 'paid'").fetchone()[0]
    finally:
        con.close()


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_pay_charge_p50_next_to_the_bare_round_trip(figures, note, plan, protocol,
                                                    tmp_path_factory):
    d = tmp_path_factory.mktemp(f"prov-{protocol}")
    stack = _stack(d, protocol)
    try:
        gw, ready = stack["gateway"], stack["ready"]
        charge = S.RoundTrips(S.dealer(gw.endpoint), _charges(protocol, "PC"))
        bare = BareTcp(ready["endpoint"]) if protocol == "iso8583" else BareHttps(ready)
        res = paired({"charge": charge, "bare": bare}, rounds=plan["rounds"],
                     warmup=plan["warmup"], pids=[gw.popen.pid, stack["sim"].popen.pid])
        replies = charge.check()
        bare.check()
        assert [r["status"] for r in replies] == ["paid"] * len(replies), \
            [r for r in replies if r["status"] != "paid"][:2]
        assert _held(stack["sim_dir"], protocol) == len(replies)     # one trade each
    finally:
        stack["gateway"].stop()
        stack["sim"].stop()
    kind = PROTOCOLS[protocol][1]
    fig = figures.slowdown(figure_name(protocol), res, "charge", "bare",
                           protocol=protocol, bare=f"{kind} round trip")
    warm = plan["warmup"]            # the warm-up's times are in ns too
    pc, pb = S.percentiles_us(charge.ns[warm:]), S.percentiles_us(bare.ns[warm:])
    note(f"pay.charge over {protocol} (served gateway, durable ledger, simulator --fast): "
         f"p50/p99/p999 {S.fmt_us(pc)}; bare {kind} round trip to the same simulator, "
         f"interleaved: {S.fmt_us(pb)} → p50 {fig['value']:.2f}× (per-round median "
         f"{fig['median']:.2f}×); {res.rounds:,} pairs; {res.load}")
