"""The pricing engine (core/promo/pricing.py): worked examples, the invariants as
properties over random baskets, promotions and coupons (shuffled and split baskets
price the same), simple oracles per promotion kind, and every error code."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lanecore.core.promo import pricing
from lanecore.core.errors import LanecoreError
from lanecore.core.promo.pricing import (ADJUSTMENT_KINDS, REJECT_REASONS, BasketThreshold,
                                         CouponUse, ItemDiscount, Line, Member, MultiBuy,
                                         PricingError, Target, allocate_minor,
                                         percent_minor, price)

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

NOW = 1_700_000_000
SHAMPOO = "05012345678900"
SOAP = "05012345678917"
GEL = "05012345678924"
RICE = "06901234567892"
DELI = "02012345000007"
ALICE = Member("M-1", "gold")

# 200 examples a property (~1 s each); the soak profile's larger count wins.
PROPS = settings(max_examples=max(200, settings.default.max_examples), deadline=None)


def code_of(fn, *args, **kw) -> PricingError:
    with pytest.raises(PricingError) as info:
        fn(*args, **kw)
    assert isinstance(info.value, LanecoreError)
    return info.value


def adj(priced, ref) -> int:
    return sum(a.amount_minor for ln in priced.lines for a in ln.adjustments
               if a.ref_id == ref)


# --------------------------------------------------------------------------------------
# Arithmetic
# --------------------------------------------------------------------------------------

def test_percent_rounds_half_up_in_integers():
    assert percent_minor(1000, 1000) == 100
    assert percent_minor(5, 1000) == 1        # 0.5 → 1
    assert percent_minor(4, 1000) == 0        # 0.4 → 0
    assert percent_minor(15, 1000) == 2       # 1.5 → 2
    assert percent_minor(999, 10000) == 999
    assert percent_minor(0, 5000) == 0


def test_allocate_largest_remainder():
    assert allocate_minor(600, [3333, 2667]) == [333, 267]
    assert allocate_minor(100, [1, 1, 1]) == [34, 33, 33]      # tie: the earlier
    assert allocate_minor(2, [0, 5, 5]) == [0, 1, 1]
    assert allocate_minor(10, [3, 7]) == [3, 7]
    assert allocate_minor(0, [0, 0]) == [0, 0]


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=12), st.data())
@PROPS
def test_allocate_sums_exactly_and_never_exceeds(weights, data):
    total = sum(weights)
    amount = data.draw(st.integers(0, total))
    shares = allocate_minor(amount, weights)
    assert sum(shares) == amount
    assert all(0 <= s <= w for s, w in zip(shares, weights))


# --------------------------------------------------------------------------------------
# Worked examples
# --------------------------------------------------------------------------------------

def test_shampoo_with_a_coupon():
    p = price([Line("L1", SHAMPOO, 1, 3000)], now=NOW,
              coupons=[CouponUse("C1", Target(gtin=SHAMPOO), amount_off_minor=500)])
    assert (p.gross_minor, p.discount_minor, p.total_minor) == (3000, 500, 2500)
    c = p.coupons_applied["C1"]
    assert (c.amount_minor, c.gtin, c.units, c.capped) == (500, SHAMPOO, 1, False)
    assert p.lines[0].adjustments == (pricing.Adjustment("coupon", "C1", 500),)
    assert p.to_dict()["coupons_applied"]["C1"]["line_ids"] == ["L1"]


def test_three_for_two_on_a_family_frees_the_cheapest():
    lines = [Line("a", SHAMPOO, 1, 300, family="hair"),
             Line("b", SOAP, 2, 200, family="hair"),
             Line("c", GEL, 3, 100, family="hair")]
    promo = MultiBuy("3FOR2", Target(family="hair"), 3, pay_qty=2)
    p = price(lines, [promo], now=NOW)
    # 6 units: 2 groups, the 2 cheapest (100, 100) free.
    assert (p.gross_minor, p.total_minor) == (1000, 800)
    assert p.promotions_applied == {"3FOR2": 200}
    by_gtin = {ln.gtin: ln for ln in p.lines}
    assert by_gtin[GEL].net_minor == 100 and by_gtin[SOAP].net_minor == 400
    # 4 units (300, 200, 200, 100): one group, the 100 is free; the 4th unit pays.
    p = price(lines[:2] + [Line("c", GEL, 1, 100, family="hair")], [promo], now=NOW)
    assert p.total_minor == 700 and p.promotions_applied == {"3FOR2": 100}
    # 2 units: no group.
    p = price([Line("a", SHAMPOO, 2, 300, family="hair")], [promo], now=NOW)
    assert p.total_minor == 600 and p.promotions_applied == {}


def test_bundle_price_takes_the_dearest_units_while_it_saves():
    promo = MultiBuy("3FOR500", Target(family="hair"), 3, bundle_price_minor=500)
    lines = [Line("a", SHAMPOO, 3, 300, family="hair"), Line("b", GEL, 3, 100, family="hair")]
    p = price(lines, [promo], now=NOW)
    # Bundle 1: 300×3 = 900 → 500 (saves 400). Bundle 2: 100×3 = 300 ≤ 500, no saving.
    assert p.total_minor == 1200 - 400
    assert {ln.gtin: ln.net_minor for ln in p.lines} == {SHAMPOO: 500, GEL: 300}
    # Mixed bundle: 300+300+100 = 700 → 500; the saving 200 is split pro rata by value.
    p = price([Line("a", SHAMPOO, 2, 300, family="hair"),
               Line("b", GEL, 1, 100, family="hair")], [promo], now=NOW)
    assert p.total_minor == 500
    # 85.7, 85.7, 28.6 → 86, 86, 28 (largest remainders to the 300s)
    assert {ln.gtin: ln.net_minor for ln in p.lines} == {SHAMPOO: 428, GEL: 72}


def test_basket_threshold_ten_percent_over_fifty():
    promo = BasketThreshold("SPEND50", 5000, percent_bp=1000)
    lines = [Line("a", SHAMPOO, 1, 3333), Line("b", RICE, 1, 2667)]
    p = price(lines, [promo], now=NOW)
    assert p.total_minor == 5400 and p.promotions_applied == {"SPEND50": 600}
    # allocated pro rata by net, largest remainder: 333.3 → 333, 266.7 → 267
    assert [ln.net_minor for ln in p.lines] == [3000, 2400]
    assert [ln.adjustments[0].amount_minor for ln in p.lines] == [333, 267]
    # exactly 50.00 qualifies; 49.99 does not
    assert price([Line("a", RICE, 1, 5000)], [promo], now=NOW).total_minor == 4500
    assert price([Line("a", RICE, 1, 4999)], [promo], now=NOW).total_minor == 4999


def test_threshold_qualifies_on_the_net_after_item_level_steps():
    lines = [Line("a", SHAMPOO, 1, 5500)]
    promos = [BasketThreshold("SPEND50", 5000, amount_off_minor=500)]
    coupon = CouponUse("C1", Target(gtin=SHAMPOO), amount_off_minor=600)
    assert price(lines, promos, now=NOW).total_minor == 5000
    p = price(lines, promos, now=NOW, coupons=[coupon])       # 55.00 − 6.00 < 50.00
    assert p.total_minor == 4900 and "SPEND50" not in p.promotions_applied


def test_member_price_and_members_only_promotion():
    lines = [Line("a", SHAMPOO, 2, 3000, member_price_minor=2500)]
    promo = ItemDiscount("MEMBER10", Target(gtin=SHAMPOO), percent_bp=1000, members_only=True)
    guest = price(lines, [promo], now=NOW)
    assert guest.total_minor == 6000 and guest.promotions_applied == {}
    assert guest.lines[0].unit_price_minor == 3000
    p = price(lines, [promo], now=NOW, member=ALICE)
    ln = p.lines[0]
    assert (ln.unit_price_minor, ln.list_price_minor, ln.gross_minor) == (2500, 3000, 6000)
    assert [(a.kind, a.ref_id, a.amount_minor) for a in ln.adjustments] == [
        ("member_price", "M-1", 1000), ("item_discount", "MEMBER10", 500)]
    assert p.total_minor == 4500 and p.member_id == "M-1"


def test_member_price_above_list_price_is_ignored():
    p = price([Line("a", SHAMPOO, 1, 3000, member_price_minor=3200)], now=NOW, member=ALICE)
    assert p.total_minor == 3000 and p.lines[0].adjustments == ()


def test_coupon_bigger_than_the_item_is_capped_at_zero():
    lines = [Line("a", SOAP, 1, 120), Line("b", RICE, 1, 1000)]
    p = price(lines, now=NOW, coupons=[CouponUse("BIG", Target(gtin=SOAP), amount_off_minor=500)])
    c = p.coupons_applied["BIG"]
    assert (c.amount_minor, c.capped) == (120, True)
    assert {ln.gtin: ln.net_minor for ln in p.lines} == {SOAP: 0, RICE: 1000}
    assert p.total_minor == 1000


def test_exclusive_group_picks_the_best_for_the_shopper():
    lines = [Line("a", SHAMPOO, 2, 3000)]
    promos = [ItemDiscount("A-FLAT", Target(gtin=SHAMPOO), amount_off_minor=200,
                           exclusive_group="flyer"),
              ItemDiscount("B-PCT", Target(gtin=SHAMPOO), percent_bp=1500,
                           exclusive_group="flyer")]
    p = price(lines, promos, now=NOW)
    assert p.promotions_applied == {"B-PCT": 900} and p.total_minor == 5100
    # Without the group they stack (in promo_id order: 2.00 off each, then 15 %).
    loose = [dataclasses.replace(x, exclusive_group=None) for x in promos]
    assert price(lines, loose, now=NOW).promotions_applied == {"A-FLAT": 400, "B-PCT": 840}
    # Equal savings: the lowest promo_id wins.
    tie = [ItemDiscount("Z", Target(gtin=SHAMPOO), amount_off_minor=300, exclusive_group="g"),
           ItemDiscount("Y", Target(gtin=SHAMPOO), percent_bp=1000, exclusive_group="g")]
    assert price(lines, tie, now=NOW).promotions_applied == {"Y": 600}


def test_exclusive_group_shares_units_not_the_basket():
    # max_units=1 leaves the second unit to the other promotion of the group.
    lines = [Line("a", SHAMPOO, 2, 3000)]
    promos = [ItemDiscount("ONE", Target(gtin=SHAMPOO), percent_bp=5000, max_units=1,
                           exclusive_group="g"),
              ItemDiscount("ALL", Target(gtin=SHAMPOO), amount_off_minor=100,
                           exclusive_group="g")]
    p = price(lines, promos, now=NOW)
    assert p.promotions_applied == {"ALL": 100, "ONE": 1500}
    # A multi-buy in the group claims its deal's units, paid ones included.
    promos = [MultiBuy("2FOR1", Target(family="hair"), 2, pay_qty=1, exclusive_group="g"),
              ItemDiscount("OFF", Target(gtin=SOAP), amount_off_minor=10, exclusive_group="g")]
    lines = [Line("a", SHAMPOO, 1, 500, family="hair"), Line("b", SOAP, 1, 400, family="hair"),
             Line("c", SOAP, 1, 90, family="other")]
    p = price(lines, promos, now=NOW)
    assert p.promotions_applied == {"2FOR1": 400, "OFF": 10}
    assert adj(p, "OFF") == 10 and p.total_minor == 500 + 80


def test_exclusive_basket_thresholds_only_the_best():
    promos = [BasketThreshold("T1", 1000, amount_off_minor=300, exclusive_group="spend"),
              BasketThreshold("T2", 2000, percent_bp=2000, exclusive_group="spend"),
              BasketThreshold("T3", 0, amount_off_minor=1)]
    p = price([Line("a", RICE, 1, 2500)], promos, now=NOW)
    assert p.promotions_applied == {"T2": 500, "T3": 1}
    p = price([Line("a", RICE, 1, 1500)], promos, now=NOW)
    assert p.promotions_applied == {"T1": 300, "T3": 1}
    # equal savings: the lowest promo_id
    tie = [BasketThreshold("Y", 0, amount_off_minor=100, exclusive_group="s"),
           BasketThreshold("X", 0, percent_bp=1000, exclusive_group="s")]
    assert price([Line("a", RICE, 1, 1000)], tie, now=NOW).promotions_applied == {"X": 100}


def test_validity_window():
    lines = [Line("a", SHAMPOO, 1, 3000)]
    t = Target(gtin=SHAMPOO)
    expired = ItemDiscount("OLD", t, amount_off_minor=100, valid_until=NOW)
    future = ItemDiscount("NEW", t, amount_off_minor=100, valid_from=NOW + 1)
    current = ItemDiscount("NOW", t, amount_off_minor=100, valid_from=NOW, valid_until=NOW + 1)
    p = price(lines, [expired, future, current], now=NOW)
    assert p.promotions_applied == {"NOW": 100} and p.total_minor == 2900


def test_item_discount_min_qty_and_max_units():
    t = Target(family="hair")
    lines = [Line("a", SHAMPOO, 2, 500, family="hair"), Line("b", GEL, 2, 300, family="hair")]
    promo = ItemDiscount("P", t, amount_off_minor=100, min_qty=4, max_units=3)
    p = price(lines, [promo], now=NOW)
    # the 3 dearest units: 500, 500, 300
    assert p.promotions_applied == {"P": 300}
    assert {ln.gtin: ln.net_minor for ln in p.lines} == {SHAMPOO: 800, GEL: 500}
    assert price(lines[:1], [promo], now=NOW).promotions_applied == {}


def test_percent_is_rounded_per_line():
    # 3 × 3.33 at 10 %: 99.9 → 100 on the line (not 3 × 33).
    p = price([Line("a", SOAP, 3, 333)], [ItemDiscount("P", Target(gtin=SOAP),
                                                       percent_bp=1000)], now=NOW)
    assert p.promotions_applied == {"P": 100} and p.total_minor == 899


def test_split_and_shuffled_lines_are_merged():
    promo = MultiBuy("3FOR2", Target(gtin=SOAP), 3, pay_qty=2)
    one = price([Line("a", SOAP, 3, 200)], [promo], now=NOW)
    split = price([Line("z", SOAP, 1, 200), Line("y", RICE, 1, 50), Line("x", SOAP, 2, 200)],
                  [promo], now=NOW)
    assert one.promotions_applied == split.promotions_applied == {"3FOR2": 200}
    soap = next(ln for ln in split.lines if ln.gtin == SOAP)
    assert soap.line_ids == ("x", "z") and soap.qty == 3


def test_weighed_line_uses_its_label_amount():
    lines = [Line("w1", DELI, 1, 1990, amount_minor=437), Line("w2", DELI, 1, 1990,
                                                               amount_minor=512)]
    p = price(lines, now=NOW,
              coupons=[CouponUse("D", Target(gtin=DELI), percent_bp=5000)])
    assert p.gross_minor == 949
    # the coupon takes the line where it is worth most: 50 % of 5.12 = 2.56
    assert p.coupons_applied["D"].amount_minor == 256 and p.total_minor == 949 - 256


def test_coupon_rejections():
    lines = [Line("a", SHAMPOO, 1, 3000, manufacturer="acme"), Line("b", SOAP, 2, 100)]
    coupons = [CouponUse("NOPE", Target(gtin=RICE), amount_off_minor=100),
               CouponUse("ISSUER", Target(gtin=SHAMPOO), amount_off_minor=100, issuer="other"),
               CouponUse("MIN3", Target(gtin=SOAP), amount_off_minor=50, min_qty=3),
               CouponUse("UNITS3", Target(gtin=SOAP), amount_off_minor=50, units=3),
               CouponUse("S1", Target(gtin=SHAMPOO), amount_off_minor=100, issuer="acme"),
               CouponUse("S2", Target(gtin=SHAMPOO), amount_off_minor=100)]
    p = price(lines, now=NOW, coupons=coupons)
    assert p.coupons_rejected == {"ISSUER": "NO_MATCHING_ITEM", "MIN3": "MIN_QTY_NOT_MET",
                                  "NOPE": "NO_MATCHING_ITEM", "S2": "ALREADY_COUPONED",
                                  "UNITS3": "MIN_QTY_NOT_MET"}
    assert list(p.coupons_applied) == ["S1"]
    assert set(p.coupons_rejected.values()) <= set(REJECT_REASONS)
    # A free unit (3 for 2) gives a coupon nothing to take: not burned, rejected.
    p = price([Line("a", SOAP, 3, 100)], [MultiBuy("M", Target(gtin=SOAP), 3, pay_qty=2)],
              now=NOW, coupons=[CouponUse(f"C{k}", Target(gtin=SOAP), amount_off_minor=500)
                                for k in range(3)])
    assert {k: v.amount_minor for k, v in p.coupons_applied.items()} == {"C0": 100, "C1": 100}
    assert p.coupons_rejected == {"C2": "NO_VALUE_LEFT"} and p.total_minor == 0


def test_coupon_on_two_units_is_one_value():
    p = price([Line("a", SOAP, 3, 100)], now=NOW,
              coupons=[CouponUse("TWO", Target(gtin=SOAP), amount_off_minor=150, units=2)])
    assert p.coupons_applied["TWO"].amount_minor == 150 and p.total_minor == 150


def test_points_are_the_last_discount_and_capped():
    lines = [Line("a", SHAMPOO, 1, 1000)]
    promo = BasketThreshold("T", 0, amount_off_minor=100)
    p = price(lines, [promo], now=NOW, member=ALICE, points_to_redeem=300,
              points_value_minor_per_point=2, points_available=1000)
    assert (p.points_redeemed, p.points_value_minor, p.total_minor) == (300, 600, 300)
    assert p.lines[0].adjustments[-1] == pricing.Adjustment("points", "M-1", 600)
    # more points than the basket: whole points up to what is left (900 // 2 = 450)
    p = price(lines, [promo], now=NOW, member=ALICE, points_to_redeem=1000,
              points_value_minor_per_point=2)
    assert (p.points_redeemed, p.points_value_minor, p.total_minor) == (450, 900, 0)


def test_everything_stacked_never_goes_negative():
    # odoo #109385 / #113762 / #63106: stacked promotions made negative totals.
    lines = [Line("a", SOAP, 3, 100, family="f"), Line("b", SHAMPOO, 1, 50, family="f")]
    promos = [ItemDiscount("ALL", Target(family="f"), percent_bp=10000),
              ItemDiscount("OFF", Target(gtin=SOAP), amount_off_minor=1000),
              MultiBuy("M", Target(family="f"), 2, pay_qty=1),
              BasketThreshold("T", 0, amount_off_minor=10_000)]
    p = price(lines, promos, now=NOW, member=ALICE, points_to_redeem=50,
              coupons=[CouponUse("C", Target(gtin=SOAP), amount_off_minor=10)])
    assert p.total_minor == 0 and all(ln.net_minor == 0 for ln in p.lines)
    assert p.discount_minor == p.gross_minor == 350
    assert p.coupons_rejected == {"C": "NO_VALUE_LEFT"} and p.points_redeemed == 0


def test_whole_basket_of_the_docs():
    lines = [Line("L1", SHAMPOO, 1, 3000, family="hair", manufacturer="acme",
                  member_price_minor=2800),
             Line("L2", SOAP, 2, 250, family="hair"), Line("L3", GEL, 1, 400, family="hair"),
             Line("L4", RICE, 1, 2500), Line("L5", SOAP, 1, 250, family="hair")]
    promos = [MultiBuy("HAIR3FOR2", Target(family="hair"), 3, pay_qty=2),
              ItemDiscount("RICE10", Target(gtin=RICE), percent_bp=1000),
              BasketThreshold("SPEND50", 5000, amount_off_minor=500, exclusive_group="spend"),
              BasketThreshold("SPEND50PCT", 5000, percent_bp=500, exclusive_group="spend")]
    coupons = [CouponUse("ACME5", Target(gtin=SHAMPOO), amount_off_minor=500, issuer="acme"),
               CouponUse("GEL9", Target(gtin=GEL), amount_off_minor=900)]
    p = price(lines, promos, now=NOW, member=Member("M-1"), coupons=coupons,
              points_to_redeem=200, points_available=1000)
    assert (p.gross_minor, p.discount_minor, p.total_minor) == (6650, 2300, 4350)
    assert [(ln.line_ids, ln.net_minor) for ln in p.lines] == [
        (("L1",), 1981), (("L2", "L5"), 431), (("L3",), 0), (("L4",), 1938)]
    assert [[(a.kind, a.amount_minor) for a in ln.adjustments] for ln in p.lines] == [
        [("member_price", 200), ("coupon", 500), ("basket", 228), ("points", 91)],
        [("multibuy", 250), ("basket", 49), ("points", 20)],
        [("coupon", 400)],
        [("item_discount", 250), ("basket", 223), ("points", 89)]]
    assert p.promotions_applied == {"HAIR3FOR2": 250, "RICE10": 250, "SPEND50": 500}
    assert p.coupons_applied["GEL9"].capped and not p.coupons_applied["ACME5"].capped
    assert (p.points_redeemed, p.points_value_minor) == (200, 200)


def test_empty_basket_and_to_dict():
    p = price([], [BasketThreshold("T", 0, amount_off_minor=5)], now=NOW)
    assert (p.total_minor, p.lines, p.promotions_applied) == (0, (), {})
    d = price([Line("a", SOAP, 1, 100)], now=NOW).to_dict()
    assert d["lines"][0] == {"line_ids": ["a"], "gtin": SOAP, "qty": 1,
                             "list_price_minor": 100, "unit_price_minor": 100,
                             "gross_minor": 100, "adjustments": [], "net_minor": 100}


def test_inputs_are_not_changed():
    lines = [Line("b", SOAP, 2, 100), Line("a", SOAP, 1, 100)]
    promos = [MultiBuy("M", Target(gtin=SOAP), 3, pay_qty=2)]
    before = (list(lines), list(promos))
    price(lines, promos, now=NOW)
    assert (lines, promos) == before


# --------------------------------------------------------------------------------------
# Random baskets
# --------------------------------------------------------------------------------------

GTINS = [f"0501234567{n:04d}" for n in range(5)]
FAMILIES = ["hair", "soap"]
MAKERS = ["acme", "globex"]
ITEM_GROUPS = [None, None, "g1", "g1", "g2"]
PERCENTS = [1, 500, 1000, 2500, 3333, 5000, 10000]

# Each line, promotion and coupon is built from one drawn seed: generation stays fast
# (a few draws per example instead of a hundred) and shrinking still drops elements
# and moves seeds towards 0.
seeds = st.integers(0, 2 ** 32 - 1)


def _maybe(r: random.Random, value):
    return value if r.random() < 0.5 else None


def make_catalogue(seed: int) -> dict:
    """gtin → (price, member price, family, manufacturer); the last GTIN is weighed."""
    r = random.Random(seed)
    return {g: (r.choice([0, 1, 5, 99, 100, 250, 1999, 3000, r.randint(0, 3000)]),
                _maybe(r, r.randint(0, 3000)), r.choice([None] + FAMILIES * 2),
                r.choice([None] + MAKERS)) for g in GTINS}


def make_line(n: int, seed: int, items: dict) -> Line:
    r = random.Random(seed)
    g = r.choice(GTINS)
    unit_price, member_price, family, maker = items[g]
    if g == GTINS[-1]:                                 # weighed: label amounts
        return Line(f"L{n}", g, 1, 1990, family, maker, _maybe(r, r.choice([100, 250])),
                    r.choice([150, 275, 999]))
    return Line(f"L{n}", g, r.randint(1, 5), unit_price, family, maker, member_price)


def make_target(r: random.Random, lines) -> Target:
    """Mostly a GTIN or family of the basket, so that promotions and coupons bite."""
    if lines and r.random() < 0.8:
        ln = r.choice(lines)
        if ln.family is not None and r.random() < 0.5:
            return Target(family=ln.family)
        return Target(gtin=ln.gtin)
    return (Target(gtin=r.choice(GTINS)) if r.random() < 0.5
            else Target(family=r.choice(FAMILIES)))


def make_off(r: random.Random, max_amount: int = 2000) -> dict:
    if r.random() < 0.5:
        return {"amount_off_minor": r.choice([1, 50, r.randint(1, max_amount)])}
    return {"percent_bp": r.choice(PERCENTS)}


def make_promotion(n: int, seed: int, lines):
    r = random.Random(seed)
    w = {"valid_from": r.choice([None, None, None, NOW - 100, NOW, NOW + 1]),
         "valid_until": r.choice([None, None, None, NOW, NOW + 1, NOW + 100]),
         "members_only": r.random() < 0.2}
    if None not in (w["valid_from"], w["valid_until"]) and w["valid_until"] <= w["valid_from"]:
        w["valid_until"] = None
    kind = r.choice(["item", "multi", "basket"])
    if kind == "item":
        return ItemDiscount(f"P{n}", make_target(r, lines), **make_off(r),
                            min_qty=r.randint(1, 4), max_units=_maybe(r, r.randint(1, 4)),
                            exclusive_group=r.choice(ITEM_GROUPS), **w)
    if kind == "multi":
        buy = r.randint(2, 4)
        terms = ({"pay_qty": r.randint(1, buy - 1)} if r.random() < 0.5
                 else {"bundle_price_minor": r.randint(1, 5000)})
        return MultiBuy(f"P{n}", make_target(r, lines), buy, **terms,
                        exclusive_group=r.choice(ITEM_GROUPS), **w)
    return BasketThreshold(f"P{n}", r.randint(0, 8000), **make_off(r),
                           exclusive_group=r.choice([None, "b"]), **w)


def make_coupon(n: int, seed: int, lines) -> CouponUse:
    r = random.Random(seed)
    return CouponUse(f"C{n}", make_target(r, lines), **make_off(r, 4000),
                     min_qty=r.randint(1, 3), units=r.choice([1, 1, 2, 3]),
                     issuer=r.choice([None, None, None] + MAKERS))


@st.composite
def baskets(draw):
    seed = draw(seeds)
    items = make_catalogue(seed)
    n = random.Random(~seed).randint(0, 12)     # hypothesis would favour tiny baskets
    return [make_line(k, s, items) for k, s in
            enumerate(draw(st.lists(seeds, min_size=n, max_size=n)))]


targets = st.sampled_from([Target(gtin=g) for g in GTINS] + [Target(family=f) for f in FAMILIES])
off = st.one_of(st.builds(dict, amount_off_minor=st.integers(1, 4000)),
                st.builds(dict, percent_bp=st.sampled_from(PERCENTS)))


@st.composite
def cases(draw):
    member = ALICE if draw(st.booleans()) else None
    lines = draw(baskets())
    coupons = [make_coupon(n, s, lines)
               for n, s in enumerate(draw(st.lists(seeds, max_size=5)))]
    kw = {"now": NOW, "member": member, "coupons": coupons}
    if member is not None:
        kw["points_to_redeem"] = draw(st.integers(0, 5000))
        kw["points_value_minor_per_point"] = draw(st.sampled_from([1, 3]))
    promos = [make_promotion(n, s, lines)
              for n, s in enumerate(draw(st.lists(seeds, min_size=1, max_size=6)))]
    return lines, promos, kw


def _active(p, member) -> bool:
    return ((p.valid_from is None or p.valid_from <= NOW)
            and (p.valid_until is None or NOW < p.valid_until)
            and (member is not None or not p.members_only))


@given(cases())
@PROPS
def test_invariants(case):
    lines, promos, kw = case
    p = price(lines, promos, **kw)
    all_adj = [a for ln in p.lines for a in ln.adjustments]
    # money adds up, exactly, and nothing is negative
    assert p.gross_minor == sum(ln.qty * ln.effective_unit_price_minor for ln in lines)
    assert all(a.amount_minor > 0 and a.kind in ADJUSTMENT_KINDS for a in all_adj)
    assert all(ln.net_minor >= 0 for ln in p.lines) and p.total_minor >= 0
    assert p.total_minor == p.gross_minor - sum(a.amount_minor for a in all_adj)
    assert p.total_minor == sum(ln.net_minor for ln in p.lines)
    assert p.discount_minor == p.gross_minor - p.total_minor
    for ln in p.lines:
        assert ln.net_minor == ln.gross_minor - sum(a.amount_minor for a in ln.adjustments)
        assert len({(a.kind, a.ref_id) for a in ln.adjustments}) == len(ln.adjustments)
    assert sorted(i for ln in p.lines for i in ln.line_ids) == sorted(x.line_id for x in lines)
    # every promotion per its rules
    by_id = {x.promo_id: x for x in promos}
    member = kw["member"]
    for pid, amount in p.promotions_applied.items():
        x = by_id[pid]
        assert amount > 0 and _active(x, member)
        assert amount == adj(p, pid)
        matching = sum(ln.qty for ln in lines if isinstance(x, (ItemDiscount, MultiBuy))
                       and x.target.matches(ln.gtin, ln.family))
        top = max((ln.effective_unit_price_minor for ln in lines), default=0)
        if isinstance(x, ItemDiscount):
            assert matching >= x.min_qty or x.exclusive_group is not None
            if x.amount_off_minor is not None:
                assert amount <= x.amount_off_minor * min(matching, x.max_units or matching)
        elif isinstance(x, MultiBuy):
            assert matching >= x.buy_qty
            if x.pay_qty is not None:
                assert amount <= (matching // x.buy_qty) * (x.buy_qty - x.pay_qty) * top
        else:
            if x.amount_off_minor is not None:
                assert amount <= x.amount_off_minor
    for pid in set(by_id) - set(p.promotions_applied):
        assert adj(p, pid) == 0
    if member is None:
        assert not any(a.kind in ("member_price", "points") for a in all_adj)
    # every coupon at most once, capped at what was left
    coupons = {c.coupon_id: c for c in kw["coupons"]}
    assert set(p.coupons_applied) | set(p.coupons_rejected) == set(coupons)
    assert not set(p.coupons_applied) & set(p.coupons_rejected)
    assert set(p.coupons_rejected.values()) <= set(REJECT_REASONS)
    for cid, c in p.coupons_applied.items():
        use = coupons[cid]
        assert 0 < c.amount_minor == adj(p, cid)
        assert sum(1 for ln in p.lines for a in ln.adjustments if a.ref_id == cid) == 1
        line = next(ln for ln in p.lines if ln.gtin == c.gtin and ln.line_ids == c.line_ids)
        assert c.units == use.units <= line.qty
        assert c.amount_minor <= line.gross_minor
        if use.amount_off_minor is not None:
            assert c.amount_minor <= use.amount_off_minor
            assert c.capped == (c.amount_minor < use.amount_off_minor)
        else:
            assert not c.capped
    for cid in p.coupons_rejected:
        assert adj(p, cid) == 0
    # points
    asked = kw.get("points_to_redeem", 0)
    assert 0 <= p.points_redeemed <= asked
    assert p.points_value_minor == p.points_redeemed * kw.get("points_value_minor_per_point", 1)
    if p.points_redeemed < asked:      # capped: not one more whole point fits
        assert p.total_minor < kw["points_value_minor_per_point"]


@given(cases(), st.randoms(use_true_random=False))
@PROPS
def test_order_of_lines_promotions_and_coupons_does_not_matter(case, rnd):
    lines, promos, kw = case
    want = price(lines, promos, **kw).to_dict()
    lines, promos, coupons = list(lines), list(promos), list(kw["coupons"])
    for x in (lines, promos, coupons):
        rnd.shuffle(x)
    assert price(lines, promos, **{**kw, "coupons": coupons}).to_dict() == want


def _without_ids(d: dict) -> dict:
    d = dict(d)
    d["lines"] = [{k: v for k, v in ln.items() if k != "line_ids"} for ln in d["lines"]]
    d["coupons_applied"] = {k: {f: v for f, v in c.items() if f != "line_ids"}
                            for k, c in d["coupons_applied"].items()}
    return d


def split_lines(lines, rnd: random.Random) -> list[Line]:
    out = []
    for ln in lines:
        qty, n = ln.qty, 0
        while qty:
            part = rnd.randint(1, qty)
            out.append(dataclasses.replace(ln, line_id=f"{ln.line_id}.{n}", qty=part))
            qty -= part
            n += 1
    rnd.shuffle(out)
    return out


@given(cases(), st.randoms(use_true_random=False))
@PROPS
def test_splitting_lines_does_not_matter(case, rnd):
    lines, promos, kw = case
    want = price(lines, promos, **kw)
    got = price(split_lines(lines, rnd), promos, **kw)
    assert _without_ids(got.to_dict()) == _without_ids(want.to_dict())
    assert {k: c.amount_minor for k, c in got.coupons_applied.items()} == \
        {k: c.amount_minor for k, c in want.coupons_applied.items()}


@given(cases(), st.booleans())
@PROPS
def test_exclusive_groups_never_stack_on_a_unit(case, one_group):
    lines, promos, kw = case
    if one_group:         # every item-level promotion competes in one group
        promos = [x if isinstance(x, BasketThreshold) else
                  dataclasses.replace(x, exclusive_group="g1") for x in promos]
    p = price(lines, promos, **kw)
    group = {x.promo_id: x.exclusive_group for x in promos if x.exclusive_group}
    for ln in p.lines:
        for g in set(group.values()):
            used = {a.ref_id for a in ln.adjustments if group.get(a.ref_id) == g}
            assert len(used) <= ln.qty
            if ln.qty == 1:
                assert len(used) <= 1
    thresholds = [x for x in promos if isinstance(x, BasketThreshold) and x.exclusive_group]
    assert sum(1 for x in thresholds if x.promo_id in p.promotions_applied) <= 1
    # the claims behind it: the units of one group's winners never overlap
    member = kw["member"]
    work = pricing._Work(pricing._canonicalise(lines))
    work.values = [[min(c.list_price, c.member_price)
                    if member and c.member_price is not None else c.list_price] * c.qty
                   for c in work.canon]
    live = [x for x in promos if not isinstance(x, BasketThreshold) and _active(x, member)]
    masks = pricing._resolve_exclusive(live, work)
    for g in set(group.values()):
        claimed = [u for pid, m in masks.items() if group[pid] == g for u in m]
        assert len(claimed) == len(set(claimed))
    for pid in masks:
        assert pid in p.promotions_applied or adj(p, pid) == 0


# Oracles: one promotion or coupon at a time, computed the obvious way.

@given(baskets(), targets, st.integers(1, 2000), st.none() | st.integers(1, 4))
@PROPS
def test_amount_off_item_discount_oracle(lines, target, amount, max_units):
    p = price(lines, [ItemDiscount("P", target, amount_off_minor=amount, max_units=max_units)],
              now=NOW)
    units = sorted((ln.effective_unit_price_minor for ln in lines
                    for _ in range(ln.qty) if target.matches(ln.gtin, ln.family)),
                   reverse=True)[:max_units]
    assert p.promotions_applied.get("P", 0) == sum(min(amount, u) for u in units)


@given(baskets(), targets, st.integers(2, 4), st.data())
@PROPS
def test_pay_qty_multibuy_oracle(lines, target, buy, data):
    pay = data.draw(st.integers(1, buy - 1))
    p = price(lines, [MultiBuy("M", target, buy, pay_qty=pay)], now=NOW)
    units = sorted(ln.effective_unit_price_minor for ln in lines
                   for _ in range(ln.qty) if target.matches(ln.gtin, ln.family))
    free = units[:(len(units) // buy) * (buy - pay)]
    assert p.promotions_applied.get("M", 0) == sum(free)


@given(baskets(), st.integers(0, 8000), off)
@PROPS
def test_basket_threshold_oracle(lines, threshold, terms):
    p = price(lines, [BasketThreshold("T", threshold, **terms)], now=NOW)
    net = p.gross_minor
    if net < threshold:
        want = 0
    elif "amount_off_minor" in terms:
        want = min(terms["amount_off_minor"], net)
    else:
        want = (net * terms["percent_bp"] + 5000) // 10000
    assert p.promotions_applied.get("T", 0) == want and p.total_minor == net - want


@given(st.integers(0, 3000), st.integers(1, 6), st.integers(1, 6), off)
@PROPS
def test_single_coupon_oracle(unit_price, qty, units, terms):
    p = price([Line("a", SOAP, qty, unit_price)], now=NOW,
              coupons=[CouponUse("C", Target(gtin=SOAP), units=units, **terms)])
    left = units * unit_price
    worth = (min(terms["amount_off_minor"], left) if "amount_off_minor" in terms
             else (left * terms["percent_bp"] + 5000) // 10000)
    if units > qty:
        assert p.coupons_rejected == {"C": "MIN_QTY_NOT_MET"}
    elif worth == 0:
        assert p.coupons_rejected == {"C": "NO_VALUE_LEFT"}
    else:
        assert p.coupons_applied["C"].amount_minor == worth
        assert p.total_minor == qty * unit_price - worth


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------

GOOD = Line("a", SOAP, 1, 100)


@pytest.mark.parametrize("line", [
    "not a line", Line("", SOAP, 1, 100), Line(7, SOAP, 1, 100),
    Line("a", "5012345678900", 1, 100), Line("a", "0501234567890x", 1, 100),
    Line("a", 5012345678900, 1, 100), Line("a", SOAP, 0, 100), Line("a", SOAP, -1, 100),
    Line("a", SOAP, True, 100), Line("a", SOAP, 1.0, 100), Line("a", SOAP, 1, -1),
    Line("a", SOAP, 1, 1.5), Line("a", SOAP, 1, 100, member_price_minor=-5),
    Line("a", SOAP, 2, 100, amount_minor=300), Line("a", SOAP, 1, 100, amount_minor=-1),
    Line("a", SOAP, 1, 100, family=""), Line("a", SOAP, 1, 100, manufacturer=3),
    Line("a", SOAP, pricing.MAX_QTY + 1, 100),
])
def test_bad_line(line):
    e = code_of(price, [line], now=NOW)
    assert e.code == "BAD_LINE" and e.to_dict()["code"] == "BAD_LINE"


def test_bad_line_containers_and_bounds():
    assert code_of(price, "abc", now=NOW).code == "BAD_LINE"
    assert code_of(price, None, now=NOW).code == "BAD_LINE"
    many = [Line(f"L{n}", SOAP, pricing.MAX_QTY, 1) for n in range(6)]
    assert code_of(price, many, now=NOW).code == "BAD_LINE"


def test_duplicate_line_id():
    e = code_of(price, [GOOD, Line("a", RICE, 1, 5)], now=NOW)
    assert e.code == "DUPLICATE_LINE_ID" and e.details["line_id"] == "a"


T = Target(gtin=SOAP)


@pytest.mark.parametrize("promo", [
    ItemDiscount("P", T), ItemDiscount("P", T, amount_off_minor=1, percent_bp=1),
    ItemDiscount("P", T, percent_bp=0), ItemDiscount("P", T, percent_bp=10001),
    ItemDiscount("P", T, amount_off_minor=0), ItemDiscount("P", T, amount_off_minor=-5),
    ItemDiscount("P", T, amount_off_minor=1, min_qty=0),
    ItemDiscount("P", T, amount_off_minor=1, max_units=0),
    ItemDiscount("P", Target(), amount_off_minor=1),
    ItemDiscount("P", Target(gtin=SOAP, family="f"), amount_off_minor=1),
    ItemDiscount("P", Target(gtin="123"), amount_off_minor=1),
    ItemDiscount("P", SOAP, amount_off_minor=1),
    ItemDiscount("", T, amount_off_minor=1),
    ItemDiscount("P", T, amount_off_minor=1, valid_from=NOW, valid_until=NOW),
    ItemDiscount("P", T, amount_off_minor=1, valid_from=-1),
    ItemDiscount("P", T, amount_off_minor=1, valid_from=1.5),
    ItemDiscount("P", T, amount_off_minor=1, members_only=1),
    ItemDiscount("P", T, amount_off_minor=1, exclusive_group=""),
    MultiBuy("P", T, 1, pay_qty=1), MultiBuy("P", T, 3, pay_qty=3), MultiBuy("P", T, 3, pay_qty=4),
    MultiBuy("P", T, 3, pay_qty=0), MultiBuy("P", T, 3), MultiBuy("P", T, 3, pay_qty=2,
                                                                     bundle_price_minor=5),
    MultiBuy("P", T, 3, bundle_price_minor=0),
    BasketThreshold("P", -1, amount_off_minor=1), BasketThreshold("P", 100),
    BasketThreshold("P", 100, percent_bp=20000),
    "ten percent off",
])
def test_bad_promotion(promo):
    assert code_of(price, [GOOD], [promo], now=NOW).code == "BAD_PROMOTION"


def test_bad_promotion_duplicates_and_mixed_groups():
    a = ItemDiscount("P", T, amount_off_minor=1)
    assert code_of(price, [GOOD], [a, a], now=NOW).code == "BAD_PROMOTION"
    mixed = [ItemDiscount("A", T, amount_off_minor=1, exclusive_group="g"),
             BasketThreshold("B", 0, amount_off_minor=1, exclusive_group="g")]
    e = code_of(price, [GOOD], mixed, now=NOW)
    assert e.code == "BAD_PROMOTION" and e.details["field"] == "exclusive_group"
    assert code_of(price, [GOOD], "P", now=NOW).code == "BAD_PROMOTION"


@pytest.mark.parametrize("coupon", [
    CouponUse("C", T), CouponUse("C", T, amount_off_minor=1, percent_bp=1),
    CouponUse("C", T, percent_bp=0), CouponUse("C", T, amount_off_minor=0),
    CouponUse("C", T, amount_off_minor=1, units=0), CouponUse("C", T, amount_off_minor=1,
                                                              min_qty=0),
    CouponUse("C", Target(), amount_off_minor=1), CouponUse("", T, amount_off_minor=1),
    CouponUse("C", T, amount_off_minor=1, issuer=""), ("C", SOAP, 100),
])
def test_bad_coupon(coupon):
    assert code_of(price, [GOOD], now=NOW, coupons=[coupon]).code == "BAD_COUPON"


def test_duplicate_coupon():
    c = CouponUse("C", T, amount_off_minor=1)
    e = code_of(price, [GOOD], now=NOW, coupons=[c, dataclasses.replace(c, amount_off_minor=2)])
    assert e.code == "DUPLICATE_COUPON" and e.details["coupon_id"] == "C"


@pytest.mark.parametrize("member", [Member(""), Member("M", tier=""), "M-1"])
def test_bad_member(member):
    assert code_of(price, [GOOD], now=NOW, member=member).code == "BAD_MEMBER"


@pytest.mark.parametrize("kw", [
    {"points_to_redeem": -1, "member": ALICE}, {"points_to_redeem": 1.0, "member": ALICE},
    {"points_to_redeem": 5, "member": ALICE, "points_available": 4},
    {"points_to_redeem": 1, "member": ALICE, "points_available": -1},
    {"points_to_redeem": 1, "member": ALICE, "points_value_minor_per_point": 0},
    {"points_to_redeem": 1},
])
def test_bad_points(kw):
    assert code_of(price, [GOOD], now=NOW, **kw).code == "BAD_POINTS"


@pytest.mark.parametrize("now", [None, "now", -1, True, 2 ** 41])
def test_bad_request_now(now):
    assert code_of(price, [GOOD], now=now).code == "BAD_REQUEST"
