"""The payment gateway (gateway/payments/gateway.py) against real provider simulator
processes: routing and fall-back, exactly-once charging, unknown results driven to a
final state, cash with change, and kill -9 at random steps."""

from __future__ import annotations

import json
import os
import sqlite3
import time

import pytest

from lanecore.gateway.payments.gateway import PaymentGateway
from lanecore.gateway.payments.terminals import Terminals

from payfix import (ALIPAY_CODE, WECHAT_CODE, books_after_recovery, run_kill_9, wallet,
                    wallet_request, write_config)

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free


def call(gw: PaymentGateway, op: str, rid, **fields) -> dict:
    return gw.handle({"op": op, "id": rid, **fields}, client="till-1")


def charge(gw, rid, order_no, amount, code=WECHAT_CODE, **kw):
    return call(gw, "pay.charge", rid, order_no=order_no, amount_minor=amount,
                currency="CNY", method=kw.pop("method", "auth_code"), terminal="T1",
                **({"auth_code": code} if code else {}), **kw)


def test_charge_once_retry_and_replay(tmp_path, providers):
    p = providers("wx", "wechat")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"wx": wallet("wx", p.endpoint, 1)})
    gw = PaymentGateway(d)
    r = charge(gw, "c1", "ORD-1", 1234)
    assert r["ok"] and r["status"] == "paid", r
    assert r["merchant_ref"] == "ORD-1-1" and r["channel"] == "wx" and r["provider_ref"]
    assert charge(gw, "c1", "ORD-1", 1234) == r            # a retry: the record
    again = charge(gw, "c2", "ORD-1", 1234)                # a new request, same order
    assert again["status"] == "paid" and again["merchant_ref"] == "ORD-1-1"
    assert p.paid() == {"ORD-1-1": 1234}                    # charged once
    s = call(gw, "pay.status", "s1", order_no="ORD-1")
    assert s["status"] == "paid" and [a["state"] for a in s["attempts"]] == ["paid"]
    assert call(gw, "pay.status", "s2", order_no="NOPE")["error"]["code"] == "UNKNOWN_ORDER"
    gw.ledger.close()


def test_over_one_channels_limit_goes_to_the_next(tmp_path, providers):
    a, b = providers("a", "wechat"), providers("b", "wechat")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"small": wallet("small", a.endpoint, 1, max_payment_minor=10_000),
                     "big": wallet("big", b.endpoint, 2, max_payment_minor=50_000)})
    gw = PaymentGateway(d)
    r = charge(gw, "1", "ORD-2", 20_000)
    assert r["status"] == "paid" and r["channel"] == "big"
    q = call(gw, "pay.quote", "q", amount_minor=20_000, currency="CNY", method="auth_code",
             terminal="T1", auth_code=WECHAT_CODE)
    assert [(c["channel"], c["eligible"], c["reason"]) for c in q["channels"]] == [
        ("small", False, "OVER_PAYMENT_LIMIT"), ("big", True, None)]
    none = charge(gw, "2", "ORD-3", 90_000)
    assert none["ok"] is False and none["error"]["code"] == "NO_ELIGIBLE_CHANNEL"
    assert none["error"]["reasons"] == {"small": "OVER_PAYMENT_LIMIT",
                                        "big": "OVER_PAYMENT_LIMIT"}
    wrong = charge(gw, "3", "ORD-4", 100, code=ALIPAY_CODE)  # an Alipay code, WeChat only
    assert wrong["error"]["code"] == "NO_ELIGIBLE_CHANNEL"
    assert set(wrong["error"]["reasons"].values()) == {"CODE_NOT_THIS_CHANNEL"}
    assert a.paid() == {} and b.paid() == {"ORD-2-1": 20_000}
    gw.ledger.close()


