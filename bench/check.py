"""Compare a benchmark run's figures with the committed targets: ``make bench-check``.

    python bench/check.py RUN.json [--targets bench/targets.toml]

``RUN.json`` is what ``make bench`` writes (``LANECORE_BENCH_JSON``; its ``figures``
list, see ``bench/conftest.py``). ``bench/targets.toml`` lists the guarded figures::

    [[target]]
    figure = "SOS cascade: 3 sections: lanecore sos_cascade vs scipy.signal.sosfilt"
    min = 1.5            # or max = …: the direction (value ≥ min, value ≤ max)
    unit = "x"
    issue = 19
    why = "…"

The rules:

* Every target must be met by a figure of the run: a target whose ``figure`` matches
  no figure is MISSING, and a missing figure fails the check like a miss does (a bench
  that stopped recording, or was skipped, cannot pass silently).
* ``figure`` may be a glob (``*``, ``?``): then at least one figure must match, and
  every one that matches must meet the target (e.g. each analytics view).
* A figure passes when its ``value`` meets the target and so does its ``median``
  where it has one (for a paired ratio: the median of the per-round ratios; the
  value is the ratio of the two sides' medians) — both, so neither statistic can
  flatter the other.
* The units must agree (a target of "x" is not met by a figure in "ms").
* A run made with ``--benchmark-disable`` (small data) is refused: it has no figures.
* Figures the targets do not name are listed as "unguarded", for information.

Prints one row per target: figure, measured (value; min/median/max of the rounds),
target, pass / MISS / MISSING, rounds and the load measured next to it (other
processes' CPU in cores over that figure's window, and the 1-minute load average).
Exit status: 0 every target met; 1 a miss or a missing figure; 2 the files could not
be read.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_TARGETS = HERE / "targets.toml"
PASS, MISS, MISSING = "pass", "MISS", "MISSING"


@dataclass
class Row:
    target: dict
    figure: dict | None
    status: str
    why: str = ""


def load_targets(path: Path) -> list[dict]:
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    targets = doc.get("target", [])
    for t in targets:
        if "figure" not in t or ("min" in t) == ("max" in t):
            raise ValueError(f"{path}: each [[target]] needs a figure and exactly one of "
                             f"min / max: {t}")
    return targets


def _meets(target: dict, x: float) -> bool:
    return x >= target["min"] if "min" in target else x <= target["max"]


def judge(target: dict, fig: dict) -> tuple[str, str]:
    unit = target.get("unit")
    if unit is not None and fig.get("unit") != unit:
        return MISS, f"unit {fig.get('unit')!r}, target in {unit!r}"
    value = fig.get("value")
    if value is None or value != value:        # None or NaN
        return MISS, "no value"
    if not _meets(target, value):
        return MISS, "value"
    median = fig.get("median")
    if median is not None and not _meets(target, median):
        return MISS, "median of the rounds"
    return PASS, ""


def check(run: dict, targets: list[dict]) -> tuple[list[Row], list[dict]]:
    """Rows (one per target × matching figure, or one MISSING row) and the figures no
    target names."""
    figs = run.get("figures", [])
    rows: list[Row] = []
    used: set[str] = set()
    for t in targets:
        pattern = t["figure"]
        matched = [f for f in figs if fnmatch.fnmatchcase(f["name"], pattern)]
        if not matched:
            rows.append(Row(t, None, MISSING, "not in this run"))
        for f in matched:
            used.add(f["name"])
            status, why = judge(t, f)
            rows.append(Row(t, f, status, why))
    unguarded = [f for f in figs if f["name"] not in used]
    return rows, unguarded


def _num(x) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def _load(fig: dict | None) -> str:
    load = (fig or {}).get("load") or {}
    if not load:
        return ""
    la = load.get("loadavg_1m")
    la = "/".join(f"{v:.2f}" for v in la) if isinstance(la, list) else "?"
    where = " (session)" if (fig or {}).get("load_window") == "session" else ""
    return f"others {load.get('others_cores', float('nan')):.2f} cores, load {la}{where}"


def render(rows: list[Row], unguarded: list[dict], run: dict) -> str:
    lines = []
    head = f"{'figure':<70} {'measured':>12} {'min/median/max':>24} {'target':>12}  " \
           f"{'result':<8} {'rounds':>6}  load"
    lines.append(head)
    lines.append("-" * len(head))
    for r in rows:
        t, f = r.target, r.figure
        tgt = (f"≥ {_num(t['min'])}" if "min" in t else f"≤ {_num(t['max'])}") + \
              f" {t.get('unit', '')}".rstrip()
        name = f["name"] if f else t["figure"]
        if f:
            spread = "/".join(_num(f.get(k)) for k in ("min", "median", "max")) \
                if f.get("median") is not None else ""
            measured = f"{_num(f.get('value'))} {f.get('unit', '')}".rstrip()
            ratio = str(f.get("unit", "")).startswith("x")
            flag = "  (unpaired ratio)" if ratio and not f.get("paired") else ""
        else:
            spread, measured, flag = "", "-", ""
        why = f"  {r.why}" if r.why and r.status != PASS else ""
        lines.append(f"{name[:70]:<70} {measured:>12} {spread:>24} {tgt:>12}  {r.status:<8} "
                     f"{(f or {}).get('rounds') or '-':>6}  {_load(f)}{flag}"
                     f"  [issue {t.get('issue', '?')}]{why}")
    for f in unguarded:
        lines.append(f"{f['name'][:70]:<70} {_num(f.get('value')) + ' ' + f.get('unit', ''):>12}"
                     f" {'':>24} {'-':>12}  unguarded")
    n_pass = sum(r.status == PASS for r in rows)
    n_miss = sum(r.status == MISS for r in rows)
    n_missing = sum(r.status == MISSING for r in rows)
    load = run.get("load") or {}
    lines.append(f"{n_pass} met, {n_miss} missed, {n_missing} missing; the run's machine "
                 f"load: {_load({'load': load})}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="the run's JSON (LANECORE_BENCH_JSON)")
    ap.add_argument("--targets", type=Path, default=DEFAULT_TARGETS)
    args = ap.parse_args(argv)
    try:
        run = json.loads(args.run.read_text(encoding="utf-8"))
        targets = load_targets(args.targets)
    except (OSError, ValueError) as e:       # JSONDecodeError and TOMLDecodeError too
        print(f"bench-check: {e}", file=sys.stderr)
        return 2
    if run.get("benchmarks_enabled") is False:
        print(f"bench-check: {args.run} is a --benchmark-disable run (small data, no "
              f"figures); run `make bench-check`", file=sys.stderr)
        return 2
    rows, unguarded = check(run, targets)
    print(render(rows, unguarded, run))
    return 0 if all(r.status == PASS for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
