"""Benchmark harness: every figure is a ratio against a baseline measured in the same
run on the same data.

Run for real with ``make bench`` (prints the ratio table, saves JSON under
``bench/results/``). In CI the suites run with ``--benchmark-disable``: each timed
function runs once on smaller data, and the correctness checks still run.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest


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


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not FIGURES and not NOTES:
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


def pytest_sessionfinish(session, exitstatus):
    if not FIGURES and not NOTES:
        return
    out = os.environ.get("LANECORE_BENCH_JSON")
    if not out:
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"python": platform.python_version(), "machine": platform.machine(),
                    "cpus": os.cpu_count()},
        "ratios": _ratios(),
        "notes": NOTES,
    }
    path.write_text(json.dumps(doc, indent=2))