def test_daily_limits_count_paid_and_open_charges_not_failed_ones(tmp_path, providers):
    p = providers("wx", "wechat")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"wx": wallet("wx", p.endpoint, 1, terminal_daily_max_minor=1_000)})
    gw = PaymentGateway(d)
    assert charge(gw, "1", "D-1", 600)["status"] == "paid"
    p.conn.configure(next=["NOTENOUGH"])
    assert charge(gw, "2", "D-2", 300)["status"] == "failed"    # does not count
    assert charge(gw, "3", "D-3", 400)["status"] == "paid"      # 600 + 400 = the cap
    over = charge(gw, "4", "D-4", 1)
    assert over["error"]["code"] == "NO_ELIGIBLE_CHANNEL"
    assert over["error"]["reasons"] == {"wx": "OVER_TERMINAL_DAILY_LIMIT"}
    gw.ledger.close()
    gw2 = PaymentGateway(d)                     # a restart reads the day's totals back
    assert charge(gw2, "5", "D-5", 1)["error"]["code"] == "NO_ELIGIBLE_CHANNEL"
    gw2.ledger.close()


def test_a_decline_that_may_fall_back_does_and_a_final_one_does_not(tmp_path, providers):
    a, b = providers("a", "wechat"), providers("b", "wechat")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"first": wallet("first", a.endpoint, 1),
                     "second": wallet("second", b.endpoint, 2)})
    gw = PaymentGateway(d)
    a.conn.configure(next=["EXCEED_LIMIT"])                # the channel's own limit
    r = charge(gw, "1", "ORD-5", 500)
    assert r["status"] == "paid" and r["channel"] == "second" and r["attempt"] == 2
    s = call(gw, "pay.status", "s", order_no="ORD-5")
    assert [(x["channel"], x["state"], x["reason"]) for x in s["attempts"]] == [
        ("first", "failed", "EXCEED_LIMIT"), ("second", "paid", None)]
    a.conn.configure(next=["NOTENOUGH"])                   # the payer's money: final
    r = charge(gw, "2", "ORD-6", 500)
    assert r["status"] == "failed" and r["decline_code"] == "NOTENOUGH"
    assert r["channel"] == "first"
    assert b.paid() == {"ORD-5-2": 500} and a.paid() == {}
    gw.ledger.close()


def test_user_paying_is_driven_to_paid_without_charging_again(tmp_path, providers):
    p = providers("wx", "wechat", "--userpaying-delay-s", "0.5")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"wx": wallet("wx", p.endpoint, 1)},
                 policy={"poll_every_s": 0.2, "give_up_after_s": 30})
    gw = PaymentGateway(d)
    p.conn.configure(next=["userpaying"])
    r = charge(gw, "1", "ORD-7", 800)
    assert r["status"] == "pending" and r["merchant_ref"] == "ORD-7-1"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        gw.on_idle()
        again = charge(gw, "1", "ORD-7", 800)              # the till asks again
        if again["status"] != "pending":
            break
        time.sleep(0.1)
    assert again["status"] == "paid", again
    assert p.paid() == {"ORD-7-1": 800}
    assert [s[2] for s in gw.ledger.steps("ORD-7-1")][:3] == ["created", "sent", "unknown"]
    gw.ledger.close()


def test_still_unknown_after_the_cap_is_reversed(tmp_path, providers):
    p = providers("wx", "wechat", "--userpaying-delay-s", "600")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"wx": wallet("wx", p.endpoint, 1)},
                 policy={"poll_every_s": 0.1, "give_up_after_s": 0.5,
                         "reverse_not_before_s": 0.6})
    gw = PaymentGateway(d)
    p.conn.configure(next=["userpaying"])
    assert charge(gw, "1", "ORD-8", 300)["status"] == "pending"
    deadline = time.monotonic() + 10
    while gw.ledger.get("ORD-8-1").state != "reversed" and time.monotonic() < deadline:
        gw.on_idle()
        time.sleep(0.05)
    c = gw.ledger.get("ORD-8-1")
    assert c.state == "reversed" and c.reversals >= 1
    steps = gw.ledger.steps("ORD-8-1")
    reversed_at = steps[-1][0]
    assert reversed_at - c.sent_at >= 0.6                 # never sooner
    assert p.paid() == {}
    assert p.conn.query("ORD-8-1").status == "reversed"    # it can never be paid now
    gw.ledger.close()


