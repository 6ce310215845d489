"""Kiosk bagging-scale mode: accepted deltas, "unexpected item in the bagging area",
"item not placed", two items bagged at once, an item lifted out and put back, no
bagging check, attendant overrides feeding the weight book, and a fixed-seed trace
over the heavier-tailed truth."""

from __future__ import annotations

import numpy as np
import pytest

from lanecore.core.scan.catalog import Catalog
from lanecore.core.weigh import truth as TR
from lanecore.core.weigh.bagging import (BaggingPolicy, BaggingSession, no_check_reason)
from lanecore.core.weigh.learning import WeightBook
from lanecore.core.weigh.peritem import ItemCatalogue, PerItemError, RobustWeights
from lanecore.ext.barcode import gs1_check_digit


def ean13(i: int) -> str:
    payload = "40000000%04d" % i
    return payload + str(gs1_check_digit(payload))


BEANS, MILK, TEA, SOAP, CHOC, WATER, STICKER, CHEESE = (ean13(i) for i in range(1, 9))
# (GTIN, weight g, scale g, ν, sales)
ROWS = [(BEANS, 432.5, 4.3, 200.0, 5.0), (MILK, 1032.0, 8.0, 200.0, 5.0),
        (TEA, 120.0, 1.5, 200.0, 2.0), (SOAP, 350.0, 3.0, 200.0, 9.0),
        (CHOC, 100.0, 1.2, 3.0, 3.0), (WATER, 1530.0, 12.0, 10.0, 6.0),
        (STICKER, 6.0, 0.5, 200.0, 1.0),       # too light for the scale
        (CHEESE, 300.0, 40.0, 2.0, 1.0)]       # too variable: ν 2, half-band 1,264 g


@pytest.fixture(scope="module")
def shop() -> ItemCatalogue:
    rw = RobustWeights(np.array([r[1] for r in ROWS]), np.array([r[2] for r in ROWS]),
                       np.array([r[3] for r in ROWS]), np.full(len(ROWS), 200))
    return ItemCatalogue([r[0] for r in ROWS], rw, [r[4] for r in ROWS])


def test_a_scanned_item_in_its_band_is_accepted(shop):
    s = BaggingSession(shop)
    v = s.scan(BEANS, 1.0)
    assert (v.kind, v.unit, v.gtin, v.due_s, v.reason) == ("await", 0, BEANS, 11.0, None)
    assert v.band_g == (418.1, 446.9)        # 432.5 ± 3.3398 · 4.3 (ν 200)
    d = s.delta(433.9, 0.8, 3.0)
    assert (d.kind, d.units, d.gtins, d.band_ok, d.alarm) == ("ok", [0], [BEANS], True,
                                                              None)
    assert s.finish(20.0) == [] and s.alarms == []


def test_a_delta_nobody_scanned_is_unexpected_and_named(shop):
    s = BaggingSession(shop)
    d = s.delta(351.2, 0.6, 2.0)
    assert (d.kind, d.alarm) == ("unexpected", 0)
    a = s.alarms[0]
    e = a.explanation
    assert (a.kind, a.step, e["kind"], e["step"], e["expected"]) == (
        "unexpected", 0, "unexpected", 0, [])
    names = [c["gtin"] for c in e["candidates"]]
    assert names[0] == SOAP and len(names) == 3
    # the ν 2 cheese's tails keep a little of the posterior
    assert e["candidates"][0]["posterior"] == pytest.approx(0.99669, abs=1e-5)
    assert sum(c["posterior"] for c in e["candidates"]) <= 1.0
    assert e["score"] == 1.0


