"""The tolerance kernels: hand-checked numbers, the unit-subset search against brute
force, the catalogue scan against brute force, and the compiled kernels against their
pure-Python twin (NUMBA_DISABLE_JIT=1, in a subprocess: one process cannot switch)."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, strategies as st

from lanecore.ext import tolerance as T

LOG_ODDS = math.log(0.01 / 0.99)
R51 = (np.array([500.0, 2000.0, 10000.0]), np.array([1.0, 1.5, 2.0]))


def logpdf(x, var):
    return -0.5 * (x * x / var + math.log(2 * math.pi * var))


def arr(*xs):
    return np.array(xs, dtype=np.float64)


# --------------------------------------------------------------------------------------
# Hand-checked numbers
# --------------------------------------------------------------------------------------

def test_order_stats():
    e, v = T.order_stats(arr(100, 250, 400), arr(2, 5, 8), arr(1, 2, 1))
    assert e == 100 + 2 * 250 + 400
    assert v == 4 + 2 * 25 + 64
    assert T.order_stats(arr(), arr(), arr()) == (0.0, 0.0)


@pytest.mark.parametrize("load, want", [(-3.0, 5.0), (0.0, 5.0), (2500.0, 5.0),
                                        (2500.001, 7.5), (10000.0, 7.5), (10000.5, 10.0),
                                        (50000.0, 10.0)])
def test_mpe_rows_include_their_upper_limit(load, want):
    assert T.mpe_at(load, 5.0, *R51) == want


def test_mpe_beyond_the_table_is_nan():
    assert math.isnan(T.mpe_at(50000.01, 5.0, *R51))
    assert math.isnan(T.mpe_at(math.nan, 5.0, *R51))


def test_verdict_batch_by_hand():
    # exit 0: 600 g expected, var 4 + 2·25 + 6.25; exit 1: one 400 g line plus 30 g
    # tare (sd 2); exit 2: no weighed lines at all; exit 3: beyond capacity;
    # exit 4: a NaN measurement
    mu, sd, q = arr(100, 250, 400, 30000), arr(2, 5, 8, 10), arr(1, 2, 1, 2)
    offsets = [0, 2, 3, 3, 4, 4]
    out = T.verdicts(mu, sd, q, offsets, arr(350, 470, 4, 60000, math.nan),
                     tare_g=arr(0, 30, 0, 0, 0), tare_sd_g=arr(0, 2, 0, 0, 0),
                     scale_sd_g=2.5, k=3.29, floor_g=10.0, e_g=5.0, upper_e=R51[0],
                     mpe_e=R51[1])
    v0 = 4 + 50 + 6.25
    assert out["expected_g"][0] == 600 and out["var_g2"][0] == v0
    assert out["mpe_g"][0] == 5.0
    assert out["band_g"][0] == pytest.approx(3.29 * math.sqrt(v0) + 5.0)
    assert out["z"][0] == pytest.approx(-250 / math.sqrt(v0))
    assert out["code"][0] == T.VERDICT_SHORT
    v1 = 64 + 4 + 6.25
    assert out["expected_g"][1] == 430 and out["var_g2"][1] == v1
    assert out["code"][1] == T.VERDICT_OVER          # +40 g against a band of 33.3 g
    assert out["band_g"][1] == pytest.approx(3.29 * math.sqrt(v1) + 5.0)
    assert out["expected_g"][2] == 0
    assert out["band_g"][2] == pytest.approx(3.29 * 2.5 + 5.0)
    assert out["code"][2] == T.VERDICT_OK
    assert out["code"][3] == T.VERDICT_OVER_CAPACITY
    assert out["code"][4] == T.VERDICT_INVALID


def test_verdict_band_edges():
    # measured exactly on the band is ok; a hair beyond is not
    kw = dict(scale_sd_g=3.0, k=2.0, floor_g=0.0, e_g=5.0, upper_e=R51[0], mpe_e=R51[1])
    band = 2.0 * math.sqrt(16 + 9) + 5.0   # 15 g
    for m, want in ((500 + band, T.VERDICT_OK), (500 - band, T.VERDICT_OK),
                    (500 + band + 1e-9, T.VERDICT_OVER),
                    (500 - band - 1e-9, T.VERDICT_SHORT)):
        out = T.verdicts(arr(500), arr(4), arr(1), [0, 1], arr(m), **kw)
        assert out["band_g"][0] == band and out["code"][0] == want


def test_verdicts_checks_its_shapes():
    kw = dict(scale_sd_g=2.5, k=3.29, floor_g=10.0, e_g=5.0, upper_e=R51[0], mpe_e=R51[1])
    with pytest.raises(ValueError):
        T.verdicts(arr(1), arr(1), arr(1), [0, 1], arr(1, 2), **kw)
    with pytest.raises(ValueError):
        T.verdicts(arr(1), arr(1), arr(1), [0, 2], arr(1), **kw)
    with pytest.raises(ValueError):
        T.verdicts(arr(1, 2), arr(1), arr(1, 1), [0, 2], arr(1), **kw)


def test_explain_missing_by_hand():
    mu, sd, q = arr(100, 250, 400), arr(2, 5, 8), arr(1, 2, 1)
    var = 4 + 50 + 64 + 6.25
    counts, scores = T.explain_missing(mu, sd, q, 1000 - 250, 1000, var)
    assert counts[0].tolist() == [0, 1, 0]
    # one of two units of line 1: 2·p/(1-p), measured exactly as predicted
    assert scores[0] == pytest.approx(math.log(2) + LOG_ODDS + logpdf(0.0, var - 25))
    assert list(scores) == sorted(scores, reverse=True)


def test_two_different_lines_missing():
    # sharp weights, so the likelihood decides among combinations
    mu, sd, q = arr(100, 250, 400, 1200), arr(0.5, 0.5, 0.5, 0.5), arr(1, 2, 1, 1)
    expected = 100 + 500 + 400 + 1200
    var = 5 * 0.25 + 0.25
    # 350 g: line 0 and one unit of line 1; no single line weighs that
    counts, scores = T.explain_missing(mu, sd, q, expected - 350, expected, var)
    assert counts[0].tolist() == [1, 1, 0, 0]
    assert scores[0] == pytest.approx(math.log(2) + 2 * LOG_ODDS + logpdf(0.0, var - 0.5))
    # 600 g: both units of line 1 and line 0
    counts, _ = T.explain_missing(mu, sd, q, expected - 600, expected, var)
    assert counts[0].tolist() == [1, 2, 0, 0]
    # 1300 g: the lightest and the heaviest line
    counts, _ = T.explain_missing(mu, sd, q, expected - 1300, expected, var)
    assert counts[0].tolist() == [1, 0, 0, 1]


def test_quantity_is_a_prior_factor():
    # two lines of the same weight: the one with three units is three times likelier
    counts, scores = T.explain_missing(arr(300, 300), arr(6, 6), arr(1, 3), 600 - 300 + 600,
                                       1200, 4 * 36 + 6.25)
    assert counts[0].tolist() == [0, 1] and counts[1].tolist() == [1, 0]
    assert scores[0] - scores[1] == pytest.approx(math.log(3))


def test_at_most_qty_units_from_a_line():
    counts, _ = T.explain_missing(arr(300), arr(3), arr(1), 300 - 900, 300, 9 + 6.25)
    assert counts.tolist() == []   # 900 g cannot be lost from one 300 g unit
    counts, _ = T.explain_missing(arr(300), arr(3), arr(3), 900 - 900, 900, 27 + 6.25)
    assert counts[0].tolist() == [3]


def test_max_units_and_top_k():
    mu, sd, q = arr(100, 200), arr(1, 1), arr(5, 5)
    counts, scores = T.explain_missing(mu, sd, q, 1500 - 400, 1500, 10 + 6.25, top_k=2)
    assert len(scores) == 2 and counts[0].tolist() == [0, 2]   # fewest units first
    counts, _ = T.explain_missing(mu, sd, q, 1500 - 400, 1500, 10 + 6.25, max_units=1)
    assert all(c.sum() == 1 for c in counts)
    with pytest.raises(ValueError):
        T.explain_missing(mu, sd, q, 0, 1500, 1.0, max_units=0)
    with pytest.raises(ValueError):
        T.explain_missing(mu, sd, q, 0, 1500, 1.0, top_k=0)


def test_empty_orders_explain_nothing():
    counts, scores = T.explain_missing(arr(), arr(), arr(), 0.0, 0.0, 6.25)
    assert counts.shape == (0, 0) and scores.shape == (0,)


def test_explain_extra_lines_by_hand():
    mu, sd = arr(100, 250), arr(2, 5)
    var = 4 + 25 + 6.25
    counts, scores, pos, item_scores = T.explain_extra(mu, sd, 350 + 500, 350, var)
    assert counts[0].tolist() == [0, 2]          # two extra 250 g units
    assert scores[0] == pytest.approx(2 * math.log(0.01) + logpdf(0.0, var + 50))
    assert pos.size == 0 and item_scores.size == 0


def _catalog(weights, sds, window=T.WINDOW_SIGMAS):
    order = np.argsort(weights, kind="stable")
    w = np.ascontiguousarray(np.asarray(weights, dtype=np.float64)[order])
    s = np.ascontiguousarray(np.asarray(sds, dtype=np.float64)[order])
    below, above = T.catalog_envelopes(w, s, window)
    return (w, s, below, above), order


def test_unscanned_item_by_hand():
    cat, _ = _catalog([50, 180, 200, 230, 900], [1, 4, 3, 5, 20])
    var = 30.0
    counts, scores, pos, item_scores = T.explain_extra(
        arr(400), arr(5), 400 + 201, 400, var, catalog=cat, p_unscanned=0.01)
    assert pos[0] == 2                            # the 200 g item
    assert item_scores[0] == pytest.approx(math.log(0.01 / 5) + logpdf(1.0, var + 9))
    # 180 g is 21 g away: inside 5·sqrt(30 + 16); 230 g (29 g) too; 50 g and 900 g not
    assert sorted(pos.tolist()) == [1, 2, 3]
    # an item already on the order is skipped
    _c, _s, pos, _i = T.explain_extra(arr(400), arr(5), 601, 400, var, catalog=cat,
                                      skip=[2])
    assert 2 not in pos.tolist()


def test_catalog_envelopes():
    w, s = arr(10, 20, 30), arr(5, 0, 1)
    below, above = T.catalog_envelopes(w, s, 2.0)
    assert below.tolist() == [20, 20, 32]
    assert above.tolist() == [0, 20, 28]


# --------------------------------------------------------------------------------------
# Against brute force
# --------------------------------------------------------------------------------------

def brute_missing(mu, sd, qty, deficit, var_total, max_units=3, p=0.01):
    """Every multiset of missing units: [(score, M, counts)]."""
    n = len(mu)
    out = []
    for k in range(1, max_units + 1):
        for combo in itertools.combinations_with_replacement(range(n), k):
            c = [combo.count(i) for i in range(n)]
            if any(c[i] > qty[i] for i in range(n)):
                continue
            m = sum(c[i] * mu[i] for i in range(n))
            v = var_total - sum(c[i] * sd[i] ** 2 for i in range(n))
            score = k * math.log(p / (1 - p)) + sum(
                math.log(math.comb(int(qty[i]), c[i])) for i in range(n))
            out.append((score + logpdf(m - deficit, v), m, c))
    return out


orders = st.integers(1, 6).flatmap(lambda n: st.tuples(
    st.lists(st.floats(20, 2000), min_size=n, max_size=n),
    st.lists(st.floats(0.01, 0.04), min_size=n, max_size=n),
    st.lists(st.integers(1, 3), min_size=n, max_size=n),
    st.lists(st.integers(0, 3), min_size=n, max_size=n),
    st.floats(-3, 3)))


@given(orders)
def test_pruning_keeps_the_best_hypotheses(case):
    mus, rel, qty, missing, noise = case
    mu = arr(*mus)
    sd = mu * arr(*rel) + 0.5
    q = arr(*qty)
    expected = float((q * mu).sum())
    var = float((q * sd * sd).sum()) + 6.25
    gone = [min(m, int(k)) for m, k in zip(missing, qty)]
    measured = expected - sum(g * m for g, m in zip(gone, mus)) + noise * math.sqrt(var)
    deficit = expected - measured
    counts, scores = T.explain_missing(mu, sd, q, measured, expected, var, top_k=5)
    everything = brute_missing(mus, sd.tolist(), qty, deficit, var)
    sigma = math.sqrt(var)
    # what the kernel promises: the top 5 of all subsets within 6 σ of the deficit
    reachable = sorted((h for h in everything if abs(h[1] - deficit) <= 6 * sigma),
                       key=lambda h: -h[0])
    window = reachable[:5]
    assert len(scores) == len(window)
    np.testing.assert_allclose(scores, [h[0] for h in window], rtol=1e-9, atol=1e-9)
    for got, score in zip(counts, scores):   # (equal weights tie: any of the tied)
        assert got.tolist() in [h[2] for h in reachable if abs(h[0] - score) <= 1e-7]
    assert len({tuple(c) for c in counts.tolist()}) == len(counts)
    best = max(everything, key=lambda h: h[0])
    if abs(best[1] - deficit) <= 6 * sigma:
        assert scores[0] == pytest.approx(best[0], rel=1e-9, abs=1e-9)
        ties = [h for h in everything if abs(h[0] - best[0]) <= 1e-9]
        assert counts[0].tolist() in [h[2] for h in ties]


catalogues = st.integers(0, 50).flatmap(lambda n: st.tuples(
    st.lists(st.floats(5, 3000), min_size=n, max_size=n),
    st.lists(st.floats(0.0, 0.1), min_size=n, max_size=n),
    st.floats(-100, 3200), st.floats(1, 10000)))


@given(catalogues)
def test_unscanned_scan_finds_every_candidate(case):
    weights, rel, excess, var = case
    sds = [w * r + 0.5 for w, r in zip(weights, rel)]
    cat, order = _catalog(weights, sds)
    w, s = cat[0], cat[1]
    _c, _s, pos, item_scores = T.explain_extra(arr(1000), arr(10), 1000 + excess, 1000,
                                               var, catalog=cat, top_k=50)
    cand = [(math.log(0.01 / max(len(weights), 1)) + logpdf(excess - w[j], var + s[j] ** 2),
             j) for j in range(len(w))
            if (excess - w[j]) ** 2 <= 25 * (var + s[j] ** 2)]
    cand.sort(key=lambda c: (-c[0], c[1]))
    assert sorted(pos.tolist()) == sorted(j for _s, j in cand)
    np.testing.assert_allclose(item_scores, [c[0] for c in cand], rtol=1e-12, atol=1e-12)
    _c, _s, pos5, scores5 = T.explain_extra(arr(1000), arr(10), 1000 + excess, 1000, var,
                                            catalog=cat, top_k=5)
    np.testing.assert_allclose(scores5, [c[0] for c in cand[:5]], rtol=1e-12, atol=1e-12)


def test_floor_band_when_the_order_weighs_little():
    out = T.verdicts(arr(20), arr(0.5), arr(1), [0, 1], arr(20), scale_sd_g=0.5, k=3.29,
                     floor_g=10.0, e_g=5.0, upper_e=R51[0], mpe_e=R51[1])
    assert out["band_g"][0] == 10.0


# --------------------------------------------------------------------------------------
# The compiled kernels and their twin
# --------------------------------------------------------------------------------------

_CASES_SCRIPT = r"""
import json, math
import numpy as np
from lanecore.ext import tolerance as T