def test_refunds_and_the_days_reconciliation(tmp_path, providers):
    p = providers("wx", "wechat")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"wx": wallet("wx", p.endpoint, 1)})
    gw = PaymentGateway(d)
    assert charge(gw, "1", "RF-1", 1000)["status"] == "paid"
    assert charge(gw, "2", "RF-2", 300)["status"] == "paid"
    r = call(gw, "pay.refund", "r1", order_no="RF-1", refund_ref="RF-1-R1", amount_minor=400)
    assert r["ok"] and r["status"] == "refunded" and r["provider_ref"], r
    assert call(gw, "pay.refund", "r1", order_no="RF-1", refund_ref="RF-1-R1",
                amount_minor=400) == r                               # a retry: the record
    again = call(gw, "pay.refund", "r2", order_no="RF-1", refund_ref="RF-1-R1",
                 amount_minor=400)                                  # same refund, new id
    assert again["status"] == "refunded" and again["provider_ref"] == r["provider_ref"]
    over = call(gw, "pay.refund", "r3", order_no="RF-1", refund_ref="RF-1-R2",
                amount_minor=601)
    assert over["error"]["code"] == "REFUND_EXCEEDS_PAID"
    assert call(gw, "pay.refund", "r4", order_no="NOPE", refund_ref="X",
                amount_minor=1)["error"]["code"] == "UNKNOWN_ORDER"
    assert p.conn.query("RF-1-1").refunded_minor == 400            # given back once
    import datetime as dt
    day = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    rep = call(gw, "recon.run", "rc", date=day)
    assert rep["ok"], rep
    assert rep["channels"] == ["wx"] and rep["no_bill"] == []
    assert rep["clean"] is True and rep["discrepancies"] == [], rep
    assert rep["counts"]["matched"] == 3 and rep["refunds_checked"]  # two charges, a refund
    assert rep["totals"]["wx"]["refunded_minor"] == 400
    gw.ledger.close()


def test_bad_means_are_clear_errors(tmp_path):
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"cash": {"kind": "cash", "priority": 1, "methods": ["cash"],
                              "currency": "GBP"}})
    gw = PaymentGateway(d)
    base = dict(order_no="B-1", amount_minor=100, currency="GBP", terminal="T1")
    for extra, code in (({"method": "card", "card": {"entry": "chip", "pan": 4111}},
                         "BAD_FIELD"),
                        ({"method": "card", "card": {"entry": "swipe", "token": "t"}},
                         "BAD_FIELD"),
                        ({"method": "card"}, "MISSING_FIELD"),
                        ({"method": "cash", "cash": {"tendered": {"abc": 1}}}, "BAD_FIELD"),
                        ({"method": "cash", "cash": {"tendered": {"100": "x"}}},
                         "BAD_AMOUNT"),
                        ({"method": "auth_code"}, "MISSING_FIELD")):
        r = call(gw, "pay.charge", f"b{code}{len(str(extra))}", **base, **extra)
        assert r["ok"] is False and r["error"]["code"] == code, (extra, r)
    gw.ledger.close()


def test_cash_with_change(tmp_path):
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"cash": {"kind": "cash", "priority": 1, "methods": ["cash"],
                              "currency": "GBP"}})
    gw = PaymentGateway(d)
    from lanecore.core.pay.cash import Drawer
    Drawer(gw.con, drawer_id="T1", currency="GBP").float_in({50: 1, 20: 3}, ref="open")
    r = call(gw, "pay.charge", "1", order_no="ORD-9", amount_minor=40, currency="GBP",
             method="cash", terminal="T1", cash={"tendered": {"100": 1}})
    assert r["status"] == "paid", r
    assert r["change"]["pieces"] in ({"20": 3}, {20: 3})    # 60p: 20+20+20, not 50+…
    bad = call(gw, "pay.charge", "2", order_no="ORD-10", amount_minor=45, currency="GBP",
               method="cash", terminal="T1", cash={"tendered": {"100": 1}})
    assert bad["ok"] is False and bad["error"]["code"] == "NO_EXACT_CHANGE"
    assert gw.ledger.get("ORD-10-1").state == "failed"
    gw.ledger.close()


