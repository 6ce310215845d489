"""Membership: enrolment and look-up by card, phone or id; member prices per tier;
points earned, redeemed and reversed — idempotent, never below zero, safe across
connections."""

from __future__ import annotations

import re
import sqlite3
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lanecore.core.promo.members import (
    CODES, KINDS, MAX_HISTORY, Member, MemberError, Members, PointMove, Purchase, Reversal,
    normalise_card, normalise_phone,
)
from repo import REPO

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

T0 = 1_700_000_000
DOCS = REPO / "docs" / "promo" / "members.md"
from chainfix import chain_root, pg_server  # noqa: F401 - the [postgresql] runs
from dbfix import db  # noqa: F401 - one fixture, [sqlite] and [postgresql]


def code_of(fn, *args, **kw) -> str:
    with pytest.raises(MemberError) as info:
        fn(*args, **kw)
    return info.value.code


def memory() -> sqlite3.Connection:
    return sqlite3.connect(":memory:", isolation_level=None)


@pytest.fixture
def store(db):  # noqa: F811 - the dbfix fixture
    con = db.connect()
    yield con
    con.close()


@pytest.fixture
def m(store):
    return Members(store)


@pytest.fixture
def ann(m):
    return m.enrol(card_no="6200123456789", phone="+8613800138000", name="Ann",
                   member_id="ann", now=T0)


def rich(m, member_id: str, points: int) -> None:
    m.adjust(member_id, points, ref=f"seed-{member_id}", reason="test float", now=T0)


# --------------------------------------------------------------------------------------
# Enrolment and look-up
# --------------------------------------------------------------------------------------

def test_enrol_and_find_by_card_phone_and_id(m, ann):
    assert ann == Member("ann", "6200123456789", "+8613800138000", "Ann", "basic", 0,
                         float(T0))
    assert m.find("6200123456789") == ann
    assert m.find("6200 1234 5678 9") == ann
    assert m.find("6200-1234-5678-9") == ann
    assert m.find("+8613800138000") == ann
    assert m.find("+86 138 0013 8000") == ann
    assert m.find(" +86-138-0013-8000 ") == ann
    assert m.find("ann") == ann
    assert ann.to_dict()["member_id"] == "ann"


def test_enrol_with_one_number_and_a_made_up_id(m):
    a = m.enrol(card_no="12345678", now=T0)
    b = m.enrol(phone="+44 7700 900123", tier="gold", now=T0 + 1)
    assert re.fullmatch(r"M[0-9A-F]{16}", a.member_id) and a.member_id != b.member_id
    assert (a.card_no, a.phone, a.tier) == ("12345678", None, "basic")
    assert (b.card_no, b.phone, b.tier) == (None, "+447700900123", "gold")
    assert m.find("12345678") == a and m.find("+447700900123") == b


@pytest.mark.parametrize("raw, want", [
    ("+8613800138000", "+8613800138000"),
    ("+86 138 0013 8000", "+8613800138000"),
    ("+1-202-555-0143", "+12025550143"),
    ("  +49 30 1234567 ", "+49301234567"),
    ("+12345678", "+12345678"),                     # 8 digits
    ("+123456789012345", "+123456789012345"),       # 15 digits
])
def test_phone_normalisation(raw, want):
    assert normalise_phone(raw) == want


@pytest.mark.parametrize("raw", [
    "13800138000",            # national form: no country code is guessed
    "0086 138 0013 8000",     # international prefix instead of +
    "+0 123 456 789",         # country codes do not start with 0
    "+1234567",               # 7 digits
    "+1234567890123456",      # 16 digits
    "+44 (0)20 7946 0958",    # brackets are not dropped
    "+44.20.7946.0958",
    "+８６１３８００１３８０００",  # full-width digits
    "", None, 8613800138000,
])
def test_bad_phones(raw):
    with pytest.raises(MemberError) as info:
        normalise_phone(raw)
    assert info.value.code == "BAD_MEMBER"


@pytest.mark.parametrize("raw", ["1234567", "1" * 20, "1234abcd", "١٢٣٤٥٦٧٨", "", None,
                                 12345678])
def test_bad_cards(raw):
    assert code_of(normalise_card, raw) == "BAD_MEMBER"


@pytest.mark.parametrize("kw", [
    {},                                              # neither number
    {"card_no": "1234567"},
    {"phone": "13800138000"},
    {"card_no": "12345678", "member_id": "12345678"},   # an id needs a letter
    {"card_no": "12345678", "member_id": "a b"},
    {"card_no": "12345678", "member_id": "x" * 65},
    {"card_no": "12345678", "member_id": ""},
    {"card_no": "12345678", "name": "x" * 101},
    {"card_no": "12345678", "name": "line\nbreak"},
    {"card_no": "12345678", "name": None},
])
def test_bad_member(m, kw):
    assert code_of(m.enrol, now=T0, **kw) == "BAD_MEMBER"


