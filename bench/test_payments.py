"""The payment gateway under load (issues 6 and 19): ``pay.charge`` against the fast
provider simulator with the durable ledger (SQLite WAL, ``synchronous=FULL``).

* Round trips, one in flight: each ``pay.charge`` (a new order every time) paired
  with an echo round trip just before it, so the machine's noise falls on both.
* Throughput (issue 19, guarded): 50 in flight on one DEALER, in rounds interleaved
  (ABBA, ``bench/_paired.py``) with the floor — a bare SQLite insert+fsync loop (WAL,
  ``synchronous=FULL``, one row a commit) on a file beside the gateway's ledger, same
  disk, same run. The gateway groups the charges in flight (one commit carries many
  intents and outcomes), so its payments/s are not bounded by the floor's commits/s
  (one at a time it made two commits a payment). Figures: payments/s and the floor's
  commits/s (min / median / max over the rounds, the machine's other load beside
  them), their ratio, and the gateway's CPU per payment. Target: ≥ 1,000 payments/s.

The simulator runs ``--fast`` at its default ``--synchronous full``: it commits every
trade with its own fsync, one after another, on the same disk — so the provider, not
only the gateway, spends the disk's flushes. A second, unguarded figure runs it at
``--synchronous normal`` for the gateway's own ceiling.

With ``--benchmark-disable`` (CI) the sizes are tiny and only correctness is checked.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import os
import sqlite3

import msgpack
import pytest

import _service as S
from _paired import paired

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

PAYMENTS_PER_S_TARGET = 1000
WINDOW = 50
WECHAT_CODE = "134567890123456789"


@pytest.fixture(scope="module")
def plan(sizes):
    return {"round_trips": 2_000 if sizes.real else 20,
            "piped": 3_000 if sizes.real else 60, "rounds": 6 if sizes.real else 1,
            "floor": 600 if sizes.real else 20}


def _stack(d: Path, started: list, synchronous: str) -> dict:
    """A provider simulator (``--fast --synchronous SYNCHRONOUS``) and a payment
    gateway using it, under ``d``; their Procs are appended to ``started``."""
    prov_dir = d / "provider"
    prov_dir.mkdir()
    prov_log = d / "provider.log"
    with open(prov_log, "w") as log:
        prov = subprocess.Popen(
            [sys.executable, "-m", "lanecore", "sim", "provider", "--kind", "wechat",
             "--data-dir", str(prov_dir), "--bind", f"ipc://{d}/provider.ipc", "--fast",
             "--synchronous", synchronous],
            stdout=subprocess.PIPE, stderr=log, text=True)
    provider = S.Proc("provider", prov, prov_log)
    started.append(provider)
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
    return {"gateway": gateway, "provider": provider, "dir": d}


@pytest.fixture(scope="module")
def procs(tmp_path_factory):
    d = tmp_path_factory.mktemp("pay")
    started: list[S.Proc] = []
    try:
        stack = _stack(d, started, "full")
        echo = S.start_echo(d, name="echo-pay")
        started.append(echo)
        yield {**stack, "echo": echo}
    finally:
        for p in reversed(started):
            p.stop()


def charges(prefix: str):
    return lambda k: {"op": "pay.charge", "id": f"{prefix}{k}", "order_no": f"{prefix}{k:07d}",
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


def floor_loop(path: Path, n: int) -> int:
    """The floor: ``n`` single-row commits (insert + fsync: WAL, synchronous=FULL) on a
    fresh SQLite file at ``path``; returns ``n``."""
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(f"{path}{suffix}")
        except FileNotFoundError:
            pass
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = FULL")
        con.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, ref TEXT, amount INTEGER, "
                    "at REAL)")
        for k in range(n):
            con.execute("INSERT INTO t (ref, amount, at) VALUES (?, ?, ?)",
                        (f"F{k:07d}-1", 100 + k % 900, time.time()))
    finally:
        con.close()
    return n


def _throughput(stack: dict, plan: dict, rounds: int):
    """``rounds`` rounds (after one warm-up) of ``plan["piped"]`` charges, 50 in flight,
    each paired with the floor (ABBA); returns (paired result, payments/s per round,
    floor commits/s per round, gateway CPU µs per payment per round)."""
    gw = stack["gateway"]
    sock = S.dealer(gw.endpoint)
    floor_db = stack["dir"] / "gateway" / "floor.sqlite"     # beside payments.db
    n, m = plan["piped"], plan["floor"]
    cpu_us: list[float] = []

    def batch(r: int, side: str):
        if side == "floor":
            return (floor_db, m)
        make = charges(f"T{r + 1:02d}" if r >= 0 else f"W{-r:02d}")
        return ([msgpack.packb(make(k)) for k in range(n)],)

    def gateway(payloads):
        c0 = gw.cpu_s()
        replies = S.pipelined(sock, payloads, WINDOW)
        cpu_us.append(1e6 * (gw.cpu_s() - c0) / len(payloads))
        return replies

    def check(out):
        got = [msgpack.unpackb(r) for r in out["gateway"]]
        assert len(got) == n and all(r["ok"] and r["status"] == "paid" for r in got), \
            [r for r in got if not (r["ok"] and r["status"] == "paid")][:2]
        assert out["floor"] == m

    try:
        res = paired({"floor": lambda path, k: floor_loop(path, k), "gateway": gateway},
                     rounds=rounds, warmup=1, setup=batch, check=check,
                     pids=[gw.popen.pid, stack["provider"].popen.pid])
    finally:
        sock.close(0)
    rates = [n / t for t in res.side("gateway").times]
    floors = [m / t for t in res.side("floor").times]
    return res, rates, floors, cpu_us[1:]          # the warm-up round's CPU left out


def _spread(xs) -> str:
    return f"{min(xs):,.0f} / {statistics.median(xs):,.0f} / {max(xs):,.0f}"


def test_pay_charge_throughput(figures, note, procs, plan):
    """50 in flight, durable, against the fast simulator, interleaved with the floor."""
    res, rates, floors, cpu_us = _throughput(procs, plan, plan["rounds"])
    ratios = [a / b for a, b in zip(rates, floors)]
    figures.values("pay.charge durable, 50 in flight: payments/s", rates, "/s",
                   load=res.load, floor_per_s=round(statistics.median(floors), 1),
                   provider="sim --fast (synchronous full)")
    figures.values("pay.charge floor: bare SQLite insert+fsync/s", floors, "/s",
                   load=res.load)
    figures.values("pay.charge durable, 50 in flight: payments per floor commit", ratios,
                   "x", load=res.load)
    figures.values("pay.charge durable, 50 in flight: gateway CPU per payment", cpu_us,
                   "µs", load=res.load)
    if plan["piped"] >= 1000:
        med = statistics.median(rates)
        met = "met" if med >= PAYMENTS_PER_S_TARGET else "NOT MET"
        note(f"pay.charge durable (WAL, synchronous=FULL), {WINDOW} in flight, fast simulator: "
             f"{_spread(rates)} payments/s (min/median/max of {res.rounds} rounds of "
             f"{plan['piped']:,}); floor, bare SQLite insert+fsync on the same disk, "
             f"interleaved: {_spread(floors)} commits/s; payments per floor commit "
             f"{statistics.median(ratios):.2f}x; gateway CPU {_spread(cpu_us)} µs per "
             f"payment; {res.load}; target ≥ {PAYMENTS_PER_S_TARGET:,}/s: {met}")


def test_pay_charge_throughput_provider_not_fsyncing(figures, note, plan, tmp_path_factory):
    """For reference (unguarded): the same against the simulator at ``--synchronous
    normal``. At its default (``full``) the simulator commits each trade with its own
    fsync, one after another, on this same disk — a provider's work this machine would
    not do; without it the figure is the gateway's own ceiling."""
    d = tmp_path_factory.mktemp("paynormal")
    started: list[S.Proc] = []
    try:
        stack = _stack(d, started, "normal")
        res, rates, floors, cpu_us = _throughput(stack, plan, max(1, plan["rounds"] // 2))
    finally:
        for p in reversed(started):
            p.stop()
    figures.values("pay.charge durable, 50 in flight, provider not fsyncing: payments/s",
                   rates, "/s", load=res.load,
                   floor_per_s=round(statistics.median(floors), 1),
                   provider="sim --fast --synchronous normal")
    figures.values("pay.charge durable, 50 in flight, provider not fsyncing: gateway CPU "
                   "per payment", cpu_us, "µs", load=res.load)
    if plan["piped"] >= 1000:
        note(f"pay.charge durable, {WINDOW} in flight, simulator --synchronous normal (no "
             f"fsync per trade on this disk): {_spread(rates)} payments/s; floor "
             f"{_spread(floors)} commits/s; gateway CPU {_spread(cpu_us)} µs per payment; "
             f"{res.load} (reference, unguarded)")
