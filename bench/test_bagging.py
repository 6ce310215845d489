"""Kiosk bagging-scale mode on the heavier-tailed truth (issue 18, Build 2).

Kiosk sessions are built from ``lanecore.core.weigh.truth``: its catalogue (Student-t
and outlier-mixture goods, biased labels, label errors, lots, carrier bags), its
baskets and its states, and each unit's true weight from ``truth.draw_units``. What
the truth does not have — scan-and-bag timing — is simulated here
(:func:`kiosk_sessions`):

* the units are scanned in a random order; an honest unit is put in the bag
  log-normal(median 2 s, σ_log 0.4) after its scan, and the next scan comes
  0.5 s + Exp(2 s) after that;
* **two at once** (10 % of sessions): two consecutive units scanned 0.5 s + Exp(1 s)
  apart, then placed as one delta;
* **lifted and put back** (5 %): a bagged single unit removed 1-6 s after it was
  placed and put back 1-6 s later (other scans may come in between);
* the states, as in the truth: half the sessions honest, 40 % with one scanned unit
  **not placed** (the shopper keeps it; the next scan 1 s + Exp(3 s) later), 10 % with
  an item nobody scanned — half of those put in the bag between two scans with no
  scan (**unscanned**), half put in the bag *instead* of a scanned unit (**swap**:
  the scanned unit never comes);
* each delta's noise: reported σ 0.3-1.5 g, a bump of N(0, 8 g) on 0.5 % of deltas
  the σ does not know (the truth's step noise).

Every session goes through ``BaggingSession`` event by event (scans, deltas, a tick
at each event, ``finish`` 15 s after the last). A false alarm is an alarm in an
honest session (counted per honest scanned item). A faulty session is detected
when it has any alarm, and **named first** when its first alarm is right: a not
placed unit's ``not_placed`` alarm naming its GTIN; for an unscanned item the
``unexpected`` alarm at its delta; for a swap either (the unexpected delta, or the
scanned unit that never came). The catalogue's top-3 candidates of an unexpected
delta are scored beside it. The ceiling printed beside named first is the
Bayes-optimal guess that knows the truth's distributions and which unit every other
delta is (as ``bench/test_peritem.py`` computes it), restricted to the deltas that
competed: those placed while the missing unit was open, or those of units open when
the unscanned delta came.

Targets (issue 18: "the same naming and false-alarm targets per scanned item"):
named first ≥ 97 % of detected cases, false alarms ≤ 0.1 % of honest scanned items.
100,000 scanned items; with ``--benchmark-disable`` (CI) 6,000 as a correctness
check.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from lanecore.core.weigh import truth as TR
from lanecore.core.weigh.bagging import DEFAULT_BAGGING, BaggingSession, no_check_reason
from lanecore.core.weigh.peritem import ItemCatalogue, RobustWeights

from _data import gtin13_keys  # bench/ is on sys.path (pyproject: pythonpath)
from _weigh import by_basket_size

SEED = 1819
HONEST, NOT_PLACED, UNSCANNED, SWAP = 0, 1, 2, 3
KSTATES = ("honest", "not placed", "unscanned", "swap")
P_MERGE, P_LIFT = 0.10, 0.05


def _se(p, n):
    return math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def kiosk_sessions(cat, ex, rng, n_units: int, cfg: TR.TruthConfig = TR.TruthConfig()):
    """Kiosk sessions (see the module docstring) from the truth's exits until
    ``n_units`` units are scanned. Each: {"state", "events": [(t, "scan", unit) |
    (t, "delta", delta_g, sigma_g, truth)], "unit_item", "bad_unit", "extra_item",
    "merged", "lifted"}; a delta's truth is (units, is_extra, lift 0/1/2)."""
    out = []
    total = 0
    for x in range(ex.n):
        if total >= n_units:
            break
        lines = ex.lines(x)
        q = ex.line_qty[lines.start:lines.stop]
        li = np.repeat(np.arange(lines.start, lines.stop), q)
        order = rng.permutation(li.size)
        li = li[order]
        unit_item = ex.line_item[li].astype(np.int64)
        n = unit_item.size
        w = TR.draw_units(rng, cat, unit_item)
        st = int(ex.state[x])
        state = HONEST
        bad = -1
        xi = -1
        if st == TR.MISSING:
            state = NOT_PLACED
            bad = int(np.flatnonzero(li == ex.missing_line[x])[0])
        elif st == TR.EXTRA:
            xi = int(ex.extra_item[x])
            state = SWAP if rng.random() < 0.5 else UNSCANNED
            bad = int(rng.integers(0, n)) if state == SWAP else int(rng.integers(0, n + 1))
        merge_at = -1
        if n >= 2 and rng.random() < P_MERGE:
            merge_at = int(rng.integers(0, n - 1))
            if bad in (merge_at, merge_at + 1) and state in (NOT_PLACED, SWAP):
                merge_at = -1
        lift_at = int(rng.integers(0, n)) if rng.random() < P_LIFT else -1
        if lift_at in (merge_at, merge_at + 1) or (lift_at == bad and state != UNSCANNED):
            lift_at = -1
        ev = []
        t = 0.0
        xw = float(TR.draw_units(rng, cat, np.array([xi]))[0]) if xi >= 0 else 0.0

        def place(t_, grams, truth):
            s = rng.uniform(*cfg.step_sd_g)
            err = s * rng.standard_normal()
            if rng.random() < cfg.p_bump:
                err += rng.normal(0.0, cfg.bump_sd_g)
            ev.append((t_, "delta", grams + err, s, truth))

        u = 0
        while u < n:
            if state == UNSCANNED and u == bad:
                t += 1.0 + rng.exponential(2.0)
                place(t, xw, ((), True, 0))
                t += 0.5 + rng.exponential(2.0)
            ev.append((t, "scan", u))
            if u == merge_at:
                t2 = t + 0.5 + rng.exponential(1.0)
                ev.append((t2, "scan", u + 1))
                tp = t2 + rng.lognormal(math.log(2.0), 0.4)
                place(tp, float(w[u] + w[u + 1]), ((u, u + 1), False, 0))
                t = tp + 0.5 + rng.exponential(2.0)
                u += 2
                continue
            if state == NOT_PLACED and u == bad:
                t += 1.0 + rng.exponential(3.0)
                u += 1
                continue
            tp = t + rng.lognormal(math.log(2.0), 0.4)
            if state == SWAP and u == bad:
                place(tp, xw, ((), True, 0))
            else:
                place(tp, float(w[u]), ((u,), False, 0))
                if u == lift_at:
                    t1 = tp + rng.uniform(1.0, 6.0)
                    place(t1, -float(w[u]), ((u,), False, 1))
                    place(t1 + rng.uniform(1.0, 6.0), float(w[u]), ((u,), False, 2))
            t = tp + 0.5 + rng.exponential(2.0)
            u += 1
        if state == UNSCANNED and bad == n:
            t += 1.0 + rng.exponential(2.0)
            place(t, xw, ((), True, 0))
        ev.sort(key=lambda e: e[0])
        out.append({"state": state, "events": ev, "unit_item": unit_item, "bad": bad,
                    "extra_item": xi, "merged": merge_at >= 0, "lifted": lift_at >= 0,
                    "n_lines": len(lines)})
        total += n
    return out


