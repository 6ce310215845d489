"""Per-item conveyor mode: the assignment, the robust learned weights, merged steps,
lifted items, missing and unscanned items named, per-step and order verdicts, and
traces over the heavier-tailed truth and over the load-cell pipeline."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from lanecore.core.weigh import truth as TR
from lanecore.core.weigh.laneconfig import LaneConfig, configure_lane
from lanecore.core.weigh.peritem import (NU_GRID, ItemCatalogue, PerItemError,
                                         PerItemPolicy, PerItemSession, RobustWeights,
                                         Step, explain, judge, judge_arrays,
                                         linear_assignment)
from lanecore.drivers.loadcell_sim import Placement, TraceSpec, generate
from lanecore.ext.loadcell import LaneBank

# A small shop: (GTIN, weight g, scale g, ν, sales)
MILK, BREAD, TEA, SOAP, SOAP2, CHOC, WATER = (
    "05901234123457", "00000096385074", "00042100005264", "04000417025005",
    "04000417025012", "04006381333931", "05000112637922")
ROWS = [(MILK, 1032.0, 8.0, 200.0, 5.0), (BREAD, 500.0, 6.0, 4.0, 4.0),
        (TEA, 120.0, 1.5, 200.0, 2.0), (SOAP, 350.0, 3.0, 200.0, 9.0),
        (SOAP2, 350.0, 3.0, 200.0, 1.0), (CHOC, 100.0, 1.2, 3.0, 3.0),
        (WATER, 1530.0, 12.0, 10.0, 6.0)]


@pytest.fixture(scope="module")
def shop() -> ItemCatalogue:
    rw = RobustWeights(np.array([r[1] for r in ROWS]), np.array([r[2] for r in ROWS]),
                       np.array([r[3] for r in ROWS]), np.full(len(ROWS), 200))
    return ItemCatalogue([r[0] for r in ROWS], rw, [r[4] for r in ROWS])


# --------------------------------------------------------------------------------------
# The assignment
# --------------------------------------------------------------------------------------

def _brute(cost):
    n, m = len(cost), len(cost[0])
    return min(sum(cost[r][c] for r, c in enumerate(cols))
               for cols in itertools.permutations(range(m), n))


@pytest.mark.parametrize("n, m", [(1, 1), (2, 2), (3, 3), (4, 6), (5, 5), (6, 7), (3, 8)])
def test_linear_assignment_is_optimal(n, m):
    rng = np.random.default_rng(n * 10 + m)
    for _ in range(20):
        cost = rng.integers(0, 9, (n, m)).astype(float).tolist()
        col = linear_assignment(cost)
        assert len(set(col)) == n and all(0 <= c < m for c in col)
        assert sum(cost[r][c] for r, c in enumerate(col)) == _brute(cost)


def test_linear_assignment_matches_scipy_on_25_by_25():
    import scipy.optimize as scipy_opt      # a test extra (setup.py): never skipped
    rng = np.random.default_rng(25)
    for _ in range(10):
        cost = rng.normal(0, 10, (25, 25))
        r, c = scipy_opt.linear_sum_assignment(cost)
        col = linear_assignment(cost)
        assert math.isclose(sum(cost[i, col[i]] for i in range(25)), cost[r, c].sum(),
                            rel_tol=1e-12, abs_tol=1e-9)


def test_linear_assignment_refuses_more_rows_than_columns():
    with pytest.raises(ValueError):
        linear_assignment([[1.0], [2.0]])
    assert linear_assignment([]) == []


# --------------------------------------------------------------------------------------
# Robust learned weights
# --------------------------------------------------------------------------------------

def test_fit_gives_gaussian_tails_only_with_the_evidence():
    rng = np.random.default_rng(3)
    gauss = rng.normal(400.0, 8.0, 600)          # 500+ weighings: ν may reach 200
    heavy = 250.0 + 5.0 * rng.standard_t(2.5, 200)
    few = rng.normal(90.0, 2.0, 30)              # under 60 weighings: ν ≤ 4
    items = np.r_[np.zeros(600), np.ones(200), np.full(30, 2)].astype(int)
    rw = RobustWeights.fit(items, np.r_[gauss, heavy, few], 4,
                           prior_loc_g=[1, 1, 1, 77.0], prior_sd_g=[1, 1, 1, 2.0])
    assert rw.nu[0] >= 30 and abs(rw.loc_g[0] - 400) < 2.0 and 6.5 < rw.scale_g[0] < 9.5
    # the same Gaussian item with 200 weighings keeps a t10's tails
    rw200 = RobustWeights.fit(np.zeros(200, int), gauss[:200], 1)
    assert rw200.nu[0] == 10.0
    assert rw.nu[1] <= 4 and abs(rw.loc_g[1] - 250) < 2.0
    assert rw.nu[2] <= 4 and abs(rw.loc_g[2] - 90) < 1.0
    # an item without weighings keeps its catalogue weight, with ν = 4
    assert rw.loc_g[3] == 77.0 and rw.nu[3] == 4.0 and rw.n[3] == 0
    assert set(rw.nu.tolist()) <= set(NU_GRID.tolist())
    # the 99.9 % band of a heavy tail is wider than a Gaussian's of the same scale
    lo, hi = rw.band_g(1)
    assert hi - lo > 2 * 3.29 * rw.scale_g[1]


def test_fit_floors_the_scale_like_the_weight_book():
    rw = RobustWeights.fit(np.zeros(100, int), np.full(100, 500.0), 1)
    assert rw.scale_g[0] == pytest.approx(5.0)      # 1 % of 500 g (the floor)


# --------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------

def test_an_honest_basket_passes(shop):
    lines = [(MILK, 1), (BREAD, 2), (TEA, 1), (CHOC, 3)]
    steps = [(1031.2, 0.8), (503.0, 0.6), (99.4, 0.5), (120.9, 0.4), (497.1, 0.9),
             (101.0, 0.5), (100.2, 0.7)]
    v = judge(lines, steps, shop)
    assert v.verdict == "ok" and v.explanations == []
    assert [i.kind for i in v.items] == ["ok"] * 7
    assert [i.gtins for i in v.items] == [[MILK], [BREAD], [CHOC], [TEA], [BREAD], [CHOC],
                                          [CHOC]]
    assert all(i.band_ok for i in v.items)


def test_two_items_placed_at_once_are_not_alarmed(shop):
    lines = [(MILK, 1), (TEA, 1), (BREAD, 1)]
    steps = [Step(1032.0 + 120.4, 1.0), Step(499.0, 0.7)]
    v = judge(lines, steps, shop)
    assert v.verdict == "ok", v.explanations
    assert v.items[0].kind == "merged" and sorted(v.items[0].gtins) == sorted([MILK, TEA])
    # as it happens: the merged step is recognised when it arrives
    s = PerItemSession(lines, shop)
    first = s.step(1152.4, 1.0)
    assert first.kind == "merged" and not first.alarm
    assert s.step(499.0, 0.7).kind == "ok"
    assert s.clear().verdict == "ok"


def test_a_lifted_and_replaced_item_is_not_alarmed(shop):
    lines = [(BREAD, 1), (MILK, 1), (TEA, 1)]
    s = PerItemSession(lines, shop)
    kinds = [s.step(*st).kind for st in [(501.0, 0.6), (1033.0, 0.8), (-1032.2, 0.9),
                                         (1031.5, 0.8), (119.7, 0.5)]]
    assert kinds == ["ok", "ok", "lifted", "ok", "ok"]
    assert s.verdicts[2].lifted_step == 1 and s.verdicts[2].gtins == [MILK]
    v = s.clear()
    assert v.verdict == "ok" and v.explanations == []
    assert [i.kind for i in v.items] == ["ok", "lifted", "lifted", "ok", "ok"]


def test_a_missing_item_is_named(shop):
    v = judge([(MILK, 1), (BREAD, 1), (TEA, 2)], [(1030.0, 0.8), (120.2, 0.5)], shop)
    assert v.verdict == "alarm"
    assert sorted((e["kind"], e["gtin"]) for e in v.explanations) == [("missing", BREAD),
                                                                      ("missing", TEA)]
    assert all(e["score"] > 0.99 for e in v.explanations)
    assert sorted(v.missing) == [BREAD, TEA]


def test_an_unscanned_item_is_named_with_its_candidates(shop):
    v = judge([(MILK, 1), (TEA, 1)], [(1032.5, 0.8), (350.9, 0.6), (120.1, 0.5)], shop)
    assert v.verdict == "alarm"
    e = v.explanations[0]
    assert e["kind"] == "unscanned" and e["step"] == 1 and e["delta_g"] == 350.9
    # SOAP and SOAP2 weigh the same: the one that sells 9x more is 0.9 likely
    names = [c["gtin"] for c in e["candidates"]]
    assert names[:2] == [SOAP, SOAP2]
    assert e["candidates"][0]["posterior"] == pytest.approx(0.9, abs=0.01)
    assert e["candidates"][1]["posterior"] == pytest.approx(0.1, abs=0.01)
    assert v.items[1].kind == "unscanned" and v.items[1].alarm
    # and at once, as the step arrives
    s = PerItemSession([(MILK, 1), (TEA, 1)], shop)
    s.step(1032.5, 0.8)
    now = s.step(350.9, 0.6)
    assert now.kind == "unscanned" and now.candidates[0]["gtin"] == SOAP


def test_a_swapped_item_is_both_missing_and_unscanned(shop):
    # TEA paid, WATER on the conveyor (MILK + TEA is 1152 g, no merge explains it)
    v = judge([(MILK, 1), (TEA, 1)], [(1032.0, 0.8), (1529.0, 1.0)], shop)
    kinds = sorted((e["kind"], e.get("gtin")) for e in v.explanations)
    assert kinds == [("missing", TEA), ("unscanned", None)]
    unscanned = [e for e in v.explanations if e["kind"] == "unscanned"][0]
    assert unscanned["candidates"][0]["gtin"] == WATER


def test_heavy_tails_tolerate_what_a_gaussian_alarms(shop):
    # no conveyor bumps: the item's own distribution alone decides
    still = PerItemPolicy(p_bump=0.0)
    steps = [(110.8, 0.3), (1032.0, 0.5)]
    # CHOC is a t with ν = 3: 9 scales off is a tail, not another item
    assert judge([(CHOC, 1), (MILK, 1)], steps, shop, still).verdict == "ok"
    # the same item learned as a Gaussian (ν = 200): 9 scales off is something else
    rw = shop.weights
    gauss = ItemCatalogue(shop.gtins, RobustWeights(rw.loc_g, rw.scale_g,
                                                    np.where(rw.loc_g == 100.0, 200.0,
                                                             rw.nu), rw.n),
                          [r[4] for r in ROWS])
    v = judge([(CHOC, 1), (MILK, 1)], steps, gauss, still)
    assert v.verdict == "alarm" and v.missing == [CHOC] and v.unscanned_steps == [0]
    # with the lane's bumps (1 % of steps off by N(0, 10 g)) 10.8 g is a bump
    assert judge([(CHOC, 1), (MILK, 1)], steps, gauss).verdict == "ok"


def test_similar_items_share_the_blame(shop):
    # one of two 350 g soaps is missing: either GTIN, each about half
    v = judge([(SOAP, 1), (SOAP2, 1), (MILK, 1)], [(350.0, 0.5), (1032.0, 0.5)], shop)
    e = v.explanations[0]
    assert e["kind"] == "missing" and e["gtin"] in (SOAP, SOAP2)
    assert 0.4 < e["score"] < 0.6 and e["or"][0]["gtin"] in (SOAP, SOAP2)


def test_bad_input_has_stable_codes(shop):
    with pytest.raises(PerItemError) as exc:
        judge([("00000000000000", 1)], [(1.0, 0.1)], shop)
    assert exc.value.code == "UNKNOWN_ITEM"
    for bad in ([(math.nan, 0.5)], [(100.0, -1.0)], [(0.0, 0.5)], [(math.inf, 0.5)]):
        with pytest.raises(PerItemError) as exc:
            judge([(MILK, 1)], bad, shop)
        assert exc.value.code == "BAD_STEP"
    for q in (0, -1, True, 2.0):
        with pytest.raises(PerItemError) as exc:
            judge([(MILK, q)], [(1032.0, 0.5)], shop)
        assert exc.value.code == "BAD_QUANTITY"
    with pytest.raises(PerItemError) as exc:
        PerItemPolicy(p_miss=1.5)
    assert exc.value.code == "BAD_POLICY"


def test_the_verdict_json(shop):
    d = judge([(MILK, 1), (TEA, 1)], [(1032.04, 0.81)], shop).to_dict()
    assert d["verdict"] == "alarm"
    assert d["explanations"][0]["kind"] == "missing" and d["explanations"][0]["gtin"] == TEA
    assert d["items"] == [{"step": 0, "kind": "ok", "delta_g": 1032.0, "sigma_g": 0.81,
                           "gtins": [MILK], "candidates": [], "band_ok": True,
                           "lifted_step": None}]


# --------------------------------------------------------------------------------------
# Traces over the heavier-tailed truth (fixed seeds, exact outcomes)
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def truth_run():
    cat, ex = TR.simulate_exits(400, seed=77)
    hi, hx = TR.history(np.random.default_rng(78), cat)
    rw = RobustWeights.fit(hi, hx, cat.n, prior_loc_g=cat.label_g,
                           prior_sd_g=cat.label_sd_g)
    ic = ItemCatalogue(["%014d" % (10_000_000 + i) for i in range(cat.n)], rw, cat.sales)
    out = []
    for x in range(ex.n):
        lines = ex.lines(x)
        unit_item = np.repeat(ex.line_item[lines.start:lines.stop],
                              ex.line_qty[lines.start:lines.stop])
        s = ex.steps(x)
        w, sd = ex.step_delta_g[s.start:s.stop], ex.step_sigma_g[s.start:s.stop]
        res = judge_arrays(unit_item, w, sd, ic)
        e = explain(res, unit_item, [ic.gtins[i] for i in unit_item], w, sd, ic)
        out.append((res, e))
    return cat, ex, ic, out


def test_the_truth_is_reproducible_and_heavier_tailed():
    cat1, ex1 = TR.simulate_exits(300, seed=5)
    cat2, ex2 = TR.simulate_exits(300, seed=5)
    assert np.array_equal(ex1.step_delta_g, ex2.step_delta_g)
    assert np.array_equal(cat1.label_g, cat2.label_g)
    assert ex1.step_offsets[-1] == ex1.step_delta_g.size
    # every paid unit present is in exactly one step; the lifts add two steps each
    units = (ex1.step_item_a >= 0).sum() + (ex1.step_item_b >= 0).sum()
    n_units = ex1.line_qty.sum() - (ex1.state == TR.MISSING).sum() \
        + (ex1.state == TR.EXTRA).sum()
    assert units - 2 * ex1.lifted.sum() == n_units
    assert (ex1.step_lift == 1).sum() == ex1.lifted.sum() == (ex1.step_lift == 2).sum()
    assert (ex1.step_item_b >= 0).sum() == ex1.merged.sum()
    # not the verdict's Gaussian: units of t and mixture items have fat tails
    rng = np.random.default_rng(9)
    heavy = np.flatnonzero(cat1.shape == TR.SHAPE_T)[:50]
    z = (TR.draw_units(rng, cat1, np.repeat(heavy, 2000), lot=False)
         - np.repeat(cat1.mean_g[heavy], 2000)) / np.repeat(cat1.sd_g[heavy], 2000)
    assert np.mean(np.abs(z) > 4) > 10 * 6.3e-5          # Gaussian: 6.3e-5


def test_trace_over_the_truth_exact_outcomes(truth_run):
    cat, ex, ic, out = truth_run
    alarms = np.array([bool(e) for _, e in out])
    state = ex.state
    counts = [int((alarms & (state == s)).sum()) for s in range(3)]
    totals = [int((state == s).sum()) for s in range(3)]
    assert totals == [194, 168, 38]
    assert counts == [0, 141, 38]
    # every merged or lifted honest exit passes
    assert not alarms[(state == TR.HONEST) & (ex.merged | ex.lifted)].any()
    named = 0
    for x in np.flatnonzero(alarms & (state == TR.MISSING)).tolist():
        e = out[x][1][0]
        named += e["kind"] == "missing" and e["gtin"] == ic.gtins[ex.line_item[
            ex.missing_line[x]]]
    assert named == 119


def test_trace_unscanned_candidates_include_the_true_item(truth_run):
    cat, ex, ic, out = truth_run
    found = listed = 0
    for x in np.flatnonzero(ex.state == TR.EXTRA).tolist():
        s = ex.steps(x)
        true_steps = {k - s.start for k in s if ex.step_extra[k] and ex.step_lift[k] != 1}
        for e in out[x][1]:
            if e["kind"] == "unscanned" and e["step"] in true_steps:
                found += 1
                listed += ic.gtins[ex.extra_item[x]] in [c["gtin"] for c in e["candidates"]]
    assert found == 35 and listed == 11


def test_one_exit_in_detail(truth_run):
    cat, ex, ic, out = truth_run
    x = int(np.flatnonzero(ex.merged & (ex.state == TR.MISSING))[0])
    res, e = out[x]
    assert res["merged"], "the two items placed at once are one step of two units"
    s = ex.steps(x)
    m = [k - s.start for k in s if ex.step_item_b[k] >= 0][0]
    assert res["merged"] == [m]
    assert e[0]["kind"] == "missing"
    assert e[0]["gtin"] == ic.gtins[ex.line_item[ex.missing_line[x]]]


# --------------------------------------------------------------------------------------
# A trace through the load-cell pipeline (compiled kernel, or its twin)
# --------------------------------------------------------------------------------------

def _steps_from_pipeline(placements, seconds, seed):
    spec = TraceSpec(seconds=seconds, noise_g=0.5, mains_g=1.0, placements=placements,
                     seed=seed)
    x, _truth = generate(spec)
    bank = LaneBank(1)
    configure_lane(bank, 0, LaneConfig())
    events = []
    for i in range(0, x.size, 50):
        events += bank.feed(0, x[i:i + 50])
    steps, last = [], None
    for ev in events:
        if ev["event"] == "settled":
            if last is not None and abs(ev["weight_g"] - last["weight_g"]) >= 10.0:
                steps.append(Step(ev["weight_g"] - last["weight_g"],
                                  math.hypot(ev["sigma_g"], last["sigma_g"]), ev["t"]))
            last = ev
    return steps


def test_pipeline_trace_with_a_merged_and_a_lifted_item(shop):
    placements = [Placement(0.5, 1032.0), Placement(2.0, 120.0 + 500.0),   # two at once
                  Placement(3.5, 350.0), Placement(5.0, -350.0),           # lifted ...
                  Placement(6.5, 351.0), Placement(8.0, 100.0)]            # ... and back
    steps = _steps_from_pipeline(placements, 9.5, seed=11)
    assert len(steps) == 6 and steps[3].delta_g < 0
    s = PerItemSession([(MILK, 1), (TEA, 1), (BREAD, 1), (SOAP, 1), (CHOC, 1)], shop)
    kinds = [s.step(*st).kind for st in steps]
    assert kinds == ["ok", "merged", "ok", "lifted", "ok", "ok"]
    assert s.clear().verdict == "ok"


def test_pipeline_trace_with_an_unscanned_item(shop):
    placements = [Placement(0.5, 1032.0), Placement(2.0, 1530.0), Placement(3.5, 120.0)]
    steps = _steps_from_pipeline(placements, 5.0, seed=12)
    v = judge([(MILK, 1), (TEA, 1)], steps, shop)
    assert v.verdict == "alarm" and v.unscanned_steps == [1]
    assert v.explanations[0]["candidates"][0]["gtin"] == WATER