@pytest.mark.parametrize("ident", ["", "12-34", "+86 abc", "a b", "x" * 65, None, 42,
                                   "+0123456789"])
def test_find_bad_identifier(m, ident):
    assert code_of(m.find, ident) == "BAD_MEMBER"


def test_bad_tier_and_time(m):
    assert code_of(m.enrol, card_no="12345678", tier="", now=T0) == "BAD_TIER"
    assert code_of(m.enrol, card_no="12345678", tier="gold star", now=T0) == "BAD_TIER"
    for now in (-1, float("nan"), float("inf"), "now", True, None):
        assert code_of(m.enrol, card_no="12345678", now=now) == "BAD_TIME"


def test_card_and_phone_taken(m, ann):
    assert code_of(m.enrol, card_no="6200 1234 5678 9", now=T0) == "CARD_TAKEN"
    assert code_of(m.enrol, phone="+86 13800138000", now=T0) == "PHONE_TAKEN"
    assert code_of(m.enrol, card_no="87654321", phone="+8613800138000",
                   now=T0) == "PHONE_TAKEN"
    assert code_of(m.find, "87654321") == "UNKNOWN_MEMBER"     # nothing half-written


def test_enrol_is_idempotent_by_member_id(m, ann):
    again = m.enrol(card_no="6200123456789", phone="+86 138 0013 8000", name="Ann",
                    member_id="ann", now=T0 + 99)
    assert again == ann
    assert code_of(m.enrol, card_no="6200123456789", name="Ann", member_id="ann",
                   now=T0) == "REF_CONFLICT"
    assert code_of(m.enrol, card_no="6200123456789", phone="+8613800138000", name="Bea",
                   member_id="ann", now=T0) == "REF_CONFLICT"


def test_bind_phone(m, ann):
    bob = m.enrol(card_no="11112222", member_id="bob", now=T0)
    assert code_of(m.bind_phone, "bob", "+8613800138000") == "PHONE_TAKEN"
    assert code_of(m.bind_phone, "bob", "138 0013 8001") == "BAD_MEMBER"
    assert code_of(m.bind_phone, "nobody", "+8613800138001") == "UNKNOWN_MEMBER"
    assert m.bind_phone("bob", "+86 138 0013 8001").phone == "+8613800138001"
    assert m.find("+8613800138001").member_id == "bob"
    assert m.bind_phone("ann", "+8613800138000") == ann          # own number: no change
    # A new number replaces the old one, which is then free.
    assert m.bind_phone("ann", "+8613900139000").phone == "+8613900139000"
    assert code_of(m.find, "+8613800138000") == "UNKNOWN_MEMBER"
    assert m.bind_phone("bob", "+8613800138000").phone == "+8613800138000"
    assert bob.member_id == m.find("11112222").member_id


def test_unknown_member(m):
    assert code_of(m.find, "99999999") == "UNKNOWN_MEMBER"
    assert code_of(m.find, "+8613800138009") == "UNKNOWN_MEMBER"
    assert code_of(m.find, "ghost") == "UNKNOWN_MEMBER"
    assert code_of(m.balance, "ghost") == "UNKNOWN_MEMBER"
    assert code_of(m.moves, "ghost") == "UNKNOWN_MEMBER"
    assert code_of(m.history, "ghost") == "UNKNOWN_MEMBER"
    assert code_of(m.set_tier, "ghost", "gold") == "UNKNOWN_MEMBER"
    assert code_of(m.earn, "ghost", "O1", 100, now=T0) == "UNKNOWN_MEMBER"
    assert code_of(m.redeem, "ghost", 1, order_no="O1", basket_total_minor=100,
                   now=T0) == "UNKNOWN_MEMBER"
    assert code_of(m.record_purchase, "ghost", "O1", 100, "CNY", [], 1, 0,
                   now=T0) == "UNKNOWN_MEMBER"
    assert code_of(m.balance, "12345678") == "BAD_MEMBER"     # an id, not a card


def test_set_tier(m, ann):
    assert m.set_tier("ann", "gold").tier == "gold"
    assert m.find("ann").tier == "gold"
    assert code_of(m.set_tier, "ann", "") == "BAD_TIER"


def test_bad_config():
    con = memory()
    for kw in ({"earn_per_minor": 0}, {"earn_per_minor": 1.5}, {"point_value_minor": 0},
               {"max_redeem_share_bp": -1}, {"max_redeem_share_bp": 10001},
               {"max_redeem_share_bp": True}):
        assert code_of(Members, con, **kw) == "BAD_CONFIG"


# --------------------------------------------------------------------------------------
# Member prices
# --------------------------------------------------------------------------------------