def test_a_delta_that_is_not_the_scanned_item_then_the_item_not_placed(shop):
    s = BaggingSession(shop)
    s.scan(MILK, 0.0)
    d = s.delta(121.0, 0.5, 2.5)                         # tea instead of milk
    assert d.kind == "unexpected"
    e = s.alarms[0].explanation
    assert e["candidates"][0]["gtin"] == TEA
    assert e["expected"] == [{"gtin": MILK, "unit": 0, "band_g": (1005.3, 1058.7)}]
    assert s.tick(9.99) == []
    assert s.tick(10.0) == [1]
    a = s.alarms[1]
    assert (a.kind, a.unit, a.explanation["gtin"], a.explanation["kind"],
            a.explanation["score"], a.explanation["or"]) == (
        "not_placed", 0, MILK, "not_placed", 1.0, [])
    assert s.tick(30.0) == []                            # once


def test_item_not_placed_names_the_swap_it_could_be(shop):
    """Two soaps of the same weight, one beans: which is not placed? The swap with
    the same weight is not an alternative (same GTIN); a different GTIN of equal
    weight would be."""
    rw = shop.weights
    twin = ItemCatalogue(shop.gtins + ["04000417025012"],
                         RobustWeights(np.r_[rw.loc_g, 350.0], np.r_[rw.scale_g, 3.0],
                                       np.r_[rw.nu, 200.0], np.r_[rw.n, 200]),
                         [r[4] for r in ROWS] + [1.0])
    s = BaggingSession(twin)
    s.scan(SOAP, 0.0)
    s.scan("04000417025012", 1.0)
    assert s.delta(350.4, 0.5, 3.0).kind == "ok"
    new = s.tick(11.0)
    assert len(new) == 1
    e = s.alarms[new[0]].explanation
    assert e["kind"] == "not_placed"
    assert {e["gtin"], e["or"][0]["gtin"]} == {SOAP, "04000417025012"}
    assert e["score"] == pytest.approx(0.5, abs=0.02)


def test_two_items_bagged_at_once_after_two_scans(shop):
    s = BaggingSession(shop)
    s.scan(BEANS, 0.0)
    s.scan(SOAP, 2.0)
    d = s.delta(432.0 + 351.0, 1.0, 4.0)
    assert (d.kind, sorted(d.units)) == ("merged", [0, 1])
    assert s.finish(30.0) == [] and s.alarms == []


def test_an_item_lifted_out_and_put_back(shop):
    s = BaggingSession(shop)
    s.scan(BEANS, 0.0)
    assert s.delta(433.0, 0.7, 2.0).kind == "ok"
    s.scan(TEA, 3.0)
    assert s.delta(120.3, 0.7, 4.0).kind == "ok"
    lift = s.delta(-432.6, 0.9, 6.0)
    assert (lift.kind, lift.units, lift.gtins) == ("lifted", [0], [BEANS])
    back = s.delta(432.8, 0.8, 9.0)
    assert (back.kind, back.units) == ("returned", [0])
    assert s.finish(40.0) == [] and s.alarms == []


def test_a_lifted_light_item_does_not_merge_into_a_heavy_scan(shop):
    """A 100 g bar lifted out, then a 1.5 kg water scanned and bagged: the water is
    not "water + bar" (the bar comes back on its own), so the bar's return is no
    unexpected item."""
    s = BaggingSession(shop)
    s.scan(CHOC, 0.0)
    s.delta(100.4, 0.6, 2.0)
    assert s.delta(-100.2, 0.6, 3.0).kind == "lifted"
    s.scan(WATER, 4.0)
    assert s.delta(1575.0, 1.0, 6.0).kind == "ok"      # within the water's spread + bar
    assert s.delta(100.1, 0.6, 8.0).kind == "returned"
    assert s.finish(30.0) == [] and s.alarms == []


def test_a_lifted_item_not_back_is_alarmed(shop):
    s = BaggingSession(shop, bagging=BaggingPolicy(return_timeout_s=60.0))
    s.scan(MILK, 0.0)
    s.delta(1031.0, 1.0, 2.0)
    s.delta(-1030.5, 1.0, 5.0)
    assert s.tick(64.9) == []
    assert s.tick(65.0) == [0]
    assert (s.alarms[0].kind, s.alarms[0].explanation["gtin"]) == ("not_returned", MILK)


