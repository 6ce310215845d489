"""Logins (issue 13, item 9): the per-account lock stays, and a per-source throttle
with backoff (core/pay/throttle.py) slows spraying one password over many accounts
and makes locking or freezing other people's accounts cost the attacker time — in
the venue's logins and transaction passwords (core/store/unattended.py) and in the
stored-value PINs, down to a real payment gateway process (gateway/payments/gateway.py).

Times run on an injected clock (``now=`` / ``clock=``): no sleeps."""

from __future__ import annotations

import pytest

from lanecore.core.errors import LanecoreError
from lanecore.core.pay import throttle as T
from lanecore.core.pay.storedvalue import MAX_PIN_FAILURES, StoredValue, StoredValueError
from lanecore.core.scan.catalog import connect
from lanecore.core.store import unattended
from lanecore.core.store.orderqr import Signer
from lanecore.core.store.unattended import UnattendedError, Venue
from payfix import start_gateway, write_config

pytestmark = pytest.mark.kernel_free

T0 = 1_790_000_000.0
FAST_N = 2 ** 10                      # scrypt cost for tests only
SPRAY = "Summer2025!"                 # the one password tried over every login
GOOD = "correct horse"
EVIL, OTHER = "phone:evil", "phone:alice"
GTIN = "96385074"                     # a valid GTIN-8


def err_of(fn, *args, **kw) -> LanecoreError:
    with pytest.raises(LanecoreError) as info:
        fn(*args, **kw)
    return info.value


@pytest.fixture
def con(tmp_path):
    con = connect(tmp_path / "venue.db")
    yield con
    con.close()


@pytest.fixture
def venue(con):
    v = Venue(con, signer=Signer.generate(), catalog={GTIN: {"name": "Tea",
                                                             "price_minor": 500}},
              kdf_n=FAST_N, clock=lambda: T0)
    for i in range(40):
        v.register(f"user{i:02d}", f"{GOOD} {i}", name=f"User {i}", now=T0)
    v.register("alice", GOOD, name="Alice", now=T0)
    return v


@pytest.fixture
def scrypt_calls(monkeypatch):
    calls = []
    real = unattended._scrypt

    def counting(*args):
        calls.append(args[2:])
        return real(*args)
    monkeypatch.setattr(unattended, "_scrypt", counting)
    return calls


def login_failures(con, login: str) -> int:
    row = con.execute("SELECT failures FROM venue_login_failures WHERE login = ?",
                      (login,)).fetchone()
    return 0 if row is None else row[0]


# --------------------------------------------------------------------------------------
# The venue: logins
# --------------------------------------------------------------------------------------

def test_spraying_one_password_over_many_logins_is_throttled_with_growing_backoff(
        venue, con, scrypt_calls):
    now = T0
    # Five wrong logins, each on another account: answered like any wrong password.
    for i in range(T.FREE_FAILURES):
        e = err_of(venue.login, f"user{i:02d}", SPRAY, now=now, source=EVIL)
        assert (e.code, e.details) == ("WRONG_PASSWORD", {"attempts_left": 4})
    # The sixth is still checked and answered, and starts the source's first wait.
    assert err_of(venue.login, "user05", SPRAY, now=now, source=EVIL).code == \
        "WRONG_PASSWORD"
    checked = len(scrypt_calls)
    assert checked == 6
    # From now on the source is refused before anything is looked up or hashed.
    e = err_of(venue.login, "user06", SPRAY, now=now, source=EVIL)
    assert e.code == "THROTTLED"
    assert e.details == {"retry_after_s": 30, "until": now + 30}
    assert len(scrypt_calls) == checked and login_failures(con, "user06") == 0
    # Another source is not slowed at all: its own wrong and right answers as always.
    e = err_of(venue.login, "user07", "not it at all", now=now, source=OTHER)
    assert (e.code, e.details) == ("WRONG_PASSWORD", {"attempts_left": 4})
    assert venue.login("alice", GOOD, now=now, source=OTHER).login == "alice"
    # The backoff grows: 30 s, 60 s, 120 s, 240 s, 480 s, then 900 s at most.
    waits = []
    for k in range(7):
        e = err_of(venue.login, f"user{10 + k:02d}", SPRAY, now=now, source=EVIL)
        assert e.code == "THROTTLED"
        now = e.details["until"]
        assert err_of(venue.login, f"user{10 + k:02d}", SPRAY, now=now - 0.5,
                      source=EVIL).code == "THROTTLED"        # not a moment earlier
        assert err_of(venue.login, f"user{10 + k:02d}", SPRAY, now=now,
                      source=EVIL).code == "WRONG_PASSWORD"
        e = err_of(venue.login, "alice", GOOD, now=now, source=EVIL)
        assert e.code == "THROTTLED"
        waits.append(e.details["retry_after_s"])
    # Each wait also forgets part of a failure (one per 600 s), so an attacker who
    # waits each one out settles near 480 s: at most about one password a 600 s.
    assert waits == [60, 120, 240, 480, 480, 480, 480]