def test_member_prices_per_tier(m):
    g = "06901234567892"
    assert m.member_price(g, "basic") is None
    assert m.set_member_price(g, "basic", 450) == 450
    m.set_member_price(g, "gold", 400)
    m.set_member_price("6901234567000", "gold", 990)      # GTIN-13, zero-padded
    assert m.member_price(g, "basic") == 450
    assert m.member_price("6901234567892", "gold") == 400
    assert m.member_price(g, "staff") is None
    assert m.member_prices([g, "06901234567000", "00000000000000"], "gold") == \
        {g: 400, "06901234567000": 990}
    assert m.member_prices([g, "6901234567000"], "basic") == {g: 450}
    assert m.member_prices([], "gold") == {}
    m.set_member_price(g, "gold", 380)                      # update
    assert m.member_price(g, "gold") == 380
    assert m.set_member_price(g, "gold", None) is None      # remove
    assert m.member_price(g, "gold") is None and m.member_price(g, "basic") == 450
    assert m.set_member_price(g, "basic", 0) == 0           # free for members


def test_member_prices_many_gtins(m):
    gtins = [f"{i:014d}" for i in range(1, 1201)]
    for g in gtins[::100]:
        m.set_member_price(g, "basic", int(g))
    assert m.member_prices(iter(gtins), "basic") == {g: int(g) for g in gtins[::100]}


def test_member_price_codes(m):
    assert code_of(m.set_member_price, "123", "basic", 1) == "BAD_GTIN"
    assert code_of(m.set_member_price, "0690123456789X", "basic", 1) == "BAD_GTIN"
    assert code_of(m.member_prices, "06901234567892", "basic") == "BAD_GTIN"
    assert code_of(m.set_member_price, "06901234567892", "gold tier", 1) == "BAD_TIER"
    assert code_of(m.member_price, "06901234567892", None) == "BAD_TIER"
    for price in (-1, 1.5, "1", True, 10 ** 15):
        assert code_of(m.set_member_price, "06901234567892", "basic", price) == "BAD_AMOUNT"


# --------------------------------------------------------------------------------------
# Points
# --------------------------------------------------------------------------------------

def test_earn_is_idempotent(m, ann):
    mv = m.earn("ann", "K1-240501-1", 12_399, now=T0 + 1)
    assert (mv.ref, mv.kind, mv.points, mv.balance_after, mv.order_no) == \
        ("earn:K1-240501-1", "earn", 123, 123, "K1-240501-1")
    assert m.earn("ann", "K1-240501-1", 12_399, now=T0 + 50) == mv
    assert m.balance("ann") == 123 and len(m.moves("ann")) == 1
    assert code_of(m.earn, "ann", "K1-240501-1", 12_400, now=T0) == "REF_CONFLICT"
    small = m.earn("ann", "K1-240501-2", 99, now=T0 + 2)        # 0 points, still recorded
    assert small.points == 0 and m.balance("ann") == 123
    assert Members(m.con, earn_per_minor=10).earn("ann", "K1-240501-3", 99,
                                                   now=T0).points == 9


def test_earn_codes(m, ann):
    assert code_of(m.earn, "ann", "bad order", 100, now=T0) == "BAD_ORDER"
    assert code_of(m.earn, "ann", "x" * 101, 100, now=T0) == "BAD_ORDER"
    assert code_of(m.earn, "ann", "O1", -1, now=T0) == "BAD_AMOUNT"
    assert code_of(m.earn, "ann", "O1", 1.0, now=T0) == "BAD_AMOUNT"
    assert code_of(m.earn, "ann", "O1", 100, now="x") == "BAD_TIME"
    bob = m.enrol(card_no="11112222", member_id="bob", now=T0)
    m.earn("ann", "O1", 100, now=T0)
    assert code_of(m.earn, bob.member_id, "O1", 100, now=T0) == "REF_CONFLICT"
    assert code_of(m.redeem, "bob", 1, order_no="O1", basket_total_minor=100,
                   now=T0) == "ORDER_CONFLICT"
    assert code_of(m.record_purchase, "bob", "O1", 100, "CNY", [], 1, 0,
                   now=T0) == "ORDER_CONFLICT"


def test_redeem(m, ann):
    rich(m, "ann", 1000)
    assert m.redeem_limit(1000) == 500
    assert m.redeem("ann", 300, order_no="O1", basket_total_minor=1000, now=T0) == 300
    assert m.balance("ann") == 700
    # Again: the same value, nothing more spent.
    assert m.redeem("ann", 300, order_no="O1", basket_total_minor=1000, now=T0 + 9) == 300
    assert m.balance("ann") == 700
    assert code_of(m.redeem, "ann", 200, order_no="O1", basket_total_minor=1000,
                   now=T0) == "REF_CONFLICT"
    assert code_of(m.redeem, "ann", 300, order_no="O1", basket_total_minor=2000,
                   now=T0) == "REF_CONFLICT"
    mv = m.moves("ann")[-1]
    assert (mv.ref, mv.kind, mv.points, mv.balance_after) == ("redeem:O1", "redeem", -300,
                                                              700)
    assert mv.terms["value_minor"] == 300