def test_a_removal_of_nothing_in_the_bag_is_unexplained(shop):
    s = BaggingSession(shop)
    d = s.delta(-250.0, 0.5, 1.0)
    assert (d.kind, s.alarms[0].kind) == ("unexplained_removal", "unexplained_removal")
    assert s.delta(-3.0, 0.5, 2.0).kind == "noise"


def test_no_bagging_check_items_are_skipped(shop):
    assert no_check_reason(shop, shop.item(STICKER)) == "light"
    assert no_check_reason(shop, shop.item(CHEESE)) == "variable"
    assert no_check_reason(shop, shop.item(CHOC)) is None     # ν 3: half-band 15.5 %
    assert no_check_reason(shop, shop.item(CHEESE),
                           BaggingPolicy(max_band_rel=5.0)) is None
    s = BaggingSession(shop)
    v = s.scan(STICKER, 0.0)
    assert (v.kind, v.reason, v.due_s) == ("no_check", "light", None)
    assert s.scan(CHEESE, 1.0).reason == "variable"
    # the cheese's spread holds the sticker too: both accepted, nothing alarmed
    assert s.delta(290.0, 1.0, 3.0).gtins == [STICKER, CHEESE]
    assert s.finish(60.0) == [] and s.alarms == []
    assert s.unit_state == ["placed", "placed"]
    s = BaggingSession(shop)
    s.scan(STICKER, 0.0)
    s.scan(CHEESE, 1.0)
    assert s.finish(60.0) == [] and s.unit_state == ["skipped", "skipped"]