def test_the_throttle_numbers(con):
    """The documented table: 5 free, then 30 s doubling to 900 s, for failures that
    still count; one forgotten per 600 s; rows that count for nothing are dropped."""
    th = T.SourceThrottle("t_sources")
    for stmt in th.schema():
        con.execute(stmt)
    ends = [th.fail(con, "s", T0) for _ in range(13)]
    assert [None if u is None else u - T0 for u in ends] == \
        [None] * 5 + [30, 60, 120, 240, 480, 900, 900, 900]
    assert th.level(con, "s", T0) == 13 and th.level(con, "s", T0 + 600) == 12
    assert th.blocked_until(con, "s", T0 + 899) == T0 + 900
    assert th.blocked_until(con, "s", T0 + 900) is None
    assert th.level(con, "s", T0 + 13 * 600) == 0
    th.fail(con, "other", T0 + 13 * 600)            # "s" has decayed away: forgotten
    assert [r[0] for r in con.execute("SELECT source FROM t_sources")] == ["other"]


def test_the_right_password_from_a_throttled_source_waits_then_is_accepted(venue, con):
    for i in range(T.FREE_FAILURES + 1):
        err_of(venue.login, f"user{i:02d}", SPRAY, now=T0, source=EVIL)
    e = err_of(venue.login, "alice", GOOD, now=T0 + 29, source=EVIL)
    assert e.code == "THROTTLED" and e.details["retry_after_s"] == 1
    assert login_failures(con, "alice") == 0                # alice's own count: untouched
    session = venue.login("alice", GOOD, now=T0 + 30, source=EVIL)
    assert session.login == "alice" and venue.account(session, now=T0 + 31).name == "Alice"
    # A success does not clear the source: the next failure waits longer again.
    err_of(venue.login, "user20", SPRAY, now=T0 + 31, source=EVIL)
    e = err_of(venue.login, "user21", SPRAY, now=T0 + 31, source=EVIL)
    assert e.code == "THROTTLED" and e.details["retry_after_s"] == 60


def test_the_source_count_decays_and_the_per_login_lock_stays(venue, con):
    for i in range(T.FREE_FAILURES + 1):
        err_of(venue.login, f"user{i:02d}", SPRAY, now=T0, source=EVIL)
    # One failure forgotten per 600 s: after 6 × 600 s the source is fresh again.
    later = T0 + 6 * T.DECAY_S
    for i in range(T.FREE_FAILURES):
        assert err_of(venue.login, f"user{10 + i:02d}", SPRAY, now=later,
                      source=EVIL).code == "WRONG_PASSWORD"
    # The lock per login is as it was: five wrong in a row, from five sources.
    t = later + 10_000
    for i in range(5):
        e = err_of(venue.login, "alice", "guess", now=t + i, source=f"kiosk:{i}")
        assert e.code == "WRONG_PASSWORD"
    assert e.details == {"attempts_left": 0, "locked_until": t + 4 + 900}
    assert err_of(venue.login, "alice", GOOD, now=t + 5,
                  source="kiosk:9").code == "ACCOUNT_LOCKED"
    # and a source the caller cannot name well is refused
    for bad in ("", "x" * 129, 7, b"phone"):
        e = err_of(venue.login, "alice", GOOD, now=t + 5, source=bad)
        assert (e.code, e.details) == ("BAD_REQUEST", {"field": "source"})


def spray_for_a_day(venue, pace_s: float) -> tuple[list[float], list[float]]:
    """One source locking venue logins one after another for 24 h of the clock: five
    wrong passwords each, as soon as the throttle lets it (and ``pace_s`` after each
    failure). The times of the failures checked and of the locks, from the start."""
    now, i, failures, locks = T0, 0, [], []
    while now < T0 + 86_400:
        try:
            venue.login(f"user{i:02d}", SPRAY, now=now, source=EVIL)
            raise AssertionError("the spray password is nobody's")
        except UnattendedError as e:
            if e.code == "THROTTLED":
                now = e.details["until"]
                continue
            assert e.code == "WRONG_PASSWORD", e.code
            failures.append(now - T0)
            if "locked_until" in e.details:
                locks.append(now - T0)
                i += 1
            now += pace_s
    return failures, locks


