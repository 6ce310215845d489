"""Paired measurements: two or more sides timed in one loop, on the same data, with the
machine's other load recorded over the same window.

Why: these machines are shared, so a side timed in its own benchmark function meets a
different machine than its baseline did a minute later (issue 19 found a "1.9×" that was
0.8× or 1.2× depending on when each half ran). Here every round runs every side once,
back to back, in an order that alternates round by round (ABBA for two sides: AB, BA,
AB, …; for more, every rotation forwards and backwards), after warm-up rounds that are
not counted. A figure is then

* per side: min / median / max seconds per call over the rounds;
* the ratio of the two sides' medians, and the median (with min and max) of the
  per-round ratios — each round's pair met the same machine, so that one cannot be
  flattered by a quiet minute on one side only;
* the load: the 1-minute load average before and after, and the CPU seconds the rest
  of the machine took during the loop (all processors' busy time from ``/proc/stat``,
  as ``bench/_service.py``'s ``system_busy_s`` counts it, minus this process's and its
  waited-for children's CPU from ``resource.getrusage``, minus any ``pids`` we started).

Usage::

    from _paired import paired

    res = paired({"scipy": lambda: sosfilt(...), "lanecore": lambda: cascade(...)},
                 rounds=30 if sizes.real else 1, warmup=1,
                 check=lambda out: assert_close(out["scipy"], out["lanecore"]))
    res.speedup("lanecore", "scipy")      # median(scipy) / median(lanecore)
    res.paired_speedup("lanecore", "scipy")   # (min, median, max) of per-round ratios
    figures.speedup("cascade ...", res, "lanecore", "scipy")   # bench/conftest.py

``setup(round, side)`` (optional) returns the positional arguments for one call, made
outside the timed window (a fresh database, the round's block of data). ``check`` gets
every side's output from the first and the last timed round (and the warm-up's), so
the CI run (``--benchmark-disable``: one round on small data) still checks outputs.
``clock`` is injectable so the statistics can be tested without timing anything.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- load

def system_busy_s() -> float:
    """CPU seconds all processors spent busy since boot (everything but idle and
    iowait; steal included) — the same count as ``bench/_service.py``'s."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK


def own_cpu_s() -> float:
    """This process's CPU seconds, plus its children's that were waited for."""
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def pid_cpu_s(pid: int) -> float:
    """CPU seconds of a live process we started (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Load:
    """The machine during a measurement window."""

    wall_s: float = 0.0
    loadavg_before: float = float("nan")
    loadavg_after: float = float("nan")
    ours_cpu_s: float = 0.0          # this process (+ reaped children, + pids given)
    others_cpu_s: float = 0.0        # everything else on the machine
    cpus: int = os.cpu_count() or 1

    @property
    def others_cores(self) -> float:
        """Other processes' CPU over the window, in cores (1.0 = one core busy)."""
        return self.others_cpu_s / self.wall_s if self.wall_s > 0 else float("nan")

    def as_dict(self) -> dict:
        return {"loadavg_1m": [round(self.loadavg_before, 2), round(self.loadavg_after, 2)],
                "others_cores": round(self.others_cores, 3),
                "ours_cores": round(self.ours_cpu_s / self.wall_s, 3) if self.wall_s else None,
                "wall_s": round(self.wall_s, 3), "cpus": self.cpus}

    def __str__(self) -> str:
        return (f"load avg {self.loadavg_before:.2f}→{self.loadavg_after:.2f}, other "
                f"processes {self.others_cores:.2f} of {self.cpus} cores")


class LoadProbe:
    """``with LoadProbe() as probe: ...`` then ``probe.load``. ``pids``: processes the
    benchmark started (a service, a generator) whose CPU is ours, not 'other load'."""

    def __init__(self, pids: Iterable[int] = ()):
        self.pids = list(pids)
        self.load = Load()

    def _ours(self) -> float:
        return own_cpu_s() + sum(pid_cpu_s(p) for p in self.pids)

    def __enter__(self) -> "LoadProbe":
        self.load.loadavg_before = os.getloadavg()[0]
        self._busy0, self._ours0 = system_busy_s(), self._ours()
        self._wall0 = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.monotonic() - self._wall0
        busy, ours = system_busy_s() - self._busy0, self._ours() - self._ours0
        self.load.wall_s = wall
        self.load.ours_cpu_s = ours
        self.load.others_cpu_s = max(0.0, busy - ours)
        self.load.loadavg_after = os.getloadavg()[0]


# --------------------------------------------------------------------------- statistics

