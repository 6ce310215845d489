"""Weigh-check verdicts: the policy, the order model, every error code, exempt and
variable-measure items, the worked examples, the MPE tables at their boundaries."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from lanecore.core.errors import LanecoreError
from lanecore.core.weigh.verify import (CAPACITY_E, DEFAULT_POLICY, MAX_ORDER_BYTES,
                                        CatalogWeights, Verdict, VerifyError, VerifyPolicy,
                                        load_order, max_permissible_error_g, parse_order,
                                        verify)
from lanecore.ext.barcode import gs1_check_digit
from lanecore.ext.lookup import FLAG_VARIABLE_MEASURE, FLAG_WEIGHT_EXEMPT, CatalogTable

# The catalogue of the examples: (GTIN, unit weight g, sd g, flags)
MILK = "5901234123457"        # 1032 g
BREAD = "96385074"            # GTIN-8, 500 g
TEA = "042100005264"          # UPC-A, 120 g
NO_WEIGHT = "90012345678908"  # listed without weight data
GIFT_CARD = "9781492053743"   # weight-exempt
CHEESE_LOOKUP = "2312345600004"   # variable-measure, listed under its lookup GTIN
UNKNOWN_SD = "4006381333931"  # mean known, sd unknown
SOAP = "4000417025005"        # 350 g, never on the orders below
ROWS = [(MILK, 1032.0, 12.0, 0), (BREAD, 500.0, 10.0, 0), (TEA, 120.0, 2.0, 0),
        (NO_WEIGHT, math.nan, math.nan, 0), (GIFT_CARD, math.nan, math.nan,
                                            FLAG_WEIGHT_EXEMPT),
        (CHEESE_LOOKUP, math.nan, math.nan, FLAG_VARIABLE_MEASURE),
        (UNKNOWN_SD, 250.0, math.nan, 0), (SOAP, 350.0, 5.0, 0)]


def g14(code: str) -> str:
    return code.zfill(14)


def cheese(weight_g: int) -> str:
    """A Swedish in-store weight code (prefix 23, kg with 3 decimals)."""
    body = "23123456" + f"{weight_g:04d}"
    return body + str(gs1_check_digit(body))


@pytest.fixture(scope="module")
def table():
    return CatalogTable(np.array([int(r[0]) for r in ROWS], dtype=np.uint64),
                        np.arange(len(ROWS)) * 100, [r[1] for r in ROWS],
                        [r[2] for r in ROWS], np.array([r[3] for r in ROWS], np.uint8))


def order(*lines, **extra):
    return {"lines": [{"gtin": g, **q} if isinstance(q, dict) else {"gtin": g, "qty": q}
                      for g, q in lines], **extra}


BASKET = order((MILK, 1), (BREAD, 2), (TEA, 1))   # 2152 g expected


def err(code, fn, *args, **kw):
    with pytest.raises(VerifyError) as info:
        fn(*args, **kw)
    assert info.value.code == code, info.value.message
    assert isinstance(info.value, LanecoreError)
    assert info.value.to_dict() == {"code": code, "message": info.value.message}
    return info.value


# --------------------------------------------------------------------------------------
# The worked examples
# --------------------------------------------------------------------------------------

def test_honest_basket_is_ok(table):
    v = verify(BASKET, 2152 + 7, table)
    sigma = math.sqrt(144 + 2 * 100 + 4 + 2.5 ** 2)
    assert v.verdict == "ok" and v.explanations == []
    assert v.expected_g == 2152 and v.sigma_g == pytest.approx(sigma)
    assert v.mpe_g == 5.0                       # R51: 2152 g = 430 e <= 500 e: 1 e
    assert v.band_g == pytest.approx(3.29 * sigma + 5.0)
    assert v.z == pytest.approx(7 / sigma)


def test_missing_item_is_short_and_ranked_first(table):
    """An order of three items; the bread is left behind."""
    v = verify(BASKET, 2152 - 500 + 4, table)
    assert v.verdict == "short"
    top = v.explanations[0]
    assert top == {"kind": "missing", "score": top["score"],
                   "lines": [{"gtin": g14(BREAD), "qty": 1}], "gtin": g14(BREAD), "qty": 1}
    assert top["score"] > 0.9
    scores = [e["score"] for e in v.explanations]
    assert scores == sorted(scores, reverse=True) and sum(scores) <= 1 + 1e-9


def test_two_missing_lines_are_one_explanation(table):
    v = verify(BASKET, 2152 - 1032 - 120, table)
    top = v.explanations[0]
    assert top["kind"] == "missing" and top["gtin"] is None and top["qty"] is None
    assert top["lines"] == [{"gtin": g14(MILK), "qty": 1}, {"gtin": g14(TEA), "qty": 1}]


def test_unscanned_catalogue_item_explains_an_excess(table):
    v = verify(BASKET, 2152 + 352, table)
    assert v.verdict == "over"
    top = v.explanations[0]
    assert top == {"kind": "extra", "score": top["score"],
                   "lines": [{"gtin": g14(SOAP), "qty": 1}], "gtin": g14(SOAP), "qty": 1}


def test_extra_unit_of_an_order_line(table):
    v = verify(BASKET, 2152 + 1032, table)
    top = v.explanations[0]
    assert top["kind"] == "extra" and top["gtin"] == g14(MILK) and top["qty"] == 1


def test_items_on_the_order_are_not_unscanned_candidates(table):
    # 500 g over: an extra bread (its line), never "the bread, unscanned"
    v = verify(BASKET, 2152 + 500, table)
    extras = [e for e in v.explanations if e["gtin"] == g14(BREAD)]
    assert len(extras) == 1 and extras[0]["qty"] == 1


def test_verdict_json(table):
    d = verify(BASKET, 2152 - 500.04, table).to_dict()
    assert list(d) == ["verdict", "expected_g", "measured_g", "band_g", "sigma_g", "z",
                       "mpe_g", "explanations"]
    assert d["measured_g"] == 1652.0 and d["z"] == round(d["z"], 2)
    assert all(e["score"] == round(e["score"], 4) for e in d["explanations"])
    assert json.loads(json.dumps(d)) == d
    assert verify(BASKET, 2152.04, table).to_dict()["explanations"] == []


def test_no_negative_zero_in_json():
    v = Verdict("ok", 10.0, 10.0, 10.0, 2.5, -0.001, 5.0)
    assert math.copysign(1, v.to_dict()["z"]) == 1


def test_duplicate_lines_merge(table):
    split = order((BREAD, 1), (MILK, 1), (BREAD, 1), (TEA, 1))
    a, b = verify(split, 1652, table), verify(BASKET, 1652, table)
    assert a.to_dict() == b.to_dict()


def test_weights_given_on_the_line_need_no_catalogue():
    o = order(("5901234123457", {"qty": 2, "unit_weight_g": 400, "weight_sd_g": 4}))
    v = verify(o, 800)
    assert v.expected_g == 800 and v.sigma_g == pytest.approx(math.sqrt(32 + 6.25))


def test_line_weights_override_the_catalogue(table):
    o = order((MILK, {"qty": 1, "unit_weight_g": 1000}))
    v = verify(o, 1000, table)
    assert v.expected_g == 1000 and v.sigma_g == pytest.approx(math.sqrt(144 + 6.25))


def test_tare(table):
    v = verify(order((TEA, 1), tare_g=30, tare_sd_g=3), 150, table)
    assert v.expected_g == 150 and v.sigma_g == pytest.approx(math.sqrt(4 + 9 + 6.25))
    assert verify(order((TEA, 1), tare_g=None), 120, table).expected_g == 120


def test_floor_band(table):
    v = verify(order((TEA, 1)), 120, table, VerifyPolicy(k=1.0))
    assert v.band_g == 10.0            # max(2 e, 1·3.2 + 5)


def test_gtin_forms_normalise(table):
    a = verify(order(("00000096385074", 1)), 500, table)
    b = verify(order((" 96385074 ", 1)), 500, table)
    assert a.expected_g == b.expected_g == 500


# --------------------------------------------------------------------------------------
# Weight-exempt and variable-measure items
# --------------------------------------------------------------------------------------

def test_exempt_items_add_nothing_and_widen_nothing(table):
    with_card = order((MILK, 1), (BREAD, 2), (TEA, 1), (GIFT_CARD, 3))
    a, b = verify(with_card, 1652, table), verify(BASKET, 1652, table)
    assert a.to_dict() == b.to_dict()
    # even when the line claims a weight
    claim = order((TEA, 1), (GIFT_CARD, {"qty": 1, "unit_weight_g": 300}))
    assert verify(claim, 120, table).expected_g == 120


def test_only_exempt_items(table):
    v = verify(order((GIFT_CARD, 2)), 0.0, table)
    assert v.verdict == "ok" and v.expected_g == 0 and v.sigma_g == 2.5
    assert verify(order((GIFT_CARD, 2)), 60.0, table).verdict == "over"


def test_variable_measure_needs_its_label_weight(table):
    o = order((cheese(750), {"qty": 1, "unit_weight_g": 750}))
    v = verify(o, 751, table, region="SE")
    assert v.expected_g == 750
    assert v.sigma_g == pytest.approx(math.sqrt(1.0 + 6.25))   # variable_measure_sd_g
    wide = verify(o, 751, table, VerifyPolicy(variable_measure_sd_g=4.0), region="SE")
    assert wide.sigma_g == pytest.approx(math.sqrt(16.0 + 6.25))
    # the catalogue's lookup GTIN itself, without a weight: refused
    err("NO_WEIGHT_DATA", verify, order((CHEESE_LOOKUP, 1)), 750, table)


def test_in_store_weight_code_carries_its_weight(table):
    # read by the region's rules, the code's own weight is the label's
    v = verify(order((cheese(750), 2)), 1500, table, region="SE")
    assert v.expected_g == 1500 and v.sigma_g == pytest.approx(math.sqrt(2.0 + 6.25))
    short = verify(order((cheese(750), 2), (TEA, 1)), 870, table, region="SE")
    assert short.verdict == "short"
    assert short.explanations[0]["gtin"] == g14(cheese(750))


def test_in_store_code_not_in_the_catalogue_uses_the_label_sd(table):
    # without a region the code is its own lookup key, not listed; its weight is given
    o = order((cheese(750), {"qty": 1, "unit_weight_g": 750}))
    assert verify(o, 750, table).sigma_g == pytest.approx(math.sqrt(1.0 + 6.25))


# --------------------------------------------------------------------------------------
# The max permissible error tables
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("table_name, load_e, mpe_e", [
    ("r76", 0, 0.5), ("r76", 500, 0.5), ("r76", 500.0002, 1.0), ("r76", 2000, 1.0),
    ("r76", 2000.0002, 1.5), ("r76", 10000, 1.5),
    ("r51", 0, 1.0), ("r51", 500, 1.0), ("r51", 500.0002, 1.5), ("r51", 2000, 1.5),
    ("r51", 2000.0002, 2.0), ("r51", 10000, 2.0),
])
def test_mpe_table_boundaries(table_name, load_e, mpe_e):
    for e in (5.0, 2.0, 0.1):
        got = max_permissible_error_g(load_e * e, e, table_name)
        assert got == pytest.approx(mpe_e * e)


def test_mpe_beyond_capacity_and_bad_arguments():
    err("OVER_CAPACITY", max_permissible_error_g, 50000.01, 5.0, "r51")
    err("OVER_CAPACITY", max_permissible_error_g, math.inf, 5.0, "r76")
    err("BAD_POLICY", max_permissible_error_g, 100, 5.0, "oiml")
    err("BAD_POLICY", max_permissible_error_g, 100, 0.0, "r51")
    err("BAD_WEIGHT", max_permissible_error_g, math.nan, 5.0, "r51")
    assert max_permissible_error_g(-20, 5.0) == 5.0


def test_policy_table_changes_the_band(table):
    r76 = verify(BASKET, 2152, table, VerifyPolicy(mpe_table="r76"))
    r51 = verify(BASKET, 2152, table)
    assert r51.mpe_g - r76.mpe_g == pytest.approx(2.5)
    assert r51.band_g - r76.band_g == pytest.approx(2.5)


# --------------------------------------------------------------------------------------
# The policy
# --------------------------------------------------------------------------------------

def test_policy_defaults():
    p = VerifyPolicy()
    assert p == DEFAULT_POLICY
    assert (p.k, p.e_g, p.mpe_table, p.max_units, p.top_k) == (3.29, 5.0, "r51", 3, 5)
    assert p.sigma_scale_g == 2.5 and p.band_floor_g == 10.0
    assert p.capacity_g == CAPACITY_E * 5.0
    assert [a.tolist() for a in p.mpe_rows] == [[500, 2000, 10000], [1.0, 1.5, 2.0]]
    assert (p.p_miss, p.p_extra_line, p.p_unscanned) == (0.01, 0.01, 0.01)
    assert p.variable_measure_sd_g == 1.0
    q = VerifyPolicy(e_g=2.0)
    assert q.sigma_scale_g == 1.0 and q.band_floor_g == 4.0


@pytest.mark.parametrize("field, value", [
    ("k", 0), ("k", -1), ("k", math.nan), ("k", math.inf), ("k", "3"), ("k", True),
    ("e_g", 0), ("e_g", math.inf), ("mpe_table", "R51 "), ("mpe_table", None),
    ("scale_sd_g", 0), ("scale_sd_g", -1), ("scale_sd_g", math.nan),
    ("floor_g", -1), ("floor_g", math.inf),
    ("max_units", 0), ("max_units", 9), ("max_units", 2.0), ("max_units", True),
    ("p_miss", 0), ("p_miss", 1), ("p_extra_line", 1.5), ("p_unscanned", math.nan),
    ("top_k", 0), ("top_k", 51), ("top_k", "5"),
    ("variable_measure_sd_g", -0.1), ("variable_measure_sd_g", math.nan),
])
def test_bad_policy(field, value):
    e = err("BAD_POLICY", VerifyPolicy, **{field: value})
    assert field in e.message


def test_policy_must_be_a_policy(table):
    err("BAD_POLICY", verify, BASKET, 2152, table, {"k": 3})


def test_policies_are_frozen_and_replaceable():
    p = dataclasses.replace(VerifyPolicy(), floor_g=0.0, scale_sd_g=1.0)
    assert p.band_floor_g == 0.0 and p.sigma_scale_g == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.k = 2.0


# --------------------------------------------------------------------------------------
# Every error code
# --------------------------------------------------------------------------------------

def test_empty_order(table):
    err("EMPTY_ORDER", verify, {"lines": []}, 0, table)


@pytest.mark.parametrize("bad", [
    None, [], "ORDER", 42, {}, {"lines": None}, {"lines": "x"}, {"lines": {"gtin": MILK}},
    {"lines": [{"gtin": MILK, "qty": 1}], "order_no": "A1"},
    {"lines": [[MILK, 1]]}, {"lines": [None]},
    {"lines": [{"gtin": MILK, "qty": 1, "price": 100}]},
    {"lines": [{"qty": 1}]}, {"lines": [{"gtin": MILK}]},
    {"lines": [{"gtin": None, "qty": 1}]},
    {"lines": [{"gtin": TEA, "qty": 1}] * 1001},
])
def test_bad_order(table, bad):
    err("BAD_ORDER", verify, bad, 0, table)


@pytest.mark.parametrize("gtin", [
    5901234123457, "5901234123458", "590123412345", "59012341234570", "abc",
    "", "   ", "5901234123457x", "]E05901234123457", "4006381333901",
    "00012345600013", "(01)05901234123457", "0105901234123457", "٣٤٥٦٧٨٩٠",
])
def test_bad_gtin(table, gtin):
    err("BAD_GTIN", verify, order((gtin, 1)), 0, table)


@pytest.mark.parametrize("qty", [0, -1, 1.5, 2.0, True, "2", 10001, 10 ** 30, math.nan])
def test_bad_quantity(table, qty):
    err("BAD_QUANTITY", verify, order((MILK, qty)), 0, table)


def test_quantity_limit_is_inclusive():
    o = order(("5901234123457", {"qty": 10000, "unit_weight_g": 1.0, "weight_sd_g": 0.0}))
    assert verify(o, 10000).expected_g == 10000


@pytest.mark.parametrize("field, value", [
    ("unit_weight_g", math.nan), ("unit_weight_g", math.inf), ("unit_weight_g", -1),
    ("unit_weight_g", "100"), ("unit_weight_g", True), ("weight_sd_g", -0.5),
    ("weight_sd_g", math.inf), ("weight_sd_g", [1]),
])
def test_bad_weight(table, field, value):
    err("BAD_WEIGHT", verify, order((MILK, {"qty": 1, field: value})), 1000, table)


@pytest.mark.parametrize("tare", [{"tare_g": -1}, {"tare_g": math.nan}, {"tare_g": "5"},
                                  {"tare_sd_g": -1}, {"tare_sd_g": math.inf}])
def test_bad_tare(table, tare):
    err("BAD_WEIGHT", verify, order((MILK, 1), **tare), 1000, table)


def test_unknown_item(table):
    e = err("UNKNOWN_ITEM", verify, order(("4006381333900", 1)), 0, table)
    assert "04006381333900" in e.message
    err("UNKNOWN_ITEM", verify, order((MILK, 1)), 0)     # no catalogue given


def test_no_weight_data(table):
    e = err("NO_WEIGHT_DATA", verify, order((MILK, 1), (NO_WEIGHT, 1)), 1000, table)
    assert g14(NO_WEIGHT) in e.message
    # a known mean without a standard deviation is missing data too
    err("NO_WEIGHT_DATA", verify, order((UNKNOWN_SD, 1)), 250, table)
    assert verify(order((UNKNOWN_SD, {"qty": 1, "weight_sd_g": 5})), 250,
                  table).expected_g == 250
    # a weight given for an item the catalogue does not know, without its sd
    err("NO_WEIGHT_DATA", verify, order(("4006381333900", {"qty": 1, "unit_weight_g": 9})),
        9, table)


@pytest.mark.parametrize("measured", [math.nan, math.inf, -math.inf, "100", None, True,
                                      -50.001, [100]])
def test_bad_measurement(table, measured):
    err("BAD_MEASUREMENT", verify, BASKET, measured, table)


def test_slightly_negative_measurement_is_a_reading(table):
    v = verify(order((GIFT_CARD, 1)), -50.0, table)      # -10 e: zero drift
    assert v.verdict == "short"
    assert verify(order((GIFT_CARD, 1)), -3.0, table).verdict == "ok"


def test_over_capacity(table):
    heavy = order((MILK, 48))                          # 49.5 kg: within 10000 e
    assert verify(heavy, 48 * 1032, table).mpe_g == 10.0
    e = err("OVER_CAPACITY", verify, order((MILK, 49)), 49 * 1032, table)
    assert "50000" in e.message
    # a larger e, a larger scale
    assert verify(order((MILK, 49)), 49 * 1032, table, VerifyPolicy(e_g=10)).verdict == "ok"


def test_unknown_region(table):
    err("UNKNOWN_REGION", verify, BASKET, 2152, table, region="Sweden")


def test_order_files(tmp_path, table):
    p = tmp_path / "ORDER.json"
    p.write_text(json.dumps(BASKET))
    assert load_order(p) == BASKET
    assert verify(load_order(str(p)), 2152, table).verdict == "ok"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(BASKET).encode())   # a BOM is fine
    assert load_order(p) == BASKET
    err("ORDER_NOT_FOUND", load_order, tmp_path / "nope.json")
    err("ORDER_UNREADABLE", load_order, tmp_path)                   # a directory
    p.write_text("{\"lines\": [")
    err("ORDER_UNREADABLE", load_order, p)
    p.write_bytes(b"\xff\xfe{}")
    err("ORDER_UNREADABLE", load_order, p)
    p.write_bytes(b" " * (MAX_ORDER_BYTES + 1))
    err("ORDER_UNREADABLE", load_order, p)
    p.write_text("[1, 2]")
    err("BAD_ORDER", load_order, p)
    p.write_text('{"lines": [{"gtin": "5901234123457", "qty": 1, "unit_weight_g": NaN}]}')
    err("BAD_WEIGHT", load_order, p)
    p.write_text("[" * 100_000)
    err("ORDER_UNREADABLE", load_order, p)


def test_parse_order_keeps_the_lines():
    o = parse_order(order((TEA, 2), (BREAD, {"qty": 1, "unit_weight_g": 499.5}), tare_g=12))
    assert [(ln.gtin, ln.qty, ln.unit_weight_g) for ln in o.lines] == [
        (g14(TEA), 2, None), (g14(BREAD), 1, 499.5)]
    assert o.tare_g == 12.0 and o.tare_sd_g == 0.0


def test_api_misuse_is_a_programming_error(table):
    with pytest.raises(TypeError):
        verify(BASKET, 2152, table={"not": "a table"})
    other = CatalogTable(np.array([1], np.uint64), [1], [1.0], [1.0], np.zeros(1, np.uint8))
    with pytest.raises(ValueError):
        verify(BASKET, 2152, table, catalog_weights=CatalogWeights(other))


# --------------------------------------------------------------------------------------
# The catalogue weight index
# --------------------------------------------------------------------------------------

def test_catalog_weights(table):
    cw = CatalogWeights.for_table(table)
    assert CatalogWeights.for_table(table) is cw
    # milk, bread, tea, soap: not the exempt, variable-measure, no-data or no-sd rows
    assert len(cw) == 4
    assert cw.weight_g.tolist() == [120.0, 350.0, 500.0, 1032.0]
    assert [cw.gtin14(i) for i in range(4)] == [g14(TEA), g14(SOAP), g14(BREAD), g14(MILK)]
    assert (cw.position_of_row >= 0).sum() == 4


def test_without_a_catalogue_an_excess_is_explained_by_the_lines():
    o = order(("5901234123457", {"qty": 1, "unit_weight_g": 400, "weight_sd_g": 4}))
    v = verify(o, 800)
    assert v.verdict == "over" and v.explanations[0]["lines"] == [
        {"gtin": "05901234123457", "qty": 1}]


def test_long_orders_search_fewer_units_per_explanation():
    lines = []
    for i in range(300):
        body = f"400{i:09d}"
        lines.append({"gtin": body + str(gs1_check_digit(body)), "qty": 1,
                      "unit_weight_g": 20.0 + i / 10, "weight_sd_g": 0.5})
    expected = sum(ln["unit_weight_g"] for ln in lines)
    v = verify({"lines": lines}, expected - 25.0 - 40.0)
    assert v.verdict == "short" and v.explanations
    assert all(sum(x["qty"] for x in e["lines"]) <= 2 for e in v.explanations)