def test_redeem_limit_and_insufficient_points_are_not_recorded(m, ann):
    m2 = Members(m.con, point_value_minor=10, max_redeem_share_bp=2000)
    rich(m2, "ann", 50)
    with pytest.raises(MemberError) as info:
        m2.redeem("ann", 21, order_no="O1", basket_total_minor=1000, now=T0)
    assert info.value.code == "REDEEM_LIMIT"
    assert info.value.details["max_points"] == 20
    assert info.value.details["max_value_minor"] == 200
    assert m2.redeem("ann", 20, order_no="O1", basket_total_minor=1000, now=T0) == 200
    with pytest.raises(MemberError) as info:
        m2.redeem("ann", 40, order_no="O2", basket_total_minor=10_000, now=T0)
    assert info.value.code == "INSUFFICIENT_POINTS"
    assert info.value.details == {"member_id": "ann", "balance": 30, "short": 10}
    # Nothing was recorded under redeem:O2: it may come again with other terms.
    assert m2.redeem("ann", 30, order_no="O2", basket_total_minor=10_000, now=T0) == 300
    assert m2.balance("ann") == 0
    # REDEEM_LIMIT is checked first; a limit of 0 bp allows nothing.
    none = Members(m.con, max_redeem_share_bp=0)
    assert code_of(none.redeem, "ann", 1, order_no="O3", basket_total_minor=10 ** 6,
                   now=T0) == "REDEEM_LIMIT"
    assert code_of(m.redeem, "ann", 0, order_no="O3", basket_total_minor=10,
                   now=T0) == "BAD_POINTS"
    assert code_of(m.redeem, "ann", -5, order_no="O3", basket_total_minor=10,
                   now=T0) == "BAD_POINTS"
    assert code_of(m.redeem, "ann", 1, order_no="O3", basket_total_minor=-10,
                   now=T0) == "BAD_AMOUNT"


def test_reverse_order_gives_back_and_claws_back(m, ann):
    rich(m, "ann", 100)
    assert m.redeem("ann", 40, order_no="O1", basket_total_minor=500, now=T0 + 1) == 40
    m.earn("ann", "O1", 460, now=T0 + 1)                           # 4 points
    m.record_purchase("ann", "O1", 460, "CNY", [{"gtin": "06901234567892", "qty": 1}], 4,
                      40, now=T0 + 1)
    assert m.balance("ann") == 64
    r = m.reverse_order("O1", now=T0 + 2)
    assert r == Reversal("O1", "ann", 40, 4, 0, 100, float(T0 + 2))
    assert m.balance("ann") == 100
    assert m.reverse_order("O1", now=T0 + 3) == r                  # idempotent
    assert m.balance("ann") == 100
    assert [mv.kind for mv in m.moves("ann")] == ["adjust", "redeem", "earn", "return",
                                                  "clawback"]
    assert m.history("ann")[0].reversed_at == float(T0 + 2)
    # A reversed order earns and redeems no more; replays are still answered.
    assert code_of(m.earn, "ann", "O1", 999, now=T0) == "REF_CONFLICT"
    assert m.earn("ann", "O1", 460, now=T0).points == 4
    assert m.redeem("ann", 40, order_no="O1", basket_total_minor=500, now=T0) == 40
    assert code_of(m.redeem, "ann", 41, order_no="O1", basket_total_minor=500,
                   now=T0) == "REF_CONFLICT"
    assert m.balance("ann") == 100


def test_order_reversed(m, ann):
    rich(m, "ann", 10)
    m.earn("ann", "O1", 1000, now=T0)
    m.reverse_order("O1", now=T0)
    assert code_of(m.redeem, "ann", 1, order_no="O1", basket_total_minor=500,
                   now=T0) == "ORDER_REVERSED"
    m.redeem("ann", 2, order_no="O2", basket_total_minor=500, now=T0)
    m.reverse_order("O2", now=T0)
    assert code_of(m.earn, "ann", "O2", 500, now=T0) == "ORDER_REVERSED"
    # A purchase recorded after its reversal is kept, marked reversed.
    p = m.record_purchase("ann", "O2", 500, "CNY", [], 0, 2, now=T0 + 5)
    assert p.reversed_at == float(T0)


def test_clawback_never_below_zero(m, ann):
    m.earn("ann", "O1", 5000, now=T0)                               # 50 points
    m.redeem("ann", 45, order_no="O2", basket_total_minor=100, now=T0)   # spent
    r = m.reverse_order("O1", now=T0 + 1)
    assert (r.points_returned, r.points_clawed_back, r.points_not_clawed_back,
            r.balance_after) == (0, 5, 45, 0)
    assert m.balance("ann") == 0
    claw = m.moves("ann")[-1]
    assert claw.kind == "clawback" and claw.terms["not_clawed_back"] == 45
    # Reversing the redemption gives the 45 back; the 45 not clawed back stay unowed.
    r2 = m.reverse_order("O2", now=T0 + 2)
    assert (r2.points_returned, r2.points_clawed_back, r2.balance_after) == (45, 0, 45)


