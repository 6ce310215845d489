"""The barcode kernel, compiled and twin alike (fixture ``bc``).

Vectors come from the GS1 General Specifications (via REFERENCE.md), GS1 member
organisations' published examples, and the Datalogic Magellan / AIM conventions.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, strategies as st

import lanecore
from lanecore.core.scan.scanmix import mixed_scans
from lanecore.ext import gs1data as D

EXAMPLE_CONFIG = Path(__file__).parents[2] / "docs" / "examples" / "lanecore.toml"
ROW_KEYS = ["input", "ok", "kind", "gtin", "lookup_gtin", "price_minor", "weight_g",
            "count", "ais", "error"]


def ok(bc, code, region=None):
    r = bc.parse_scan(code, region)
    assert r.ok, (code, r.error_code, r.error_message)
    return r


def err(bc, code, region=None):
    r = bc.parse_scan(code, region)
    assert not r.ok, (code, r.to_dict())
    assert r.error_message and isinstance(r.error_message, str)
    return r.error_code


# --------------------------------------------------------------------------------------
# Check digits, normalisation, UPC-E
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("code, gtin14", [
    ("9781492053743", "09781492053743"),   # GTIN-13
    ("02345673", "00000002345673"),        # GTIN-8
    ("90012345678908", "90012345678908"),  # GTIN-14
    ("042100005264", "00042100005264"),    # GTIN-12 (UPC-A)
    ("96385074", "00000096385074"),
    ("5901234123457", "05901234123457"),
])
def test_gtins_normalise_to_gtin14(bc, code, gtin14):
    r = ok(bc, code)
    assert r.gtin == gtin14
    assert r.gtin_key == int(gtin14)
    assert r.lookup_gtin == gtin14


@pytest.mark.parametrize("code", ["9781492053744", "02345674", "90012345678909",
                                  "042100005265"])
def test_wrong_gtin_check_digit(bc, code):
    r = bc.parse_scan(code)
    assert r.error_code == "BAD_CHECK_DIGIT"
    assert code in r.error_message and "expected" in r.error_message


def test_check_digit_functions(bc):
    assert bc.gs1_check_digit("978149205374") == 3
    assert bc.gs1_check_digit("0234567") == 3
    # GS1 GenSpecs §7.9.3 and §7.9.4 worked examples
    assert bc.price_check_digit("2875") == 9
    assert bc.price_check_digit("14685") == 6


@pytest.mark.parametrize("upce, upca", [
    ("04252614", "042100005264"),   # d7 = 1: REFERENCE vector
    ("01234505", "012000003455"),   # d7 = 0: d1 d2 d7 0000 d3 d4 d5
    ("01234523", "012200003453"),   # d7 = 2
    ("01234531", "012300000451"),   # d7 = 3: d1 d2 d3 00000 d4 d5
    ("01234543", "012340000053"),   # d7 = 4: d1..d4 00000 d5
    ("01234558", "012345000058"),   # d7 = 5: d1..d5 0000 d7
])
def test_upce_expands_to_upca(bc, upce, upca):
    assert bc.upce_to_upca(upce[0], upce[1:7]) == upca[:11]
    assert ok(bc, "]E0" + upce).gtin == upca.rjust(14, "0")
    assert ok(bc, "S08E" + upce[:7]).gtin == upca.rjust(14, "0")  # Magellan: no check digit


def test_upce_number_system_must_be_0_or_1(bc):
    assert err(bc, "]E024252614") == "BAD_NUMBER_SYSTEM"


def test_eight_digits_without_symbology_prefer_ean8_then_upce(bc):
    assert ok(bc, "96385074").gtin == "00000096385074"       # valid EAN-8
    assert ok(bc, "04252614").gtin == "00042100005264"       # not EAN-8; valid UPC-E
    assert err(bc, "04252615") == "BAD_CHECK_DIGIT"


# --------------------------------------------------------------------------------------
# Symbology identifiers and Magellan prefixes
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("code, kind, gtin", [
    ("]E05901234123457", "gtin", "05901234123457"),
    ("]E0042100005264", "gtin", "00042100005264"),
    ("]E496385074", "gtin", "00000096385074"),
    ("]E3590123412345712", "gtin", "05901234123457"),        # EAN-13 + 2-digit add-on
    ("]E3978149205374351299", "gtin", "09781492053743"),      # ISBN + 5-digit price add-on
    ("]I105901234123457", "gtin", "05901234123457"),          # ITF-14
    ("]C10105901234123457", "gs1", "05901234123457"),         # GS1-128
    ("]e00105901234123457", "gs1", "05901234123457"),         # GS1 DataBar
    ("]Q30105901234123457", "gs1", "05901234123457"),         # GS1 QR
    ("]d20105901234123457", "gs1", "05901234123457"),         # GS1 DataMatrix
    ("]Q1LC1:order=12345;sig=AbC", "text", None),             # plain QR: an order code
    ("S08A042100005264", "gtin", "00042100005264"),           # Magellan UPC-A
    ("S08F5901234123457", "gtin", "05901234123457"),          # Magellan EAN-13
    ("S08FF96385074", "gtin", "00000096385074"),              # Magellan EAN-8
    ("S08E0425261", "gtin", "00042100005264"),                # Magellan UPC-E
    ("S08R40105901234123457", "gs1", "05901234123457"),       # Magellan DataBar
    ("S08B205901234123457", "gtin", "05901234123457"),        # Magellan ITF
])
def test_symbology_identifiers(bc, code, kind, gtin):
    r = ok(bc, code + "\r\n")
    assert r.kind == kind
    assert r.gtin == gtin
    assert r.symbology is not None and code.startswith(r.symbology)


def test_addon_is_kept_apart(bc):
    r = ok(bc, "]E3978149205374351299")
    assert r.addon == "51299"


@pytest.mark.parametrize("code", ["]X0123", "]E", "S08Q123", "S08"])
def test_unknown_symbology(bc, code):
    assert err(bc, code) == "UNKNOWN_SYMBOLOGY"


@pytest.mark.parametrize("code, what", [("]E4123456789", "BAD_LENGTH"),
                                        ("]I112345", "BAD_LENGTH"),
                                        ("]E0A234567890123", "NON_DIGIT")])
def test_symbology_constrains_length_and_digits(bc, code, what):
    assert err(bc, code) == what


# --------------------------------------------------------------------------------------
# In-store (restricted circulation) codes
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("region, code, lookup, price, weight, count", [
    ("GB", "2011122912346", "02011122000005", 1234, None, None),
    ("SE", "2088060112343", "02088060100005", 1234, None, None),
    ("SE", "2188060112340", "02188060100002", 12340, None, None),
    ("SE", "2288060112347", "02288060100009", 123400, None, None),
    ("SE", "2388060112344", "02388060100006", None, 1234.0, None),
    ("SE", "2488060112341", "02488060100003", None, 12340.0, None),
    ("SE", "2588060112348", "02588060100000", None, 123400.0, None),
    ("NO", "2302148210869", "02302148200006", None, 1086.0, None),
    ("DE", "2211114002394", "02211110000004", 239, None, None),
    ("DE", "2511119000129", "02511110000005", None, None, 12),
    ("DE", "2811111068708", "02811110000006", None, 6870.0, None),
    ("DK", "2135040039753", "02135040000005", 3975, None, None),
    ("DK", "2712341002251", "02712341000004", None, 225.0, None),
    ("FI", "2388060112344", "02388060100006", None, 1234.0, None),
    ("LV", "2311111112345", "02311111100007", None, 1234.0, None),
])
def test_instore_codes_by_region(bc, region, code, lookup, price, weight, count):
    r = ok(bc, code, region)
    assert r.kind == "rcn"
    assert r.lookup_gtin == lookup
    assert (r.price_minor, r.weight_g, r.count) == (price, weight, count)
    assert r.gtin == code.rjust(14, "0")
    # the lookup key is itself a valid GTIN with no variable part left
    assert ok(bc, lookup).gtin == lookup


def test_region_is_case_insensitive(bc):
    assert ok(bc, "2011122912346", "gb").price_minor == 1234


def test_wrong_price_check_digit(bc):
    # GB: 20 11122 C=9 1234; the same code with C=8 and a fixed GTIN check digit.
    assert err(bc, "2011122812349", "GB") == "BAD_PRICE_CHECK_DIGIT"
    assert err(bc, "2811110068709", "DE") == "BAD_PRICE_CHECK_DIGIT"


def test_instore_code_without_rules_is_looked_up_whole(bc):
    for region in (None, "US"):
        r = ok(bc, "2011122912346", region)
        assert r.kind == "rcn"
        assert r.lookup_gtin == r.gtin == "02011122912346"
        assert r.price_minor is None


def test_prefix_without_a_rule_in_a_known_region(bc):
    r = ok(bc, "2911111111111", "SE")
    assert r.kind == "rcn" and r.lookup_gtin == "02911111111111" and r.price_minor is None


@pytest.mark.parametrize("code, kind", [
    ("0412345678903", "rcn"),     # GTIN-13 prefix 04: company internal
    ("412345678903", "rcn"),      # the same as GTIN-12
    ("02345673", "rcn"),          # RCN-8 (GS1-8 prefix 0)
    ("21234569", "rcn"),          # RCN-8 (GS1-8 prefix 2)
    ("4006381333931", "gtin"),    # GS1 Germany: an ordinary GTIN
    ("4901234567894", "gtin"),    # GS1 Japan
])
def test_company_rcn_and_ordinary_prefixes(bc, code, kind):
    r = ok(bc, code, "DE")
    assert r.kind == kind
    assert r.lookup_gtin == r.gtin


def test_store_defined_region(bc):
    """A store-defined table (e.g. CN scales) registered from configuration."""
    from lanecore.core.config import parse_config
    cfg = parse_config(EXAMPLE_CONFIG.read_text())
    bc.register_region(cfg.regions["CN"])
    r = ok(bc, "2012345012349", "CN")
    assert (r.price_minor, r.currency, r.lookup_gtin) == (1234, "CNY", "02012345000001")
    r = ok(bc, "2112345007502", "cn")
    assert (r.weight_g, r.lookup_gtin) == (750.0, "02112345000008")


def test_inexact_amount(bc):
    """A price with more decimals than the currency has cannot be charged exactly."""
    from lanecore.ext.gs1data import RcnRegion
    bc.register_region(RcnRegion("JP", "JPY", 392, 0, {"20": ("price", "PPPPPPPPVVVV", 2)}))
    assert ok(bc, "2012345612006", "JP").price_minor == 12       # 12.00 -> 12 yen
    assert err(bc, "2012345612341", "JP") == "INEXACT_AMOUNT"    # 12.34 yen


# --------------------------------------------------------------------------------------
# GS1 element strings
# --------------------------------------------------------------------------------------

GS = "\x1d"


@pytest.mark.parametrize("data, ais", [
    ("00106141412345678908", {"00": "106141412345678908"}),
    ("0105901234123457", {"01": "05901234123457"}),
    ("0205901234123457" + "37" + "24", {"02": "05901234123457", "37": "24"}),
    ("0105901234123457" + "10" + "ABC-123" + GS + "17" + "271231",
     {"01": "05901234123457", "10": "ABC-123", "17": "271231"}),
    ("11" + "260115" + "13" + "260116" + "15" + "260200" + "17" + "280229" + "21" + "SN1",
     {"11": "260115", "13": "260116", "15": "260200", "17": "280229", "21": "SN1"}),
    ("30" + "12" + GS + "3103" + "001250", {"30": "12", "3103": "001250"}),
    ("3202" + "000150", {"3202": "000150"}),
    ("3922" + "1234" + GS + "3932" + "978" + "567", {"3922": "1234", "3932": "978567"}),
    ("255" + "0614141123452" + "123", {"255": "0614141123452123"}),
    ("8110" + "012345612345611110123", {"8110": "012345612345611110123"}),
    ("8112" + "0612345678901234567", {"8112": "0612345678901234567"}),
])
def test_element_strings(bc, data, ais):
    r = ok(bc, "]C1" + data)
    assert r.kind == "gs1"
    assert r.ais == ais
    assert r.to_dict()["ais"] == ais


def test_fixed_length_ais_need_no_separator_but_variable_ones_do(bc):
    # (17) has a predefined length: (10) follows with no GS.
    assert ok(bc, "]C11727123110ABC").ais == {"17": "271231", "10": "ABC"}
    # Without the GS, (10) runs on and swallows "17271231" as its own data.
    assert ok(bc, "]C110ABC17271231").ais == {"10": "ABC17271231"}
    # ... and a variable field longer than its maximum is an error, not a new AI.
    assert err(bc, "]C110" + "A" * 21) == "BAD_AI_VALUE"
    # A GS after a fixed-length field, or a doubled GS, is harmless.
    assert ok(bc, "]C11727123110ABC" + GS + GS + "21X").ais == {
        "17": "271231", "10": "ABC", "21": "X"}


def test_weight_price_count_from_ais(bc):
    r = ok(bc, "]e0" + "0195012345678903" + "3103" + "001250" + "3922" + "599" + GS + "30" + "2",
           "GB")
    assert (r.weight_g, r.price_minor, r.count, r.currency) == (1250.0, 599, 2, "GBP")
    r = ok(bc, "]C1" + "3202" + "000150")          # 1.50 lb
    assert r.weight_g == pytest.approx(680.388555)
    r = ok(bc, "]C1" + "3932" + "826" + "1234", "GB")     # GBP matches the region
    assert r.price_minor == 1234
    r = ok(bc, "]C1" + "3932" + "840" + "1234", "GB")     # USD: not the store's money
    assert r.price_minor is None
    r = ok(bc, "]C1" + "3105" + "123456")          # 1.23456 kg
    assert r.weight_g == pytest.approx(1234.56)


@pytest.mark.parametrize("data", ["00106141412345678909", "0105901234123458",
                                  "0205901234123458"])
def test_check_digits_of_00_01_02(bc, data):
    assert err(bc, "]C1" + data) == "BAD_CHECK_DIGIT"


@pytest.mark.parametrize("ai", ["11", "13", "15", "17"])
@pytest.mark.parametrize("date, valid", [
    ("261231", True), ("260200", True),   # day 00: the end of the month
    ("280229", True), ("270229", False),  # 2028 is a leap year, 2027 is not
    ("261301", False), ("260001", False), ("260431", False), ("26023A", False),
])
def test_dates(bc, ai, date, valid):
    r = bc.parse_scan("]C1" + ai + date)
    if valid:
        assert r.ok and r.ais == {ai: date}
    else:
        assert r.error_code in ("BAD_DATE", "BAD_AI_VALUE")


def test_date_with_time(bc):
    assert ok(bc, "]C1" + "4324" + "2607012359").ais == {"4324": "2607012359"}
    assert ok(bc, "]C1" + "4324" + "2607019999").ok          # 9999: no time
    assert err(bc, "]C1" + "4324" + "2607012460") == "BAD_DATE"
    assert err(bc, "]C1" + "8008" + "26070125") == "BAD_DATE"   # hour 25


def test_date_range_second_date(bc):
    assert ok(bc, "]C1" + "7007" + "260101261231").ok
    assert err(bc, "]C1" + "7007" + "260101261301") == "BAD_DATE"


def test_duplicate_ai(bc):
    assert ok(bc, "]C1" + "10A" + GS + "10A").ais == {"10": "A"}
    assert err(bc, "]C1" + "10A" + GS + "10B") == "DUPLICATE_AI"


# --------------------------------------------------------------------------------------
# Bad input: every error code, never an exception
# --------------------------------------------------------------------------------------

BAD = [
    (12345, None, "NOT_TEXT"),
    (b"5901234123457", None, "NOT_TEXT"),
    ("", None, "EMPTY"),
    (" \t\r\n", None, "EMPTY"),
    ("]C1", None, "EMPTY"),
    ("5" * (D.MAX_INPUT_LEN + 1), None, "TOO_LONG"),
    ("59012\x0034123457", None, "NUL_BYTE"),
    ("5901234123457\u00e9", None, "NON_ASCII"),
    ("\u0665901234123457", None, "NON_ASCII"),      # Arabic-Indic digit
    ("5901\x07234123457", None, "BAD_CHARACTER"),
    ("590123412345X", None, "NON_DIGIT"),
    ("hello", None, "NON_DIGIT"),
    ("12345", None, "BAD_LENGTH"),
    ("123456789", None, "BAD_LENGTH"),
    ("5901234123458", None, "BAD_CHECK_DIGIT"),
    ("]E024252614", None, "BAD_NUMBER_SYSTEM"),
    ("2011122812349", "GB", "BAD_PRICE_CHECK_DIGIT"),
    ("]C1" + "05" + "123", None, "UNKNOWN_AI"),
    ("]C1" + "3106" + "123456", None, "UNKNOWN_AI"),
    ("]C1" + "01" + "0590123", None, "TRUNCATED_AI"),
    ("]C1" + "310", None, "TRUNCATED_AI"),
    ("]C1" + "10" + "AB\u00a7", None, "NON_ASCII"),
    ("]C1" + "10" + "AB#", None, "BAD_AI_VALUE"),
    ("]C1" + "30" + "12A", None, "BAD_AI_VALUE"),
    ("]C1" + "17" + "261332", None, "BAD_DATE"),
    ("]C1" + "10A" + GS + "10B", None, "DUPLICATE_AI"),
    ("]C1" + "3923" + "1001", "GB", "INEXACT_AMOUNT"),
    ("]Z9123", None, "UNKNOWN_SYMBOLOGY"),
    ("5901234123457", "GBR", "UNKNOWN_REGION"),
    ("5901234123457", "1A", "UNKNOWN_REGION"),
]


@pytest.mark.parametrize("code, region, code_expected", BAD)
def test_bad_input_gives_stable_code(bc, code, region, code_expected):
    r = bc.parse_scan(code, region)
    assert not r.ok
    assert r.error_code == code_expected
    assert r.to_dict()["error"] == {"code": code_expected, "message": r.error_message}
    assert r.gtin is None and r.lookup_gtin is None and r.ais is None and r.kind is None


def test_every_error_code_is_exercised():
    assert {c for _, _, c in BAD} == set(D.ERROR_CODES) - {None}
    assert set(D.ERROR_CODES) - {None} == set(D.MESSAGES) == set(D.ERROR_DOCS)


@given(st.one_of(
    st.text(max_size=60),
    st.text(alphabet="0123456789\x1d]CEQde0134IS8AFRXB", max_size=60),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
))
def test_never_raises_and_twins_agree(both_barcode, code):
    compiled, twin = both_barcode
    for region in (None, "GB", "DE"):
        a = compiled.parse_scan(code, region)
        b = twin.parse_scan(code, region)
        assert a.to_dict() == b.to_dict()
        assert a.ok or a.error_code in D.ERROR_CODES


def test_twins_agree_on_a_day_of_scans(both_barcode):
    compiled, twin = both_barcode
    for region in ("GB", "SE", "DE"):
        for s in mixed_scans(3000, seed=11, region=region):
            a = compiled.parse_scan(s.code, region)
            b = twin.parse_scan(s.code, region)
            assert a.to_dict() == b.to_dict(), s
            assert (a.symbology, a.addon, a.currency, a.region) == \
                (b.symbology, b.addon, b.currency, b.region)
            if s.expect_kind:
                assert a.ok and a.kind == s.expect_kind, (s, a.to_dict())
            else:
                assert a.error_code == s.expect_error, (s, a.to_dict())


def test_result_row_shape(bc):
    row = ok(bc, "5901234123457").to_dict()
    assert list(row) == ROW_KEYS
    assert row["input"] == "5901234123457" and row["error"] is None
    assert bc.parse_many(["5901234123457", "x"], None)[1].error_code == "NON_DIGIT"


def test_public_api_uses_the_selected_kernel():
    import os
    from lanecore.ext import barcode
    pure = os.environ.get("LANECORE_PURE") == "1"
    assert barcode.IMPLEMENTATION == ("python" if pure else "cython")
    assert lanecore.parse_scan is barcode.parse_scan
    assert lanecore.parse_scan("5901234123457").to_dict()["gtin"] == "05901234123457"
