"""Benchmark harness: every figure is a ratio against a baseline measured in the same
run on the same data.

Run for real with ``make bench`` (prints the ratio table, saves JSON under
``bench/results/``); ``make bench-check`` does the same and then compares the run's
guarded figures with ``bench/targets.toml`` (``bench/check.py``). In CI the suites run
with ``--benchmark-disable``: each timed function runs once on smaller data, and the
correctness checks still run.

Two ways to put a number in the run, side by side:

``record(benchmark, group, name, role, items, target=None, **extra)`` (unchanged)
    A row of the classic ratio table from anything with ``.stats.stats.median/min/
    rounds`` (a pytest-benchmark fixture, or ``res.side("x")`` of a paired run).
    Every candidate × baseline pair of a group is also saved as a figure named
    ``"<group>: <candidate> vs <baseline>"`` (value = baseline median / candidate
    median per item, ``"paired": false``, the whole session's load), so the older
    benches stay checkable; a figure recorded under the same name below wins.

``figures`` (fixture) — the guarded figures, what ``make bench-check`` compares
    ``figures.speedup(name, res, candidate, baseline, **extra)``
        ``res`` from ``_paired.paired(...)``: value = median(baseline) /
        median(candidate); min/median/max = the per-round paired ratios.
    ``figures.slowdown(name, res, candidate, baseline, **extra)``
        value = median(candidate) / median(baseline) (targets written ``max``).
    ``figures.values(name, samples, unit, load=None, **extra)``
        An absolute figure measured in several rounds (payments/s, p99 ms, bytes per
        SKU): value = median of ``samples``, with min/max and rounds.
    ``figures.add(name, value, unit, *, rounds=None, min=None, median=None, max=None,
    load=None, paired=False, **extra)``
        Anything else (one number, your own statistics).
    ``load`` is a ``_paired.Load`` (or its ``as_dict()``); ``with LoadProbe(pids=[…])
    as probe:`` around a measurement gives one (``probe.load``), counting the pids
    you started as yours. Without it, the figure gets the session's load.
    Figures are kept only when benchmarks are enabled (``figures.enabled``), like
    ``record``: a CI run on small data produces no figures.

Names are the contract with ``bench/targets.toml``: a guarded figure must be recorded
under exactly the name (or a name matching the glob) written there, in its unit, e.g.
``figures.values("pay.charge durable, 50 in flight: payments/s", rates, "/s",
load=probe.load)``; ``figures.slowdown("scan p50, realistic mix: scan vs echo", res,
"scan", "echo")`` (each side one round trip a call: its median is the p50; for other
percentiles build the figure with ``figures.add`` from paired blocks); and
``figures.speedup("lookup 1M SKUs batch: lanecore compiled vs list comprehension",
res, "compiled", "listcomp")``. The JSON that ``LANECORE_BENCH_JSON`` names has
``ratios`` (the table), ``figures`` (guarded or not), ``load`` (the session's),
``benchmarks_enabled`` and ``notes``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from _paired import Load, LoadProbe, Paired  # bench/ is on sys.path (pyproject)


@dataclass
class Figure:
    group: str
    name: str
    role: str            # "baseline" or "candidate"
    items: int           # items processed per round
    median_s: float
    min_s: float
    rounds: int
    target: float | None = None   # required speed-up over the group's baseline
    extra: dict = field(default_factory=dict)

    @property
    def per_item_ns(self) -> float:
        return self.median_s / self.items * 1e9

    @property
    def per_item_min_ns(self) -> float:
        return self.min_s / self.items * 1e9


FIGURES: list[Figure] = []
NOTES: list[str] = []
GUARDED: dict[str, dict] = {}           # name -> figure (see the module docstring)
SESSION = LoadProbe().__enter__()       # the whole run's load, closed at the end


def _load_dict(load) -> dict | None:
    if load is None:
        return None
    return load.as_dict() if isinstance(load, Load) else dict(load)


class Figures:
    """The ``figures`` fixture (see the module docstring)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def add(self, name: str, value: float, unit: str, *, rounds: int | None = None,
            min: float | None = None, median: float | None = None,
            max: float | None = None, load=None, paired: bool = False, **extra) -> dict:
        fig = {"name": name, "value": float(value), "unit": unit, "rounds": rounds,
               "min": min, "median": median, "max": max, "paired": paired,
               "load": _load_dict(load), **extra}
        if self.enabled:
            GUARDED[name] = fig
        return fig

    def _pair(self, name, res: Paired, num: str, den: str, unit: str, **extra) -> dict:
        lo, med, hi = res.paired_ratio(num, den)
        sides = {s.name: {"min_s": s.min, "median_s": s.median, "max_s": s.max}
                 for s in res.sides.values()}
        return self.add(name, res.ratio(num, den), unit, rounds=res.rounds, min=lo,
                        median=med, max=hi, load=res.load, paired=True, sides=sides,
                        **extra)

    def speedup(self, name: str, res: Paired, candidate: str, baseline: str,
                **extra) -> dict:
        return self._pair(name, res, baseline, candidate, "x", **extra)

    def slowdown(self, name: str, res: Paired, candidate: str, baseline: str,
                 **extra) -> dict:
        return self._pair(name, res, candidate, baseline, "x time", **extra)

    def values(self, name: str, samples, unit: str, load=None, **extra) -> dict:
        xs = [float(x) for x in samples]
        return self.add(name, statistics.median(xs), unit, rounds=len(xs), min=min(xs),
                        median=statistics.median(xs), max=max(xs), load=load, **extra)