def test_redeemed_points_returned_first_absorb_the_clawback(m, ann):
    rich(m, "ann", 100)
    m.redeem("ann", 100, order_no="O1", basket_total_minor=1000, now=T0)
    m.earn("ann", "O1", 900, now=T0)                                # 9 points
    m.redeem("ann", 9, order_no="O2", basket_total_minor=1000, now=T0)
    r = m.reverse_order("O1", now=T0)
    assert (r.points_returned, r.points_clawed_back, r.points_not_clawed_back,
            r.balance_after) == (100, 9, 0, 91)


def test_unknown_order(m, ann):
    assert code_of(m.reverse_order, "nothing", now=T0) == "UNKNOWN_ORDER"
    assert code_of(m.reverse_order, "bad order", now=T0) == "BAD_ORDER"
    # A purchase without points can still be reversed.
    m.record_purchase("ann", "O9", 100, "CNY", [], 0, 0, now=T0)
    r = m.reverse_order("O9", now=T0 + 1)
    assert (r.member_id, r.points_returned, r.points_clawed_back) == ("ann", 0, 0)
    assert m.history("ann")[0].reversed_at == float(T0 + 1)


def test_adjust(m, ann):
    mv = m.adjust("ann", 50, ref="desk-1", reason="goodwill", now=T0)
    assert (mv.ref, mv.kind, mv.points, mv.balance_after, mv.order_no) == \
        ("adjust:desk-1", "adjust", 50, 50, None)
    assert m.adjust("ann", 50, ref="desk-1", reason="goodwill", now=T0 + 1) == mv
    assert code_of(m.adjust, "ann", 60, ref="desk-1", reason="goodwill",
                   now=T0) == "REF_CONFLICT"
    assert code_of(m.adjust, "ann", -51, ref="desk-2", reason="fix",
                   now=T0) == "INSUFFICIENT_POINTS"
    assert m.adjust("ann", -50, ref="desk-2", reason="fix", now=T0).balance_after == 0
    assert code_of(m.adjust, "ann", 0, ref="desk-3", reason="x", now=T0) == "BAD_POINTS"
    assert code_of(m.adjust, "ann", 1, ref="desk 3", reason="x", now=T0) == "BAD_REF"
    assert code_of(m.adjust, "ann", 1, ref="desk-3", reason=" ", now=T0) == "BAD_REQUEST"


def test_refs_are_one_namespace_per_kind(m, ann):
    # An order number that looks like another kind's reference cannot collide.
    m.earn("ann", "redeem:O1", 100, now=T0)
    rich(m, "ann", 10)
    assert m.redeem("ann", 1, order_no="O1", basket_total_minor=100, now=T0) == 1


# --------------------------------------------------------------------------------------
# Purchases
# --------------------------------------------------------------------------------------

def test_record_purchase_and_history(m, ann):
    lines = [{"gtin": "06901234567892", "qty": 2, "net_minor": 900}]
    p = m.record_purchase("ann", "O1", 900, "CNY", lines, 9, 0, now=T0 + 1)
    assert p == Purchase("O1", "ann", 900, "CNY", 9, 0, lines, float(T0 + 1), None)
    assert m.record_purchase("ann", "O1", 900, "CNY", lines, 9, 0, now=T0 + 7) == p
    assert code_of(m.record_purchase, "ann", "O1", 901, "CNY", lines, 9, 0,
                   now=T0) == "REF_CONFLICT"
    assert code_of(m.record_purchase, "ann", "O1", 900, "CNY", [], 9, 0,
                   now=T0) == "REF_CONFLICT"
    for i in range(2, 6):
        m.record_purchase("ann", f"O{i}", 100 * i, "CNY", [], i, 0, now=T0 + i)
    m.record_purchase("ann", "O0", 1, "CNY", [], 0, 0, now=T0)       # older, recorded late
    assert [h.order_no for h in m.history("ann")] == ["O5", "O4", "O3", "O2", "O1", "O0"]
    assert [h.order_no for h in m.history("ann", limit=2)] == ["O5", "O4"]
    bob = m.enrol(card_no="11112222", now=T0)
    assert m.history(bob.member_id) == []