@pytest.fixture(scope="module")
def sim(sizes):
    n_units = 100_000 if sizes.real else 6_000
    t0 = time.perf_counter()
    cat, ex = TR.simulate_exits(n_units // 12 + 500, seed=SEED)
    hi, hx = TR.history(np.random.default_rng(SEED + 1), cat)
    rw = RobustWeights.fit(hi, hx, cat.n, prior_loc_g=cat.label_g, prior_sd_g=cat.label_sd_g)
    gtins = ["%014d" % int(k) for k in gtin13_keys(cat.n, seed=2026)]
    ic = ItemCatalogue(gtins, rw, cat.sales)
    sessions = kiosk_sessions(cat, ex, np.random.default_rng(SEED + 2), n_units)
    return {"cat": cat, "ic": ic, "sessions": sessions, "t_sim": time.perf_counter() - t0,
            "n_units": sum(s["unit_item"].size for s in sessions)}


def _oracle(cat, ic, s, steps_truth, deltas) -> bool:
    """The Bayes-optimal guess that knows the true distributions and which unit every
    other delta is, over the deltas that competed (see the module docstring)."""
    ev = s["events"]
    ui = s["unit_item"]
    scan_t = {e[2]: e[0] for e in ev if e[1] == "scan"}
    singles = [(k, tr[0][0], t) for k, (tr, t) in enumerate(steps_truth)
               if len(tr[0]) == 1 and not tr[1] and tr[2] == 0]
    st = s["state"]
    if st == NOT_PLACED or st == SWAP:
        b = s["bad"]
        t0 = scan_t[b]
        mi = int(ui[b])
        for k, u, t in singles:
            if t0 <= t <= t0 + DEFAULT_BAGGING.place_timeout_s and ui[u] != mi:
                w, sd = deltas[k]
                if TR.true_logpdf(cat, mi, w, sd) > TR.true_logpdf(cat, int(ui[u]), w, sd):
                    return st == SWAP and _oracle_x(cat, ic, s, steps_truth, deltas, singles,
                                                    scan_t)
        return True
    return _oracle_x(cat, ic, s, steps_truth, deltas, singles, scan_t)


def _oracle_x(cat, ic, s, steps_truth, deltas, singles, scan_t) -> bool:
    ui = s["unit_item"]
    xk = [k for k, (tr, _t) in enumerate(steps_truth) if tr[1]][0]
    tx = steps_truth[xk][1]
    wt, stt = deltas[xk]
    lf_t = float(ic.log_density(wt))
    for k, u, t in singles:
        if not (scan_t[u] <= tx <= t):        # u was not open when the unscanned came
            continue
        it = int(ui[u])
        w, sd = deltas[k]
        odds = (float(ic.log_density(w)) + float(TR.true_logpdf(cat, it, wt, stt))
                - lf_t - float(TR.true_logpdf(cat, it, w, sd)))
        if odds > 0:
            return False
    return True


@pytest.fixture(scope="module")
def runs(sim):
    ic, cat = sim["ic"], sim["cat"]
    gt = ic.gtins
    rows = []
    n_alarm_honest = 0
    n_no_check = 0
    t0 = time.perf_counter()
    for s in sim["sessions"]:
        sess = BaggingSession(ic)
        ui = s["unit_item"]
        steps_truth, deltas = [], []
        for e in s["events"]:
            if e[1] == "scan":
                v = sess.scan(gt[ui[e[2]]], e[0])
                n_no_check += v.kind == "no_check"
            else:
                sess.delta(e[2], e[3], e[0])
                steps_truth.append((e[4], e[0]))
                deltas.append((e[2], e[3]))
        sess.finish(s["events"][-1][0] + 15.0)
        al = sess.alarms
        st = s["state"]
        kind = {"": 0, "unexpected": 1, "not_placed": 2}.get(al[0].kind if al else "", 3)
        first = top1 = top3 = False
        oracle = False
        if st == HONEST:
            n_alarm_honest += len(al)
        elif al:
            a = al[0]
            xk = [k for k, (tr, _t) in enumerate(steps_truth) if tr[1]]
            if st in (NOT_PLACED, SWAP) and a.kind == "not_placed":
                first = a.explanation["gtin"] == gt[ui[s["bad"]]]
            if st in (UNSCANNED, SWAP) and a.kind == "unexpected":
                first = first or a.step == xk[0]
            for b in al:
                if b.kind == "unexpected" and xk and b.step == xk[0]:
                    names = [c["gtin"] for c in b.explanation["candidates"]]
                    top1 = bool(names) and names[0] == gt[s["extra_item"]]
                    top3 = gt[s["extra_item"]] in names
            oracle = _oracle(cat, ic, s, steps_truth, deltas)
        nc = st in (NOT_PLACED, SWAP) and no_check_reason(ic, int(ui[s["bad"]])) is not None
        rows.append((st, bool(al), first, oracle, kind, ui.size, int(s["merged"]),
                     int(s["lifted"]), top1, top3, s["n_lines"], nc))
    elapsed = time.perf_counter() - t0
    r = np.array(rows, dtype=np.int64)
    names = ("state", "alarm", "first", "oracle", "kind", "units", "merged", "lifted",
             "top1", "top3", "n_lines", "no_check")
    return {"elapsed": elapsed, "n_alarm_honest": n_alarm_honest, "n_no_check": n_no_check,
            **dict(zip(names, r.T))}


def test_bagging_scale_mode(sim, runs, note, figures, sizes):
    p = runs
    st, alarm, first, oracle = p["state"], p["alarm"] == 1, p["first"] == 1, p["oracle"] == 1
    n_units = sim["n_units"]
    ns = st.size
    note(f"kiosk bagging-scale mode, heavier-tailed truth: {ns:,} sessions, {n_units:,} "
         f"scanned items (seed {SEED}; simulated in {sim['t_sim']:.1f} s), judged in "
         f"{p['elapsed']:.1f} s ({p['elapsed'] / n_units * 1e6:.0f} µs per scanned item); "
         f"{p['n_no_check']:,} scans flagged no bagging check "
         f"({p['n_no_check'] / n_units:.2%})")
    note("  confusion (true state x first alarm): sessions  items        none  "
         "unexpected  not-placed  removal")
    for s, name in enumerate(KSTATES):
        k = st == s
        row = [int((k & (p["kind"] == c)).sum()) for c in range(4)]
        note(f"    {name:<11} {int(k.sum()):>10,} {int(p['units'][k].sum()):>7,} "
             f"{row[0]:>10,} {row[1]:>11,} {row[2]:>11,} {row[3]:>8,}")
    h = st == HONEST
    for flag, label in (("merged", "two items bagged at once after two scans"),
                        ("lifted", "an item lifted out and put back")):
        k = h & (p[flag] == 1)
        note(f"    honest with {label}: {int(k.sum()):,} sessions, "
             f"{int((k & alarm).sum())} alarmed")
    honest_items = int(p["units"][h].sum())
    fa = p["n_alarm_honest"] / max(honest_items, 1)
    note(f"  false alarms: {p['n_alarm_honest']} alarms over {honest_items:,} honest scanned "
         f"items = {fa:.6f} ({int(alarm[h].sum())} of {int(h.sum()):,} honest sessions); "
         f"target <= 0.001: {'met' if fa <= 0.001 else 'NOT MET'}")
    for s, name in ((NOT_PLACED, "not placed"), (UNSCANNED, "unscanned"), (SWAP, "swap")):
        k = st == s
        extra = ""
        if s != UNSCANNED:
            nc = k & (p["no_check"] == 1)
            extra = (f"; of them {int(nc.sum())} on no-check items, "
                     f"{int((nc & alarm).sum())} alarmed")
        note(f"  {name} detected: {alarm[k].mean():.4f} of {int(k.sum()):,}{extra}")
    det = (st != HONEST) & alarm
    named = float(first[det].mean())
    ceiling = float(oracle[det].mean())
    note(f"  named first, of {int(det.sum()):,} detected: {named:.4f}; Bayes-optimal "
         f"guess knowing the true distributions {ceiling:.4f}; target >= 0.97: "
         f"{'met' if named >= 0.97 else 'NOT MET'}")
    for s, name in ((NOT_PLACED, "not placed"), (UNSCANNED, "unscanned"), (SWAP, "swap")):
        k = det & (st == s)
        note(f"    {name}: {first[k].mean():.4f} of {int(k.sum()):,} (ceiling "
             f"{oracle[k].mean():.4f})")
    k = det & ((st == UNSCANNED) | (st == SWAP))
    note(f"    unexpected item's catalogue candidates: the true item first "
         f"{p['top1'][k].mean():.4f}, in the top 3 {p['top3'][k].mean():.4f}")
    note(by_basket_size(det, p["n_lines"], first, oracle))

    figures.add("bagging-scale mode: named first of detected", named, "share",
                rounds=int(det.sum()), ceiling=ceiling)
    figures.add("bagging-scale mode: false alarms of honest scanned items", fa, "share",
                rounds=honest_items)

    tol = 0 if sizes.real else 3
    assert n_units >= (100_000 if sizes.real else 6_000)
    assert fa <= 0.001 + tol * _se(0.001, honest_items)
    assert named >= ceiling - 0.03 - 3 * _se(named, int(det.sum()))
    # every fault kind is mostly caught; two at once and lifted items are not alarmed
    for s, floor in ((NOT_PLACED, 0.85), (UNSCANNED, 0.95), (SWAP, 0.70)):
        k = st == s
        assert alarm[k].mean() >= floor - 3 * _se(floor, int(k.sum())), KSTATES[s]
    for flag in ("merged", "lifted"):
        k = h & (p[flag] == 1)
        assert alarm[k].mean() <= 0.01 + tol * _se(0.01, int(k.sum())), flag
