"""The provider simulators as real subprocesses (`lanecore sim provider`), driven
through the connectors the gateway uses."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import msgpack
import pytest
import zmq

from lanecore.core.pay import recon
from lanecore.gateway.sim.provider import pin_block, pin_from_block
from lanecore.gateway.payments.providers import (
    Card, ProviderError, ProviderResult, connector, luhn_ok, mask_pan)

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

WECHAT = "134567890123456789"
ALIPAY = "28" + "1234567890123456"
UNIONPAY = "62" + "12345678901234567"
CODES = {"wechat": WECHAT, "alipay": ALIPAY, "unionpay": UNIONPAY}
PAN = "4111111111111111"          # Luhn-valid test number
PAN_BAD = "4111111111111112"


class Sim:
    """One `lanecore sim provider` subprocess."""

    def __init__(self, kind: str, data_dir: Path, *args: str) -> None:
        self.kind, self.data_dir = kind, data_dir
        self.log = data_dir.parent / f"{data_dir.name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lanecore", "sim", "provider", "--kind", kind,
             "--data-dir", str(data_dir), *args],
            stdout=subprocess.PIPE, stderr=open(self.log, "wb"), text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def ready(self) -> "Sim":
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"simulator exited: {self.log.read_text()[-2000:]}")
        info = json.loads(line)
        assert info["provider"] == self.kind and info["pid"] == self.proc.pid
        self.endpoint = info["endpoint"]
        return self

    def connect(self, timeout_s: float = 10.0):
        return connector(self.endpoint, self.kind, timeout_s=timeout_s)

    def trades(self) -> dict[str, tuple]:
        """What the simulator really holds: merchant_ref → (status, amount, paid_at)."""
        con = sqlite3.connect(self.data_dir / f"{self.kind}.sqlite")
        try:
            return {r[0]: r[1:] for r in con.execute(
                "SELECT merchant_ref, status, amount_minor, paid_at FROM trades")}
        finally:
            con.close()

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    """One simulator of every kind for the module (started side by side)."""
    root = tmp_path_factory.mktemp("providers")
    started = {k: Sim(k, root / k, "--userpaying-delay-s", "0.3")
               for k in ("wechat", "alipay", "unionpay", "bank")}
    try:
        yield {k: s.ready() for k, s in started.items()}
    finally:
        for s in started.values():
            s.stop()


@pytest.fixture
def ref():
    """A fresh merchant reference per call: ref() → 'T<hex>-1'."""
    return lambda: f"T{uuid.uuid4().hex[:16]}-1"


def wait_final(conn, merchant_ref: str, deadline_s: float = 15.0) -> ProviderResult:
    """Query until the trade is final (a test deadline, not a timing assertion)."""
    end = time.monotonic() + deadline_s
    while True:
        r = conn.query(merchant_ref)
        if r.status != "unknown" or time.monotonic() > end:
            return r
        time.sleep(0.05)


# ----------------------------------------------------------------------------------
# Validation of payment codes and cards
# ----------------------------------------------------------------------------------

VALID = {
    "wechat": ["101234567890123456", "151234567890123456", WECHAT],
    "alipay": ["2512345678901234", "30" + "1" * 22, "27" + "9" * 18, ALIPAY],
    "unionpay": [UNIONPAY, "62" + "0" * 17],
}
INVALID = {
    "wechat": ["161234567890123456", "091234567890123456", "13456789012345678",
               "1345678901234567890", "13456789012345678x", ALIPAY, UNIONPAY],
    "alipay": ["3112345678901234", "2412345678901234", "251234567890123",
               "25" + "1" * 23, WECHAT, "28123456789012a4"],
    "unionpay": ["62" + "1" * 16, "62" + "1" * 18, "63" + "1" * 17, WECHAT],
}


@pytest.mark.parametrize("kind", ["wechat", "alipay", "unionpay"])
def test_wallet_codes_are_validated_per_kind(sims, ref, kind):
    sim = sims[kind]
    with sim.connect() as c:
        for code in VALID[kind]:
            r = c.charge(ref(), 1234, "CNY", auth_code=code, terminal="T1")
            assert (r.status, r.paid_minor, r.decline_code) == ("paid", 1234, None), code
            assert r.provider_ref
        for code in INVALID[kind]:
            m = ref()
            r = c.charge(m, 1234, "CNY", auth_code=code)
            assert (r.status, r.decline_code, r.paid_minor) == \
                ("failed", "AUTH_CODE_INVALID", 0), code
            assert sim.trades()[m][2] is None     # nothing was ever paid
        with pytest.raises(ProviderError):
            c.charge(ref(), 100, "CNY", card=Card("chip", pan=PAN))


def test_cards_pans_tokens_and_pins(sims, ref):
    with sims["bank"].connect() as c:
        assert c.charge(ref(), 500, "EUR", card=Card("chip", pan=PAN)).status == "paid"
        assert c.charge(ref(), 500, "EUR", card=Card("magstripe", token="tok_abcdef12")
                        ).status == "paid"
        for card in (Card("chip", pan=PAN_BAD), Card("nfc", token="bogus")):
            r = c.charge(ref(), 500, "EUR", card=card)
            assert (r.status, r.decline_code) == ("failed", "14")
        good = Card("chip", pan=PAN, pin_block=pin_block("1234", PAN))
        bad = Card("chip", pan=PAN, pin_block=pin_block("9999", PAN))
        assert c.charge(ref(), 90_000, "EUR", card=good).status == "paid"
        r = c.charge(ref(), 90_000, "EUR", card=bad)
        assert (r.status, r.decline_code) == ("failed", "55")
        # Contactless above the CVM limit needs a PIN (a soft decline), below does not.
        r = c.charge(ref(), 30_001, "EUR", card=Card("nfc", pan=PAN))
        assert (r.status, r.decline_code) == ("failed", "65")
        assert c.charge(ref(), 30_000, "EUR", card=Card("nfc", pan=PAN)).status == "paid"
        tok = Card("nfc", token="tok_abcdef12", pin_block=pin_block("1234"))
        assert c.charge(ref(), 30_001, "EUR", card=tok).status == "paid"
        with pytest.raises(ProviderError):
            c.charge(ref(), 100, "EUR", auth_code=WECHAT)


def test_pin_blocks_and_card_numbers():
    for pin in ("1234", "0000", "987654", "123456789012"):
        assert pin_from_block(pin_block(pin, PAN), PAN) == pin
        assert pin_from_block(pin_block(pin), None) == pin
    # Format 0 read against another card gives another PIN.
    assert pin_from_block(pin_block("1234", PAN), "5500000000000004") != "1234"
    assert pin_from_block("zz" * 8, PAN) is None
    assert luhn_ok(PAN) and not luhn_ok(PAN_BAD) and luhn_ok("79927398713")
    assert mask_pan(PAN) == "411111******1111"
    assert mask_pan("6212 3456 7890 1234 567") == "621234*********4567"
    card = Card("chip", pan=PAN, pin_block=pin_block("1234", PAN))
    assert PAN not in repr(card) and "411111******1111" in repr(card)
    with pytest.raises(ProviderError):
        Card("swipe", pan=PAN)
    with pytest.raises(ProviderError):
        Card("chip", pan=PAN, token="tok_abcdef12")


def test_full_pan_is_never_logged_or_stored(sims, ref, caplog):
    caplog.set_level(logging.DEBUG, logger="lanecore")
    pan = "5500000000000004"
    with sims["bank"].connect() as c:
        m = ref()
        r = c.charge(m, 700, "EUR", card=Card("chip", pan=pan))
        assert r.status == "paid"
        assert c.query(m).status == "paid"
    assert pan not in caplog.text and pan not in repr(r)
    assert any(m in rec.getMessage() for rec in caplog.records)   # it did log the trade
    for f in sims["bank"].data_dir.iterdir():
        assert pan.encode() not in f.read_bytes(), f
    assert sims["bank"].trades()[m][0] == "paid"


# ----------------------------------------------------------------------------------
# Behaviour: user paying, declines, timeouts, system errors
# ----------------------------------------------------------------------------------

def test_user_paying_then_paid_or_cancelled(sims, ref):
    sim = sims["wechat"]
    with sim.connect() as c:
        c.configure(next=["userpaying", "usercancel"])
        paying, cancel = ref(), ref()
        r = c.charge(paying, 2500, "CNY", auth_code=WECHAT)
        assert (r.status, r.decline_code, r.paid_minor) == ("unknown", "USERPAYING", 0)
        r2 = c.charge(cancel, 2500, "CNY", auth_code=WECHAT)
        assert (r2.status, r2.decline_code) == ("unknown", "USERPAYING")
        done = wait_final(c, paying)
        assert (done.status, done.paid_minor, done.provider_ref) == \
            ("paid", 2500, r.provider_ref)
        gone = wait_final(c, cancel)
        assert (gone.status, gone.decline_code) == ("failed", "USERCANCEL")
        # The trade's time is when the password was typed, after it was created.
        status, _, paid_at = sim.trades()[paying]
        assert status == "paid" and paid_at is not None


def test_userpaying_by_probability(sims, ref):
    with sims["alipay"].connect() as c:
        c.configure(userpaying_p=1.0, seed=1)
        try:
            m = ref()
            assert c.charge(m, 10, "CNY", auth_code=ALIPAY).decline_code == "USERPAYING"
            assert wait_final(c, m).status == "paid"
        finally:
            c.configure(userpaying_p=0.0)


def test_declines_with_their_codes(sims, ref):
    with sims["wechat"].connect() as c:
        c.configure(next=["NOTENOUGH", "AUTH_CODE_EXPIRED", "TRADE_ERROR"])
        got = [c.charge(ref(), 99, "CNY", auth_code=WECHAT) for _ in range(3)]
        assert [(r.status, r.decline_code) for r in got] == [
            ("failed", "NOTENOUGH"), ("failed", "AUTH_CODE_EXPIRED"),
            ("failed", "TRADE_ERROR")]
        assert all(r.paid_minor == 0 for r in got)
        c.configure(decline_p=1.0, decline_codes=["NOTENOUGH"])
        try:
            assert c.charge(ref(), 99, "CNY", auth_code=WECHAT).decline_code == "NOTENOUGH"
        finally:
            c.configure(decline_p=0.0, decline_codes=[])
        c.configure(max_amount_minor=1000)
        try:
            r = c.charge(ref(), 1001, "CNY", auth_code=WECHAT)
            assert (r.status, r.decline_code) == ("failed", "EXCEED_LIMIT")
            assert c.charge(ref(), 1000, "CNY", auth_code=WECHAT).status == "paid"
        finally:
            c.configure(max_amount_minor=0)
    with sims["bank"].connect() as c:
        c.configure(next=["51", "05"])
        codes = [c.charge(ref(), 99, "EUR", card=Card("chip", pan=PAN)).decline_code
                 for _ in range(2)]
        assert codes == ["51", "05"]


def test_bad_knobs_are_refused(sims):
    with sims["wechat"].connect() as c:
        for knobs in ({"userpaying_p": 2.0}, {"next": ["51"]}, {"decline_codes": ["USERPAYING"]},
                      {"latency_s": -1.0}):
            with pytest.raises(ProviderError) as exc:
                c.configure(**knobs)
            assert exc.value.code == "BAD_FIELD", knobs
        assert c.configure()["userpaying_p"] == 0.0


def test_timeouts_and_system_errors_are_unknown_never_exceptions(sims, ref):
    sim = sims["unionpay"]
    with sim.connect(timeout_s=0.4) as c:
        c.configure(next=["timeout", "drop", "systemerror"])
        lost_answer, lost_request, sys_err = ref(), ref(), ref()
        r = c.charge(lost_answer, 800, "CNY", auth_code=UNIONPAY)
        assert (r.status, r.decline_code) == ("unknown", "TIMEOUT")
        r = c.charge(lost_request, 800, "CNY", auth_code=UNIONPAY)
        assert (r.status, r.decline_code) == ("unknown", "TIMEOUT")
        r = c.charge(sys_err, 800, "CNY", auth_code=UNIONPAY)
        assert (r.status, r.decline_code, r.paid_minor) == ("unknown", "SYSTEMERROR", 0)
        # Query tells what really happened: the lost answer's trade was paid, the
        # lost request's never existed, the system error's was paid.
        assert c.query(lost_answer).status == "paid"
        assert c.query(lost_request).status == "not_found"
        assert c.query(sys_err).status == "paid"
        # A slow answer after the timeout is never taken for the next request's.
        c.configure(latency_s=1.0)
        slow = ref()
        assert c.charge(slow, 300, "CNY", auth_code=UNIONPAY).status == "unknown"
        c.configure(latency_s=0.0)
        fast = ref()
        r = c.charge(fast, 301, "CNY", auth_code=UNIONPAY)
        assert (r.status, r.merchant_ref, r.paid_minor) == ("paid", fast, 301)
        time.sleep(1.0)   # let the slow answer arrive at a socket that is gone
        assert c.query(slow).paid_minor == 300
        assert c.query(fast).paid_minor == 301


# ----------------------------------------------------------------------------------
# Duplicates, reversals, refunds
# ----------------------------------------------------------------------------------

def test_duplicate_merchant_ref_never_charges_twice(sims, ref):
    sim = sims["alipay"]
    m = ref()
    with sim.connect() as a, sim.connect() as b:
        first = a.charge(m, 4200, "CNY", auth_code=ALIPAY)
        again = [x.charge(m, 4200, "CNY", auth_code=ALIPAY) for x in (a, b, a, b)]
        assert first.status == "paid" and not first.duplicate
        for r in again:
            assert (r.status, r.provider_ref, r.paid_minor, r.duplicate, r.decline_code) == \
                ("paid", first.provider_ref, 4200, True, "ORDERPAID")
        other = a.charge(m, 4300, "CNY", auth_code=ALIPAY)
        assert (other.status, other.decline_code) == ("failed", "OUT_TRADE_NO_USED")
        # A duplicate while the shopper types the password answers "still paying".
        a.configure(next=["userpaying"])
        p = ref()
        assert a.charge(p, 10, "CNY", auth_code=ALIPAY).decline_code == "USERPAYING"
        dup = a.charge(p, 10, "CNY", auth_code=ALIPAY)
        assert dup.duplicate and dup.status in ("unknown", "paid")
        assert wait_final(a, p).status == "paid"
    con = sqlite3.connect(sim.data_dir / "alipay.sqlite")
    rows = con.execute("SELECT COUNT(*), SUM(amount_minor), MAX(requests) FROM trades "
                       "WHERE merchant_ref = ?", (m,)).fetchone()
    con.close()
    assert rows == (1, 4200, 6)


def test_reverse_rules(sims, ref):
    sim = sims["wechat"]
    with sim.connect() as c:
        paid = ref()
        c.charge(paid, 1500, "CNY", auth_code=WECHAT)
        r = c.reverse(paid)
        assert (r.status, r.paid_minor) == ("reversed", 1500)
        assert c.reverse(paid).status == "reversed"             # idempotent
        assert c.charge(paid, 1500, "CNY", auth_code=WECHAT).decline_code == "ORDERCLOSED"
        # Reversing a trade while the shopper types the password: it never gets paid.
        c.configure(userpaying_delay_s=0.5, next=["userpaying"])
        try:
            paying = ref()
            assert c.charge(paying, 700, "CNY", auth_code=WECHAT).status == "unknown"
            assert c.reverse(paying).status == "reversed"
            time.sleep(0.7)
            r = c.query(paying)
            assert (r.status, r.paid_minor) == ("reversed", 0)
            assert sim.trades()[paying][2] is None
        finally:
            c.configure(userpaying_delay_s=0.3)
        # An unknown reference is closed, so a charge still in flight cannot pay later.
        never = ref()
        assert c.reverse(never).status == "reversed"
        late = c.charge(never, 900, "CNY", auth_code=WECHAT)
        assert (late.status, late.decline_code, late.paid_minor) == ("failed", "ORDERCLOSED", 0)
        # A refunded trade is not reversed (refund it further instead).
        refunded = ref()
        c.charge(refunded, 1000, "CNY", auth_code=WECHAT)
        c.refund(refunded, refunded + "-r1", 100)
        r = c.reverse(refunded)
        assert (r.status, r.decline_code) == ("failed", "TRADE_STATUS_ERROR")


def test_refund_rules(sims, ref):
    with sims["bank"].connect() as c:
        m = ref()
        c.charge(m, 1000, "EUR", card=Card("chip", pan=PAN))
        r = c.refund(m, m + "-r1", 300)
        assert (r.status, r.paid_minor, r.refunded_minor) == ("refunded", 1000, 300)
        again = c.refund(m, m + "-r1", 300)                   # a retry: not refunded twice
        assert (again.refunded_minor, again.duplicate) == (300, True)
        assert c.refund(m, m + "-r1", 301).decline_code == "REFUND_REF_USED"
        over = c.refund(m, m + "-r2", 701)
        assert (over.status, over.decline_code, over.refunded_minor) == \
            ("failed", "REFUND_EXCEEDS_PAID", 300)
        assert c.refund(m, m + "-r3", 700).refunded_minor == 1000
        assert c.refund(m, m + "-r4", 1).decline_code == "REFUND_EXCEEDS_PAID"
        assert c.query(m).status == "refunded"
        missing = c.refund(ref(), "nobody-r1", 5)
        assert (missing.status, missing.decline_code) == ("not_found", "ORDERNOTEXIST")
        failed = ref()
        c.charge(failed, 500, "EUR", card=Card("chip", pan=PAN_BAD))
        assert c.refund(failed, failed + "-r1", 5).decline_code == "TRADE_STATUS_ERROR"
        with pytest.raises(ProviderError):
            c.refund(m, m + "-r5", 0)


# ----------------------------------------------------------------------------------
# The wire, a crash, bills
# ----------------------------------------------------------------------------------

def test_protocol_errors_keep_the_loop_alive(sims):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(sims["wechat"].endpoint)
    try:
        def ask(payload: bytes) -> dict:
            s.send(payload)
            assert s.poll(10_000)
            return msgpack.unpackb(s.recv())
        assert ask(b"\xc1garbage")["error"]["code"] == "NOT_MSGPACK"
        assert ask(msgpack.packb([1, 2]))["error"]["code"] == "NOT_A_MAP"
        r = ask(msgpack.packb({"id": "x1", "op": "explode"}))
        assert (r["id"], r["ok"], r["error"]["code"]) == ("x1", False, "UNKNOWN_OP")
        r = ask(msgpack.packb({"id": 7, "op": "charge", "merchant_ref": "a-1"}))
        assert (r["id"], r["error"]["code"]) == (7, "MISSING_FIELD")
        r = ask(msgpack.packb({"id": 8, "op": "charge", "merchant_ref": "a-1",
                               "amount_minor": 1.5, "currency": "CNY", "auth_code": WECHAT}))
        assert r["error"]["code"] == "BAD_FIELD"
        r = ask(msgpack.packb({"id": 9, "op": "bill", "date": "2026-13-45"}))
        assert r["error"]["code"] == "BAD_FIELD"
        assert ask(msgpack.packb({"id": "p", "op": "ping"})) == \
            {"id": "p", "ok": True, "kind": "wechat"}
    finally:
        s.close(0)


def test_kill_9_and_restart_keeps_every_trade(tmp_path):
    sim = Sim("wechat", tmp_path / "crash", "--userpaying-delay-s", "0.5").ready()
    refs = [f"K{i}-1" for i in range(20)]
    try:
        with sim.connect() as c:
            for i, m in enumerate(refs[:-1]):
                assert c.charge(m, 100 + i, "CNY", auth_code=WECHAT).status == "paid"
            c.configure(next=["userpaying"])
            assert c.charge(refs[-1], 999, "CNY", auth_code=WECHAT).status == "unknown"
            before = c.stats()
        sim.proc.send_signal(signal.SIGKILL)
        sim.proc.wait()
        # Nobody answers a dead provider: the connector says unknown, not an exception.
        with sim.connect(timeout_s=0.3) as c:
            assert c.charge("K99-1", 5, "CNY", auth_code=WECHAT).status == "unknown"
        again = Sim("wechat", tmp_path / "crash", "--bind", sim.endpoint,
                    "--userpaying-delay-s", "0.5").ready()
        try:
            with again.connect() as c:
                for i, m in enumerate(refs[:-1]):
                    r = c.query(m)
                    assert (r.status, r.paid_minor) == ("paid", 100 + i)
                # The password typed while the provider was down still completes.
                assert wait_final(c, refs[-1]).paid_minor == 999
                dup = c.charge(refs[0], 100, "CNY", auth_code=WECHAT)
                assert dup.duplicate and dup.status == "paid"
                after = c.stats()
            assert after["charged"] == before["charged"] + 1 == 20
            assert after["charged_minor"] == sum(100 + i for i in range(19)) + 999
            assert "K99-1" not in again.trades()
        finally:
            again.stop()
    finally:
        sim.stop()


def _today() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")


def test_bill_with_injections_is_reconciled_exactly(tmp_path):
    sim = Sim("alipay", tmp_path / "billing", "--seed", "5").ready()
    day = _today()
    ledger = []
    try:
        with sim.connect() as c:
            for i in range(40):
                m = f"B{i}-1"
                if i % 10 == 3:
                    c.configure(next=["NOTENOUGH"])
                r = c.charge(m, 1000 + 7 * i, "CNY", auth_code=ALIPAY)
                state = r.status
                if i % 10 == 5:
                    state = c.reverse(m).status
                ledger.append({"merchant_ref": m, "channel": "alipay",
                               "amount_minor": 1000 + 7 * i, "currency": "CNY",
                               "state": state})
            c.refund("B0-1", "B0-1-r1", 250)
            ledger.append({"type": "refund", "merchant_ref": "B0-1", "refund_ref": "B0-1-r1",
                           "channel": "alipay", "amount_minor": 250, "currency": "CNY",
                           "state": "paid"})
            honest = c.bill(day)
            spec = {"drop": 2, "extra": 3, "amount": 2, "duplicate": 1, "seed": 11}
            bill = c.bill(day, inject=spec)
            with pytest.raises(ProviderError) as exc:
                c.bill(day, inject={"drop": 500})
            assert exc.value.code == "BAD_INJECT"
            assert c.stats()["charged"] == 36
        if _today() != day:
            pytest.skip("the UTC day changed during the test")
    finally:
        sim.stop()
    # The honest bill reconciles clean; every line type is there.
    rows = recon.parse_bill(csv.DictReader(io.StringIO(honest.csv_text)), "alipay")
    assert {r.type for r in rows} == {"charge", "reverse", "refund"}
    assert honest.injected is None
    assert recon.reconcile(ledger, rows, channels=["alipay"]).clean
    # The file and the sidecar are on disk, the same as the reply.
    path = Path(bill.path)
    assert path.name == f"alipay-{day}.csv" and path.read_text() == bill.csv_text
    sidecar = json.loads(path.with_suffix(".inject.json").read_text())
    assert sidecar == bill.injected and sidecar["kind"] == "alipay"
    assert [len(sidecar[k]) for k in ("drop", "extra", "amount", "duplicate")] == [2, 3, 2, 1]
    rows = recon.parse_bill(csv.DictReader(io.StringIO(bill.csv_text)), "alipay")
    report = recon.reconcile(ledger, rows, channels=["alipay"])
    assert {f.merchant_ref for f in report.missing_at_provider} == set(sidecar["drop"])
    assert {f.merchant_ref for f in report.missing_in_ledger} == set(sidecar["extra"])
    assert {(f.merchant_ref, f.ledger_amount_minor, f.bill_amount_minor)
            for f in report.amount_mismatch} == \
        {(a["merchant_ref"], a["from"], a["to"]) for a in sidecar["amount"]}
    assert {f.merchant_ref for f in report.duplicates} == set(sidecar["duplicate"])
    assert not report.status_mismatch