def test_purchase_codes(m, ann):
    args = ("ann", "O1", 100, "CNY", [], 1, 0)

    def call(i, value):
        a = list(args)
        a[i] = value
        return code_of(m.record_purchase, *a, now=T0)

    assert call(1, "") == "BAD_ORDER"
    assert call(2, -1) == "BAD_AMOUNT"
    assert call(3, "cny") == "BAD_CURRENCY"
    assert call(3, "CNYY") == "BAD_CURRENCY"
    assert call(4, {"gtin": "x"}) == "BAD_LINES"
    assert call(4, ["not an object"]) == "BAD_LINES"
    assert call(4, [{"amount": float("nan")}]) == "BAD_LINES"
    assert call(4, [{"when": object()}]) == "BAD_LINES"
    assert call(5, -1) == "BAD_POINTS"
    assert call(6, 1.5) == "BAD_POINTS"
    assert code_of(m.history, "ann", limit=0) == "BAD_REQUEST"
    assert code_of(m.history, "ann", limit=MAX_HISTORY + 1) == "BAD_REQUEST"


# --------------------------------------------------------------------------------------
# Property: random sequences of earn, redeem and reverse
# --------------------------------------------------------------------------------------

ops_st = st.lists(st.one_of(
    st.tuples(st.just("earn"), st.integers(0, 7), st.integers(0, 8000)),
    st.tuples(st.just("redeem"), st.integers(0, 7), st.integers(1, 40),
              st.integers(0, 400)),
    st.tuples(st.just("reverse"), st.integers(0, 7)),
    st.tuples(st.just("reverse"), st.integers(0, 7)),      # twice: reversals weigh more
    st.tuples(st.just("replay"), st.integers(0, 40)),
    st.tuples(st.just("gift"), st.integers(1, 30)),
), max_size=40)


# SQLite only (in memory): a fresh database for each generated example.
@given(ops=ops_st)
def test_points_never_negative_and_balance_is_the_sum_of_moves(ops):
    con = memory()
    m = Members(con, earn_per_minor=100, point_value_minor=2, max_redeem_share_bp=5000)
    m.enrol(card_no="12345678", member_id="m", now=T0)
    balance = 0
    earned: dict[str, int] = {}       # order -> points earned
    earned_paid: dict[str, int] = {}  # order -> paid_minor it earned on
    redeemed_terms: dict[str, tuple[int, int]] = {}
    redeemed: dict[str, int] = {}     # order -> points redeemed
    reversed_: set[str] = set()
    done: list[tuple] = []            # calls that succeeded, with their answers
    for i, op in enumerate(ops):
        if op[0] == "gift":
            args, kw = ("m", op[1]), {"ref": f"g{i}", "reason": "gift", "now": T0}
            done.append(("adjust", args, kw, m.adjust(*args, **kw)))
            balance += op[1]
            continue
        if op[0] == "replay":
            if not done:
                continue
            fn, args, kw, first = done[op[1] % len(done)]
            before = (m.balance("m"), len(m.moves("m")))
            assert getattr(m, fn)(*args, **kw) == first
            assert (m.balance("m"), len(m.moves("m"))) == before
            continue
        order = f"O{op[1]}"
        if op[0] == "earn":
            paid = op[2]
            args, kw = ("m", order, paid), {"now": T0}
            if order in earned_paid:
                if paid != earned_paid[order]:
                    assert code_of(m.earn, *args, **kw) == "REF_CONFLICT"
                    continue
                assert m.earn(*args, **kw).points == paid // 100     # a replay
            elif order in reversed_:
                assert code_of(m.earn, *args, **kw) == "ORDER_REVERSED"
                continue
            else:
                mv = m.earn(*args, **kw)
                assert mv.points == paid // 100
                earned_paid[order] = paid
                earned[order] = mv.points
                balance += mv.points
                done.append(("earn", args, kw, mv))
        elif op[0] == "redeem":
            pts, basket = op[2], op[3]
            args, kw = ("m", pts), {"order_no": order, "basket_total_minor": basket,
                                    "now": T0}
            if order in redeemed_terms:
                if (pts, basket) != redeemed_terms[order]:
                    assert code_of(m.redeem, *args, **kw) == "REF_CONFLICT"
                    continue
                assert m.redeem(*args, **kw) == pts * 2               # a replay
            elif order in reversed_:
                assert code_of(m.redeem, *args, **kw) == "ORDER_REVERSED"
                continue
            elif pts * 2 > basket // 2:
                assert code_of(m.redeem, *args, **kw) == "REDEEM_LIMIT"
                continue
            elif pts > balance:
                assert code_of(m.redeem, *args, **kw) == "INSUFFICIENT_POINTS"
                continue
            else:
                assert m.redeem(*args, **kw) == pts * 2
                redeemed[order] = pts
                redeemed_terms[order] = (pts, basket)
                balance -= pts
                done.append(("redeem", args, kw, pts * 2))
        else:
            args, kw = (order,), {"now": T0}
            if order in reversed_:
                continue          # replays of reversals come through "replay"
            if order not in earned and order not in redeemed:
                assert code_of(m.reverse_order, *args, **kw) == "UNKNOWN_ORDER"
                continue
            r = m.reverse_order(*args, **kw)
            back = redeemed.get(order, 0)
            owed = earned.get(order, 0)
            claw = min(owed, balance + back)
            assert (r.points_returned, r.points_clawed_back, r.points_not_clawed_back) == \
                (back, claw, owed - claw)
            balance += back - claw
            reversed_.add(order)
            done.append(("reverse_order", args, kw, r))
        assert m.balance("m") == balance >= 0
    running = 0
    for mv in m.moves("m"):
        assert mv.kind in KINDS
        running += mv.points
        assert mv.balance_after == running >= 0
    assert running == m.balance("m") == balance
    con.close()