@pytest.mark.parametrize("pace_s", [0, 600])
def test_one_source_cannot_lock_out_many_venue_logins_quickly(venue, pace_s):
    """Greedy (pace 0) or paced to the decay (a try every 600 s): at most about
    12 + T / 600 s passwords checked over a time T, so at most 3 logins locked in the
    first hour and 31 in a day — where without a source ten take fifty tries and no
    time at all (below)."""
    failures, locks = spray_for_a_day(venue, pace_s)
    assert all(k <= 12 + t / T.DECAY_S for k, t in enumerate(failures, 1))
    assert len(failures) <= 12 + 86_400 / T.DECAY_S
    assert sum(t <= 3600 for t in locks) <= 3 and len(locks) <= 31
    assert len(locks) >= 2            # the lock per login still works for the attacker
    # a lock lasts 900 s: at no moment are more than two of its logins locked
    assert all(locks[j + 2] - locks[j] >= 900 for j in range(len(locks) - 2))
    if pace_s == 0:
        # greedy: the first lock is free, the second after 7.5 minutes, then the
        # waits reach 900 s, the per-login count forgets, and no third lock comes
        assert locks == [0, 450]
    else:
        assert 25 <= len(locks) <= 31                    # about one every 50 minutes
    # the same ten locks without the throttle (no source): fifty tries, no wait
    for j in range(30, 40):
        for _ in range(5):
            e = err_of(venue.login, f"user{j:02d}", SPRAY, now=T0)
        assert "locked_until" in e.details


# --------------------------------------------------------------------------------------
# The venue: transaction passwords
# --------------------------------------------------------------------------------------

def test_transaction_password_checks_count_against_the_source(venue):
    pays = []

    def pay(order_no, amount_minor, token):
        pays.append(order_no)
        return {"status": "paid", "order_no": order_no, "amount_minor": amount_minor,
                "provider_ref": "P-1"}

    carts = []
    for i in range(3):
        s = venue.login(f"user{i:02d}", f"{GOOD} {i}", now=T0, source=f"phone:{i}")
        venue.bind_payment(s, "wallet", f"wx_token_{i}", now=T0)
        venue.set_transaction_password(s, "246810", now=T0, source=f"phone:{i}")
        cart = venue.open_cart(s, now=T0)
        venue.add(cart.cart_id, GTIN, now=T0)
        carts.append(cart.cart_id)
    # Three wrong transaction passwords and three wrong logins from one device.
    for cid in carts:
        assert err_of(venue.settle, cid, transaction_password="000000",
                      confirm_total_minor=500, pay=pay, now=T0,
                      source=EVIL).code == "TX_PASSWORD_WRONG"
    for i in range(3):
        err_of(venue.login, f"user{10 + i:02d}", SPRAY, now=T0, source=EVIL)
    # The sixth failure started a wait: even the right transaction password waits.
    e = err_of(venue.settle, carts[0], transaction_password="246810",
               confirm_total_minor=500, pay=pay, now=T0 + 1, source=EVIL)
    assert e.code == "THROTTLED" and e.details["retry_after_s"] == 29 and pays == []
    # The shopper's own phone is not slowed, and the account is not locked (2 wrong).
    s = venue.settle(carts[1], transaction_password="246810", confirm_total_minor=500,
                     pay=pay, now=T0 + 1, source="phone:1")
    assert s.status == "paid" and len(pays) == 1
    s = venue.settle(carts[0], transaction_password="246810", confirm_total_minor=500,
                     pay=pay, now=T0 + 30, source=EVIL)
    assert s.status == "paid" and len(pays) == 2


# --------------------------------------------------------------------------------------
# Stored value: PINs
# --------------------------------------------------------------------------------------

class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def sv(tmp_path):
    con = connect(tmp_path / "payments.db")
    clock = Clock()
    sv = StoredValue(con, "CNY", clock=clock)
    for i in range(20):
        sv.open_account(f"M-{i:02d}", pin="2468")
        sv.topup(f"M-{i:02d}", 10_000, ref=f"SLIP-{i}")
    yield sv, clock
    con.close()


def test_stored_value_pins_are_throttled_per_terminal(sv):
    sv, clock = sv
    src = "terminal:T-BAD"
    for i in range(T.FREE_FAILURES + 1):
        e = err_of(sv.debit, f"M-{i:02d}", 100, ref=f"D-{i}", pin="0000", source=src)
        assert e.code == "WRONG_PASSWORD"
    e = err_of(sv.debit, "M-06", 100, ref="D-6", pin="0000", source=src)
    assert (e.code, e.details) == ("THROTTLED", {"retry_after_s": 30, "until": T0 + 30})
    assert sv.account("M-06").pin_failures == 0              # not counted
    # the right PIN from the throttled terminal waits too; other terminals do not
    assert err_of(sv.debit, "M-07", 100, ref="D-7", pin="2468",
                  source=src).code == "THROTTLED"
    assert sv.debit("M-07", 100, ref="D-7", pin="2468",
                    source="terminal:T-OK").balance_after == 9_900
    clock.t = T0 + 30
    assert sv.debit("M-08", 100, ref="D-8", pin="2468", source=src).balance_after == 9_900
    assert sv.balance("M-06") == 10_000
    with pytest.raises(StoredValueError) as info:
        sv.debit("M-09", 100, ref="D-9", pin="2468", source="")
    assert info.value.details == {"field": "source"}


