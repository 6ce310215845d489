"""The console's analytics (issue 15): each view read from its trigger-kept rollups
against the same aggregate as a plain SQLite ``GROUP BY`` over the raw tables, on a
generated store-year (≥ 5 million order lines), in the same run: one loop, the two
sides interleaved (their order alternating), the rows compared every round.

Target: every view ≥ 10× faster than its raw ``GROUP BY``. With
``--benchmark-disable`` (CI) the store is small (50,000 lines), each side runs once,
and the equality of the rows is the check. The real store-year is cached under
``bench/.cache/`` (git-ignored); delete it to make a new one.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lanecore.gateway.console.analytics import VIEWS, Analytics

import _store_year as Y  # bench/ is on sys.path (pyproject: pythonpath)

#: Pure Python and SQLite, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

TARGET = 10
REAL_LINES = 5_000_000
CI_LINES = 50_000
CACHE = Path(__file__).parent / ".cache"


@pytest.fixture(scope="module")
def year(sizes, tmp_path_factory):
    if sizes.real:
        # -v3: audits and alarm actions with findings (the "caught" view)
        d = CACHE / f"store-year-{REAL_LINES}-v3"
        if not (d / "READY").exists():
            if d.exists():
                import shutil
                shutil.rmtree(d)
            info = Y.make_store_year(d, lines=REAL_LINES)
            (d / "READY").write_text(str(info["lines"]))
        lines = int((d / "READY").read_text())
        paths = {"store": d / "store.db", "ledger": d / "payments.db",
                 "coupons": d / "coupons.db"}
    else:
        info = Y.make_store_year(tmp_path_factory.mktemp("analytics") / "year",
                                 lines=CI_LINES)
        lines = info["lines"]
        paths = {k: info[k] for k in ("store", "ledger", "coupons")}
    assert lines >= (REAL_LINES if sizes.real else CI_LINES)
    an = Analytics(paths["store"], paths["ledger"], paths["coupons"])
    raw = {k: sqlite3.connect(p) for k, p in paths.items()}
    yield SimpleNamespace(an=an, raw=raw, lines=lines)
    an.close()
    for c in raw.values():
        c.close()


def _figure(times: list[float]):
    """What the ratio table's ``record`` reads off a pytest-benchmark fixture."""
    return SimpleNamespace(stats=SimpleNamespace(stats=SimpleNamespace(
        median=statistics.median(times), min=min(times), rounds=len(times))))


@pytest.mark.parametrize("name", list(VIEWS))
def test_rollup_vs_raw_group_by(name, year, sizes, record, note):
    whole = (None, None)
    spring = (dt.date(2025, 3, 14), dt.date(2025, 6, 2))
    # correctness first, on two ranges: the rows a page shows are the raw truth
    for rng in (whole, spring):
        got = year.an.rows(name, *rng)
        want = Y.RAW[name](year.raw, rng)
        assert got == want, (name, rng)
        assert got, f"{name}: no rows: the generated store should fill every view"
    if not sizes.real:
        return
    for label, rng in (("whole year", whole), ("14 Mar-2 Jun", spring)):
        _timed(name, label, rng, year, record, note)


def _timed(name, label, rng, year, record, note):
    """Both sides in one loop, alternating which goes first; rows compared each round."""
    t_raw, t_roll = [], []
    spent, i = 0.0, 0
    while i < 3 or (i < 25 and spent < 8.0):
        sides = [("raw", lambda: Y.RAW[name](year.raw, rng)),
                 ("rollup", lambda: year.an.rows(name, *rng))]
        if i % 2:
            sides.reverse()
        out = {}
        for side, fn in sides:
            t0 = time.perf_counter()
            out[side] = fn()
            dt_s = time.perf_counter() - t0
            (t_raw if side == "raw" else t_roll).append(dt_s)
            spent += dt_s
        assert out["raw"] == out["rollup"]
        i += 1
    group = f"analytics {name} ({label})"
    record(_figure(t_raw), group, "raw GROUP BY", "baseline", 1)
    record(_figure(t_roll), group, "rollup", "candidate", 1, target=TARGET)
    ratio = statistics.median(t_raw) / statistics.median(t_roll)
    note(f"analytics {name:<24} {label:<13} raw {statistics.median(t_raw) * 1e3:9.2f} ms  "
         f"rollup {statistics.median(t_roll) * 1e3:8.3f} ms  {ratio:8.1f}x  ({len(t_raw)} "
         f"interleaved rounds, {year.lines:,} lines; target >= {TARGET}x: "
         f"{'met' if ratio >= TARGET else 'NOT MET'})")