@dataclass
class Side:
    name: str
    times: list[float] = field(default_factory=list)     # seconds per call, by round

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    @property
    def stats(self):
        """What the ratio table's ``record(benchmark, ...)`` reads off a benchmark:
        ``record(res.side("x"), ...)`` puts a paired side in the classic table."""
        return _Stats(self)


class _Stats:
    def __init__(self, side: Side):
        self.stats = self
        self.median, self.min, self.max = side.median, side.min, side.max
        self.rounds = len(side.times)


def order_of_round(names: list[str], r: int) -> list[str]:
    """Round r's order: rotation r // 2 of the names, reversed on odd rounds (ABBA;
    for three sides the six rounds 0-5 are the six permutations)."""
    shift = (r // 2) % len(names)
    order = names[shift:] + names[:shift]
    return order[::-1] if r % 2 else order


@dataclass
class Paired:
    sides: dict[str, Side]
    rounds: int
    warmup: int
    orders: list[list[str]]
    load: Load
    outputs: dict[str, Any]                # the last round's outputs

    def side(self, name: str) -> Side:
        return self.sides[name]

    def ratio(self, num: str, den: str) -> float:
        """median(num) / median(den): e.g. a slowdown, candidate over baseline time."""
        return self.sides[num].median / self.sides[den].median

    def speedup(self, candidate: str, baseline: str) -> float:
        """How many times faster ``candidate`` is: median(baseline) / median(candidate)."""
        return self.ratio(baseline, candidate)

    def paired_ratios(self, num: str, den: str) -> list[float]:
        """Each round's num time / den time (both met the same machine)."""
        return [a / b for a, b in zip(self.sides[num].times, self.sides[den].times)]

    def paired_ratio(self, num: str, den: str) -> tuple[float, float, float]:
        r = self.paired_ratios(num, den)
        return min(r), statistics.median(r), max(r)

    def paired_speedup(self, candidate: str, baseline: str) -> tuple[float, float, float]:
        return self.paired_ratio(baseline, candidate)

    def summary(self, items: int | None = None) -> str:
        """One line per side: min / median / max (per item if ``items``)."""
        scale, unit = (1e9 / items, "ns/item") if items else (1e3, "ms")
        return "; ".join(f"{s.name} {s.min * scale:,.1f} / {s.median * scale:,.1f} / "
                         f"{s.max * scale:,.1f} {unit}" for s in self.sides.values())


def paired(sides: dict[str, Callable[..., Any]], *, rounds: int, warmup: int = 1,
           setup: Callable[[int, str], tuple] | None = None,
           check: Callable[[dict[str, Any]], None] | None = None,
           max_rounds: int | None = None, budget_s: float = 0.0,
           pids: Iterable[int] = (), clock: Callable[[], float] = time.perf_counter,
           ) -> Paired:
    """Time every side once per round, interleaved (see the module docstring).

    ``rounds`` timed rounds at least; with ``budget_s`` and ``max_rounds``, more rounds
    while the timed time spent stays under the budget (rounds are added in pairs, so
    the ABBA order stays balanced). Warm-up rounds (negative round numbers in
    ``setup``) run every side in the same alternating way and are not counted.
    """
    if rounds < 1 or not sides:
        raise ValueError("paired: at least one round and one side")
    names = list(sides)
    result = {n: Side(n) for n in names}
    outputs: dict[str, Any] = {}

    def one_round(r: int, order: list[str], keep: bool) -> float:
        spent = 0.0
        for name in order:
            args = setup(r, name) if setup is not None else ()
            t0 = clock()
            out = sides[name](*args)
            dt = clock() - t0
            outputs[name] = out
            spent += dt
            if keep:
                result[name].times.append(dt)
        return spent

    for w in range(warmup):
        one_round(-1 - w, order_of_round(names, w), keep=False)
        if check is not None and w == 0:
            check(dict(outputs))
    limit = max(rounds, max_rounds or rounds)
    done, spent = 0, 0.0
    with LoadProbe(pids) as probe:
        while done < limit:
            # past the minimum: go on while the budget allows, to an even number of
            # rounds (a whole ABBA)
            if done >= rounds and spent / done * (done + 2 - done % 2) > budget_s:
                break
            spent += one_round(done, order_of_round(names, done), keep=True)
            if check is not None and done == 0:
                check(dict(outputs))
            done += 1
    if check is not None and done > 1:
        check(dict(outputs))
    return Paired(result, done, warmup, [order_of_round(names, r) for r in range(done)],
                  probe.load, dict(outputs))
