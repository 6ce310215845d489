"""The payment ledger's state machine (core/pay/ledger.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from lanecore.core.pay import ledger as L
from lanecore.core.pay.ledger import Ledger, LedgerError, NextStep, UnknownPolicy, next_step

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free


class Clock:
    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def ledger(tmp_path, clock):
    lg = Ledger.open(tmp_path / "ledger.db", clock=clock)
    yield lg
    lg.close()


def charge(lg, order="HH07-261122-0001", attempt=1, amount=1234, **kw):
    args = dict(currency="CNY", method="auth_code", channel="wechat", terminal="T1")
    args.update(kw)
    return lg.create(order, attempt, amount, args["currency"], args["method"],
                     args["channel"], args["terminal"], payer=args.get("payer"))


def test_create_is_idempotent_by_merchant_ref(ledger):
    c, made = charge(ledger)
    assert made and c.state == "created" and c.merchant_ref == "HH07-261122-0001-1"
    again, made2 = charge(ledger)
    assert not made2 and again == c
    with pytest.raises(LedgerError) as e:
        charge(ledger, amount=999)                  # a "retry" with other terms
    assert e.value.code == "BAD_CHARGE"
    c2, made3 = charge(ledger, attempt=2)
    assert made3 and c2.merchant_ref.endswith("-2")
    assert [x.attempt for x in ledger.attempts("HH07-261122-0001")] == [1, 2]


@pytest.mark.parametrize("bad", [
    {"amount": 0}, {"amount": -5}, {"amount": 12.5}, {"amount": True},
    {"currency": "cny"}, {"currency": "CN"}, {"method": "cheque"},
    {"attempt": 0}, {"order": "has space"}, {"order": "x" * 70}])
def test_bad_charges_are_refused(ledger, bad):
    with pytest.raises(LedgerError) as e:
        charge(ledger, **bad)
    assert e.value.code == "BAD_CHARGE"
    assert ledger.charges() == []


def test_the_state_machine(ledger, clock):
    ref = charge(ledger)[0].merchant_ref
    with pytest.raises(LedgerError) as e:
        ledger.move(ref, "paid")                    # never sent: cannot be paid
    assert e.value.code == "BAD_TRANSITION"
    clock.t += 1
    c = ledger.move(ref, "sent")
    assert c.sent_at == clock.t
    c = ledger.move(ref, "unknown", reason="USERPAYING")
    c = ledger.move(ref, "queried")
    c = ledger.move(ref, "queried")
    assert c.queries == 2
    clock.t += 9
    c = ledger.move(ref, "paid", provider_ref="4200001234")
    assert (c.state, c.provider_ref, c.paid_at, c.final) == ("paid", "4200001234",
                                                             clock.t, True)
    assert ledger.move(ref, "paid") == c            # a repeated notification: no change
    for bad in ("failed", "sent", "queried", "created", "nonsense"):
        with pytest.raises(LedgerError) as e:
            ledger.move(ref, bad)
        assert e.value.code == "BAD_TRANSITION"
    assert ledger.move(ref, "reversed", reason="CANCELLED").state == "reversed"
    assert [s[2] for s in ledger.steps(ref)] == [
        "created", "sent", "unknown", "queried", "queried", "paid", "reversed"]
    with pytest.raises(LedgerError) as e:
        ledger.move("NOPE-1", "sent")
    assert e.value.code == "UNKNOWN_CHARGE"


def test_every_allowed_and_refused_transition(tmp_path, clock):
    """Drive a fresh charge to each state along the allowed path, then try every
    target: exactly the TRANSITIONS table is accepted."""
    paths = {"created": [], "sent": ["sent"], "unknown": ["sent", "unknown"],
             "queried": ["sent", "unknown", "queried"], "paid": ["sent", "paid"],
             "failed": ["sent", "failed"], "reversed": ["sent", "paid", "reversed"]}
    lg = Ledger.open(tmp_path / "all.db", clock=clock)
    n = 0
    for state, path in paths.items():
        for target in L.STATES:
            n += 1
            ref = charge(lg, order=f"O{n}")[0].merchant_ref
            for step in path:
                lg.move(ref, step)
            allowed = target in L.TRANSITIONS[state] or (target == state and state in L.FINAL)
            if allowed:
                assert lg.move(ref, target).state == target
            else:
                with pytest.raises(LedgerError):
                    lg.move(ref, target)
                assert lg.get(ref).state == state       # a refusal changes nothing
    lg.close()


def test_open_charges_and_filters(ledger, clock):
    refs = [charge(ledger, order=f"O{i}", terminal=f"T{i % 2}")[0].merchant_ref
            for i in range(4)]
    ledger.move(refs[0], "sent")
    ledger.move(refs[0], "paid")
    ledger.move(refs[1], "failed", reason="NOT_SENT")
    ledger.move(refs[2], "sent")
    assert [c.merchant_ref for c in ledger.open_charges()] == [refs[2], refs[3]]
    assert {c.merchant_ref for c in ledger.charges(terminal="T0")} == {refs[0], refs[2]}
    assert [c.merchant_ref for c in ledger.charges(state="paid")] == [refs[0]]


def test_committed_charges_survive_kill_9(tmp_path):
    """A process writes charges and is killed -9 mid-stream: every step it reported
    as committed is in the ledger afterwards, and nothing half-written is."""
    db = tmp_path / "k.db"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from lanecore.core.pay.ledger import Ledger
        lg = Ledger.open({str(db)!r})
        for i in range(200):
            c, _ = lg.create(f"K{{i}}", 1, 100 + i, "GBP", "card", "bank", "T9")
            lg.move(c.merchant_ref, "sent")
            print(c.merchant_ref, flush=True)
            if i == 120:
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == -9, r.stderr
    acknowledged = r.stdout.split()
    assert len(acknowledged) == 121
    lg = Ledger.open(db)
    rows = {c.merchant_ref: c for c in lg.charges()}
    for ref in acknowledged:
        assert rows[ref].state == "sent" and rows[ref].sent_at is not None
    assert set(rows) <= set(acknowledged) | {"K121-1"}   # at most the one in flight
    assert all(c.state in ("created", "sent") for c in rows.values())
    lg.close()


def test_next_step_follows_the_wallet_rules(ledger, clock):
    policy = UnknownPolicy(poll_every_s=5, give_up_after_s=45, reverse_not_before_s=15)
    ref = charge(ledger)[0].merchant_ref
    c = ledger.get(ref)
    assert next_step(c, clock.t, policy) == NextStep("fail", clock.t)   # never sent
    c = ledger.move(ref, "sent")
    t0 = c.sent_at
    assert next_step(c, t0 + 1, policy).action == "query"
    c = ledger.move(ref, "unknown")
    assert next_step(c, t0 + 2, policy, last_query_at=None).action == "query"
    c = ledger.move(ref, "queried")
    assert next_step(c, t0 + 4, policy, last_query_at=t0 + 2) == NextStep("wait", t0 + 7)
    assert next_step(c, t0 + 7, policy, last_query_at=t0 + 2).action == "query"
    # close to the cap: the wait never runs past it
    assert next_step(c, t0 + 43, policy, last_query_at=t0 + 42) == NextStep("wait", t0 + 45)
    assert next_step(c, t0 + 45, policy, last_query_at=t0 + 42) == NextStep("reverse", t0 + 45)
    # a policy that gives up sooner still reverses no earlier than 15 s after sending
    quick = UnknownPolicy(poll_every_s=2, give_up_after_s=6, reverse_not_before_s=15)
    assert next_step(c, t0 + 7, quick, last_query_at=t0 + 5) == NextStep("reverse", t0 + 15)
    paid = ledger.move(ref, "paid")
    assert next_step(paid, t0 + 100, policy).action == "none"
    for bad in (dict(poll_every_s=0), dict(poll_every_s=60, give_up_after_s=30),
                dict(reverse_not_before_s=-1)):
        with pytest.raises(LedgerError) as e:
            UnknownPolicy(**bad)
        assert e.value.code == "BAD_POLICY"


def test_on_move_follows_every_change(tmp_path, clock):
    seen = []
    lg = Ledger.open(tmp_path / "m.db", clock=clock,
                     on_move=lambda before, after: seen.append(
                         (None if before is None else before.state, after.state)))
    ref = charge(lg)[0].merchant_ref
    charge(lg)                                    # a retry: no move
    lg.move(ref, "sent")
    lg.move(ref, "paid")
    lg.move(ref, "paid")                          # a repeated notification: no move
    with pytest.raises(LedgerError):
        lg.move(ref, "failed")                    # refused: no move
    assert seen == [(None, "created"), ("created", "sent"), ("sent", "paid")]
    lg.close()


def test_refunds_never_pass_what_was_paid(ledger, clock):
    ref = charge(ledger, amount=1000)[0].merchant_ref
    with pytest.raises(LedgerError) as e:
        ledger.create_refund(ref, "R1", 100)
    assert e.value.code == "NOT_PAID"
    ledger.move(ref, "sent")
    ledger.move(ref, "paid")
    r1, made = ledger.create_refund(ref, "R1", 600)
    assert made and r1.state == "created" and r1.channel == "wechat"
    assert ledger.create_refund(ref, "R1", 600) == (r1, False)     # a retry
    with pytest.raises(LedgerError) as e:
        ledger.create_refund(ref, "R1", 601)                       # other terms
    assert e.value.code == "BAD_CHARGE"
    with pytest.raises(LedgerError) as e:
        ledger.create_refund(ref, "R2", 401)                       # 600 + 401 > 1000
    assert e.value.code == "REFUND_EXCEEDS_PAID"
    ledger.move_refund("R1", "sent")
    ledger.move_refund("R1", "failed", reason="SYSTEMERROR")      # a failed one frees it
    r2, _ = ledger.create_refund(ref, "R2", 1000)
    ledger.move_refund("R2", "sent")
    ledger.move_refund("R2", "unknown")
    assert [r.refund_ref for r in ledger.refunds(open_only=True)] == ["R2"]
    done = ledger.move_refund("R2", "paid", provider_ref="RF9")
    assert (done.state, done.provider_ref, done.done_at) == ("paid", "RF9", clock.t)
    with pytest.raises(LedgerError) as e:
        ledger.move_refund("R2", "sent")
    assert e.value.code == "BAD_TRANSITION"
    for bad in (("", 5), ("R 3", 5), ("R3", 0), ("R3", 2.5)):
        with pytest.raises(LedgerError):
            ledger.create_refund(ref, *bad)


def test_day_rows_are_what_reconciliation_reads(ledger, clock):
    import datetime as dt
    day = dt.datetime.fromtimestamp(clock.t, dt.timezone.utc).strftime("%Y-%m-%d")
    ref = charge(ledger, amount=500)[0].merchant_ref
    ledger.move(ref, "sent")
    ledger.move(ref, "paid")
    ledger.create_refund(ref, "RR", 200)
    rows = ledger.day_rows(day)
    assert {(r.get("type"), r["merchant_ref"], r["amount_minor"], r["state"]) for r in rows} \
        == {(None, ref, 500, "paid"), ("refund", ref, 200, "created")}
    clock.t += 86400
    later = dt.datetime.fromtimestamp(clock.t, dt.timezone.utc).strftime("%Y-%m-%d")
    assert ledger.day_rows(later) == []
    with pytest.raises(LedgerError) as e:
        ledger.day_rows("22/11/2026")
    assert e.value.code == "BAD_DATE"


def test_day_rows_of_a_zone_ahead_of_utc_are_that_zones_day(ledger, clock):
    """A charge paid at 17:00 UTC is on the next China Standard Time day (the wallets'
    bill days, offset 28800 s), and on the same UTC day."""
    import datetime as dt
    clock.t = dt.datetime(2026, 12, 7, 17, 0, tzinfo=dt.timezone.utc).timestamp()
    ref = charge(ledger, amount=700)[0].merchant_ref
    ledger.move(ref, "sent")
    ledger.move(ref, "paid")
    cst = 8 * 3600
    assert [r["merchant_ref"] for r in ledger.day_rows("2026-12-07")] == [ref]
    assert ledger.day_rows("2026-12-07", cst) == []
    assert [r["merchant_ref"] for r in ledger.day_rows("2026-12-08", cst)] == [ref]
    assert ledger.day_rows("2026-12-08") == []
