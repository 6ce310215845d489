"""Cash with change (core/pay/cash.py): optimal change against brute force, the classic
cases where greedy fails, every error code, and the drawer in the store database."""

from __future__ import annotations

import itertools
import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lanecore.core.pay import cash
from lanecore.core.pay.cash import (DENOMINATIONS, CashError, Drawer, make_change,
                                    total_minor)
from lanecore.core.scan.catalog import connect

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free


def code_of(fn, *args, **kw) -> CashError:
    with pytest.raises(CashError) as info:
        fn(*args, **kw)
    return info.value


# --------------------------------------------------------------------------------------
# Brute force: every combination of the stock
# --------------------------------------------------------------------------------------

def brute_change(amount: int, stock: dict[int, int]):
    """Fewest pieces paying ``amount`` exactly; ties: most of the largest denomination
    first. Returns the pieces, or the closest payable amount below (an int)."""
    denoms = sorted((d for d, c in stock.items() if c), reverse=True)
    best = None
    closest = 0
    for counts in itertools.product(*(range(stock[d] + 1) for d in denoms)):
        value = sum(d * c for d, c in zip(denoms, counts))
        if value < amount:
            closest = max(closest, value)
        if value != amount:
            continue
        key = (-sum(counts), counts)          # fewer pieces, then lexicographically larger
        if best is None or key > best[0]:
            best = (key, counts)
    if best is None:
        return closest
    return {d: c for d, c in zip(denoms, best[1]) if c}


POOL = (1, 2, 3, 4, 5, 7, 10, 20, 25, 50)
pieces_st = st.dictionaries(st.sampled_from(POOL), st.integers(0, 3), max_size=5)


@given(drawer=pieces_st, tendered=pieces_st.filter(lambda t: total_minor(t) > 0),
       data=st.data())
def test_change_is_optimal_against_brute_force(drawer, tendered, data):
    paid = total_minor(tendered)
    due = data.draw(st.integers(1, paid), label="due")
    stock = dict(drawer)
    for d, c in tendered.items():
        stock[d] = stock.get(d, 0) + c
    want = brute_change(paid - due, stock) if paid > due else {}
    if isinstance(want, int):
        err = code_of(make_change, due, tendered, drawer)
        assert err.code == "NO_EXACT_CHANGE"
        assert err.details == {"change_minor": paid - due, "closest_minor": want,
                               "short_minor": paid - due - want}
        return
    got = make_change(due, tendered, drawer)
    assert got.pieces == want
    assert got.change_minor == paid - due == total_minor(got.pieces)
    # Conservation: what was there plus what came in, less what went out.
    for d in set(stock) | set(got.drawer_after):
        assert got.drawer_after.get(d, 0) == stock.get(d, 0) - got.pieces.get(d, 0)
        assert got.drawer_after.get(d, 0) >= 0


# --------------------------------------------------------------------------------------
# Classic cases
# --------------------------------------------------------------------------------------

def test_greedy_counterexample_from_a_short_drawer():
    # Greedy would take the 50 and be left with 10 it cannot pay.
    got = make_change(40, {100: 1}, {50: 1, 20: 3})
    assert got.pieces == {20: 3}
    assert got.drawer_after == {100: 1, 50: 1}


def test_us_quarter_without_nickels():
    # 30 cents from {25, 10×3} without a nickel: three dimes, not a quarter.
    got = make_change(70, {100: 1}, {25: 4, 10: 3}, currency="USD")
    assert got.pieces == {10: 3}


def test_non_canonical_system_unbounded_stock():
    # {1, 3, 4}, change 6: greedy gives 4+1+1, the optimum is 3+3.
    assert make_change(4, {10: 1}, {1: 9, 3: 9, 4: 9}).pieces == {3: 2}


def test_tie_break_prefers_the_largest_denomination():
    # 4 = 3+1 = 2+2: both two pieces; the one with the larger piece wins.
    assert make_change(6, {10: 1}, {1: 5, 2: 5, 3: 5}).pieces == {3: 1, 1: 1}
    # And for GBP 40p from 20p×2 or 20p+10p+10p: the fewest pieces first.
    assert make_change(60, {100: 1}, {20: 2, 10: 2}, currency="GBP").pieces == {20: 2}


