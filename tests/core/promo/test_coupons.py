"""Coupons (core/promo/coupons.py): the (8110)/(8112) element-string values, field by field
and round trip; the coupon book's every code; all-or-nothing reservation; release,
reversal and the clearing report; fifty tills racing for one coupon; and a state
machine that never sees a coupon redeemed twice."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from lanecore.core.scan.catalog import connect
from lanecore.core.promo.coupons import (
    MAX_AI_LEN, ClearingRow, CouponBook, CouponError, Definition, NACoupon,
    PositiveOfferCoupon, QualifyingPurchase, build_8110, build_8112, coupons_in_ais,
    parse_8110, parse_8112,
)
from lanecore.ext.barcode import parse_scan
from chainfix import chain_root, pg_server  # noqa: F401 - the [postgresql] runs
from dbfix import db  # noqa: F401 - one fixture, [sqlite] and [postgresql]


def err(fn, *args, **kw) -> CouponError:
    with pytest.raises(CouponError) as info:
        fn(*args, **kw)
    return info.value


# ======================================================================================
# (8110)
# ======================================================================================

REFERENCE = "012345612345611110123"      # REFERENCE.md §4 and the GS1 linter's own


def test_reference_vector():
    c = parse_8110(REFERENCE)
    assert c == NACoupon("123456", "123456", 1, QualifyingPurchase(1, 0, "123", "123456"))
    assert c.additional_rules_code is c.second is c.third is c.expiration_date is None
    assert c.coupon_id is None
    assert build_8110(c) == REFERENCE


# The worked examples of the North American Coupon Application Guideline R2.0 (as the
# gs1-syntax-dictionary linter's tests carry them): each reads and writes back exactly.
NACAG = {
    "10614141011111275110111": dict(company_prefix="0614141", offer_code="011111",
                                    save_value=75),
    "106141410222223100110222111101231023456721104561045678991201":
        dict(save_value=100, additional_rules_code=1, save_value_code=1,
             applies_to_item=2, store_coupon=0, dont_multiply=True),
    "1061414165432131501101201211014092110256100126663101231":
        dict(save_value=150, additional_rules_code=2,
             expiration_date=dt.date(2010, 12, 31)),
    "106141410012342501106501013085093101231": dict(save_value=50),
    "106141410012471011076011110850921108609310123191000": dict(save_value=0),
    "106141411234562891101201212085010048000214025610048000310123191000":
        dict(save_value=89),
    "106141416543213500110000310123196000": dict(save_value=500, save_value_code=6),
}


@pytest.mark.parametrize("value", sorted(NACAG))
def test_nacag_examples(value):
    c = parse_8110(value)
    for k, v in NACAG[value].items():
        assert getattr(c, k) == v
    assert build_8110(c) == value


def test_nacag_second_and_third_purchases():
    c = parse_8110("106141410222223100110222111101231023456721104561045678991201")
    assert c.primary == QualifyingPurchase(1, 0, "222", "0614141")
    assert c.second == QualifyingPurchase(1, 0, "123", "0234567")
    assert c.third == QualifyingPurchase(1, 0, "456", "0456789")
    # company prefix length 9: "the primary's", no digits follow
    c = parse_8110("106141410012342501106501013085093101231")
    assert c.second == QualifyingPurchase(3, 0, "850", None)


BASE = REFERENCE


@pytest.mark.parametrize("tail, field, value", [
    ("1" + "0" + "11" + "0" + "123" + "9", "second", QualifyingPurchase(1, 0, "123", None)),
    ("1" + "3" + "3250" + "1" + "777" + "1" + "1234567", "second",
     QualifyingPurchase(250, 1, "777", "1234567")),
    ("2" + "15" + "9" + "001" + "6" + "123456789012", "third",
     QualifyingPurchase(5, 9, "001", "123456789012")),
    ("3" + "251231", "expiration_date", dt.date(2025, 12, 31)),
    ("3" + "000229", "expiration_date", dt.date(2000, 2, 29)),
    ("4" + "250101", "start_date", dt.date(2025, 1, 1)),
    ("5" + "0" + "000042", "serial_number", "000042"),
    ("5" + "9" + "123456789012345", "serial_number", "123456789012345"),
    ("6" + "1" + "1234567", "retailer_id", "1234567"),
    ("6" + "7" + "0614141000005", "retailer_id", "0614141000005"),
    ("9" + "2" + "1" + "4" + "1", "save_value_code", 2),
    ("9" + "2" + "1" + "4" + "1", "applies_to_item", 1),
    ("9" + "2" + "1" + "4" + "1", "store_coupon", 4),
    ("9" + "2" + "1" + "4" + "1", "dont_multiply", True),
    ("9" + "5" + "0" + "0" + "0", "dont_multiply", False),
])
def test_each_optional_field(tail, field, value):
    c = parse_8110(BASE + tail)
    assert getattr(c, field) == value
    assert build_8110(c) == BASE + tail


def test_optional_fields_together():
    value = (BASE + "1" + "1" + "12" + "0" + "500" + "9"          # 1: second purchase
             + "2" + "11" + "0" + "600" + "9"                     # 2: third purchase
             + "3" + "261231"                                     # 3: expiry
             + "5" + "0" + "987654" + "6" + "1" + "1234567"       # 5, 6
             + "9" + "0" + "0" + "1" + "1")                       # 9
    c = parse_8110(value)
    assert (c.additional_rules_code, c.second.requirement, c.third.family_code) == (
        1, 2, "600")
    assert (c.start_date, c.expiration_date) == (None, dt.date(2026, 12, 31))
    assert c.serial_number == "987654" and c.retailer_id == "1234567"
    assert c.coupon_id == "123456-123456-987654"
    assert (c.save_value_code, c.applies_to_item, c.store_coupon, c.dont_multiply) == (
        0, 0, 1, True)
    assert build_8110(c) == value
    assert c.to_dict()["expiration_date"] == "2026-12-31"
    # all seven optional fields do not fit in (8110)'s 70 characters
    e = err(build_8110, NACoupon(**{**c.__dict__, "start_date": dt.date(2026, 1, 1)}))
    assert e.details["field"] == "value" and "74 digits" in e.message
    assert err(parse_8110, value[:21] + "4260101" + value[21:]).details["field"] == "value"


def test_valid_on():
    c = parse_8110(BASE + "3261231" + "4260101")
    assert c.valid_on(dt.date(2026, 6, 1)) and c.valid_on(dt.date(2026, 12, 31))
    assert not c.valid_on(dt.date(2027, 1, 1)) and not c.valid_on(dt.date(2025, 12, 31))
    assert parse_8110(BASE).valid_on(dt.date(1999, 1, 1))


@pytest.mark.parametrize("value, field", [
    ("", "company_prefix_length"),
    ("7123456789012312345611110123", "company_prefix_length"),
    ("9123456789012345", "company_prefix_length"),
    ("012345", "company_prefix"),                         # truncated prefix
    ("612345678901", "company_prefix"),
    ("0123456123", "offer_code"),
    ("0123456123456", "save_value_length"),               # missing
    ("01234561234560", "save_value_length"),              # 0 is not a length
    ("01234561234566123456", "save_value_length"),        # nor 6
    ("012345612345621", "save_value"),                    # says 2, has 1
    ("012345612345611", "purchase_requirement_length"),
    ("0123456123456110", "purchase_requirement_length"),
    ("0123456123456116123456", "purchase_requirement_length"),
    ("0123456123456111", "purchase_requirement"),
    ("01234561234561111", "purchase_requirement_code"),
    ("012345612345611115", "purchase_requirement_code"),
    ("012345612345611118", "purchase_requirement_code"),
    ("012345612345611110", "family_code"),
    ("01234561234561111012", "family_code"),
    (BASE + "1", "additional_rules_code"),
    (BASE + "14", "additional_rules_code"),
    (BASE + "10", "second_purchase_requirement_length"),
    (BASE + "100", "second_purchase_requirement_length"),
    (BASE + "1021", "second_purchase_requirement"),
    (BASE + "1011", "second_purchase_requirement_code"),
    (BASE + "10115", "second_purchase_requirement_code"),
    (BASE + "101101", "second_family_code"),
    (BASE + "10110123", "second_company_prefix_length"),
    (BASE + "101101237" + "1234567890123", "second_company_prefix_length"),
    (BASE + "101101231" + "123456", "second_company_prefix"),
    (BASE + "2", "third_purchase_requirement_length"),
    (BASE + "20", "third_purchase_requirement_length"),
    (BASE + "211", "third_purchase_requirement_code"),
    (BASE + "2110123", "third_company_prefix_length"),
    (BASE + "3", "expiration_date"),
    (BASE + "312345", "expiration_date"),                 # 5 of 6 digits
    (BASE + "3201310", "expiration_date"),                # month 13
    (BASE + "3210229", "expiration_date"),                # 2021 has no 29 February
    (BASE + "3200600", "expiration_date"),                # day 00
    (BASE + "4200230", "start_date"),
    (BASE + "4", "start_date"),
    (BASE + "35006064500607", "start_date"),              # starts after it expires
    (BASE + "5", "serial_number_length"),
    (BASE + "51123456", "serial_number"),                 # says 7, has 6
    (BASE + "6", "retailer_id_length"),
    (BASE + "60", "retailer_id_length"),
    (BASE + "68" + "12345678901234", "retailer_id_length"),
    (BASE + "61123456", "retailer_id"),
    (BASE + "9", "save_value_code"),
    (BASE + "93", "save_value_code"),
    (BASE + "90", "applies_to_item"),
    (BASE + "903", "applies_to_item"),
    (BASE + "900", "store_coupon"),
    (BASE + "9000", "dont_multiply"),
    (BASE + "90002", "dont_multiply"),
    (BASE + "0", "value"),                                # not an optional field
    (BASE + "7", "value"),
    (BASE + "8", "value"),
    (BASE + "90000" + "0", "value"),                      # after field 9
    (BASE + "3200229" + "1011012390", "value"),           # field 1 after field 3
    (BASE + "3200229" + "3200229", "value"),              # field 3 twice
    ("a12345612345611110123", "value"),
    ("01234561234561111012３", "value"),                  # a non-ASCII digit
    ("0" * (MAX_AI_LEN + 1), "value"),
    (12345, "value"),
])
def test_8110_format_errors(value, field):
    e = err(parse_8110, value)
    assert e.code == "COUPON_FORMAT"
    assert e.details["ai"] == "8110" and e.details["field"] == field, e.message
    assert field.replace("_", " ") in e.message


def test_8110_error_positions():
    assert err(parse_8110, "01234561234560").details["pos"] == 14
    assert err(parse_8110, BASE + "14").details["pos"] == 23
    assert err(parse_8110, "a1").details["pos"] == 1
    e = err(parse_8110, BASE + "35006064500607")
    assert e.details["pos"] == 30 and "after the expiration date" in e.message


# ======================================================================================
# (8112)
# ======================================================================================

def test_8112_vectors():
    assert parse_8112("001234561234560123456") == PositiveOfferCoupon(
        0, "123456", "123456", "123456")
    c = parse_8112("061234567890121234569123456789012345")
    assert c == PositiveOfferCoupon(0, "123456789012", "123456", "123456789012345")
    assert c.coupon_id == "123456789012-123456-123456789012345"
    assert parse_8112("101234561234560123456").format_code == 1
    assert parse_8112("0012345612345611234567").serial_number == "1234567"
    for v in ("001234561234560123456", "061234567890121234569123456789012345"):
        assert build_8112(parse_8112(v)) == v


@pytest.mark.parametrize("value, field", [
    ("", "format_code"),
    ("201234561234560123456", "format_code"),
    ("0", "funder_id_length"),
    ("07", "funder_id_length"),
    ("00", "funder_id"),
    ("0012345", "funder_id"),
    ("0612345678901", "funder_id"),
    ("00123456", "offer_code"),
    ("0012345612345", "offer_code"),
    ("00123456123456", "serial_number_length"),
    ("001234561234560", "serial_number"),
    ("001234561234561123456", "serial_number"),
    ("0012345612345601234567", "value"),                  # excess data
    ("0612345678901212345691234567890123456", "value"),
    ("0012345612345601234x", "value"),
])
def test_8112_format_errors(value, field):
    e = err(parse_8112, value)
    assert e.code == "COUPON_FORMAT"
    assert e.details["ai"] == "8112" and e.details["field"] == field, e.message


def test_coupons_in_a_scan():
    r = parse_scan("]C18110" + REFERENCE + "\x1d8112001234561234560123456")
    assert r.ok, r.error
    na, po = coupons_in_ais(r.ais)
    assert na == parse_8110(REFERENCE) and po.serial_number == "123456"
    assert coupons_in_ais(parse_scan("]E09781492053743").ais or {}) == []


# ======================================================================================
# Writing them
# ======================================================================================

def digits(lo, hi):
    return st.text("0123456789", min_size=lo, max_size=hi)


purchases = st.builds(QualifyingPurchase, st.integers(0, 99999),
                      st.sampled_from([0, 1, 2, 3, 4, 9]), digits(3, 3),
                      st.none() | digits(6, 12))
dates = st.dates(dt.date(2000, 1, 1), dt.date(2099, 12, 31))


@st.composite
def na_coupons(draw):
    gcp = draw(digits(6, 12))
    kw = {}
    if draw(st.booleans()):
        kw["additional_rules_code"] = draw(st.integers(0, 3))
        kw["second"] = draw(purchases)
    if draw(st.booleans()):
        kw["third"] = draw(purchases)
    expiry = draw(st.none() | dates)
    start = draw(st.none() | dates)
    if expiry and start and start > expiry:
        start, expiry = expiry, start
    kw.update(expiration_date=expiry, start_date=start,
              serial_number=draw(st.none() | digits(6, 15)),
              retailer_id=draw(st.none() | digits(7, 13)))
    if draw(st.booleans()):
        kw.update(save_value_code=draw(st.sampled_from([0, 1, 2, 5, 6])),
                  applies_to_item=draw(st.integers(0, 2)),
                  store_coupon=draw(st.integers(0, 9)),
                  dont_multiply=draw(st.booleans()))
    primary = QualifyingPurchase(draw(st.integers(0, 99999)),
                                 draw(st.sampled_from([0, 1, 2, 3, 4, 9])),
                                 draw(digits(3, 3)), gcp)
    return NACoupon(gcp, draw(digits(6, 6)), draw(st.integers(0, 99999)), primary, **kw)


@given(na_coupons())
def test_8110_round_trip(c):
    try:
        value = build_8110(c)
    except CouponError as e:
        # Every field at its longest does not fit in 70 characters: the builder says so.
        assert e.code == "COUPON_FORMAT" and e.details["field"] == "value"
        assert "at most 70" in e.message
        return
    assert len(value) <= MAX_AI_LEN
    assert parse_8110(value) == c
    assert parse_scan("]e08110" + value).ais == {"8110": value}


@given(st.builds(PositiveOfferCoupon, st.integers(0, 1), digits(6, 12), digits(6, 6),
                 digits(6, 15)))
def test_8112_round_trip(c):
    value = build_8112(c)
    assert parse_8112(value) == c
    assert parse_scan("]e08112" + value).ais == {"8112": value}


@given(st.text("0123456789", max_size=MAX_AI_LEN))
def test_parsers_never_crash(value):
    for parse in (parse_8110, parse_8112):
        try:
            parse(value)
        except CouponError as e:
            assert e.code == "COUPON_FORMAT"


@pytest.mark.parametrize("change, field", [
    (dict(company_prefix="12345"), "company_prefix"),
    (dict(company_prefix="12345a"), "company_prefix"),
    (dict(offer_code="1234567"), "offer_code"),
    (dict(save_value=100000), "save_value"),
    (dict(save_value=-1), "save_value"),
    (dict(save_value=True), "save_value"),
    (dict(additional_rules_code=1), "additional_rules_code"),          # no second
    (dict(second=QualifyingPurchase(1, 0, "123")), "additional_rules_code"),
    (dict(additional_rules_code=4, second=QualifyingPurchase(1, 0, "123")),
     "additional_rules_code"),
    (dict(third=QualifyingPurchase(1, 5, "123")), "third_purchase_requirement_code"),
    (dict(third=QualifyingPurchase(1, 0, "12")), "third_family_code"),
    (dict(expiration_date=dt.date(1999, 12, 31)), "expiration_date"),
    (dict(expiration_date=dt.date(2025, 1, 1), start_date=dt.date(2025, 1, 2)),
     "start_date"),
    (dict(serial_number="12345"), "serial_number"),
    (dict(retailer_id="12345678901234"), "retailer_id"),
    (dict(save_value_code=0), "save_value_code"),                     # field 9 in part
    (dict(save_value_code=3, applies_to_item=0, store_coupon=0, dont_multiply=False),
     "save_value_code"),
    (dict(save_value_code=0, applies_to_item=0, store_coupon=0, dont_multiply=1),
     "dont_multiply"),
    (dict(primary=QualifyingPurchase(1, 0, "123", "999999")), "primary"),
])
def test_8110_builder_refuses(change, field):
    base = dict(company_prefix="123456", offer_code="123456", save_value=1,
                primary=QualifyingPurchase(1, 0, "123"))
    base.update(change)
    e = err(build_8110, NACoupon(**base))
    assert e.code == "COUPON_FORMAT" and e.details["field"] == field, e.message


def test_8112_builder_refuses():
    assert err(build_8112, PositiveOfferCoupon(2, "123456", "123456", "123456")
               ).details["field"] == "format_code"
    assert err(build_8112, PositiveOfferCoupon(0, "123456", "123456", "1" * 16)
               ).details["field"] == "serial_number"


# ======================================================================================
# The coupon book
# ======================================================================================

NOW = 1_750_000_000
DAY = 86_400
SHAMPOO = "05012345678900"


def define(book, def_id="D-SHAMPOO", **kw) -> Definition:
    terms = dict(coupon_def_id=def_id, issuer_id="ACME", target_gtin=SHAMPOO,
                 amount_off_minor=150, currency="USD", valid_from=NOW - DAY,
                 valid_until=NOW + 30 * DAY)
    terms.update(kw)
    return book.define(Definition(**terms))


@pytest.fixture
def book(db):  # noqa: F811 - the dbfix fixture
    con = db.connect()
    b = CouponBook(con)
    b.add_issuer("ACME", "Acme Household Ltd")
    b.add_issuer("GLOBEX", "Globex Foods")
    define(b)
    define(b, "D-SOUP", issuer_id="GLOBEX", target_gtin=None, target_family="soup",
           amount_off_minor=None, percent_bp=2500, per_customer_limit=2)
    define(b, "D-LATER", valid_from=NOW + DAY)
    define(b, "D-OLD", valid_from=NOW - 10 * DAY, valid_until=NOW - DAY + 1)
    yield b
    con.close()


@pytest.mark.parametrize("change, field", [
    (dict(coupon_def_id=""), "coupon_def_id"),
    (dict(issuer_id="no spaces"), "issuer_id"),
    (dict(target_family="soup"), "target_gtin"),                       # both targets
    (dict(target_gtin=None), "target_gtin"),                           # neither
    (dict(target_gtin="5012345678900"), "target_gtin"),                # 13 digits
    (dict(target_gtin="05012345678901"), "target_gtin"),               # check digit
    (dict(target_gtin=None, target_family="a b"), "target_family"),
    (dict(percent_bp=1000), "amount_off_minor"),                       # both values
    (dict(amount_off_minor=None), "amount_off_minor"),                 # neither
    (dict(amount_off_minor=0), "amount_off_minor"),
    (dict(amount_off_minor=1.5), "amount_off_minor"),
    (dict(amount_off_minor=None, percent_bp=10001), "percent_bp"),
    (dict(amount_off_minor=None, percent_bp=0), "percent_bp"),
    (dict(currency="usd"), "currency"),
    (dict(min_qty=0), "min_qty"),
    (dict(valid_from=-1), "valid_from"),
    (dict(valid_until=NOW - DAY), "valid_until"),                      # not after from
    (dict(valid_until=float(NOW)), "valid_until"),
    (dict(per_customer_limit=0), "per_customer_limit"),
])
def test_bad_definitions(change, field):
    terms = dict(coupon_def_id="D", issuer_id="ACME", target_gtin=SHAMPOO,
                 amount_off_minor=150, currency="USD", valid_from=NOW - DAY,
                 valid_until=NOW + DAY)
    terms.update(change)
    with pytest.raises(CouponError) as info:
        Definition(**terms)
    assert info.value.code == "BAD_COUPON_DEF" and info.value.details["field"] == field


def test_issuers_and_definitions(book):
    assert [i.issuer_id for i in book.issuers()] == ["ACME", "GLOBEX"]
    assert book.add_issuer("ACME", "Acme Household Ltd").name == "Acme Household Ltd"
    assert err(book.add_issuer, "ACME", "Other").code == "REF_CONFLICT"
    assert err(define, book, "D-X", issuer_id="NOBODY").code == "UNKNOWN_ISSUER"
    assert define(book) == book.definition("D-SHAMPOO")               # repeat: harmless
    assert err(define, book, amount_off_minor=151).code == "REF_CONFLICT"
    assert err(book.definition, "D-NONE").code == "UNKNOWN_COUPON_DEF"
    assert book.definition("D-SOUP").percent_bp == 2500


def test_issue(book):
    c = book.issue("D-SHAMPOO", "alice", now=NOW)
    assert c.state == "issued" and c.order_no is None and c.issued_at == NOW
    assert len(c.coupon_id) >= 16 and c.coupon_id.isalnum()
    assert book.coupon(c.coupon_id) == c
    again = book.issue("D-SHAMPOO", "alice", coupon_id=c.coupon_id, now=NOW + 5)
    assert again == c                                                  # idempotent
    assert err(book.issue, "D-SOUP", "alice", coupon_id=c.coupon_id, now=NOW
               ).code == "REF_CONFLICT"
    assert err(book.issue, "D-SHAMPOO", "bob", coupon_id=c.coupon_id, now=NOW
               ).code == "REF_CONFLICT"
    assert err(book.issue, "D-NONE", "alice", now=NOW).code == "UNKNOWN_COUPON_DEF"
    assert err(book.issue, "D-OLD", "alice", now=NOW).code == "COUPON_EXPIRED"
    assert book.issue("D-LATER", "alice", now=NOW).state == "issued"   # issued early
    assert err(book.issue, "D-SHAMPOO", "alice", coupon_id="has space", now=NOW
               ).code == "BAD_REQUEST"
    assert err(book.issue, "D-SHAMPOO", "alice", now="soon").code == "BAD_REQUEST"
    assert [x.coupon_def_id for x in book.wallet("alice")] == ["D-SHAMPOO", "D-LATER"]
    assert err(book.coupon, "NOPE").code == "UNKNOWN_COUPON"


def test_customer_limit(book):
    book.issue("D-SOUP", "alice", coupon_id="S1", now=NOW)
    book.issue("D-SOUP", "alice", coupon_id="S2", now=NOW)
    e = err(book.issue, "D-SOUP", "alice", coupon_id="S3", now=NOW)
    assert e.code == "CUSTOMER_LIMIT" and e.details["limit"] == 2
    assert book.issue("D-SOUP", "alice", coupon_id="S2", now=NOW).coupon_id == "S2"
    assert book.issue("D-SOUP", "bob", coupon_id="S3", now=NOW).customer_id == "bob"
    # redeemed coupons still count
    book.reserve(["S1"], order_no="O1", customer_id="alice", now=NOW)
    book.commit("O1", {"S1": 40}, store_id="ST1", now=NOW)
    assert err(book.issue, "D-SOUP", "alice", now=NOW).code == "CUSTOMER_LIMIT"


@pytest.fixture
def wallet(book):
    for cid, def_id, who in [("A1", "D-SHAMPOO", "alice"), ("A2", "D-SHAMPOO", "alice"),
                             ("A3", "D-SOUP", "alice"), ("AL", "D-LATER", "alice"),
                             ("B1", "D-SHAMPOO", "bob")]:
        book.issue(def_id, who, coupon_id=cid, now=NOW - DAY)
    return book


def states(book, *ids):
    return [book.coupon(c).state for c in ids]


def test_reserve_and_commit(wallet):
    rs = wallet.reserve(["A1", "A3"], order_no="O1", customer_id="alice", now=NOW)
    assert [r.coupon_id for r in rs] == ["A1", "A3"]
    assert rs[0].definition.target_gtin == SHAMPOO and rs[0].reserved_at == NOW
    assert rs[1].definition.percent_bp == 2500
    assert states(wallet, "A1", "A3") == ["reserved", "reserved"]
    assert wallet.coupon("A1").order_no == "O1"
    # the same request again (a retry), later: the same reservations
    assert wallet.reserve(["A1", "A3", "A1"], order_no="O1", customer_id="alice",
                          now=NOW + 60) == rs
    rows = wallet.commit("O1", {"A1": 150, "A3": 37}, store_id="ST1", now=NOW + 90)
    assert [(r.coupon_id, r.issuer_id, r.amount_minor, r.currency, r.store_id,
             r.order_no, r.redeemed_at, r.reversed) for r in rows] == [
        ("A1", "ACME", 150, "USD", "ST1", "O1", NOW + 90, False),
        ("A3", "GLOBEX", 37, "USD", "ST1", "O1", NOW + 90, False)]
    assert states(wallet, "A1", "A3") == ["redeemed", "redeemed"]
    o = wallet.order("O1")
    assert (o.state, o.customer_id, o.store_id, o.coupon_ids) == (
        "committed", "alice", "ST1", ("A1", "A3"))
    assert wallet.order("NEVER") is None
    # a retried commit answers from the record; other terms are a conflict
    assert wallet.commit("O1", {"A1": 150, "A3": 37}, store_id="ST1", now=NOW + 99) == rows
    assert err(wallet.commit, "O1", {"A1": 150, "A3": 36}, store_id="ST1", now=NOW
               ).code == "REF_CONFLICT"
    assert err(wallet.commit, "O1", {"A1": 150, "A3": 37}, store_id="ST2", now=NOW
               ).code == "REF_CONFLICT"
    e = err(wallet.reserve, ["A2"], order_no="O1", customer_id="alice", now=NOW)
    assert e.code == "ORDER_CLOSED" and e.details["state"] == "committed"
    assert wallet.coupon("A2").state == "issued"


def test_reserve_codes(wallet):
    def code(ids, order="O9", who="alice", now=NOW):
        return err(wallet.reserve, ids, order_no=order, customer_id=who, now=now).code

    assert code(["NOPE"]) == "UNKNOWN_COUPON"
    assert code(["B1"]) == "NOT_YOUR_COUPON"
    assert code(["AL"]) == "COUPON_NOT_YET_VALID"
    assert code(["A1"], now=NOW + 30 * DAY) == "COUPON_EXPIRED"   # valid_until: exclusive
    wallet.reserve(["A1"], order_no="O1", customer_id="alice", now=NOW + 30 * DAY - 1)
    e = err(wallet.reserve, ["A1"], order_no="O2", customer_id="alice", now=NOW)
    assert e.code == "COUPON_USED" and "reserved for another order" in e.message
    wallet.commit("O1", {"A1": 100}, store_id="ST1", now=NOW)
    e = err(wallet.reserve, ["A1"], order_no="O2", customer_id="alice", now=NOW)
    assert e.code == "COUPON_USED" and "redeemed" in e.message
    # bad requests
    assert code("A2") == "BAD_REQUEST"                                # a str, not a list
    assert code(["A2"], order="") == "BAD_REQUEST"
    assert code(["x" * 41]) == "BAD_REQUEST"
    assert code([f"C{i}" for i in range(101)]) == "BAD_REQUEST"
    # another customer's order
    wallet.reserve(["B1"], order_no="OB", customer_id="bob", now=NOW)
    assert code(["A2"], order="OB") == "REF_CONFLICT"


def test_reserve_is_all_or_nothing(wallet):
    e = err(wallet.reserve, ["A1", "A2", "B1", "NOPE", "A3"], order_no="O1",
            customer_id="alice", now=NOW)
    assert e.code == "NOT_YOUR_COUPON" and e.details["coupon_id"] == "B1"
    assert e.details["failures"] == [{"coupon_id": "B1", "code": "NOT_YOUR_COUPON"},
                                     {"coupon_id": "NOPE", "code": "UNKNOWN_COUPON"}]
    assert states(wallet, "A1", "A2", "A3", "B1") == ["issued"] * 4
    assert wallet.order("O1") is None                                 # not even the order
    rs = wallet.reserve(["A1", "A2", "A3"], order_no="O1", customer_id="alice", now=NOW)
    assert [r.coupon_id for r in rs] == ["A1", "A2", "A3"]


def test_commit_codes_and_unused_coupons(wallet):
    wallet.reserve(["A1", "A2", "A3"], order_no="O1", customer_id="alice", now=NOW)

    def code(amounts, order="O1"):
        return err(wallet.commit, order, amounts, store_id="ST1", now=NOW).code

    assert code({"A1": 151}) == "BAD_AMOUNT"                          # above its face
    assert code({"A1": -1}) == "BAD_AMOUNT"
    assert code({"A1": 1.0}) == "BAD_AMOUNT"
    assert code({"B1": 10}) == "COUPON_NOT_RESERVED"
    assert code({"A1": 10}, order="NEVER") == "UNKNOWN_ORDER"
    assert code([("A1", 10)]) == "BAD_REQUEST"
    assert states(wallet, "A1", "A2", "A3") == ["reserved"] * 3        # nothing moved
    # A2 unused (0), A3 left out: both back in the wallet; A3 is percent: no face cap
    rows = wallet.commit("O1", {"A1": 150, "A2": 0}, store_id="ST1", now=NOW)
    assert [r.coupon_id for r in rows] == ["A1"]
    assert states(wallet, "A1", "A2", "A3") == ["redeemed", "issued", "issued"]
    wallet.reserve(["A2"], order_no="O2", customer_id="alice", now=NOW)
    assert wallet.release("O2") == ["A2"]
    assert code({"A2": 1}, order="O2") == "ORDER_CLOSED"


def test_release_returns_the_coupons(wallet):
    wallet.reserve(["A1", "A3"], order_no="O1", customer_id="alice", now=NOW)
    assert wallet.release("O1") == ["A1", "A3"]
    assert states(wallet, "A1", "A3") == ["issued", "issued"]
    assert wallet.coupon("A1").order_no is None
    assert wallet.order("O1").state == "released"
    assert wallet.release("O1") == [] and wallet.release("NEVER") == []
    # another order may now take them; the released one may be reopened
    wallet.reserve(["A1"], order_no="O2", customer_id="alice", now=NOW)
    wallet.reserve(["A3"], order_no="O1", customer_id="alice", now=NOW)
    assert wallet.order("O1").state == "open"
    wallet.commit("O2", {"A1": 100}, store_id="ST1", now=NOW)
    e = err(wallet.release, "O2")
    assert e.code == "ORDER_CLOSED" and "reverse" in e.message
    assert wallet.coupon("A1").state == "redeemed"


def test_reverse_returns_the_coupons_and_the_totals_drop(wallet):
    wallet.reserve(["A1", "A3"], order_no="O1", customer_id="alice", now=NOW)
    wallet.commit("O1", {"A1": 150, "A3": 40}, store_id="ST1", now=NOW)
    wallet.reserve(["A2"], order_no="O2", customer_id="alice", now=NOW + 10)
    wallet.commit("O2", {"A2": 100}, store_id="ST2", now=NOW + 10)
    report = wallet.clearing()
    assert report.totals == {"ACME": {"USD": 250}, "GLOBEX": {"USD": 40}}
    assert report.counts == {"ACME": {"USD": 2}, "GLOBEX": {"USD": 1}}

    assert wallet.reverse("O1", now=NOW + 100) == ["A1", "A3"]
    assert states(wallet, "A1", "A2", "A3") == ["issued", "redeemed", "issued"]
    report = wallet.clearing()
    assert report.totals == {"ACME": {"USD": 100}}
    assert [(r.coupon_id, r.reversed, r.reversed_at) for r in report.rows] == [
        ("A1", True, NOW + 100), ("A3", True, NOW + 100), ("A2", False, None)]
    assert wallet.order("O1").state == "reversed" and wallet.order("O1").coupon_ids == ()
    assert wallet.reverse("O1", now=NOW + 200) == []                  # twice: harmless
    assert err(wallet.commit, "O1", {"A1": 150, "A3": 40}, store_id="ST1", now=NOW
               ).code == "ORDER_CLOSED"
    assert err(wallet.reserve, ["A1"], order_no="O1", customer_id="alice", now=NOW
               ).code == "ORDER_CLOSED"
    # the coupon is the shopper's again: a new order redeems it, a new clearing row
    wallet.reserve(["A1"], order_no="O3", customer_id="alice", now=NOW + 300)
    wallet.commit("O3", {"A1": 120}, store_id="ST1", now=NOW + 300)
    assert wallet.clearing(issuer_id="ACME").totals == {"ACME": {"USD": 220}}
    # reversing an order that was never paid releases it
    wallet.reserve(["A3"], order_no="O4", customer_id="alice", now=NOW)
    assert wallet.reverse("O4", now=NOW) == ["A3"]
    assert wallet.order("O4").state == "released"
    assert wallet.reverse("NEVER", now=NOW) == []


def test_clearing_report_filters(wallet):
    for i, (cid, t) in enumerate([("A1", NOW), ("A3", NOW + 100), ("A2", NOW + 200)]):
        wallet.reserve([cid], order_no=f"O{i}", customer_id="alice", now=t)
        wallet.commit(f"O{i}", {cid: 10 + i}, store_id="ST1", now=t)
    assert [r.coupon_id for r in wallet.clearing().rows] == ["A1", "A3", "A2"]
    assert [r.coupon_id for r in wallet.clearing(issuer_id="ACME").rows] == ["A1", "A2"]
    assert [r.coupon_id for r in wallet.clearing(since=NOW + 100).rows] == ["A3", "A2"]
    assert [r.coupon_id for r in wallet.clearing(until=NOW + 200).rows] == ["A1", "A3"]
    r = wallet.clearing(issuer_id="GLOBEX", since=NOW, until=NOW + 101)
    assert r.totals == {"GLOBEX": {"USD": 11}}
    assert isinstance(r.rows[0], ClearingRow)
    assert set(r.to_dict()["rows"][0]) == {
        "issuer_id", "coupon_id", "coupon_def_id", "store_id", "order_no", "amount_minor",
        "currency", "redeemed_at", "reversed", "reversed_at"}
    assert wallet.clearing(issuer_id="NOBODY").rows == ()
    assert err(wallet.clearing, since="yesterday").code == "BAD_REQUEST"


def test_inside_the_callers_transaction(wallet):
    con = wallet.con
    con.execute("BEGIN")
    wallet.reserve(["A1"], order_no="O1", customer_id="alice", now=NOW)
    assert err(wallet.reserve, ["A2", "B1"], order_no="O1", customer_id="alice",
               now=NOW).code == "NOT_YOUR_COUPON"
    assert con.in_transaction                                      # the caller's, intact
    assert states(wallet, "A1", "A2") == ["reserved", "issued"]
    con.execute("ROLLBACK")                                        # the caller changes mind
    assert states(wallet, "A1") == ["issued"] and wallet.order("O1") is None


# SQLite only: a 0.05 s busy timeout on a file's lock (PostgreSQL's lock_timeout is
# the writer lock's, tested by the chain race).
def test_db_busy(tmp_path):
    path = tmp_path / "store.db"
    a = connect(path)
    book = CouponBook(a)
    book.add_issuer("ACME", "Acme")
    define(book)
    book.issue("D-SHAMPOO", "alice", coupon_id="A1", now=NOW)
    b = sqlite3.connect(path, isolation_level=None, timeout=0.05)
    other = CouponBook(b)
    a.execute("BEGIN IMMEDIATE")                                   # another till writes
    try:
        e = err(other.reserve, ["A1"], order_no="O1", customer_id="alice", now=NOW)
        assert e.code == "DB_BUSY"
        assert other.coupon("A1").state == "issued"                # reads still work
    finally:
        a.execute("ROLLBACK")
    assert other.reserve(["A1"], order_no="O1", customer_id="alice", now=NOW)
    a.close()
    b.close()


# ======================================================================================
# Fifty tills, one coupon
# ======================================================================================

def test_fifty_tills_race_for_one_coupon(db):  # noqa: F811 - the dbfix fixture
    con = db.connect()
    book = CouponBook(con)
    book.add_issuer("ACME", "Acme")
    define(book)
    book.issue("D-SHAMPOO", "alice", coupon_id="HOT", now=NOW)
    n = 50
    start = threading.Barrier(n)
    wins: list[int] = []
    codes: list[str] = []
    crashes: list[BaseException] = []
    lock = threading.Lock()

    def till(i: int) -> None:
        try:
            c = db.connect(timeout=30)
            try:
                b = CouponBook(c)
                start.wait()
                try:
                    b.reserve(["HOT"], order_no=f"O{i:02d}", customer_id="alice", now=NOW)
                    b.commit(f"O{i:02d}", {"HOT": 150}, store_id=f"ST{i % 3}", now=NOW)
                except CouponError as e:
                    with lock:
                        codes.append(e.code)
                    return
                with lock:
                    wins.append(i)
            finally:
                c.close()
        except BaseException as e:  # noqa: BLE001 - reported below
            with lock:
                crashes.append(e)

    threads = [threading.Thread(target=till, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not crashes, crashes
    assert len(wins) == 1 and codes == ["COUPON_USED"] * (n - 1)
    report = book.clearing()
    assert len(report.rows) == 1 and report.rows[0].order_no == f"O{wins[0]:02d}"
    assert report.totals == {"ACME": {"USD": 150}}
    assert book.coupon("HOT").state == "redeemed"
    con.close()


# ======================================================================================
# Never redeemed twice: random sequences of reserve / commit / release / reverse
# ======================================================================================

COUPONS = ("K1", "K2", "K3")
ORDERS = ("P1", "P2", "P3", "P4")


# SQLite only (in memory): hundreds of generated sequences, each on a fresh database.
class Ledger(RuleBasedStateMachine):
    """The book against a model of it; whatever the sequence, a coupon has at most
    one live clearing row, and exactly one while it is redeemed."""

    def __init__(self):
        super().__init__()
        self.con = sqlite3.connect(":memory:", isolation_level=None)
        self.book = CouponBook(self.con)
        self.book.add_issuer("ACME", "Acme")
        define(self.book, per_customer_limit=None)
        for c in COUPONS:
            self.book.issue("D-SHAMPOO", "alice", coupon_id=c, now=NOW)
        self.coupon = {c: ("issued", None) for c in COUPONS}
        self.order: dict[str, str] = {}
        self.terms: dict[str, dict] = {}

    def teardown(self):
        self.con.close()

    def held(self, o, state):
        return sorted(c for c, (s, on) in self.coupon.items() if s == state and on == o)

    @rule(ids=st.lists(st.sampled_from(COUPONS), min_size=1, max_size=3),
          o=st.sampled_from(ORDERS))
    def reserve(self, ids, o):
        expect = None
        if self.order.get(o) in ("committed", "reversed"):
            expect = "ORDER_CLOSED"
        elif any(self.coupon[c] not in (("issued", None), ("reserved", o)) for c in ids):
            expect = "COUPON_USED"
        try:
            self.book.reserve(ids, order_no=o, customer_id="alice", now=NOW)
        except CouponError as e:
            assert e.code == expect, e.message
            return
        assert expect is None
        self.order[o] = "open"
        for c in ids:
            self.coupon[c] = ("reserved", o)

    @rule(o=st.sampled_from(ORDERS), used=st.lists(st.booleans(), min_size=3, max_size=3),
          amount=st.integers(1, 150))
    def commit(self, o, used, amount):
        state = self.order.get(o)
        held = self.held(o, "reserved") if state == "open" else self.held(o, "redeemed")
        amounts = {c: (amount if u else 0) for c, u in zip(held, used)}
        expect = {None: "UNKNOWN_ORDER", "released": "ORDER_CLOSED",
                  "reversed": "ORDER_CLOSED"}.get(state)
        if state == "committed" and self.terms[o] != amounts:
            expect = "REF_CONFLICT"
        try:
            rows = self.book.commit(o, amounts, store_id="ST1", now=NOW)
        except CouponError as e:
            assert e.code == expect, e.message
            return
        assert expect is None
        if state == "open":
            self.order[o] = "committed"
            self.terms[o] = amounts
            for c in held:
                self.coupon[c] = ("redeemed", o) if amounts[c] else ("issued", None)
        assert sorted(r.coupon_id for r in rows) == self.held(o, "redeemed")

    @rule(o=st.sampled_from(ORDERS))
    def release(self, o):
        state = self.order.get(o)
        try:
            out = self.book.release(o)
        except CouponError as e:
            assert e.code == "ORDER_CLOSED" and state in ("committed", "reversed")
            return
        assert out == (self.held(o, "reserved") if state == "open" else [])
        if state == "open":
            self.order[o] = "released"
            for c in out:
                self.coupon[c] = ("issued", None)

    @rule(o=st.sampled_from(ORDERS))
    def reverse(self, o):
        state = self.order.get(o)
        out = self.book.reverse(o, now=NOW)
        if state == "open":
            assert out == self.held(o, "reserved")
            self.order[o] = "released"
        elif state == "committed":
            assert out == self.held(o, "redeemed")
            self.order[o] = "reversed"
        else:
            assert out == []
        for c in out:
            self.coupon[c] = ("issued", None)

    @invariant()
    def agrees_and_never_twice(self):
        live = {}
        for r in self.book.clearing().rows:
            if not r.reversed:
                assert r.coupon_id not in live, f"{r.coupon_id} redeemed twice"
                live[r.coupon_id] = r.order_no
        for c, (state, o) in self.coupon.items():
            got = self.book.coupon(c)
            assert (got.state, got.order_no) == (state, o)
            assert (live.get(c) == o) if state == "redeemed" else c not in live


TestLedger = Ledger.TestCase
TestLedger.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


def test_the_index_refuses_a_second_live_redemption(wallet):
    """Even if something bypasses the states (a hand edit, a bug above), the database
    keeps one live clearing row per coupon: the commit fails whole, COUPON_USED."""
    wallet.reserve(["A1"], order_no="O1", customer_id="alice", now=NOW)
    wallet.commit("O1", {"A1": 150}, store_id="ST1", now=NOW)
    wallet.con.execute("INSERT INTO coupon_orders (order_no, customer_id, state) "
                       "VALUES ('O2', 'alice', 'open')")
    wallet.con.execute("UPDATE coupons SET state = 'reserved', order_no = 'O2' "
                       "WHERE coupon_id = 'A1'")
    e = err(wallet.commit, "O2", {"A1": 150}, store_id="ST1", now=NOW)
    assert e.code == "COUPON_USED"
    assert len(wallet.clearing().rows) == 1 and wallet.order("O2").state == "open"