rng = np.random.default_rng(7)
out = {"implementation": T.IMPLEMENTATION, "cases": []}
R51 = (np.array([500.0, 2000.0, 10000.0]), np.array([1.0, 1.5, 2.0]))
for case in range(40):
    n = int(rng.integers(1, 30))
    mu = np.clip(rng.lognormal(math.log(400), 1.0, n), 20, 5000)
    sd = mu * rng.uniform(0.01, 0.04, n) + 0.5
    q = rng.choice([1.0, 2.0, 3.0], n, p=[0.8, 0.15, 0.05])
    e, v = T.order_stats(mu, sd, q)
    v += 6.25
    kind = case % 3
    drop = mu[int(rng.integers(n))] if kind == 1 else 0.0
    add = -rng.lognormal(math.log(400), 1.0) if kind == 2 else 0.0
    measured = e - drop - add + rng.normal(0, math.sqrt(v))
    ver = T.verdicts(mu, sd, q, [0, n], [measured], scale_sd_g=2.5, k=3.29,
                     floor_g=10.0, e_g=5.0, upper_e=R51[0], mpe_e=R51[1])
    counts, scores = T.explain_missing(mu, sd, q, measured, e, v)
    cw = np.sort(np.clip(rng.lognormal(math.log(400), 1.0, 500), 20, 5000))
    cs = cw * rng.uniform(0.01, 0.04, 500) + 0.5
    below, above = T.catalog_envelopes(cw, cs, T.WINDOW_SIGMAS)
    xc, xs, pos, ps = T.explain_extra(mu, sd, measured, e, v,
                                      catalog=(cw, cs, below, above), skip=[3, 7])
    out["cases"].append({
        "stats": [e, v], "verdict": {k: a.tolist() for k, a in ver.items()},
        "missing": [counts.tolist(), scores.tolist()],
        "extra": [xc.tolist(), xs.tolist(), pos.tolist(), ps.tolist()],
        "mpe": T.mpe_at(float(e), 5.0, *R51), "logpdf": T.gauss_logpdf(3.0, float(v)),
    })