def test_pay_qr_is_a_dynamic_emv_payload(tmp_path):
    from lanecore.core.pay.emvqr import decode_mpm
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"cash": {"kind": "cash", "priority": 1, "methods": ["cash"],
                              "currency": "CNY"}})
    gw = PaymentGateway(d)
    r = call(gw, "pay.qr", "1", order_no="ORD-11", amount_minor=1999, currency="CNY",
             terminal="T1")
    dec = decode_mpm(r["payload"])
    assert dec["ok"] and dec["crc_ok"] and dec["amount_minor"] == 1999
    assert dec["fields"]["01"] == "12" and dec["fields"]["62"]["01"] == "ORD-11"
    gw.ledger.close()


# ----------------------------------------------------------------------------------
# kill -9 at random steps

@pytest.mark.parametrize("auth", ["dev", "hmac"])
def test_kill_9_at_random_steps_charges_nothing_twice_and_loses_nothing(tmp_path,
                                                                        providers, auth):
    """Development mode, and again with the till a terminal signing every request (each
    retry a fresh authentication frame around the same request)."""
    n = int(os.environ.get("LANECORE_PAY_CRASH_N", "200"))
    p = providers("wx", "wechat")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"wx": wallet("wx", p.endpoint, 1)},
                 policy={"poll_every_s": 0.2, "give_up_after_s": 30},
                 pos={"auth": "hmac"} if auth == "hmac" else None)
    sign = None
    if auth == "hmac":
        con = sqlite3.connect(d / "payments.db", isolation_level=None)
        _, key = Terminals(con).register("T1", roles="kiosk")
        con.close()
        sign = ("T1", key)
    state = run_kill_9(tmp_path, d, n, lambda i: wallet_request(f"r{i}", f"K{i:04d}",
                                                                100 + i), sign=sign)
    # a last start with no faults drives anything still open, then stops
    gw, charges, ledger_paid, _ = books_after_recovery(d, p, n)
    assert state["kills"] >= 10, state                     # the faults really happened
    print(f"\n{n} payments, gateway started {state['starts']}×, killed -9 "
          f"{state['kills']}×; {len(charges)} charges, {len(ledger_paid)} paid")
    gw.ledger.close()


def test_cards_through_the_gateway_pin_policy_and_no_clear_pan_anywhere(tmp_path,
                                                                        providers, caplog):
    from lanecore.gateway.sim.provider import pin_block
    pan = "4111111111111111"
    bank = providers("bank", "bank")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"card": {"kind": "card", "priority": 1, "methods": ["card"],
                              "currency": "CNY", "endpoint": bank.endpoint,
                              "pin_entries": ["chip"], "cvm_limit_minor": 30_000}})
    gw = PaymentGateway(d)

    replies = []

    def pay(rid, order, amount, entry, pin=None):
        card = {"entry": entry, "pan": pan}
        if pin is not None:
            card["pin_block"] = pin_block(pin, pan)
        replies.append(call(gw, "pay.charge", rid, order_no=order, amount_minor=amount,
                            currency="CNY", method="card", terminal="T1", card=card))
        return replies[-1]

    # the policy asks for the PIN before anything is written or sent
    assert pay("1", "C-1", 500, "chip")["error"]["code"] == "PIN_REQUIRED"
    assert pay("2", "C-2", 30_001, "nfc")["error"]["code"] == "PIN_REQUIRED"
    assert call(gw, "pay.status", "s", order_no="C-1")["error"]["code"] == "UNKNOWN_ORDER"
    assert pay("3", "C-1", 500, "chip", pin="1234")["status"] == "paid"
    assert pay("4", "C-2", 30_000, "nfc")["status"] == "paid"          # at the limit: no PIN
    assert pay("5", "C-3", 800, "magstripe")["status"] == "paid"       # not in pin_entries
    wrong = pay("6", "C-4", 900, "chip", pin="9999")
    assert (wrong["status"], wrong["decline_code"]) == ("failed", "55")  # the payer's: final
    assert bank.paid() == {"C-1-1": 500, "C-2-1": 30_000, "C-3-1": 800}
    gw.ledger.close()
    # the card number is in no reply, no log line and no byte of the ledger's files
    assert pan not in repr(replies)
    for path in d.iterdir():
        if path.is_file():
            assert pan.encode() not in path.read_bytes(), path
    assert pan not in caplog.text
    bad = {"card": {"kind": "cash", "priority": 1, "methods": ["cash"], "currency": "CNY",
                    "cvm_limit_minor": 1}}
    write_config(d, bad)
    with pytest.raises(Exception) as e:
        PaymentGateway(d)
    assert getattr(e.value, "code", None) == "BAD_CONFIG"