# --------------------------------------------------------------------------------------
# Concurrency and transactions
# --------------------------------------------------------------------------------------

def _run_threads(n: int, work) -> list:
    barrier = threading.Barrier(n)
    out: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = work(i)
        except BaseException as exc:             # noqa: BLE001 - reported below
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for r in out:
        if isinstance(r, BaseException) and not isinstance(r, MemberError):
            raise r
    return out


def test_two_connections_redeeming_never_overspend(db):  # noqa: F811 - the dbfix fixture
    con = db.connect()
    m = Members(con)
    m.enrol(card_no="12345678", member_id="m", now=T0)
    rich(m, "m", 1000)

    def lane(i: int) -> list:
        own = db.connect()
        try:
            mine = Members(own)
            got = []
            for k in range(10):
                try:
                    got.append(mine.redeem("m", 100, order_no=f"L{i}-{k}",
                                           basket_total_minor=10_000, now=T0))
                except MemberError as exc:
                    got.append(exc.code)
            return got
        finally:
            own.close()

    results = _run_threads(2, lane)
    flat = [r for lane_results in results for r in lane_results]
    assert flat.count(100) == 10
    assert flat.count("INSUFFICIENT_POINTS") == 10
    assert m.balance("m") == 0
    assert sum(mv.points for mv in m.moves("m")) == 0
    assert sorted(mv.balance_after for mv in m.moves("m") if mv.kind == "redeem") == \
        list(range(0, 1000, 100))
    con.close()


def test_the_same_order_from_two_connections_redeems_once(db):  # noqa: F811 - the dbfix fixture
    con = db.connect()
    m = Members(con)
    m.enrol(card_no="12345678", member_id="m", now=T0)
    rich(m, "m", 1000)

    def lane(i: int):
        own = db.connect()
        try:
            return Members(own).redeem("m", 300, order_no="K1-7", basket_total_minor=1000,
                                       now=T0)
        finally:
            own.close()

    assert _run_threads(2, lane) == [300, 300]
    assert m.balance("m") == 700
    con.close()


def test_savepoint_in_a_rolled_back_transaction_leaves_nothing(m, store, ann):
    store.execute("BEGIN IMMEDIATE")
    m.earn("ann", "O1", 1000, now=T0)
    m.enrol(card_no="11112222", member_id="bob", now=T0)
    m.set_member_price("06901234567892", "basic", 100)
    m.record_purchase("ann", "O1", 1000, "CNY", [], 10, 0, now=T0)
    assert m.balance("ann") == 10
    store.execute("ROLLBACK")
    assert m.balance("ann") == 0 and m.moves("ann") == [] and m.history("ann") == []
    assert code_of(m.find, "bob") == "UNKNOWN_MEMBER"
    assert m.member_price("06901234567892", "basic") is None


def test_a_refusal_inside_a_callers_transaction_undoes_only_its_own_part(m, store, ann):
    store.execute("BEGIN IMMEDIATE")
    m.earn("ann", "O1", 1000, now=T0)
    assert code_of(m.redeem, "ann", 11, order_no="O2", basket_total_minor=100_000,
                   now=T0) == "INSUFFICIENT_POINTS"
    assert store.in_transaction
    store.execute("COMMIT")
    assert m.balance("ann") == 10 and [mv.ref for mv in m.moves("ann")] == ["earn:O1"]


def test_a_failure_while_writing_rolls_everything_back(m, ann, monkeypatch):
    rich(m, "ann", 100)

    def boom(*a, **kw):
        raise sqlite3.OperationalError("disk I/O error")

    # The return move is written, then the clawback fails: neither stays.
    m.redeem("ann", 10, order_no="O1", basket_total_minor=100, now=T0)
    m.earn("ann", "O1", 500, now=T0)
    real = m._write

    def write(ref, *a, **kw):
        if ref.startswith("clawback:"):
            boom()
        return real(ref, *a, **kw)

    monkeypatch.setattr(m, "_write", write)
    assert code_of(m.reverse_order, "O1", now=T0) == "DB_ERROR"
    assert m.balance("ann") == 95 and len(m.moves("ann")) == 3