def test_tendered_pieces_can_be_given_back():
    got = make_change(50, {50: 1, 20: 1}, {})
    assert got.pieces == {20: 1}
    assert got.drawer_after == {50: 1}


def test_exact_tender_needs_no_change():
    got = make_change(1234, {1000: 1, 200: 1, 20: 1, 10: 1, 2: 2}, {}, currency="GBP")
    assert got.change_minor == 0 and got.pieces == {} and got.piece_count == 0


def test_five_hundred_pounds_over_fifteen_denominations():
    # EUR has 15 denominations; with plenty of each the system is canonical, so the
    # optimum equals greedy — an independent check of a large programme.
    drawer = {d: 40 for d in DENOMINATIONS["EUR"]}
    got = make_change(1, {50000: 1}, drawer, currency="EUR")
    rest, greedy = 49999, {}
    for d in sorted(DENOMINATIONS["EUR"], reverse=True):
        if rest >= d:
            greedy[d], rest = rest // d, rest % d
    assert got.pieces == greedy
    assert got.piece_count == 14      # 2+1+2+1+2+1+2+1+2


def test_large_change_from_a_short_drawer_is_still_exact():
    drawer = {5000: 3, 2000: 10, 1000: 1, 500: 1, 200: 0, 100: 9, 50: 1, 20: 4, 10: 3}
    # £399.99 of change with no piece under 10p: 9p short.
    err = code_of(make_change, 1, {5000: 8}, drawer, currency="GBP")
    assert err.details == {"change_minor": 39999, "closest_minor": 39990, "short_minor": 9}
    got = make_change(1, {5000: 8}, {**drawer, 5: 1, 2: 2}, currency="GBP")
    assert got.change_minor == total_minor(got.pieces) == 39999
    assert got.pieces[5] == 1 and got.pieces[2] == 2
    for d, k in got.pieces.items():
        assert k <= drawer.get(d, 0) + {5000: 8, 5: 1, 2: 2}.get(d, 0)


def test_change_dict_round_trip():
    got = make_change(40, {100: 1}, {50: 1, 20: 3})
    assert cash._change_from_dict(got.to_dict()) == got
    assert got.to_dict()["pieces"] == {"20": 3}


# --------------------------------------------------------------------------------------
# Error codes
# --------------------------------------------------------------------------------------

def test_no_exact_change_says_what_is_short():
    err = code_of(make_change, 40, {100: 1}, {50: 1, 20: 1})
    assert err.code == "NO_EXACT_CHANGE"
    assert err.details == {"change_minor": 60, "closest_minor": 50, "short_minor": 10}
    assert err.to_dict()["details"]["short_minor"] == 10


def test_insufficient_tender():
    err = code_of(make_change, 500, {200: 2}, {})
    assert err.code == "INSUFFICIENT_TENDER"
    assert err.details["short_minor"] == 100


@pytest.mark.parametrize("tendered, drawer", [
    ({3: 1}, {}),                 # no 3p piece in GBP
    ({100: 1}, {7: 1}),
    ({0: 1}, {}),
    ({-5: 1}, {}),
    ({"100": 1}, {}),
    ({1.0: 1}, {}),
])
def test_bad_denomination(tendered, drawer):
    assert code_of(make_change, 1, tendered, drawer, currency="GBP").code == "BAD_DENOMINATION"


def test_any_positive_denomination_without_a_currency():
    assert make_change(1, {3: 1}, {2: 1}).pieces == {2: 1}
    assert code_of(make_change, 1, {0: 1}, {}).code == "BAD_DENOMINATION"


@pytest.mark.parametrize("due", [0, -1, 1.5, "100", True, None])
def test_bad_due(due):
    assert code_of(make_change, due, {100: 1}, {}).code == "BAD_AMOUNT"


@pytest.mark.parametrize("tendered", [{100: -1}, {100: 1.0}, {100: True}, [(100, 1)]])
def test_bad_count(tendered):
    assert code_of(make_change, 1, tendered, {}).code == "BAD_AMOUNT"


def test_bad_currency():
    assert code_of(make_change, 1, {100: 1}, {}, currency="XXX").code == "BAD_CURRENCY"


def test_change_too_large():
    err = code_of(make_change, 1, {10000: 100}, {})
    assert err.code == "CHANGE_TOO_LARGE"


