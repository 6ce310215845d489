"""Resources (issue 13, item 8): what one flooding client costs everyone else.

A `lanecore serve` on tcp loopback (the default transport) and two clients, raw pyzmq
DEALERs as in ``bench/test_service.py``:

* the flooder (``bench/_flood.py``, its own process): as fast as the service's socket
  takes them, bursts of one 1 MiB message of 1,040,000 empty maps (the observed
  attack's message) and 64 small ``hello`` requests;
* the victim: one ``hello`` at a time, each round trip timed.

The figure is the victim's round trip with the flood on over the same without it,
paired in one run: each round is a block of victim round trips with the flood off
(after the service answered everything the flooder sent), then the flood on until the
service is saturated (the flooder got its first ``BUSY``), then a block with the flood
on (the one pytest-benchmark times). The ratio table also has a quiet-only block for
scale. Before the per-peer bounds the same attack left the victim unanswered for 42 s.

With ``--benchmark-disable`` (CI): one short round; the victim is answered, the
flooder gets ``TOO_COMPLEX`` and ``BUSY``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import _service as S
from _paired import LoadProbe

HERE = Path(__file__).resolve().parent
GROUP = "victim hello round trip (tcp)"


@dataclass(frozen=True)
class Plan:
    rounds: int           # flood on/off rounds
    per_block: int        # victim round trips per block
    real: bool


@pytest.fixture(scope="module")
def plan(sizes) -> Plan:
    if sizes.real:
        return Plan(rounds=20, per_block=25, real=True)
    return Plan(rounds=1, per_block=3, real=False)


class Flooder:
    """``bench/_flood.py`` against ``endpoint``, switched on and off over stdin."""

    def __init__(self, endpoint: str):
        self.proc = subprocess.Popen([sys.executable, str(HERE / "_flood.py"), endpoint],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.totals: dict[str, int] = {}
        self.sent = 0

    def _ask(self, cmd: str) -> str:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the flooder exited ({self.proc.poll()})"
        return line.strip()

    def on(self) -> None:
        assert self._ask("on") == "saturated"

    def off(self) -> dict:
        out = json.loads(self._ask("off"))
        assert out["replies"] == out["sent"], f"flood requests without a reply: {out}"
        self.sent += out["sent"]
        for k, v in out["codes"].items():
            self.totals[k] = self.totals.get(k, 0) + v
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def flood_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("flood")


@pytest.fixture(scope="module")
def service(flood_dir):
    S.make_store(flood_dir / "store", items=300)
    proc = S.start_service(flood_dir / "store", flood_dir, name="service-flood")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def flooder(service):
    f = Flooder(service.endpoint)
    try:
        yield f
    finally:
        f.stop()


def hellos(k: int) -> dict:
    return {"op": "hello", "id": k}


def victim(service) -> S.RoundTrips:
    rt = S.RoundTrips(S.dealer(service.endpoint), hellos, timeout_ms=60_000)
    for _ in range(20):                 # connect, warm up
        rt()
    rt.ns.clear()
    return rt


def test_victim_quiet(benchmark, record, service, plan):
    """For scale in the ratio table: the victim alone, no flood."""
    rt = victim(service)

    def block():
        for _ in range(plan.per_block):
            rt()
    benchmark.pedantic(block, rounds=plan.rounds)
    record(benchmark, GROUP, "no flood", "baseline", plan.per_block)
    rt.check()


def test_victim_flooded(benchmark, record, note, figures, service, flooder, plan):
    quiet, flooded = victim(service), victim(service)

    def setup():                        # flood off, drained: a quiet block; flood on
        flooder.off()
        for _ in range(plan.per_block):
            quiet()
        flooder.on()

    def block():
        for _ in range(plan.per_block):
            flooded()
    cpu0 = service.cpu_s()
    rss0 = service_rss_mib(service)
    with LoadProbe(pids=[service.popen.pid, flooder.proc.pid]) as probe:
        benchmark.pedantic(block, setup=setup, rounds=plan.rounds)
    flooder.off()
    cpu = service.cpu_s() - cpu0
    quiet.check()
    flooded.check()
    pq, pf = S.percentiles_us(quiet.ns), S.percentiles_us(flooded.ns)
    ratio = " / ".join(f"{pf[k] / pq[k]:,.1f}" for k in pq)
    # the table's ratio is a speed (quiet / flooded); the paired figures go with it
    record(benchmark, GROUP, "one client flooding", "candidate", plan.per_block,
           **{f"paired_{k}_us_{w}": round(v, 1) for w, p in (("quiet", pq), ("flooded", pf))
              for k, v in p.items()},
           **{f"paired_{k}_slowdown": round(pf[k] / pq[k], 2) for k in pq})
    per_round = [statistics.median(flooded.ns[i:i + plan.per_block]) /
                 statistics.median(quiet.ns[i:i + plan.per_block])
                 for i in range(0, len(flooded.ns), plan.per_block)]
    for k in pq:
        figures.add(f"{GROUP}: {k} one client flooding / no flood", pf[k] / pq[k],
                    "x time", rounds=plan.rounds, paired=True, load=probe.load,
                    **({"min": min(per_round), "median": statistics.median(per_round),
                        "max": max(per_round)} if k == "p50" else {}))
    codes = ", ".join(f"{k} {v:,}" for k, v in sorted(flooder.totals.items()))
    note(f"victim hello round trip tcp, paired blocks of {plan.per_block} over "
         f"{plan.rounds} rounds: p50/p99/p999 without flood {S.fmt_us(pq)}, with one "
         f"client flooding {S.fmt_us(pf)} → {ratio} × (the bounded delay); worst "
         f"{max(flooded.ns) / 1e6:,.1f} ms")
    note(f"    the flooder sent {flooder.sent:,} requests ({codes}); service CPU "
         f"{cpu:,.1f} s; service RSS {rss0:,.0f} MiB before, {service_rss_mib(service):,.0f}"
         f" MiB after")
    # correctness, at any size: everyone was answered; the flood met the bounds
    assert len(flooded.ns) == len(quiet.ns) == plan.rounds * plan.per_block
    assert flooder.totals.get("TOO_COMPLEX", 0) >= 1, flooder.totals
    assert flooder.totals.get("BUSY", 0) >= 1, flooder.totals
    assert set(flooder.totals) <= {"ok", "TOO_COMPLEX", "BUSY"}, flooder.totals


def service_rss_mib(proc: S.Proc) -> float:
    with open(f"/proc/{proc.popen.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")