def test_an_override_teaches_the_weight_book(shop, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    csv = tmp_path / "prices.csv"
    csv.write_text("gtin,name,price_minor,unit_weight_g,weight_sd_g,flags\n"
                   f"{BEANS},Baked Beans 415 g,125,432.5,45,\n", encoding="utf-8")
    with Catalog.open(d) as cat:
        assert cat.import_csv(csv).rows_bad == 0
    # the kiosk learned beans tight (1 g); the weight book starts from the label's 45 g
    rw = shop.weights
    tight = ItemCatalogue(shop.gtins, RobustWeights(rw.loc_g, np.r_[1.0, rw.scale_g[1:]],
                                                    rw.nu, rw.n), [r[4] for r in ROWS])
    s = BaggingSession(tight)
    s.scan(BEANS, 0.0)
    dv = s.delta(520.0, 0.6, 2.0)        # a new lot, heavier than learned
    assert dv.kind == "unexpected"
    o = s.override(dv.alarm, by="att-7", gtin=BEANS)
    assert (o.alarm, o.by, o.gtin, o.learned) == (0, "att-7", BEANS, (BEANS, 520.0, 1, True))
    assert s.learned == [(BEANS, 520.0, 1, True)]
    assert s.unit_state == ["placed"] and s.finish(30.0) == []
    assert [a.overridden for a in s.alarms] == ["att-7"] and s.open_alarms == []
    with WeightBook(d) as book:
        (r,) = book.learn_many(s.learned, confirmed_by=o.by)
        assert (r.code, r.learned) == ("LEARNED", True)
        assert book.confirmations(BEANS)[0]["confirmed_by"] == "att-7"
    with pytest.raises(PerItemError) as e:
        s.override(0, by="att-8")
    assert e.value.code == "BAD_STEP"


def test_an_overridden_not_placed_item_is_accepted_without_learning(shop):
    s = BaggingSession(shop)
    s.scan(WATER, 0.0)
    (no,) = s.tick(10.0)
    o = s.override(no, by="att-1")
    assert (o.learned, s.learned, s.unit_state) == (None, [], ["accepted"])
    assert s.finish(20.0) == []


def test_refusals(shop):
    s = BaggingSession(shop)
    s.scan(TEA, 5.0)
    for bad, code in ((lambda: s.delta(100.0, 0.5, 4.0), "BAD_STEP"),
                      (lambda: s.delta(float("nan"), 0.5, 6.0), "BAD_STEP"),
                      (lambda: s.delta(100.0, -1.0, 6.0), "BAD_STEP"),
                      (lambda: s.scan("12345", 6.0), "UNKNOWN_ITEM"),
                      (lambda: s.override(3, by="x"), "BAD_STEP"),
                      (lambda: BaggingPolicy(place_timeout_s=0), "BAD_POLICY")):
        with pytest.raises(PerItemError) as e:
            bad()
        assert e.value.code == code


def test_a_fixed_seed_kiosk_trace_over_the_heavier_tailed_truth():
    """A session over the truth's catalogue (seed 18): its learned weights, true unit
    weights, a swap, two at once, a lift and an unscanned item, event by event."""
    cfg = TR.TruthConfig(n_items=400, history_weighings=40_000)
    rng = np.random.default_rng(18)
    cat = TR.make_catalogue(rng, cfg)
    hi, hx = TR.history(rng, cat, cfg)
    rw = RobustWeights.fit(hi, hx, cat.n, prior_loc_g=cat.label_g, prior_sd_g=cat.label_sd_g)
    gtins = [ean13(i) for i in range(cat.n)]
    ic = ItemCatalogue(gtins, rw, cat.sales)
    checked = [i for i in np.argsort(-cat.sales[:cat.n_goods])[:40].tolist()
               if no_check_reason(ic, i) is None and 150 < cat.mean_g[i] < 3000]
    a, b, c, d, x = checked[:5]
    w = TR.draw_units(rng, cat, np.array([a, b, c, d, x, a]))
    s = BaggingSession(ic)
    kinds = []
    s.scan(gtins[a], 0.0)
    kinds.append(s.delta(w[0] + 0.3, 0.6, 2.0).kind)            # a: ok
    s.scan(gtins[b], 4.0)
    s.scan(gtins[c], 5.0)
    kinds.append(s.delta(w[1] + w[2] - 0.4, 0.9, 7.0).kind)     # b + c at once
    kinds.append(s.delta(-w[0] + 0.2, 0.7, 8.0).kind)           # a lifted
    s.scan(gtins[d], 9.0)
    kinds.append(s.delta(w[0] - 0.5, 0.7, 10.0).kind)           # a back
    kinds.append(s.delta(w[3] + 0.1, 0.5, 11.0).kind)           # d: ok
    kinds.append(s.delta(w[4], 0.5, 13.0).kind)                 # x: nobody scanned it
    s.scan(gtins[a], 14.0)
    kinds.append(s.delta(w[5], 0.5, 16.0).kind)                 # another a: ok
    assert kinds == ["ok", "merged", "lifted", "returned", "ok", "unexpected", "ok"]
    assert [al.kind for al in s.alarms] == ["unexpected"]
    cand = [q["gtin"] for q in s.alarms[0].explanation["candidates"]]
    assert gtins[x] in cand
    assert s.finish(40.0) == []


def test_the_wait_restarts_on_a_later_scan_until_something_is_bagged(shop):
    s = BaggingSession(shop)
    s.scan(BEANS, 0.0)
    s.scan(SOAP, 8.0)                       # still scanning: the beans wait from 8 s
    assert s.tick(17.9) == []
    assert s.delta(432.0 + 351.0, 1.0, 17.9).kind == "merged"
    s = BaggingSession(shop)
    s.scan(BEANS, 0.0)                      # kept out of the bag
    s.scan(SOAP, 3.0)
    assert s.delta(350.5, 0.6, 5.0).gtins == [SOAP]
    s.scan(TEA, 8.0)                        # after a bagging: no restart
    assert s.tick(12.9) == []
    assert s.tick(13.0) == [0]
    assert (s.alarms[0].kind, s.alarms[0].explanation["gtin"]) == ("not_placed", BEANS)