def test_member_stored_value_pays_falls_back_refunds_and_reverses(tmp_path, providers):
    p = providers("wx", "wechat")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"sv": {"kind": "stored_value", "priority": 1,
                            "methods": ["stored_value"], "currency": "CNY"},
                     "wx": wallet("wx", p.endpoint, 2)})
    gw = PaymentGateway(d)

    def sv_pay(rid, order, amount, member="M-1", pin=None):
        return call(gw, "pay.charge", rid, order_no=order, amount_minor=amount,
                    currency="CNY", method="stored_value", terminal="T1", payer=member,
                    **({"sv_pin": pin} if pin else {}))

    assert call(gw, "sv.open", "o", member="M-1", currency="CNY", pin="2468")["ok"]
    t = call(gw, "sv.topup", "t", member="M-1", currency="CNY", amount_minor=5000,
             ref="SLIP-1")
    assert t["balance_minor"] == 5000
    assert call(gw, "sv.topup", "t2", member="M-1", currency="CNY", amount_minor=5000,
                ref="SLIP-1")["balance_minor"] == 5000              # the same slip: once
    r = sv_pay("1", "SV-1", 1200, pin="2468")
    assert (r["status"], r["channel"], r["provider_ref"]) == ("paid", "sv", "sv:SV-1-1")
    assert sv_pay("1", "SV-1", 1200, pin="2468") == r                # a retry: the record
    wrong = sv_pay("2", "SV-2", 100, pin="0000")
    assert (wrong["status"], wrong["decline_code"]) == ("failed", "WRONG_PASSWORD")
    poor = sv_pay("3", "SV-3", 9000, pin="2468")                    # the payer's: no fall-back
    assert (poor["status"], poor["decline_code"]) == ("failed", "BALANCE_NOT_ENOUGH")
    unknown = sv_pay("4", "SV-4", 100, member="M-404")
    assert unknown["error"]["code"] == "UNKNOWN_MEMBER"
    assert call(gw, "pay.charge", "5", order_no="SV-5", amount_minor=100, currency="CNY",
                method="stored_value", terminal="T1")["error"]["code"] == "MISSING_FIELD"
    bal = lambda: call(gw, "sv.balance", "b", member="M-1", currency="CNY")[  # noqa: E731
        "account"]["balance_minor"]
    assert bal() == 3800
    rf = call(gw, "pay.refund", "r1", order_no="SV-1", refund_ref="RF-1", amount_minor=200)
    assert rf["status"] == "refunded" and bal() == 4000
    over = call(gw, "pay.refund", "r2", order_no="SV-1", refund_ref="RF-2",
                amount_minor=1001)
    assert over["error"]["code"] == "REFUND_EXCEEDS_PAID" and bal() == 4000
    rv = call(gw, "pay.reverse", "v1", order_no="SV-1")
    assert rv["status"] == "reversed" and bal() == 5000             # the rest came back
    # a charge left `sent` by a crash is settled from the account's record
    gw.ledger.close()
    import sqlite3
    con = sqlite3.connect(d / "payments.db")
    con.execute("INSERT INTO charges SELECT 'SV-9-1', 'SV-9', 1, 300, currency, method, "
                "channel, terminal, payer, 'sent', NULL, NULL, created_at, created_at, NULL, "
                "updated_at, 0, 0, scope FROM charges WHERE merchant_ref = 'SV-1-1'")
    con.commit()
    con.close()
    gw = PaymentGateway(d)
    assert call(gw, "pay.status", "s9", order_no="SV-9")["status"] == "failed"
    assert bal() == 5000
    gw.ledger.close()