@pytest.fixture
def figures(request) -> Figures:
    return Figures(enabled=not request.config.getoption("benchmark_disable"))


@dataclass(frozen=True)
class Sizes:
    scans: int
    catalogues: tuple[int, ...]
    queries: int
    real: bool


@pytest.fixture(scope="session")
def sizes(request) -> Sizes:
    """The issue's sizes for real runs; small ones when benchmarks are disabled (CI)."""
    if request.config.getoption("benchmark_disable"):
        return Sizes(scans=3_000, catalogues=(5_000, 50_000), queries=5_000, real=False)
    return Sizes(scans=100_000, catalogues=(50_000, 1_000_000), queries=100_000, real=True)


@pytest.fixture
def record(request):
    """record(benchmark, group, name, role, items, target=None, **extra)"""
    def _record(benchmark, group, name, role, items, target=None, **extra):
        stats = getattr(benchmark, "stats", None)
        if stats is None:          # --benchmark-disable: nothing was timed
            return
        s = stats.stats
        FIGURES.append(Figure(group, name, role, items, s.median, s.min, s.rounds,
                              target, extra))
    return _record


@pytest.fixture
def note():
    return NOTES.append


def _ratios() -> list[dict]:
    rows = []
    groups: dict[str, list[Figure]] = {}
    for f in FIGURES:
        groups.setdefault(f.group, []).append(f)
    for group, figs in groups.items():
        base = [f for f in figs if f.role == "baseline"]
        for f in figs:
            row = {"group": group, "name": f.name, "role": f.role, "items": f.items,
                   "rounds": f.rounds, "per_item_ns_median": round(f.per_item_ns, 2),
                   "per_item_ns_min": round(f.per_item_min_ns, 2), **f.extra}
            if f.role == "candidate":
                for b in base:
                    ratio = b.per_item_ns / f.per_item_ns
                    row[f"x_vs_{b.name}"] = round(ratio, 1)
                    row[f"x_vs_{b.name}_min"] = round(b.per_item_min_ns / f.per_item_min_ns, 1)
                if f.target is not None and base:
                    row["target"] = f.target
                    row["meets_target"] = all(
                        b.per_item_ns / f.per_item_ns >= f.target for b in base
                        if b.extra.get("target_baseline", True))
            rows.append(row)
    return rows


def _figures() -> list[dict]:
    """The guarded figures, with one per classic candidate × baseline pair unless a
    figure of that name was recorded directly."""
    out = dict(GUARDED)
    groups: dict[str, list[Figure]] = {}
    for f in FIGURES:
        groups.setdefault(f.group, []).append(f)
    for group, figs in groups.items():
        for c in (f for f in figs if f.role == "candidate"):
            for b in (f for f in figs if f.role == "baseline"):
                name = f"{group}: {c.name} vs {b.name}"
                if name in out:
                    continue
                out[name] = {"name": name, "value": b.per_item_ns / c.per_item_ns,
                             "unit": "x", "rounds": min(b.rounds, c.rounds),
                             "ratio_of_mins": b.per_item_min_ns / c.per_item_min_ns,
                             "paired": False, "load": None, "source": "record"}
    return list(out.values())


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not FIGURES and not NOTES and not GUARDED:
        return
    tr = terminalreporter
    tr.section("lanecore benchmark ratios (same run, same data)")
    for row in _ratios():
        speed = "  ".join(f"{k[5:]} {v:>8.1f}x" for k, v in row.items()
                          if k.startswith("x_vs_") and not k.endswith("_min"))
        target = ""
        if "target" in row:
            target = f"  target >= {row['target']}x: {'met' if row['meets_target'] else 'NOT MET'}"
        extra = "  ".join(f"{k}={v}" for k, v in row.items() if k in ("bytes_per_sku", "seconds"))
        tr.write_line(f"{row['group']:<34} {row['name']:<26} {row['per_item_ns_median']:>12,.1f} "
                      f"ns/item  {speed}{target}  {extra}")
    for line in NOTES:
        tr.write_line(line)
    if GUARDED:
        tr.section("lanecore figures (paired where a ratio; make bench-check guards them)")
        for f in GUARDED.values():
            spread = ""
            if f.get("min") is not None:
                spread = f"  [{f['min']:,.3g} / {f['median']:,.3g} / {f['max']:,.3g}]"
            load = f.get("load") or {}
            tr.write_line(f"{f['name']:<64} {f['value']:>12,.3f} {f['unit']:<8}"
                          f"{spread}  rounds {f.get('rounds')}  others "
                          f"{load.get('others_cores', '?')} cores, load avg "
                          f"{load.get('loadavg_1m', '?')}")


def pytest_sessionfinish(session, exitstatus):
    if not FIGURES and not NOTES and not GUARDED:
        return
    out = os.environ.get("LANECORE_BENCH_JSON")
    if not out:
        return
    SESSION.__exit__(None, None, None)
    figs = _figures()
    for f in figs:
        if f["load"] is None:
            f["load"] = _load_dict(SESSION.load)
            f["load_window"] = "session"
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"python": platform.python_version(), "machine": platform.machine(),
                    "cpus": os.cpu_count()},
        "benchmarks_enabled": not session.config.getoption("benchmark_disable"),
        "load": _load_dict(SESSION.load),
        "ratios": _ratios(),
        "figures": figs,
        "notes": NOTES,
    }
    path.write_text(json.dumps(doc, indent=2))