def test_inputs_are_not_changed():
    tendered, drawer = {100: 1}, {50: 1, 20: 3}
    make_change(40, tendered, drawer)
    assert tendered == {100: 1} and drawer == {50: 1, 20: 3}


# --------------------------------------------------------------------------------------
# The drawer
# --------------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    con = connect(tmp_path / "store.db")
    yield con
    con.close()


def test_drawer_float_pay_and_total(store):
    d = Drawer(store, "kiosk-1", "GBP")
    assert d.counts() == {} and d.total_minor() == 0
    assert d.float_in({50: 1, 20: 3}) == {50: 1, 20: 3}
    change = d.pay_cash(40, {100: 1})
    assert change.pieces == {20: 3}
    assert d.counts() == {100: 1, 50: 1}
    assert d.total_minor() == 150
    assert d.float_out({100: 1}) == {50: 1}
    assert d.total_minor() == 50


def test_drawer_persists_across_connections(tmp_path):
    con = connect(tmp_path / "store.db")
    Drawer(con, "k", "CNY").float_in({10000: 2, 1000: 5})
    con.close()
    con = connect(tmp_path / "store.db")
    try:
        assert Drawer(con, "k", "CNY").counts() == {10000: 2, 1000: 5}
        assert Drawer(con, "other", "CNY").counts() == {}
    finally:
        con.close()


def test_refused_payment_leaves_the_drawer_unchanged(store):
    d = Drawer(store, "k", "GBP")
    d.float_in({50: 1, 20: 1})
    assert code_of(d.pay_cash, 40, {100: 1}).code == "NO_EXACT_CHANGE"
    assert d.counts() == {50: 1, 20: 1}       # the tendered £1 did not stay in


def test_failure_while_writing_rolls_everything_back(store, monkeypatch):
    d = Drawer(store, "k", "GBP")
    d.float_in({50: 1, 20: 3})

    def boom(*a, **kw):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(d, "_record", boom)
    assert code_of(d.pay_cash, 40, {100: 1}, ref="o-1").code == "DB_ERROR"
    assert d.counts() == {50: 1, 20: 3}


def test_pay_inside_a_callers_transaction_rolls_back_alone(store):
    d = Drawer(store, "k", "GBP")
    d.float_in({20: 1})
    store.execute("BEGIN")
    d.float_in({10: 1})
    assert code_of(d.pay_cash, 40, {100: 1}).code == "NO_EXACT_CHANGE"
    store.execute("COMMIT")
    assert d.counts() == {20: 1, 10: 1}


def test_pay_is_idempotent_by_reference(store):
    d = Drawer(store, "k", "GBP")
    d.float_in({50: 1, 20: 3})
    first = d.pay_cash(40, {100: 1}, ref="HH07-0001-1")
    again = d.pay_cash(40, {100: 1}, ref="HH07-0001-1")
    assert again == first
    assert d.counts() == {100: 1, 50: 1}      # the £1 went in once
    assert code_of(d.pay_cash, 41, {100: 1}, ref="HH07-0001-1").code == "REF_CONFLICT"
    assert code_of(d.float_in, {100: 1}, ref="HH07-0001-1").code == "REF_CONFLICT"


def test_float_in_is_idempotent_by_reference(store):
    d = Drawer(store, "k", "GBP")
    d.float_in({100: 5}, ref="slip-9")
    d.float_in({100: 5}, ref="slip-9")
    assert d.counts() == {100: 5}


def test_pickup_of_missing_pieces_is_refused(store):
    d = Drawer(store, "k", "GBP")
    d.float_in({1000: 2})
    err = code_of(d.float_out, {1000: 3, 500: 1})
    assert err.code == "DRAWER_SHORT"
    assert err.details["short"] == {"1000": 1, "500": 1}
    assert d.counts() == {1000: 2}


def test_drawer_checks_denominations_and_currency(store):
    d = Drawer(store, "k", "CNY")
    assert code_of(d.float_in, {200: 1}).code == "BAD_DENOMINATION"   # no 2-yuan piece
    d.float_in({100: 1})
    assert code_of(Drawer, store, "k", "GBP").code == "BAD_CURRENCY"
    assert code_of(Drawer, store, "k2", "XYZ").code == "BAD_CURRENCY"