def test_one_terminal_cannot_freeze_many_members_quickly(sv):
    sv, clock = sv
    frozen_at, i, n = [], 0, 0
    while len(frozen_at) < 10:
        n += 1
        try:
            sv.debit(f"M-{i:02d}", 100, ref=f"D-{n}", pin="0000", source="terminal:T-BAD")
            raise AssertionError("0000 is nobody's PIN")
        except StoredValueError as e:
            if e.code == "THROTTLED":
                clock.t = e.details["until"]
            else:
                assert e.code == "WRONG_PASSWORD", e.code
                if e.details["frozen"]:
                    frozen_at.append(clock.t - T0)
                    i += 1
    assert all(sv.account(f"M-{j:02d}").frozen for j in range(10))
    assert not sv.account("M-10").frozen
    assert frozen_at[0] == 0 and 7 * 60 <= frozen_at[1] <= 8 * 60
    assert sum(t <= 3600 for t in frozen_at) <= 3
    assert frozen_at[4] >= 2 * 3600 and frozen_at[9] >= 6 * 3600
    # without a source (the old way) the next member freezes in five tries, no wait
    for k in range(MAX_PIN_FAILURES):
        e = err_of(sv.debit, "M-10", 100, ref=f"X-{k}", pin="0000")
    assert e.details["frozen"] is True


def test_the_payment_gateway_throttles_a_terminal_spraying_pins(tmp_path):
    """A real payment gateway process: terminal T-BAD sends a wrong PIN for member
    after member. After six it is THROTTLED (an error, the attempt recorded failed,
    nothing charged, the member's count untouched) — the right PIN too — while
    terminal T-OK pays as usual. The gateway runs on the real clock: the first wait
    is 30 s, and the requests after the sixth come at once."""
    from lanecore.gateway.net.client import Client, ServiceError
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"sv": {"kind": "stored_value", "priority": 1,
                            "methods": ["stored_value"], "currency": "CNY"}})
    endpoint = f"ipc://{tmp_path}/pay.ipc"
    proc = start_gateway("payments", d, endpoint)
    try:
        with Client(endpoint, timeout_s=10.0, retries=0) as c:
            members = [f"M-{i:02d}" for i in range(12)]
            for i, m in enumerate(members + ["M-OK"]):
                c.call("sv.open", member=m, currency="CNY", pin="2468")
                c.call("sv.topup", member=m, currency="CNY", amount_minor=5000,
                       ref=f"SLIP-{i}")

            def pay(order, member, pin, terminal="T-BAD"):
                try:
                    r = c.call("pay.charge", order_no=order, amount_minor=1200,
                               currency="CNY", method="stored_value", terminal=terminal,
                               payer=member, sv_pin=pin)
                    return r["status"], r["decline_code"], None
                except ServiceError as e:
                    return "error", e.code, e.details.get("details", {})

            seen = [pay(f"SV-{i}", m, "0000") for i, m in enumerate(members)]
            assert [s[:2] for s in seen[:6]] == [("failed", "WRONG_PASSWORD")] * 6
            assert [s[:2] for s in seen[6:]] == [("error", "THROTTLED")] * 6
            for _, _, details in seen[6:]:
                assert 1 <= details["retry_after_s"] <= 30
            # the right PIN from the throttled terminal: refused the same way
            assert pay("SV-R", "M-OK", "2468")[:2] == ("error", "THROTTLED")
            # another terminal is not slowed: a wrong PIN is checked, a right one pays
            assert pay("SV-W", "M-OK", "9999", "T-OK")[:2] == ("failed", "WRONG_PASSWORD")
            assert pay("SV-P", "M-OK", "2468", "T-OK")[:2] == ("paid", None)
            # the throttled attempts were recorded failed, THROTTLED, and charged nothing
            st = c.call("pay.status", order_no="SV-7")
            assert st["status"] == "failed"
            assert [a["reason"] for a in st["attempts"]] == ["THROTTLED"]
            accounts = {m: c.call("sv.balance", member=m, currency="CNY")["account"]
                        for m in members + ["M-OK"]}
            assert {m: a["balance_minor"] for m, a in accounts.items()} == \
                {**{m: 5000 for m in members}, "M-OK": 3800}
            assert [accounts[m]["pin_failures"] for m in members] == [1] * 6 + [0] * 6
            assert not any(a["frozen"] for a in accounts.values())
    finally:
        proc.terminate()
        proc.wait(20)
