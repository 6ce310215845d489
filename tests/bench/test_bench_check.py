"""``bench/check.py`` (``make bench-check``): a run's figures against the targets —
pass, miss, missing, globs, both statistics of a paired figure, and the exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import check  # bench/ is on sys.path (pyproject: pythonpath)

pytestmark = pytest.mark.kernel_free

TARGETS = """
[[target]]
figure = "cascade vs scipy"
min = 1.5
unit = "x"
issue = 19

[[target]]
figure = "scan vs echo"
max = 1.15
unit = "x time"
issue = 19

[[target]]
figure = "analytics * : rollup vs raw"
min = 10
unit = "x"
issue = 15

[[target]]
figure = "payments/s"
min = 1000
unit = "/s"
issue = 19
"""


def fig(name, value, unit="x", median=None, **kw):
    return {"name": name, "value": value, "unit": unit, "median": median,
            "min": None, "max": None, "rounds": 10, "paired": median is not None,
            "load": {"loadavg_1m": [0.5, 0.6], "others_cores": 0.1}, **kw}


@pytest.fixture
def targets(tmp_path):
    p = tmp_path / "targets.toml"
    p.write_text(TARGETS)
    return p


def statuses(rows):
    return [(r.target["figure"], (r.figure or {}).get("name"), r.status) for r in rows]


def test_every_target_met_passes(targets):
    run = {"figures": [fig("cascade vs scipy", 1.9, median=1.8),
                       fig("scan vs echo", 1.1, "x time", median=1.12),
                       fig("analytics a : rollup vs raw", 40),
                       fig("analytics b : rollup vs raw", 12),
                       fig("payments/s", 1200, "/s"),
                       fig("something else", 3)]}
    rows, unguarded = check.check(run, check.load_targets(targets))
    assert {s for _, _, s in statuses(rows)} == {check.PASS}
    assert len(rows) == 5                       # the glob matched two figures
    assert [f["name"] for f in unguarded] == ["something else"]


def test_miss_missing_and_the_median_of_the_rounds(targets):
    run = {"figures": [fig("cascade vs scipy", 1.6, median=1.3),   # value ok, rounds not
                       fig("scan vs echo", 1.2, "x time"),          # over the max
                       fig("analytics a : rollup vs raw", 40),
                       fig("analytics b : rollup vs raw", 9)]}      # one of the glob
    rows, _ = check.check(run, check.load_targets(targets))
    got = statuses(rows)
    assert ("cascade vs scipy", "cascade vs scipy", check.MISS) in got
    assert ("scan vs echo", "scan vs echo", check.MISS) in got
    assert ("analytics * : rollup vs raw", "analytics a : rollup vs raw", check.PASS) in got
    assert ("analytics * : rollup vs raw", "analytics b : rollup vs raw", check.MISS) in got
    assert ("payments/s", None, check.MISSING) in got
    assert [r.why for r in rows if r.target["figure"] == "cascade vs scipy"] == [
        "median of the rounds"]


def test_units_must_agree_and_nan_misses(targets):
    run = {"figures": [fig("payments/s", 5000, "x"), fig("cascade vs scipy", float("nan"))]}
    rows, _ = check.check(run, check.load_targets(targets))
    by = {r.target["figure"]: r for r in rows}
    assert by["payments/s"].status == check.MISS and "unit" in by["payments/s"].why
    assert by["cascade vs scipy"].status == check.MISS


def test_a_target_needs_exactly_one_direction(tmp_path):
    p = tmp_path / "t.toml"
    p.write_text('[[target]]\nfigure = "a"\nmin = 1\nmax = 2\n')
    with pytest.raises(ValueError):
        check.load_targets(p)


def run_cli(*args):
    return subprocess.run([sys.executable, check.__file__, *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def test_exit_codes_and_the_table(tmp_path, targets):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"benchmarks_enabled": True, "figures": [
        fig("cascade vs scipy", 1.9, median=1.8), fig("scan vs echo", 1.0, "x time"),
        fig("analytics a : rollup vs raw", 40), fig("payments/s", 1500, "/s")]}))
    out = run_cli(good, "--targets", targets)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 met, 0 missed, 0 missing" in out.stdout
    assert "others 0.10 cores, load 0.50/0.60" in out.stdout

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"figures": [fig("cascade vs scipy", 1.2)]}))
    out = run_cli(bad, "--targets", targets)
    assert out.returncode == 1
    assert "MISS" in out.stdout and "MISSING" in out.stdout
    assert "0 met, 1 missed, 3 missing" in out.stdout

    ci = tmp_path / "ci.json"
    ci.write_text(json.dumps({"benchmarks_enabled": False, "figures": []}))
    assert run_cli(ci, "--targets", targets).returncode == 2
    assert run_cli(tmp_path / "absent.json", "--targets", targets).returncode == 2


def test_the_committed_targets_parse():
    targets = check.load_targets(check.DEFAULT_TARGETS)
    assert any(t["figure"].startswith("SOS cascade") and t["min"] == 1.5 for t in targets)
    assert all("issue" in t and "unit" in t for t in targets)
