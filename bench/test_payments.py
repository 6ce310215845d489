"""The payment gateway under load (issue 6): ``pay.charge`` against the fast provider
simulator with the durable ledger (SQLite WAL, synchronous=FULL, three commits per
charge: created, sent, paid), against a bare ROUTER/DEALER MessagePack echo over the
same transport in the same run.

* Round trips, one in flight: each ``pay.charge`` (a new order every time) paired
  with an echo round trip just before it, so the machine's noise falls on both.
* Throughput: 50 in flight on one DEALER. Target: ≥ 300 payments/s.

With ``--benchmark-disable`` (CI) the sizes are tiny and only correctness is checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

import _service as S

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

PAYMENTS_PER_S_TARGET = 300
WINDOW = 50
WECHAT_CODE = "134567890123456789"


@pytest.fixture(scope="module")
def plan(sizes):
    return {"round_trips": 2_000 if sizes.real else 20,
            "piped": 6_000 if sizes.real else 60}


@pytest.fixture(scope="module")
def procs(tmp_path_factory):
    d = tmp_path_factory.mktemp("pay")
    started: list[S.Proc] = []
    try:
        prov_dir = d / "provider"
        prov_dir.mkdir()
        prov_log = d / "provider.log"
        with open(prov_log, "w") as log:
            prov = subprocess.Popen(
                [sys.executable, "-m", "lanecore", "sim", "provider", "--kind", "wechat",
                 "--data-dir", str(prov_dir), "--bind", f"ipc://{d}/provider.ipc", "--fast"],
                stdout=subprocess.PIPE, stderr=log, text=True)
        started.append(S.Proc("provider", prov, prov_log))
        endpoint = json.loads(prov.stdout.readline())["endpoint"]
        gw_dir = d / "gateway"
        gw_dir.mkdir()
        (gw_dir / "payments.toml").write_text(
            '[channels.wx]\nkind = "wechat"\npriority = 1\nmethods = ["auth_code"]\n'
            f'currency = "CNY"\nendpoint = "{endpoint}"\ntimeout_s = 5.0\n')
        bind = S.free_tcp_endpoint()
        log = d / "gateway.log"
        gw = S._popen([sys.executable, "-m", "lanecore", "gateway", "payments", "--dev-open",
                       "--bind", bind, "--data-dir", str(gw_dir)], log)
        gateway = S.Proc("gateway", gw, log, bind)
        started.append(gateway)
        S.wait_ready(gateway)
        echo = S.start_echo(d, name="echo-pay")
        started.append(echo)
        yield {"gateway": gateway, "echo": echo}
    finally:
        for p in reversed(started):
            p.stop()


def charges(prefix: str):
    return lambda k: {"op": "pay.charge", "id": k, "order_no": f"{prefix}{k:07d}",
                      "amount_minor": 100 + k % 900, "currency": "CNY",
                      "method": "auth_code", "terminal": "T1", "auth_code": WECHAT_CODE}


def test_pay_charge_round_trip(benchmark, record, note, procs, plan):
    gw, echo = procs["gateway"], procs["echo"]
    mine = S.RoundTrips(S.dealer(gw.endpoint), charges("RT"))
    pair = S.RoundTrips(S.dealer(echo.endpoint), charges("EC"))
    for _ in range(10):
        pair(), mine()
    pair.ns.clear(), mine.ns.clear()
    benchmark.pedantic(mine, setup=pair, rounds=plan["round_trips"])
    record(benchmark, "payments round trip (tcp)", "pay.charge", "candidate", 1)
    replies = mine.check()
    assert {r["status"] for r in replies} == {"paid"}
    pc, pf = S.percentiles_us(mine.ns), S.percentiles_us(pair.ns)
    note(f"pay.charge round trip (durable ledger, fast provider): p50/p99/p999 "
         f"{S.fmt_us(pc)}; paired echo {S.fmt_us(pf)} → p50 {pc['p50'] / pf['p50']:.1f}× "
         f"the echo; {len(mine.ns):,} pairs")


def test_pay_charge_throughput(benchmark, note, procs, plan):
    gw = procs["gateway"]
    sock = S.dealer(gw.endpoint)
    make = charges("TP")
    payloads = [msgpack.packb(make(k)) for k in range(plan["piped"])]
    cpu0 = gw.cpu_s()
    t0 = time.perf_counter()
    replies = benchmark.pedantic(S.pipelined, args=(sock, payloads, WINDOW), rounds=1)
    wall = time.perf_counter() - t0
    cpu = gw.cpu_s() - cpu0
    out = [msgpack.unpackb(r) for r in replies]
    assert len(out) == len(payloads) and all(r["ok"] and r["status"] == "paid" for r in out)
    rate = len(out) / wall
    if plan["piped"] >= 1000:
        met = "met" if rate >= PAYMENTS_PER_S_TARGET else "NOT MET"
        note(f"pay.charge throughput, {WINDOW} in flight: {rate:,.0f} payments/s "
             f"({len(out):,} in {wall:.1f} s); gateway CPU {1e6 * cpu / len(out):,.0f} µs "
             f"per payment; target ≥ {PAYMENTS_PER_S_TARGET}/s: {met}")
    sock.close(0)
