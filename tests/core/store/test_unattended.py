"""Settlement for unattended venues (core/store/unattended.py, seed 003): accounts and their
locks, logins that cannot be probed, no card number kept, shopping by code and by name,
settlement that pays exactly once (a crash in the middle included), and the exit pass."""

from __future__ import annotations

import inspect
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lanecore.core.store import unattended
from lanecore.core.scan.catalog import connect
from lanecore.core.errors import LanecoreError
from lanecore.core.store.orderqr import Signer, b64url_decode, canonical_json
from lanecore.core.store.unattended import (ERROR_CODES, PASS_KEYS, BiometricVerifier,
                                            SimulatedBiometricVerifier, UnattendedError,
                                            Venue, itemised_text, read_exit_pass)
from repo import REPO

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

T0 = 1_790_000_000
FAST_N = 2 ** 10          # scrypt cost for tests only; the service default is ≥ 2**14
TOKEN = "tok_visa_4242_abc"
PIN = "246810"


def gtin(body: str) -> str:
    """``body`` with its GS1 check digit appended."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return body + str((10 - total % 10) % 10)


MILK_1L = gtin("690123456789")          # 13 digits
MILK_2L = gtin("690123456790")
BREAD = gtin("0000000501234")           # 14 digits
TEA = gtin("690123456801")
TEA_BISCUITS = gtin("690123456802")
CHOC = gtin("9638507")                  # 8 digits
TV = gtin("690123456999")


def make_catalog() -> dict:
    return {MILK_1L: {"name": "Milk 1L", "price_minor": 189},
            MILK_2L: {"name": "Milk 2L", "price_minor": 329},
            BREAD: {"name": "Bread", "price_minor": 250},
            TEA: {"name": "Tea", "price_minor": 1200},
            TEA_BISCUITS: {"name": "Tea biscuits", "price_minor": 450},
            CHOC: {"name": "Chocolate", "price_minor": 99},
            TV: {"name": "Television 55in", "price_minor": 399_900}}


def code_of(fn, *args, **kw) -> UnattendedError:
    with pytest.raises(UnattendedError) as info:
        fn(*args, **kw)
    assert isinstance(info.value, LanecoreError)
    assert info.value.code in ERROR_CODES, info.value.code
    return info.value


class FakePay:
    """A payment gateway that records every call and answers ``answer``."""

    def __init__(self, answer=None, exc: BaseException | None = None):
        self.calls: list[tuple] = []
        self.answer = answer
        self.exc = exc

    def __call__(self, order_no, amount_minor, token):
        self.calls.append((order_no, amount_minor, token))
        if self.exc is not None:
            raise self.exc
        if self.answer is None:     # what the payment gateway answers: order and amount
            return {"status": "paid", "order_no": order_no, "amount_minor": amount_minor,
                    "provider_ref": "P-1"}
        return dict(self.answer)


@pytest.fixture(scope="module")
def signer():
    return Signer.generate()


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "store.db"


@pytest.fixture
def con(db_path):
    con = connect(db_path)
    yield con
    con.close()


@pytest.fixture
def catalog():
    return make_catalog()


@pytest.fixture
def venue(con, signer, catalog):
    return Venue(con, signer=signer, catalog=catalog, kdf_n=FAST_N, clock=lambda: T0,
                 venue_id="KIOSK-7")


@pytest.fixture
def shopper(venue):
    """A registered, logged-in shopper with a card token and a transaction password."""
    venue.register("alice", "correct horse", name="Alice Li", now=T0)
    session = venue.login("alice", "correct horse", now=T0)
    venue.bind_payment(session, "card", TOKEN)
    venue.set_transaction_password(session, PIN)
    return session


def filled_cart(venue, session, *items):
    cart = venue.open_cart(session, T0)
    for what, qty in items or ((MILK_1L, 2), ("bread", 1)):
        venue.add(cart.cart_id, what, qty, now=T0)
    return cart.cart_id


# --------------------------------------------------------------------------------------
# Accounts
# --------------------------------------------------------------------------------------

def test_the_default_cost_is_memory_hard_scrypt(con, signer, catalog):
    assert inspect.signature(Venue).parameters["kdf_n"].default >= 2 ** 14
    venue = Venue(con, signer=signer, catalog=catalog)
    venue.register("bob", "a long passphrase", name="Bob", now=T0)
    (stored,) = con.execute("SELECT pw_hash FROM venue_accounts").fetchone()
    scheme, n, r, p, _salt, _digest = stored.split("$")
    assert scheme == "scrypt" and int(n) >= 2 ** 14 and (int(r), int(p)) == (8, 1)
    assert "passphrase" not in stored


def test_register_and_log_in(venue, con):
    acct = venue.register("Alice", "correct horse", kind="company", name="  Li  Trading ",
                          now=T0)
    assert acct.login == "alice" and acct.kind == "company" and acct.name == "Li Trading"
    assert acct.account_id.startswith("AC") and not acct.has_transaction_password
    session = venue.login("ALICE", "correct horse", now=T0 + 5)
    assert session.account_id == acct.account_id and session.expires_at > T0
    assert "token" not in repr(session) and session.token not in repr(session)
    assert venue.account(session).account_id == acct.account_id
    # Only a hash of the session token is kept.
    assert session.token not in json.dumps(con.execute("SELECT * FROM venue_sessions")
                                           .fetchall())
    salts = {r[0].split("$")[4] for r in con.execute("SELECT pw_hash FROM venue_accounts")}
    venue.register("alice2", "correct horse", name="Other", now=T0)
    salts2 = {r[0].split("$")[4] for r in con.execute("SELECT pw_hash FROM venue_accounts")}
    assert len(salts2) == 2 and salts <= salts2         # same password, other salt


@pytest.mark.parametrize("login", ["ab", "x" * 65, "has space", "semi;colon", "-dash",
                                   "ünï", "", None, 42])
def test_bad_logins(venue, login):
    assert code_of(venue.register, login, "correct horse", name="X", now=T0).code == "BAD_LOGIN"


def test_register_refusals(venue):
    venue.register("alice", "correct horse", name="Alice", now=T0)
    assert code_of(venue.register, "ALICE", "another pass", name="A",
                   now=T0).code == "LOGIN_TAKEN"
    for weak in ("short", "1234567", "", None, "x" * 1025, "tab\there!"):
        assert code_of(venue.register, "carol", weak, name="C",
                       now=T0).code == "WEAK_PASSWORD"
    assert code_of(venue.register, "carol", "correct horse", kind="robot", name="C",
                   now=T0).details["field"] == "kind"
    assert code_of(venue.register, "carol", "correct horse", name=" ",
                   now=T0).details["field"] == "name"


def test_lockout_after_consecutive_failures_and_timing(venue):
    venue.register("alice", "correct horse", name="Alice", now=T0)
    for i in range(4):
        err = code_of(venue.login, "alice", "wrong guess", now=T0 + i)
        assert err.code == "WRONG_PASSWORD" and err.details == {"attempts_left": 4 - i}
    err = code_of(venue.login, "alice", "wrong guess", now=T0 + 4)
    assert err.code == "WRONG_PASSWORD"
    assert err.details == {"attempts_left": 0, "locked_until": T0 + 4 + 900}
    # Locked: even the right password is refused, until the lock ends.
    err = code_of(venue.login, "alice", "correct horse", now=T0 + 4 + 899)
    assert err.code == "ACCOUNT_LOCKED" and err.details["until"] == T0 + 4 + 900
    venue.login("alice", "correct horse", now=T0 + 4 + 900)
    # A success resets the count: 4 wrong, right, 4 wrong is no lock.
    t = T0 + 2000
    for i in range(4):
        code_of(venue.login, "alice", "wrong guess", now=t + i)
    venue.login("alice", "correct horse", now=t + 5)
    for i in range(4):
        assert code_of(venue.login, "alice", "wrong guess",
                       now=t + 10 + i).details == {"attempts_left": 4 - i}
    # Failures further apart than lockout_s do not add up.
    assert code_of(venue.login, "alice", "wrong guess",
                   now=t + 13 + 900).details == {"attempts_left": 4}


def test_unknown_login_is_indistinguishable(venue, monkeypatch):
    venue.register("alice", "correct horse", name="Alice", now=T0)
    work = []
    real = unattended._scrypt

    def counting(secret, salt, n, r, p):
        work.append((n, r, p))
        return real(secret, salt, n, r, p)

    monkeypatch.setattr(unattended, "_scrypt", counting)
    answers = {}
    for login in ("alice", "mallory"):
        work.clear()
        seen = []
        for i in range(6):
            err = code_of(venue.login, login, "wrong guess", now=T0 + i)
            seen.append((err.code, err.message, err.details))
        answers[login] = (seen, list(work))
    # Same codes, messages, details, lock — and the same scrypt work, attempt by attempt.
    assert answers["alice"] == answers["mallory"]
    seen, work_done = answers["alice"]
    assert [s[0] for s in seen] == ["WRONG_PASSWORD"] * 5 + ["ACCOUNT_LOCKED"]
    assert work_done == [(FAST_N, 8, 1)] * 5      # the lock answers without the KDF


def test_hash_parameters_travel_with_the_hash_and_are_raised_on_login(con, signer, catalog):
    old = Venue(con, signer=signer, catalog=catalog, kdf_n=2 ** 10)
    old.register("alice", "correct horse", name="Alice", now=T0)
    new = Venue(con, signer=signer, catalog=catalog, kdf_n=2 ** 11)
    new.login("alice", "correct horse", now=T0)
    (stored,) = con.execute("SELECT pw_hash FROM venue_accounts").fetchone()
    assert stored.startswith("scrypt$2048$8$1$")
    new.login("alice", "correct horse", now=T0 + 1)
    old.login("alice", "correct horse", now=T0 + 2)       # a lower cost reads it too


def test_sessions_end_and_expire(venue):
    venue.register("alice", "correct horse", name="Alice", now=T0)
    s = venue.login("alice", "correct horse", now=T0)
    assert code_of(venue.open_cart, s, s.expires_at).code == "SESSION_EXPIRED"
    assert code_of(venue.open_cart, "forged-token", T0).code == "BAD_SESSION"
    venue.logout(s)
    assert code_of(venue.open_cart, s, T0).code == "BAD_SESSION"


# --------------------------------------------------------------------------------------
# Payment method and transaction password
# --------------------------------------------------------------------------------------

PAN = "4111111111111111"


@pytest.mark.parametrize("token", [PAN, "4111 1111 1111 1111", "4111-1111-1111-1111",
                                   f"tok_{PAN}", "622848123456789012",
                                   "411111123*****1111", "4111**********11111"])
def test_bind_payment_refuses_a_clear_pan(venue, con, token):
    venue.register("alice", "correct horse", name="Alice", now=T0)
    s = venue.login("alice", "correct horse", now=T0)
    err = code_of(venue.bind_payment, s, "card", token)
    assert err.code == "CLEAR_PAN"
    assert token.replace(" ", "").replace("-", "")[4:12] not in err.message
    digits = "".join(c for c in token if c.isdigit())
    assert digits not in "\n".join(con.iterdump())


def test_bind_payment_keeps_a_token_or_masked_card(venue, con):
    venue.register("alice", "correct horse", name="Alice", now=T0)
    s = venue.login("alice", "correct horse", now=T0)
    acct = venue.bind_payment(s, "card", "622848******1234")
    assert (acct.payment_method, acct.payment_display) == ("card", "622848******1234")
    acct = venue.bind_payment(s, "wallet", "wx_openid_ABCDEF")
    assert (acct.payment_method, acct.payment_display) == ("wallet", "…CDEF")
    assert "wx_openid_ABCDEF" not in json.dumps(acct.to_dict())
    assert code_of(venue.bind_payment, s, "cash", "tok").details["field"] == "method"
    for bad in ("", " tok", "t" * 129, "tök", 123):
        assert code_of(venue.bind_payment, s, "wallet", bad).code == "BAD_TOKEN"


def test_transaction_password_is_six_digits_and_needs_the_old_one_to_change(venue, con):
    venue.register("alice", "correct horse", name="Alice", now=T0)
    s = venue.login("alice", "correct horse", now=T0)
    for bad in ("12345", "1234567", "abcdef", "12 456", 123456, None):
        assert code_of(venue.set_transaction_password, s, bad).code == "BAD_PIN"
    assert venue.set_transaction_password(s, PIN).has_transaction_password
    (stored,) = con.execute("SELECT tx_hash FROM venue_accounts").fetchone()
    assert stored.startswith(f"scrypt${FAST_N}$") and PIN not in stored
    err = code_of(venue.set_transaction_password, s, "135790")
    assert err.code == "TX_PASSWORD_WRONG" and err.details == {"pin_missing": True}
    err = code_of(venue.set_transaction_password, s, "135790", current="000000")
    assert err.code == "TX_PASSWORD_WRONG" and err.details["attempts_left"] == 4
    venue.set_transaction_password(s, "135790", current=PIN)


# --------------------------------------------------------------------------------------
# Shopping
# --------------------------------------------------------------------------------------

def test_shop_by_code(venue, shopper):
    cart = venue.open_cart(shopper, T0)
    assert cart.lines == () and cart.total_minor == 0 and cart.status == "open"
    assert venue.open_cart(shopper, T0 + 1).cart_id == cart.cart_id     # one open cart
    cid = cart.cart_id
    v = venue.add(cid, MILK_1L, 2, now=T0)                        # 13 digits
    v = venue.add(cid, BREAD[1:], now=T0)                         # a GTIN-14, as 13 digits
    v = venue.add(cid, "000000" + CHOC, 3, now=T0)                # 8 digits padded to 14
    v = venue.add(cid, f" {MILK_1L} ", 1, now=T0)                 # the same line again
    assert [(x["name"], x["qty"], x["amount_minor"]) for x in v.lines] == [
        ("Milk 1L", 3, 567), ("Bread", 1, 250), ("Chocolate", 3, 297)]
    assert v.lines[0]["gtin"] == "0" + MILK_1L
    assert v.total_minor == 567 + 250 + 297 == venue.quote(cid)
    assert venue.cart(cid) == v
    assert code_of(venue.add, cid, gtin("690999999999"), now=T0).code == "UNKNOWN_ITEM"
    bad = MILK_1L[:-1] + str((int(MILK_1L[-1]) + 1) % 10)
    assert code_of(venue.add, cid, bad, now=T0).code == "BAD_CHECK_DIGIT"
    for qty in (0, 1000, -1, True, 1.5, "2"):
        assert code_of(venue.add, cid, MILK_1L, qty, now=T0).code == "BAD_QTY"
    err = code_of(venue.add, cid, MILK_1L, 997, now=T0)
    assert err.code == "BAD_QTY" and err.details["qty_in_cart"] == 3
    assert code_of(venue.add, "CT00", MILK_1L, now=T0).code == "UNKNOWN_CART"


def test_shop_by_name(venue, shopper):
    cid = venue.open_cart(shopper, T0).cart_id
    assert venue.add(cid, "milk 1l", now=T0).lines[-1]["name"] == "Milk 1L"   # exact
    assert venue.add(cid, "BRE", now=T0).lines[-1]["name"] == "Bread"         # prefix
    assert venue.add(cid, "tea", now=T0).lines[-1]["name"] == "Tea"           # exact wins
    assert venue.add(cid, "Tea  B", now=T0).lines[-1]["name"] == "Tea biscuits"
    err = code_of(venue.add, cid, "milk", now=T0)
    assert err.code == "AMBIGUOUS_NAME" and err.details["count"] == 2
    assert [c["name"] for c in err.details["candidates"]] == ["Milk 1L", "Milk 2L"]
    assert code_of(venue.add, cid, "caviar", now=T0).code == "UNKNOWN_ITEM"
    assert code_of(venue.add, cid, "  ", now=T0).code == "BAD_REQUEST"


def test_remove_and_running_total(venue, shopper):
    cid = filled_cart(venue, shopper, (MILK_1L, 3), (MILK_2L, 1), ("bread", 2))
    assert venue.cart(cid).total_minor == 3 * 189 + 329 + 2 * 250
    v = venue.remove(cid, "milk 1", 2, now=T0)                # the cart's own lines
    assert [(x["name"], x["qty"]) for x in v.lines] == [("Milk 1L", 1), ("Milk 2L", 1),
                                                        ("Bread", 2)]
    assert code_of(venue.remove, cid, "milk", now=T0).code == "AMBIGUOUS_NAME"
    v = venue.remove(cid, BREAD, now=T0)                      # the whole line
    assert v.total_minor == 189 + 329
    err = code_of(venue.remove, cid, MILK_2L, 2, now=T0)
    assert err.code == "BAD_QTY" and err.details["qty_in_cart"] == 1
    assert code_of(venue.remove, cid, "tea", now=T0).code == "NOT_IN_CART"
    assert code_of(venue.remove, cid, CHOC, now=T0).code == "NOT_IN_CART"


def test_a_callable_catalogue(con, signer, shopper):
    by14 = {k.zfill(14): v for k, v in make_catalog().items()}   # lookup(gtin14)
    plain = Venue(con, signer=signer, catalog=by14.get, kdf_n=FAST_N, clock=lambda: T0)
    cid = plain.open_cart(shopper, T0).cart_id
    assert plain.add(cid, MILK_1L, now=T0).total_minor == 189
    assert plain.add(cid, "0" + MILK_1L, now=T0).lines[0]["qty"] == 2
    assert code_of(plain.add, cid, "bread", now=T0).code == "UNKNOWN_ITEM"    # no search
    searching = Venue(con, signer=signer, catalog=by14.get, kdf_n=FAST_N, clock=lambda: T0,
                      name_search=lambda text: [(g, v) for g, v in by14.items()
                                                if v["name"].lower().startswith(text.lower())])
    assert searching.add(cid, "bread", now=T0).lines[-1]["name"] == "Bread"
    by14[TEA.zfill(14)] = {"name": "Tea", "price_minor": -5}
    assert code_of(searching.add, cid, TEA, now=T0).code == "BAD_ITEM"


# --------------------------------------------------------------------------------------
# Settlement
# --------------------------------------------------------------------------------------

def test_settle_happy_path(venue, shopper, signer, con):
    cid = filled_cart(venue, shopper)
    total = venue.quote(cid)
    assert total == 2 * 189 + 250
    pay = FakePay()
    s = venue.settle(cid, transaction_password=PIN, confirm_total_minor=total, pay=pay,
                     now=T0 + 60)
    assert pay.calls == [(s.order_no, total, TOKEN)]
    assert s.status == "paid" and s.total_minor == total and s.currency == "CNY"
    assert s.order_no.startswith("UV20260921") and s.pass_id and s.issued_at == T0 + 60
    assert [(x["name"], x["qty"], x["unit_minor"], x["amount_minor"]) for x in s.lines] == [
        ("Milk 1L", 2, 189, 378), ("Bread", 1, 250, 250)]
    assert s.gateway == {"status": "paid", "order_no": s.order_no, "amount_minor": total,
                         "provider_ref": "P-1"}
    assert venue.settlement(s.order_no) == s and venue.paying() == []
    assert venue.cart(cid).status == "settled" and venue.cart(cid).order_no == s.order_no
    assert code_of(venue.add, cid, MILK_1L, now=T0).code == "CART_CLOSED"
    # The same cart settled again pays nothing and answers with the same settlement.
    again = venue.settle(cid, transaction_password=PIN, confirm_total_minor=total, pay=pay,
                         now=T0 + 70)
    assert again == s and len(pay.calls) == 1
    text = itemised_text(s)
    assert "Milk 1L" in text and "2 x CNY 1.89 = CNY 3.78" in text
    assert "TOTAL CNY 6.28" in text and text.rstrip().endswith(s.exit_pass)
    assert TOKEN not in text
    payload = venue.check_exit_pass(s.exit_pass, signer.verifier(), now=T0 + 120)
    assert payload["order"] == s.order_no and payload["total"] == total
    # The next shopping trip gets a new cart.
    assert venue.open_cart(shopper, T0 + 200).cart_id != cid


def test_settle_needs_a_payment_method_and_a_transaction_password(venue):
    venue.register("dan", "correct horse", name="Dan", now=T0)
    s = venue.login("dan", "correct horse", now=T0)
    cid = filled_cart(venue, s)
    pay = FakePay()
    kw = dict(transaction_password=PIN, confirm_total_minor=628, pay=pay, now=T0)
    assert code_of(venue.settle, cid, **kw).code == "NO_PAYMENT_METHOD"
    venue.bind_payment(s, "wallet", "wx_token_1")
    assert code_of(venue.settle, cid, **kw).code == "TX_PASSWORD_NOT_SET"
    assert pay.calls == []


def test_wrong_transaction_password_and_lock(venue, shopper):
    cid = filled_cart(venue, shopper)
    pay = FakePay()
    total = venue.quote(cid)
    for i in range(4):
        err = code_of(venue.settle, cid, transaction_password="000000",
                      confirm_total_minor=total, pay=pay, now=T0 + i)
        assert err.code == "TX_PASSWORD_WRONG" and err.details == {"attempts_left": 4 - i}
    err = code_of(venue.settle, cid, transaction_password="12", confirm_total_minor=total,
                  pay=pay, now=T0 + 4)
    assert err.details == {"attempts_left": 0, "locked_until": T0 + 4 + 900}
    err = code_of(venue.settle, cid, transaction_password=PIN, confirm_total_minor=total,
                  pay=pay, now=T0 + 100)
    assert err.code == "TX_LOCKED" and err.details["until"] == T0 + 904
    assert code_of(venue.set_transaction_password, shopper, "111111", current=PIN,
                   now=T0 + 100).code == "TX_LOCKED"
    assert pay.calls == []
    s = venue.settle(cid, transaction_password=PIN, confirm_total_minor=total, pay=pay,
                     now=T0 + 904)
    assert s.status == "paid" and len(pay.calls) == 1


def test_total_changed(venue, shopper, catalog):
    cid = filled_cart(venue, shopper)
    confirmed = venue.quote(cid)
    catalog[BREAD] = {"name": "Bread", "price_minor": 275}      # repriced meanwhile
    pay = FakePay()
    err = code_of(venue.settle, cid, transaction_password=PIN, confirm_total_minor=confirmed,
                  pay=pay, now=T0)
    assert err.code == "TOTAL_CHANGED" and pay.calls == []
    assert err.details["confirmed_minor"] == confirmed
    assert err.details["total_minor"] == confirmed + 25 == venue.quote(cid)
    assert venue.cart(cid).status == "open"
    s = venue.settle(cid, transaction_password=PIN, confirm_total_minor=confirmed + 25,
                     pay=pay, now=T0)
    assert pay.calls[0][1] == confirmed + 25 == s.total_minor
    # A withdrawn item stops the settlement until it is removed.
    cid = filled_cart(venue, shopper, (TEA, 1), (CHOC, 1))
    del catalog[CHOC]
    v = venue.cart(cid)
    assert v.withdrawn == ({"gtin": "000000" + CHOC, "name": "Chocolate", "qty": 1},)
    assert v.total_minor == 1200
    assert code_of(venue.quote, cid).code == "ITEM_WITHDRAWN"
    venue.remove(cid, "choc", now=T0)
    assert venue.quote(cid) == 1200


def test_extra_verification_above_the_limit(venue, shopper):
    assert isinstance(SimulatedBiometricVerifier(), BiometricVerifier)
    bio = SimulatedBiometricVerifier()
    bio.enrol(shopper.account_id, b"left-index-template")
    cid = filled_cart(venue, shopper, (TV, 1))
    total = venue.quote(cid)
    assert total > venue.extra_verification_over_minor
    pay = FakePay()
    kw = dict(transaction_password=PIN, confirm_total_minor=total, pay=pay, now=T0)
    err = code_of(venue.settle, cid, **kw)
    assert err.code == "EXTRA_VERIFICATION_REQUIRED" and err.details["total_minor"] == total
    err = code_of(venue.settle, cid, verification=(bio, b"someone-else"), **kw)
    assert err.code == "EXTRA_VERIFICATION_FAILED" and err.details["attempts_left"] == 4
    assert code_of(venue.settle, cid, verification=("bio", b"x"), **kw).code == "BAD_REQUEST"
    assert pay.calls == []
    s = venue.settle(cid, verification=(bio, b"left-index-template"), **kw)
    assert s.status == "paid" and len(pay.calls) == 1


def test_at_the_limit_no_extra_verification(con, signer, catalog, shopper):
    cid = filled_cart(Venue(con, signer=signer, catalog=catalog, kdf_n=FAST_N), shopper)
    v = Venue(con, signer=signer, catalog=catalog, kdf_n=FAST_N,
              extra_verification_over_minor=628)
    assert v.settle(cid, transaction_password=PIN, confirm_total_minor=628, pay=FakePay(),
                    now=T0).status == "paid"


def test_settle_refuses_to_run_inside_a_transaction(venue, shopper, con):
    cid = filled_cart(venue, shopper)
    pay = FakePay()
    con.execute("BEGIN")
    try:
        assert code_of(venue.settle, cid, transaction_password=PIN, confirm_total_minor=628,
                       pay=pay, now=T0).code == "BAD_REQUEST"
    finally:
        con.execute("ROLLBACK")
    assert pay.calls == []


def test_free_items_are_settled_without_a_charge(con, signer, shopper):
    venue = Venue(con, signer=signer, catalog={TEA: {"name": "Sample tea", "price_minor": 0}},
                  kdf_n=FAST_N, clock=lambda: T0)
    cid = filled_cart(venue, shopper, (TEA, 2))
    pay = FakePay()
    s = venue.settle(cid, transaction_password=PIN, confirm_total_minor=0, pay=pay, now=T0)
    assert s.status == "paid" and s.total_minor == 0 and s.exit_pass and pay.calls == []


def test_a_failed_payment_keeps_the_cart(venue, shopper):
    cid = filled_cart(venue, shopper)
    total = venue.quote(cid)
    declined = FakePay({"status": "failed", "decline_code": "INSUFFICIENT_FUNDS"})
    err = code_of(venue.settle, cid, transaction_password=PIN, confirm_total_minor=total,
                  pay=declined, now=T0)
    assert err.code == "PAYMENT_FAILED" and err.details["reason"] == "INSUFFICIENT_FUNDS"
    first = err.details["order_no"]
    assert venue.settlement(first).status == "failed"
    v = venue.cart(cid)
    assert v.status == "open" and v.total_minor == total and v.order_no is None
    venue.add(cid, CHOC, now=T0)                               # still shopping
    pay = FakePay()
    s = venue.settle(cid, transaction_password=PIN, confirm_total_minor=total + 99, pay=pay,
                     now=T0 + 10)
    assert s.status == "paid" and s.order_no != first and len(pay.calls) == 1


def test_a_crash_in_pay_is_resumed_exactly_once(venue, shopper, signer):
    cid = filled_cart(venue, shopper)
    total = venue.quote(cid)
    boom = FakePay(exc=ConnectionError("gateway went away"))
    err = code_of(venue.settle, cid, transaction_password=PIN, confirm_total_minor=total,
                  pay=boom, now=T0)
    assert err.code == "PAYMENT_IN_DOUBT" and isinstance(err.__cause__, ConnectionError)
    order_no = err.details["order_no"]
    assert boom.calls == [(order_no, total, TOKEN)]
    assert [s.order_no for s in venue.paying()] == [order_no]
    assert venue.settlement(order_no).status == "paying"
    # Settling again while in doubt pays nothing: resume is the way.
    pay = FakePay()
    err = code_of(venue.settle, cid, transaction_password=PIN, confirm_total_minor=total,
                  pay=pay, now=T0 + 1)
    assert err.code == "SETTLEMENT_PENDING" and err.details["order_no"] == order_no
    assert code_of(venue.add, cid, CHOC, now=T0).code == "CART_CLOSED"
    asked = []

    def status(o, answer):
        asked.append(o)
        return answer

    err = code_of(venue.resume, order_no, lambda o: status(o, {"status": "pending"}),
                  now=T0 + 30)
    assert err.code == "PAYMENT_IN_DOUBT"
    s = venue.resume(order_no, lambda o: status(o, {"status": "paid", "order_no": o,
                                                     "amount_minor": total}), now=T0 + 60)
    assert s.status == "paid" and s.exit_pass and asked == [order_no, order_no]
    assert venue.resume(order_no, lambda o: status(o, {"status": "failed"})) == s
    assert len(asked) == 2                                  # paid: the gateway not asked
    assert venue.settle(cid, transaction_password=PIN, confirm_total_minor=total, pay=pay,
                        now=T0 + 90) == s
    assert pay.calls == [] and len(boom.calls) == 1 and venue.paying() == []
    assert venue.check_exit_pass(s.exit_pass, signer.verifier(),
                                 now=T0 + 100)["order"] == order_no


def test_the_paying_row_is_committed_before_pay_is_called(venue, shopper, db_path, signer,
                                                          catalog):
    cid = filled_cart(venue, shopper)
    other = connect(db_path)                 # a second terminal on the same database
    second = Venue(other, signer=signer, catalog=catalog, kdf_n=FAST_N, clock=lambda: T0)
    seen = {}

    def pay(order_no, amount_minor, token):
        seen["row"] = other.execute("SELECT status FROM venue_settlements WHERE "
                                    "order_no = ?", (order_no,)).fetchone()
        seen["err"] = code_of(second.settle, cid, transaction_password=PIN,
                              confirm_total_minor=628, pay=pay, now=T0)
        return {"status": "paid", "order_no": order_no, "amount_minor": amount_minor}

    s = venue.settle(cid, transaction_password=PIN, confirm_total_minor=628, pay=pay, now=T0)
    other.close()
    assert seen["row"] == ("paying",) and s.status == "paid"
    assert seen["err"].code == "SETTLEMENT_PENDING"
    assert seen["err"].details["order_no"] == s.order_no


def test_a_process_death_in_pay_is_resumed_after_restart(db_path, signer, catalog):
    con = connect(db_path)
    venue = Venue(con, signer=signer, catalog=catalog, kdf_n=FAST_N, clock=lambda: T0)
    venue.register("alice", "correct horse", name="Alice", now=T0)
    s = venue.login("alice", "correct horse", now=T0)
    venue.bind_payment(s, "card", TOKEN)
    venue.set_transaction_password(s, PIN)
    cid = filled_cart(venue, s)
    dies = FakePay(exc=SystemExit(9))
    with pytest.raises(SystemExit):
        venue.settle(cid, transaction_password=PIN, confirm_total_minor=628, pay=dies,
                     now=T0)
    order_no = dies.calls[0][0]
    con.close()
    # A new process on the same store database.
    con = connect(db_path)
    again = Venue(con, signer=signer, catalog=catalog, kdf_n=FAST_N)
    (pending,) = again.paying()
    assert pending.order_no == order_no and pending.total_minor == 628
    done = again.resume(order_no, lambda o: {"status": "paid", "order_no": o,
                                             "amount_minor": 628}, now=T0 + 5)
    assert done.status == "paid" and len(dies.calls) == 1
    con.close()


def test_resume_of_a_declined_payment_reopens_the_cart(venue, shopper):
    cid = filled_cart(venue, shopper)
    err = code_of(venue.settle, cid, transaction_password=PIN, confirm_total_minor=628,
                  pay=FakePay(exc=TimeoutError()), now=T0)
    order_no = err.details["order_no"]
    err = code_of(venue.resume, order_no, lambda o: {"status": "failed", "reason": "EXPIRED"})
    assert err.code == "PAYMENT_FAILED" and err.details["reason"] == "EXPIRED"
    assert venue.cart(cid).status == "open"
    assert code_of(venue.resume, order_no, lambda o: 1 / 0).code == "PAYMENT_FAILED"
    assert code_of(venue.resume, "UV-NONE", lambda o: {}).code == "UNKNOWN_ORDER"


@pytest.mark.parametrize("answer", [{"status": "paid", "amount_minor": 1},
                                    {"status": "paid"},        # paid, but for what?
                                    {"status": "paid", "order_no": "UV-OTHER"},
                                    {"status": "weird"}, "paid", None])
def test_an_unclear_answer_is_in_doubt(venue, shopper, answer):
    cid = filled_cart(venue, shopper)
    err = code_of(venue.settle, cid, transaction_password=PIN, confirm_total_minor=628,
                  pay=lambda o, a, t: answer, now=T0)
    assert err.code == "PAYMENT_IN_DOUBT"
    assert venue.settlement(err.details["order_no"]).status == "paying"


# --------------------------------------------------------------------------------------
# The exit pass
# --------------------------------------------------------------------------------------

@pytest.fixture
def paid(venue, shopper):
    cid = filled_cart(venue, shopper)
    return venue.settle(cid, transaction_password=PIN, confirm_total_minor=628, pay=FakePay(),
                        now=T0)


def test_the_exit_pass_is_the_documented_format(paid, signer, shopper):
    tag, body, sig = paid.exit_pass.split(".")
    assert tag == "LCX1" and len(sig) == 86 and paid.exit_pass.isascii()
    payload = json.loads(b64url_decode(body))
    assert set(payload) == PASS_KEYS
    assert canonical_json(payload) == b64url_decode(body)
    assert payload == {
        "v": 1, "venue": "KIOSK-7", "order": paid.order_no, "acct": shopper.account_id,
        "pass": paid.pass_id, "iat": T0, "cur": "CNY", "total": 628,
        "lines": [["0" + MILK_1L, "Milk 1L", 2, 189, 378], [BREAD, "Bread", 1, 250, 250]]}
    # The recipe by hand: Ed25519 over the ASCII bytes "LCX1.<payload>".
    Ed25519PublicKey.from_public_bytes(signer.public_key_bytes).verify(
        b64url_decode(sig), f"{tag}.{body}".encode("ascii"))
    assert read_exit_pass(paid.exit_pass, signer.verifier()) == payload


#: The worked example of docs/store/unattended.md (seed 0x00…0x1F, Ed25519 is deterministic).
DOC_PASS = (
    "LCX1.eyJhY2N0IjoiQUMwMTIzNDU2Nzg5QUJDREVGIiwiY3VyIjoiQ05ZIiwiaWF0IjoxNzkwMDAwMDAwLCJs"
    "aW5lcyI6W1siMDY5MDEyMzQ1Njc4OTIiLCJNaWxrIDFMIiwyLDE4OSwzNzhdLFsiMDAwMDAwMDUwMTIzNDQi"
    "LCJCcmVhZCIsMSwyNTAsMjUwXV0sIm9yZGVyIjoiVVYyMDI2MDkyMUExQjJDM0Q0RTUiLCJwYXNzIjoiMDAx"
    "MTIyMzM0NDU1NjY3Nzg4OTlhYWJiY2NkZGVlZmYiLCJ0b3RhbCI6NjI4LCJ2IjoxLCJ2ZW51ZSI6IktJT1NL"
    "LTcifQ.TXETPIwxIWfwiozG6q7C0_QISXQP1VbNU23hATr3Rx_d2zsd6FO72a8-OfKGA3lgo_p7I7SEQ2FhZyM2"
    "FihYAQ")


def test_the_documented_example():
    key = Signer.from_private_bytes(bytes(range(32)))
    text = unattended.make_exit_pass(
        key, venue="KIOSK-7", order_no="UV20260921A1B2C3D4E5",
        account_id="AC0123456789ABCDEF", pass_id="00112233445566778899aabbccddeeff",
        issued_at=1790000000.7, currency="CNY", total_minor=628,
        lines=[{"gtin": "06901234567892", "name": "Milk 1L", "qty": 2, "unit_minor": 189,
                "amount_minor": 378},
               {"gtin": "00000005012344", "name": "Bread", "qty": 1, "unit_minor": 250,
                "amount_minor": 250}])
    assert text == DOC_PASS
    assert key.public_key_b64() == "A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg"
    assert b64url_decode(text.split(".")[1]) == (
        b'{"acct":"AC0123456789ABCDEF","cur":"CNY","iat":1790000000,"lines":'
        b'[["06901234567892","Milk 1L",2,189,378],["00000005012344","Bread",1,250,250]],'
        b'"order":"UV20260921A1B2C3D4E5","pass":"00112233445566778899aabbccddeeff",'
        b'"total":628,"v":1,"venue":"KIOSK-7"}')
    # Lines that do not add up cannot be signed.
    err = code_of(unattended.make_exit_pass, key, venue="KIOSK-7", order_no="UV1",
                  account_id="AC0123456789ABCDEF", pass_id="0" * 32, issued_at=0,
                  currency="CNY", total_minor=1,
                  lines=[{"gtin": "06901234567892", "name": "Milk", "qty": 2,
                          "unit_minor": 1, "amount_minor": 1}])
    assert err.code == "BAD_REQUEST"


def test_the_exit_pass_opens_the_gate_once(venue, paid, signer):
    v = signer.verifier()
    payload = venue.check_exit_pass(paid.exit_pass, v, now=T0 + 60)
    assert payload["pass"] == paid.pass_id and len(payload["lines"]) == 2
    err = code_of(venue.check_exit_pass, paid.exit_pass, v, now=T0 + 61)
    assert err.code == "PASS_USED" and err.details == {"order_no": paid.order_no,
                                                       "used_at": T0 + 60}
    # Reissuing keeps the pass id: a used pass stays used.
    assert code_of(venue.reissue_exit_pass, paid.order_no, now=T0 + 70).code == "PASS_USED"


def test_one_changed_byte_is_refused(venue, paid, signer):
    v = signer.verifier()
    text = paid.exit_pass
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.Z"
    for i, c in enumerate(text):
        other = next(a for a in alphabet if a != c)
        bad = text[:i] + other + text[i + 1:]
        assert code_of(venue.check_exit_pass, bad, v,
                       now=T0).code in ("PASS_SIGNATURE", "PASS_FORMAT"), i
    # None of those was consumed, and the real one still opens the gate.
    venue.check_exit_pass(text, v, now=T0)


def test_other_refusals_of_the_pass(venue, paid, signer):
    v = signer.verifier()
    other = Signer.generate().verifier()
    assert code_of(venue.check_exit_pass, paid.exit_pass, other,
                   now=T0).code == "PASS_SIGNATURE"
    for junk in ("", "LCX1", "LCX1.abc", "LCO1.a.b", "hello", "LCX1..", "é" * 10,
                 "LCX1." + "A" * 70000, None):
        assert code_of(venue.check_exit_pass, junk, v, now=T0).code == "PASS_FORMAT"
    err = code_of(venue.check_exit_pass, "LCX2" + paid.exit_pass[4:], v, now=T0)
    assert err.code == "PASS_FORMAT" and err.details == {"version": "2"}
    elsewhere = Venue(venue.con, signer=signer, catalog={}, kdf_n=FAST_N, venue_id="OTHER")
    assert code_of(elsewhere.check_exit_pass, paid.exit_pass, v,
                   now=T0).code == "PASS_WRONG_VENUE"


def test_an_expired_pass_and_its_reissue(venue, paid, signer):
    v = signer.verifier()
    err = code_of(venue.check_exit_pass, paid.exit_pass, v, now=T0 + 3601)
    assert err.code == "PASS_EXPIRED" and err.details["order_no"] == paid.order_no
    assert venue.check_exit_pass(paid.exit_pass, v, now=T0 + 3601, max_age_s=7200)
    # (the gate above had a longer window, so that pass is now used)
    assert code_of(venue.check_exit_pass, paid.exit_pass, v,
                   now=T0 + 3602, max_age_s=7200).code == "PASS_USED"


def test_a_reissued_pass_shares_the_single_use(venue, paid, signer):
    v = signer.verifier()
    fresh = venue.reissue_exit_pass(paid.order_no, now=T0 + 5000)
    assert fresh.pass_id == paid.pass_id and fresh.exit_pass != paid.exit_pass
    assert fresh.issued_at == T0 + 5000
    venue.check_exit_pass(fresh.exit_pass, v, now=T0 + 5001)
    assert code_of(venue.check_exit_pass, paid.exit_pass, v, now=T0 + 5002,
                   max_age_s=10 ** 6).code == "PASS_USED"


def test_itemised_text_only_for_paid(venue, shopper):
    cid = filled_cart(venue, shopper)
    err = code_of(venue.settle, cid, transaction_password=PIN, confirm_total_minor=628,
                  pay=FakePay(exc=OSError()), now=T0)
    s = venue.settlement(err.details["order_no"])
    assert code_of(itemised_text, s).code == "NOT_PAID"
    assert code_of(venue.reissue_exit_pass, s.order_no).code == "NOT_PAID"


def test_the_error_object(venue):
    err = code_of(venue.login, "alice", "whatever1", now=T0)
    assert err.to_dict() == {"code": "WRONG_PASSWORD", "message": "wrong login or password",
                             "details": {"attempts_left": 4}}


def test_every_code_is_documented():
    doc = (REPO / "docs" / "store" / "unattended.md").read_text()
    assert [c for c in ERROR_CODES if f"`{c}`" not in doc] == []
