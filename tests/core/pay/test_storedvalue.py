"""Member stored value (core/pay/storedvalue.py): every code, idempotency by reference, the
PIN rules, no negative balance ever, a property test over random sequences of moves,
concurrent debits from two connections, and savepoints inside a caller's transaction."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lanecore.core.pay import storedvalue as sv
from lanecore.core.pay.routing import DECLINE_TABLE
from lanecore.core.pay.storedvalue import (MAX_PIN_FAILURES, Move, StoredValue,
                                           StoredValueError)

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free
from chainfix import chain_root, pg_server  # noqa: F401 - the [postgresql] runs
from dbfix import db  # noqa: F401 - one fixture, [sqlite] and [postgresql]


def code_of(fn, *args, **kw) -> StoredValueError:
    with pytest.raises(StoredValueError) as info:
        fn(*args, **kw)
    return info.value


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        self.t += 1
        return self.t


@pytest.fixture
def store(db):  # noqa: F811 - the dbfix fixture
    con = db.connect()
    yield con
    con.close()


@pytest.fixture
def s(store):
    return StoredValue(store, "CNY", clock=Clock())


def memory() -> sqlite3.Connection:
    return sqlite3.connect(":memory:", isolation_level=None)


# --------------------------------------------------------------------------------------
# Accounts
# --------------------------------------------------------------------------------------

def test_decline_codes_are_the_routing_tables():
    assert set(sv.DECLINE_CODES) == set(DECLINE_TABLE["stored_value"])


def test_open_is_idempotent_and_starts_at_zero(s):
    a = s.open_account("M-0001")
    assert (a.member, a.currency, a.balance_minor, a.frozen, a.has_pin) == \
        ("M-0001", "CNY", 0, False, False)
    s.topup("M-0001", 500, ref="t1")
    again = s.open_account("M-0001", pin="1234")    # already there: unchanged
    assert again.balance_minor == 500 and not again.has_pin
    assert s.balance("M-0001") == 500
    assert s.account("M-0001").to_dict()["balance_minor"] == 500


@pytest.mark.parametrize("member", ["", "a" * 65, "has space", "tab\t", "ü-member", None,
                                    123, "x\n"])
def test_bad_member(s, member):
    assert code_of(s.open_account, member).code == "BAD_MEMBER"
    assert code_of(s.balance, member).code == "BAD_MEMBER"


def test_safe_member_ids(s):
    for member in ("a", "A" * 64, "+8613800138000", "card:6212-3456", "x.y_z@shop"):
        assert s.open_account(member).member == member


def test_unknown_member(s):
    for call in (lambda: s.balance("nobody"), lambda: s.moves("nobody"),
                 lambda: s.topup("nobody", 1, ref="r"), lambda: s.debit("nobody", 1, ref="r"),
                 lambda: s.freeze("nobody"), lambda: s.unfreeze("nobody")):
        assert code_of(call).code == "UNKNOWN_MEMBER"
    assert s.find("r") is None


def test_bad_currency(store):
    assert code_of(StoredValue, store, "cny").code == "BAD_CURRENCY"
    assert code_of(StoredValue, store, None).code == "BAD_CURRENCY"
    StoredValue(store, "CNY").open_account("m")
    usd = StoredValue(store, "USD")
    for call in (lambda: usd.open_account("m"), lambda: usd.balance("m"),
                 lambda: usd.topup("m", 1, ref="r"), lambda: usd.debit("m", 1, ref="r")):
        assert code_of(call).code == "BAD_CURRENCY"
    usd.open_account("n")                              # another member, another currency
    assert usd.balance("n") == 0


@pytest.mark.parametrize("amount", [0, -1, 10 ** 12 + 1, 1.0, "5", True, None])
def test_bad_amount(s, amount):
    s.open_account("m")
    for call in (s.topup, s.debit):
        assert code_of(call, "m", amount, ref="r").code == "BAD_AMOUNT"
    assert code_of(s.credit, "m", amount, ref="r", of_ref="d").code == "BAD_AMOUNT"


def test_largest_amount_and_the_balance_limit(s):
    s.open_account("m")
    for i in range(sv.MAX_BALANCE_MINOR // sv.MAX_AMOUNT_MINOR):
        s.topup("m", sv.MAX_AMOUNT_MINOR, ref=f"t{i}")
    assert s.balance("m") == sv.MAX_BALANCE_MINOR
    err = code_of(s.topup, "m", 1, ref="over")
    assert err.code == "BALANCE_LIMIT" and s.find("over") is None


@pytest.mark.parametrize("ref", ["", "a b", "x" * 101, None, 7, "é"])
def test_bad_ref(s, ref):
    s.open_account("m")
    assert code_of(s.topup, "m", 1, ref=ref).code == "BAD_REF"
    assert code_of(s.find, ref).code == "BAD_REF"


# --------------------------------------------------------------------------------------
# Moves, refusals, idempotency
# --------------------------------------------------------------------------------------

def test_topup_debit_credit_and_history(s):
    s.open_account("m")
    t = s.topup("m", 1000, ref="top-1")
    d = s.debit("m", 300, ref="ORD-1-1")
    c = s.credit("m", 100, ref="refund:R1", of_ref="ORD-1-1")
    assert (t.kind, t.amount_minor, t.balance_after) == ("topup", 1000, 1000)
    assert (d.kind, d.amount_minor, d.balance_after) == ("debit", 300, 700)
    assert (c.kind, c.amount_minor, c.balance_after, c.of_ref) == ("credit", 100, 800,
                                                                   "ORD-1-1")
    assert s.balance("m") == 800
    assert s.moves("m") == [t, d, c]
    assert s.find("ORD-1-1") == d and s.find("nope") is None
    assert s.refundable("ORD-1-1") == 200
    assert d.to_dict()["ref"] == "ORD-1-1"


def test_balance_not_enough_is_not_recorded_and_can_be_retried(s):
    s.open_account("m")
    s.topup("m", 250, ref="t1")
    err = code_of(s.debit, "m", 300, ref="ORD-9-1")
    assert err.code == "BALANCE_NOT_ENOUGH"
    assert err.details == {"member": "m", "balance_minor": 250, "short_minor": 50}
    assert s.find("ORD-9-1") is None and s.balance("m") == 250
    s.topup("m", 50, ref="t2")
    assert s.debit("m", 300, ref="ORD-9-1").balance_after == 0     # same ref, now paid


def test_replay_returns_the_first_result_and_moves_nothing(s):
    s.open_account("m")
    first = s.topup("m", 1000, ref="t1")
    assert s.topup("m", 1000, ref="t1") == first
    d = s.debit("m", 400, ref="d1")
    s.topup("m", 5, ref="t2")
    assert s.debit("m", 400, ref="d1") == d               # balance_after of then
    c = s.credit("m", 400, ref="c1", of_ref="d1")
    assert s.credit("m", 400, ref="c1", of_ref="d1") == c  # not an OVER_REFUND
    assert s.balance("m") == 1005
    assert len(s.moves("m")) == 4


def test_ref_conflict(s):
    s.open_account("m")
    s.open_account("n")
    s.topup("m", 1000, ref="t1")
    s.debit("m", 100, ref="d1")
    for call in (lambda: s.topup("m", 999, ref="t1"),         # other amount
                 lambda: s.topup("n", 1000, ref="t1"),        # other member
                 lambda: s.debit("m", 1000, ref="t1"),        # other kind
                 lambda: s.debit("m", 101, ref="d1"),
                 lambda: s.credit("m", 100, ref="d1", of_ref="d1")):
        err = code_of(call)
        assert err.code == "REF_CONFLICT"
    assert s.balance("m") == 900 and s.balance("n") == 0


def test_origin_is_a_term_of_the_debit(s):
    s.open_account("m")
    s.topup("m", 1000, ref="t1")
    d = s.debit("m", 100, ref="A-1-1", origin="pay-a")
    assert s.debit("m", 100, ref="A-1-1", origin="pay-a") == d       # its own replay
    # another gateway's charge under the same reference: refused, never its move
    assert code_of(s.debit, "m", 100, ref="A-1-1", origin="pay-b").code == "REF_CONFLICT"
    assert code_of(s.debit, "m", 100, ref="A-1-1").code == "REF_CONFLICT"
    assert code_of(s.debit, "m", 100, ref="x", origin="no spaces").code == "BAD_REF"
    assert s.balance("m") == 900


def test_settle_answers_and_voids_for_good(s):
    s.open_account("m")
    s.topup("m", 1000, ref="t1")
    d = s.debit("m", 300, ref="D-1", origin="pay-a")
    assert s.settle("D-1", origin="pay-a") == d
    assert s.settle("D-1", origin="pay-a") == d                     # asked again
    assert code_of(s.settle, "D-1", origin="pay-b").code == "REF_CONFLICT"
    assert code_of(s.settle, "t1").code == "REF_CONFLICT"          # a top-up, no debit
    assert s.settle("D-2", origin="pay-a") is None                 # never debited ...
    assert s.settle("D-2", origin="pay-a") is None
    late = code_of(s.debit, "m", 300, ref="D-2", origin="pay-a")    # ... and now never
    assert late.code == "REF_CONFLICT" and late.details["voided"]
    assert code_of(s.topup, "m", 5, ref="D-2").code == "REF_CONFLICT"
    assert s.find("D-2") is None and s.balance("m") == 700
    # a debit refused (no funds) leaves its ref open: settle voids it too
    assert code_of(s.debit, "m", 5000, ref="D-3").code == "BALANCE_NOT_ENOUGH"
    assert s.settle("D-3") is None
    assert code_of(s.debit, "m", 5, ref="D-3").code == "REF_CONFLICT"


def test_ref_conflict_across_currencies(store):
    cny, usd = StoredValue(store, "CNY"), StoredValue(store, "USD")
    cny.open_account("m")
    usd.open_account("u")
    cny.topup("m", 10, ref="t1")
    assert code_of(usd.topup, "u", 10, ref="t1").code == "REF_CONFLICT"


def test_over_refund_and_unknown_debit(s):
    s.open_account("m")
    s.open_account("other")
    s.topup("m", 1000, ref="t1")
    s.topup("other", 1000, ref="t2")
    s.debit("m", 300, ref="d1")
    s.debit("other", 300, ref="d2")
    s.credit("m", 200, ref="c1", of_ref="d1")
    err = code_of(s.credit, "m", 101, ref="c2", of_ref="d1")
    assert err.code == "OVER_REFUND"
    assert err.details == {"of_ref": "d1", "debited_minor": 300, "credited_minor": 200,
                           "refundable_minor": 100}
    assert s.find("c2") is None
    s.credit("m", 100, ref="c2", of_ref="d1")
    assert code_of(s.credit, "m", 1, ref="c3", of_ref="d1").code == "OVER_REFUND"
    assert s.refundable("d1") == 0
    for of_ref in ("t1", "d2", "no-such"):        # a top-up, another member's, nothing
        assert code_of(s.credit, "m", 1, ref="c4", of_ref=of_ref).code == "UNKNOWN_DEBIT"
    assert code_of(s.refundable, "t1").code == "UNKNOWN_DEBIT"
    assert s.balance("m") == 1000


def test_frozen_account_refuses_debits_only(s):
    s.open_account("m")
    s.topup("m", 1000, ref="t1")
    s.debit("m", 100, ref="d1")
    assert s.freeze("m").frozen and s.freeze("m").frozen              # idempotent
    err = code_of(s.debit, "m", 1, ref="d2")
    assert err.code == "ACCOUNT_FROZEN" and s.find("d2") is None
    assert s.debit("m", 100, ref="d1").balance_after == 900           # a replay still answers
    s.topup("m", 10, ref="t2")                                         # money may come in
    s.credit("m", 100, ref="c1", of_ref="d1")                          # and back
    assert s.balance("m") == 1010
    assert not s.unfreeze("m").frozen
    assert s.debit("m", 1, ref="d2").balance_after == 1009


def test_adjust(s):
    s.open_account("m")
    s.topup("m", 100, ref="t1")
    assert s.adjust("m", -30, ref="a1", reason="miskeyed top-up").balance_after == 70
    assert s.adjust("m", -30, ref="a1", reason="miskeyed top-up").balance_after == 70
    assert code_of(s.adjust, "m", -30, ref="a1", reason="other").code == "REF_CONFLICT"
    assert code_of(s.adjust, "m", -71, ref="a2", reason="x").code == "BALANCE_NOT_ENOUGH"
    assert code_of(s.adjust, "m", 0, ref="a2", reason="x").code == "BAD_AMOUNT"
    assert code_of(s.adjust, "m", 5, ref="a2", reason=" ").code == "BAD_REQUEST"
    assert s.adjust("m", 5, ref="a2", reason="goodwill").amount_minor == 5
    assert s.balance("m") == 75


def test_no_negative_balance_ever(s, store):
    s.open_account("m")
    s.topup("m", 100, ref="t1")
    assert code_of(s.debit, "m", 101, ref="d1").code == "BALANCE_NOT_ENOUGH"
    s.debit("m", 100, ref="d2")
    assert code_of(s.debit, "m", 1, ref="d3").code == "BALANCE_NOT_ENOUGH"
    assert s.balance("m") == 0
    # And the table itself refuses, whoever writes to it.
    with pytest.raises(sqlite3.IntegrityError):
        store.execute("UPDATE sv_accounts SET balance_minor = -1 WHERE member = 'm'")
    assert s.balance("m") == 0


def test_failure_while_writing_rolls_everything_back(s, monkeypatch):
    s.open_account("m")
    s.topup("m", 100, ref="t1")

    def boom(*a, **kw):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(s, "_record", boom)
    assert code_of(s.debit, "m", 50, ref="d1").code == "DB_ERROR"
    monkeypatch.undo()
    assert s.balance("m") == 100 and s.find("d1") is None
    assert not s.con.in_transaction


def test_persists_across_connections(db):  # noqa: F811 - the dbfix fixture
    con = db.connect()
    StoredValue(con).open_account("m", pin="2468")
    StoredValue(con).topup("m", 700, ref="t1")
    con.close()
    con = db.connect()
    try:
        again = StoredValue(con)
        assert again.balance("m") == 700 and again.account("m").has_pin
        assert again.debit("m", 200, ref="d1", pin="2468").balance_after == 500
    finally:
        con.close()


# --------------------------------------------------------------------------------------
# PINs
# --------------------------------------------------------------------------------------

def test_pin_is_stored_hashed_and_salted(s, store):
    s.open_account("a", pin="123456")
    s.open_account("b", pin="123456")
    hashes = [r[0] for r in store.execute("SELECT pin_hash FROM sv_accounts ORDER BY member")]
    assert all(h.startswith("scrypt$") and "123456" not in h for h in hashes)
    assert hashes[0] != hashes[1]                     # salted


@pytest.mark.parametrize("pin", ["123", "x" * 65, "12\n34", 1234])
def test_bad_new_pin(s, pin):
    assert code_of(s.open_account, "m", pin=pin).code == "BAD_PIN"
    assert code_of(s.balance, "m").code == "UNKNOWN_MEMBER"


def test_wrong_and_missing_pin(s):
    s.open_account("m", pin="2468")
    s.topup("m", 1000, ref="t1")
    err = code_of(s.debit, "m", 100, ref="d1")
    assert err.code == "WRONG_PASSWORD" and err.details["pin_missing"]
    err = code_of(s.debit, "m", 100, ref="d1", pin="1357")
    assert err.code == "WRONG_PASSWORD"
    assert err.details == {"member": "m", "pin_missing": False,
                           "attempts_left": MAX_PIN_FAILURES - 1, "frozen": False}
    assert s.account("m").pin_failures == 1               # committed despite the refusal
    assert s.find("d1") is None and s.balance("m") == 1000
    assert code_of(s.debit, "m", 100, ref="d1", pin=2468).code == "BAD_PIN"
    assert s.account("m").pin_failures == 1               # a missing or malformed one: no
    d = s.debit("m", 100, ref="d1", pin="2468")
    assert d.balance_after == 900 and s.account("m").pin_failures == 0
    # A PIN given for an account without one is ignored.
    s.open_account("nopin")
    s.topup("nopin", 5, ref="t2")
    assert s.debit("nopin", 5, ref="d2", pin="whatever").balance_after == 0


def test_five_wrong_in_a_row_freeze_and_success_resets(s):
    s.open_account("m", pin="2468")
    s.topup("m", 1000, ref="t1")
    for _ in range(MAX_PIN_FAILURES - 1):
        assert code_of(s.debit, "m", 1, ref="d", pin="0000").code == "WRONG_PASSWORD"
    s.debit("m", 1, ref="d", pin="2468")                   # right: the count goes to 0
    assert s.account("m").pin_failures == 0
    for i in range(MAX_PIN_FAILURES - 1):
        err = code_of(s.debit, "m", 1, ref="e", pin="0000")
        assert err.details["attempts_left"] == MAX_PIN_FAILURES - 1 - i
        assert not s.account("m").frozen
    err = code_of(s.debit, "m", 1, ref="e", pin="0000")
    assert err.code == "WRONG_PASSWORD" and err.details["frozen"]
    assert s.account("m").frozen
    err = code_of(s.debit, "m", 1, ref="e", pin="2468")  # the right PIN no longer helps
    assert err.code == "ACCOUNT_FROZEN"
    s.unfreeze("m")
    assert s.account("m").pin_failures == 0
    assert s.debit("m", 1, ref="e", pin="2468").balance_after == 998


def test_right_pin_resets_the_count_even_when_the_balance_is_short(s):
    s.open_account("m", pin="2468")
    s.topup("m", 10, ref="t1")
    code_of(s.debit, "m", 1, ref="d", pin="0000")
    assert code_of(s.debit, "m", 11, ref="d", pin="2468").code == "BALANCE_NOT_ENOUGH"
    assert s.account("m").pin_failures == 0


def test_set_pin(s):
    s.open_account("m")
    s.topup("m", 10, ref="t1")
    assert s.set_pin("m", "9999").has_pin
    assert code_of(s.debit, "m", 1, ref="d").code == "WRONG_PASSWORD"
    assert s.set_pin("m", None).has_pin is False
    assert s.debit("m", 1, ref="d").balance_after == 9
    assert code_of(s.set_pin, "m", "1").code == "BAD_PIN"


# --------------------------------------------------------------------------------------
# Property: random sequences of moves
# --------------------------------------------------------------------------------------

op_st = st.lists(st.one_of(
    st.tuples(st.just("topup"), st.integers(1, 400)),
    st.tuples(st.just("debit"), st.integers(1, 400)),
    st.tuples(st.just("credit"), st.integers(0, 50), st.integers(1, 300)),
    st.tuples(st.just("replay"), st.integers(0, 50)),
    st.tuples(st.just("conflict"), st.integers(0, 50)),
), max_size=40)


# SQLite only (in memory): a fresh database for each generated example.
@given(ops=op_st)
def test_balance_is_the_sum_of_the_moves(ops):
    con = memory()
    s = StoredValue(con, "GBP")
    s.open_account("m")
    tops = debits = credits = 0
    done: list[tuple[tuple, Move]] = []          # (call, result) of moves made
    debit_left: dict[str, int] = {}              # debit ref -> refundable
    for i, op in enumerate(ops):
        ref = f"r{i}"
        if op[0] == "topup":
            call = ("topup", "m", op[1], {"ref": ref})
        elif op[0] == "debit":
            call = ("debit", "m", op[1], {"ref": ref})
        elif op[0] == "credit":
            if not debit_left:
                continue
            of = sorted(debit_left)[op[1] % len(debit_left)]
            call = ("credit", "m", op[2], {"ref": ref, "of_ref": of})
        else:
            if not done:
                continue
            call, first = done[op[1] % len(done)]
            before = (s.balance("m"), len(s.moves("m")))
            if op[0] == "replay":
                assert getattr(s, call[0])(*call[1:3], **call[3]) == first
            else:
                err = code_of(getattr(s, call[0]), call[1], call[2] + 1, **call[3])
                assert err.code == "REF_CONFLICT"
            assert (s.balance("m"), len(s.moves("m"))) == before
            continue
        balance = tops - debits + credits
        kind, amount = call[0], call[2]
        if kind == "debit" and amount > balance:
            assert code_of(s.debit, "m", amount, **call[3]).code == "BALANCE_NOT_ENOUGH"
        elif kind == "credit" and amount > debit_left[call[3]["of_ref"]]:
            assert code_of(s.credit, "m", amount, **call[3]).code == "OVER_REFUND"
        else:
            move = getattr(s, kind)("m", amount, **call[3])
            done.append((call, move))
            if kind == "topup":
                tops += amount
            elif kind == "debit":
                debits += amount
                debit_left[ref] = amount
            else:
                credits += amount
                debit_left[call[3]["of_ref"]] -= amount
            assert move.balance_after == tops - debits + credits
        assert s.balance("m") == tops - debits + credits >= 0
    # The record agrees with the balance, move by move.
    running = 0
    for m in s.moves("m"):
        running += -m.amount_minor if m.kind == "debit" else m.amount_minor
        assert m.balance_after == running >= 0
    assert running == s.balance("m")
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
        if isinstance(r, BaseException) and not isinstance(r, StoredValueError):
            raise r
    return out


def test_two_connections_never_overspend(db):  # noqa: F811 - the dbfix fixture
    con = db.connect()
    s = StoredValue(con)
    s.open_account("m")
    s.topup("m", 1000, ref="t1")

    def lane(i: int) -> list:
        own = db.connect()
        try:
            mine = StoredValue(own)
            got = []
            for k in range(10):
                try:
                    got.append(mine.debit("m", 100, ref=f"lane{i}-{k}").ref)
                except StoredValueError as exc:
                    got.append(exc.code)
            return got
        finally:
            own.close()

    results = _run_threads(2, lane)
    flat = [r for lane_results in results for r in lane_results]
    assert sum(r.startswith("lane") for r in flat) == 10
    assert flat.count("BALANCE_NOT_ENOUGH") == 10
    assert s.balance("m") == 0
    assert sum(m.amount_minor for m in s.moves("m") if m.kind == "debit") == 1000
    con.close()


def test_twenty_connections_one_debit_each(db):  # noqa: F811 - the dbfix fixture
    con = db.connect()
    s = StoredValue(con)
    s.open_account("m")
    s.topup("m", 1000, ref="t1")

    def lane(i: int):
        own = db.connect()
        try:
            return StoredValue(own).debit("m", 100, ref=f"d{i}")
        finally:
            own.close()

    out = _run_threads(20, lane)
    assert sum(isinstance(r, Move) for r in out) == 10
    assert all(r.code == "BALANCE_NOT_ENOUGH" for r in out if not isinstance(r, Move))
    assert sorted(r.balance_after for r in out if isinstance(r, Move)) == \
        list(range(0, 1000, 100))
    assert s.balance("m") == 0
    con.close()


def test_the_same_ref_from_two_connections_moves_once(db):  # noqa: F811 - the dbfix fixture
    con = db.connect()
    s = StoredValue(con)
    s.open_account("m")
    s.topup("m", 1000, ref="t1")

    def lane(i: int):
        own = db.connect()
        try:
            return StoredValue(own).debit("m", 300, ref="ORD-7-1")
        finally:
            own.close()

    a, b = _run_threads(2, lane)
    assert a == b and a.balance_after == 700
    assert s.balance("m") == 700
    con.close()


def test_savepoint_in_a_rolled_back_transaction_leaves_nothing(s, store):
    s.open_account("m", pin="2468")
    s.topup("m", 500, ref="t1")
    store.execute("BEGIN IMMEDIATE")
    s.open_account("n")
    s.topup("m", 100, ref="t2")
    s.debit("m", 550, ref="d1", pin="2468")
    s.freeze("m")
    assert s.balance("m") == 50                  # seen inside the transaction
    store.execute("ROLLBACK")
    assert s.balance("m") == 500 and not s.account("m").frozen
    assert s.find("t2") is None and s.find("d1") is None
    assert code_of(s.balance, "n").code == "UNKNOWN_MEMBER"
    assert [m.ref for m in s.moves("m")] == ["t1"]


def test_a_refusal_inside_a_callers_transaction_undoes_only_its_own_part(s, store):
    s.open_account("m")
    s.topup("m", 100, ref="t1")
    store.execute("BEGIN IMMEDIATE")
    s.topup("m", 10, ref="t2")
    assert code_of(s.debit, "m", 1000, ref="d1").code == "BALANCE_NOT_ENOUGH"
    assert code_of(s.topup, "m", 11, ref="t2").code == "REF_CONFLICT"
    assert store.in_transaction
    store.execute("COMMIT")
    assert s.balance("m") == 110
    assert [m.ref for m in s.moves("m")] == ["t1", "t2"]


def test_wrong_pin_count_is_written_into_the_callers_transaction(s, store):
    s.open_account("m", pin="2468")
    s.topup("m", 100, ref="t1")
    store.execute("BEGIN IMMEDIATE")
    assert code_of(s.debit, "m", 10, ref="d1", pin="0000").code == "WRONG_PASSWORD"
    store.execute("COMMIT")                      # as a gateway records the decline
    assert s.account("m").pin_failures == 1