def test_persists_across_connections(db):  # noqa: F811 - the dbfix fixture
    con = db.connect()
    Members(con).enrol(phone="+8613800138000", member_id="ann", now=T0)
    Members(con).earn("ann", "O1", 1234, now=T0)
    con.close()
    con = db.connect()
    m = Members(con)
    assert m.find("+86 138 0013 8000").points == 12
    assert m.earn("ann", "O1", 1234, now=T0 + 1).points == 12
    assert isinstance(m.moves("ann")[0], PointMove)
    con.close()


# --------------------------------------------------------------------------------------
# Documentation
# --------------------------------------------------------------------------------------

def test_every_code_is_documented():
    text = DOCS.read_text(encoding="utf-8")
    for code in CODES:
        assert f"`{code}`" in text, code
    for kind in KINDS:
        assert f"`{kind}`" in text, kind


# --------------------------------------------------------------------------------------
# Search, recent moves, who adjusted (the console's members page)
# --------------------------------------------------------------------------------------

def test_search_by_prefix_of_card_phone_name_or_id_with_tier_and_paging(m, ann):
    bo = m.enrol(card_no="6200999900001", name="bob", tier="gold", member_id="bo",
                 now=T0 + 1)
    cy = m.enrol(phone="+447700900123", name="Cy_100%", member_id="cy", now=T0 + 2)
    ids = lambda found: ([x.member_id for x in found[0]], found[1])
    assert ids(m.search()) == (["cy", "bo", "ann"], 3)              # newest first
    assert ids(m.search("  ")) == (["cy", "bo", "ann"], 3)
    assert ids(m.search("6200")) == (["bo", "ann"], 2)
    assert ids(m.search("6200 1234")) == (["ann"], 1)               # separators dropped
    assert ids(m.search("+86 138")) == (["ann"], 1)
    assert ids(m.search("4477")) == (["cy"], 1)                     # digits after the +
    assert ids(m.search("BO")) == (["bo"], 1)                       # name, ASCII case
    assert ids(m.search("an")) == (["ann"], 1)                      # name or id
    assert ids(m.search("Cy_1")) == (["cy"], 1)
    assert ids(m.search("C%")) == ([], 0)                           # % is no wildcard
    assert ids(m.search("b_b")) == ([], 0)                          # nor _
    assert ids(m.search(tier="gold")) == (["bo"], 1)
    assert ids(m.search("6200", tier="basic")) == (["ann"], 1)
    assert ids(m.search(limit=2)) == (["cy", "bo"], 3)
    assert ids(m.search(limit=2, offset=2)) == (["ann"], 3)
    assert ids(m.search(offset=9)) == ([], 3)
    assert m.search("bob")[0] == [bo] and m.search("+4477")[0] == [cy]
    assert code_of(m.search, "x" * 33) == "BAD_REQUEST"
    assert code_of(m.search, "a\nb") == "BAD_REQUEST"
    assert code_of(m.search, limit=0) == "BAD_REQUEST"
    assert code_of(m.search, limit=201) == "BAD_REQUEST"
    assert code_of(m.search, offset=-1) == "BAD_REQUEST"
    assert code_of(m.search, tier="no tier") == "BAD_TIER"


def test_adjust_keeps_who_and_why_and_recent_moves_are_newest_first(m, ann):
    mv = m.adjust("ann", 80, ref="desk-9", reason="lost receipt", now=T0, staff="max",
                  principal="key:console")
    assert mv.terms == {"member_id": "ann", "points": 80, "reason": "lost receipt",
                        "staff": "max", "principal": "key:console"}
    # a replay by another person is the same move (the first one's names kept)
    assert m.adjust("ann", 80, ref="desk-9", reason="lost receipt", now=T0 + 5,
                    staff="sue") == mv
    assert code_of(m.adjust, "ann", 80, ref="desk-9", reason="other",
                   now=T0) == "REF_CONFLICT"
    assert code_of(m.adjust, "ann", 1, ref="desk-10", reason="x", now=T0,
                   staff="") == "BAD_REQUEST"
    assert code_of(m.adjust, "ann", 1, ref="desk-10", reason="x", now=T0,
                   staff="x" * 65) == "BAD_REQUEST"
    assert code_of(m.adjust, "ann", -81, ref="desk-10", reason="x", now=T0,
                   staff="max") == "INSUFFICIENT_POINTS"
    m.adjust("ann", -30, ref="desk-11", reason="typo", now=T0 + 9, staff="max")
    assert [x.ref for x in m.recent_moves("ann")] == ["adjust:desk-11", "adjust:desk-9"]
    assert [x.ref for x in m.recent_moves("ann", limit=1)] == ["adjust:desk-11"]
    assert m.balance("ann") == 50
    assert code_of(m.recent_moves, "ann", limit=0) == "BAD_REQUEST"
    assert code_of(m.recent_moves, "nobody") == "UNKNOWN_MEMBER"