def test_signed_receipts_text_escpos_and_sms_once(tmp_path, providers):
    from lanecore.core.pay.cash import Drawer
    from lanecore.core.pay.receipt import ReceiptError, verify_receipt
    from lanecore.core.store.orderqr import Verifier
    p = providers("wx", "wechat")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"wx": wallet("wx", p.endpoint, 1),
                     "cash": {"kind": "cash", "priority": 2, "methods": ["cash"],
                              "currency": "CNY"}})
    gw = PaymentGateway(d)
    Drawer(gw.con, drawer_id="T1", currency="CNY").float_in({100: 5, 500: 2}, ref="open")
    lines = [{"name": "Shampoo 400 ml", "qty": 1, "unit_minor": 1000, "amount_minor": 1000},
             {"name": "Apples", "qty": 2, "unit_minor": 250, "amount_minor": 500}]
    # the lines go with the charge (the ledger keeps them); lines that do not add up
    # to the amount are refused before anything is charged
    bad = charge(gw, "0", "RC-1", 1500, lines=lines[:1])
    assert bad["error"]["code"] == "BAD_FIELD"
    assert charge(gw, "1", "RC-1", 1500, lines=lines)["status"] == "paid"
    cash = call(gw, "pay.charge", "2", order_no="RC-2", amount_minor=1300, currency="CNY",
                method="cash", terminal="T1", cash={"tendered": {"2000": 1}})
    assert cash["status"] == "paid" and cash["change"]["change_minor"] == 700
    key = call(gw, "hello", "h")["receipt_key"]
    r = call(gw, "pay.receipt", "r1", order_no="RC-1", sms_to="+8613800138000")
    assert r["ok"], r
    rec = verify_receipt(r["receipt"], Verifier(key))           # the hello key checks it
    assert rec.total_minor == 1500 and [ln.name for ln in rec.lines] == [
        "Shampoo 400 ml", "Apples"]
    assert "Shampoo 400 ml" in r["text"] and "15.00" in r["text"]
    assert r["verify_code"] in r["text"] and r["verify_code"] in r["sms"]
    assert r["escpos"].startswith(b"\x1b@") and b"15.00" in r["escpos"]
    tampered = {**r["receipt"], "receipt": {**r["receipt"]["receipt"], "total_minor": 1}}
    with pytest.raises(ReceiptError) as e:
        verify_receipt(tampered, Verifier(key))
    assert e.value.code in ("RECEIPT_SIGNATURE", "BAD_RECEIPT")
    # the same receipt asked again: the same signature, the SMS queued once
    again = call(gw, "pay.receipt", "r2", order_no="RC-1", sms_to="+86 138 0013 8000")
    assert again["receipt"] == r["receipt"] and again["sms_queued"] == r["sms_queued"]
    gw.on_idle()
    sent = [json.loads(x) for x in (d / "sms-outbox.jsonl").read_text().splitlines()]
    assert [m["phone"] for m in sent] == ["+8613800138000"] and "RC-1" in sent[0]["text"]
    # cash: tendered and change on the receipt; lines sent with the receipt request are
    # never read (the receipt is the ledger's)
    c = call(gw, "pay.receipt", "r3", order_no="RC-2")
    assert c["receipt"]["receipt"]["payments"][0]["change_minor"] == 700
    forged = call(gw, "pay.receipt", "r4", order_no="RC-1", lines=lines[:1])
    assert forged["receipt"] == r["receipt"]
    assert call(gw, "pay.receipt", "r5", order_no="NOPE")["error"]["code"] == \
        "UNKNOWN_ORDER"
    gw.ledger.close()