print(json.dumps(out))
"""


def _run_cases(disable_jit: bool) -> dict:
    env = dict(os.environ, NUMBA_DISABLE_JIT="1" if disable_jit else "0")
    done = subprocess.run([sys.executable, "-c", _CASES_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _close(a, b, path="") -> None:
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    elif isinstance(a, int) and not isinstance(a, bool):
        assert a == b, path
    else:
        assert b == pytest.approx(a, rel=1e-12, abs=1e-12), path


def test_compiled_and_twin_agree():
    """The same inputs through the compiled kernels and their pure-Python twin."""
    compiled, twin = _run_cases(False), _run_cases(True)
    assert compiled["implementation"] == "numba" and twin["implementation"] == "python"
    _close(compiled["cases"], twin["cases"])
    assert any(c["missing"][0] for c in compiled["cases"])
    assert any(c["extra"][2] for c in compiled["cases"])


@pytest.mark.skipif(T.IMPLEMENTATION != "numba", reason="NUMBA_DISABLE_JIT is set")
def test_kernels_are_compiled_at_import_and_cached():
    """The kernels this process imported are compiled (explicit signatures, so before
    any call); a second process loads them from the cache instead of compiling."""
    for k in (T.order_stats, T.verdict_batch, T.search_missing, T.search_extra_lines,
              T.search_unscanned, T.catalog_envelopes, T.mpe_at, T.gauss_logpdf):
        assert len(k.signatures) == 1, k
    script = ("from lanecore.ext import tolerance as T; "
              "print(sum(sum(k.stats.cache_hits.values()) for k in (T.order_stats, "
              "T.verdict_batch, T.search_missing, T.search_unscanned)), "
              "sum(sum(k.stats.cache_misses.values()) for k in (T.order_stats, "
              "T.verdict_batch, T.search_missing, T.search_unscanned)))")
    env = dict(os.environ, NUMBA_DISABLE_JIT="0")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    hits, misses = map(int, done.stdout.split())
    assert hits == 4 and misses == 0
