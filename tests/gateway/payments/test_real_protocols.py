"""The payment gateway's existing guarantees re-run over the providers' REAL protocols
(issue 17, "Done when"): WeChat Pay v2 (XML over HTTPS, ``--protocol wechatpay-v2``),
Alipay (the openapi gateway over HTTPS, ``--protocol alipay``) and cards over ISO 8583
(the acquirer host, TCP), each against its simulator process on loopback:

* exactly once under kill -9 at random steps (≥ 200 payments each,
  ``LANECORE_PAY_CRASH_N``), the same loop as ``test_payments.py``'s
  (``payfix.run_kill_9``);
* routing's fall-back: a decline about the channel goes to the next channel, one about
  the payer does not — two channels of one protocol, and across protocols (a wallet's
  or an acquirer's own API falling back to a channel over lanecore's link; a WeChat
  payment code never goes to Alipay: routing refuses it, CODE_NOT_THIS_CHANNEL);
* reconciliation on the providers' own bill formats: a day of charges, refunds and
  reversals, ``recon.run`` clean against the downloaded bill, then discrepancies
  injected into the provider's bill (drop, extra, amount, duplicate) found exactly.
  ISO 8583 has no bill over the link (the connector answers ``NO_BILL``); its
  reconciliation is the day's totals (0500/0510), checked against the ledger.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import time

import pytest

from lanecore.gateway.payments.gateway import PaymentGateway

from payfix import (ALIPAY_CODE, WECHAT_CODE, books_after_recovery, card, card_request,
                    run_kill_9, wallet, wallet_request, write_config)

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

WALLETS = ("wechatpay-v2", "alipay")
ALL = (*WALLETS, "iso8583")
#: protocol → (the simulator's kind, the wallet's payment code)
KIND = {"wechatpay-v2": ("wechat", WECHAT_CODE), "alipay": ("alipay", ALIPAY_CODE),
        "iso8583": ("acquirer", None)}


def start(providers, name: str, protocol: str, *knobs: str):
    return providers(name, KIND[protocol][0], *knobs, protocol=protocol)


def channel(name: str, provider, priority: int, **extra) -> dict:
    if provider.protocol == "iso8583":
        return card(name, provider, priority, **extra)
    return wallet(name, provider, priority, **extra)


def request(protocol: str, rid: str, order: str, amount: int, **kw) -> dict:
    if protocol == "iso8583":
        return card_request(rid, order, amount, **kw)
    return wallet_request(rid, order, amount, code=KIND[protocol][1])


def pay(gw: PaymentGateway, protocol: str, rid: str, order: str, amount: int,
        **kw) -> dict:
    return gw.handle(request(protocol, rid, order, amount, **kw), client="till-1")


def settled(gw: PaymentGateway, order: str) -> dict:
    """``pay.status`` of ``order`` once it is final (the gateway driven meanwhile)."""
    for i in range(600):
        s = gw.handle({"op": "pay.status", "id": f"s-{order}-{i}", "order_no": order},
                      client="till-1")
        if s["status"] != "pending":
            return s
        gw.on_idle()
        time.sleep(0.02)
    raise AssertionError(f"{order} never became final: {s}")


def today(offset_s: int = 0) -> str:
    """Today in UTC, or in the zone ``offset_s`` ahead of it (a provider's bill day:
    the wallets bill China Standard Time days)."""
    return dt.datetime.now(dt.timezone(dt.timedelta(seconds=offset_s))).strftime("%Y-%m-%d")


def bill_day(gw: PaymentGateway, channel: str = "ch") -> str:
    """Today as the channel's provider bills it (``Connector.bill_utc_offset_s``)."""
    return today(gw.connectors[channel].bill_utc_offset_s)


# ----------------------------------------------------------------------------------
# exactly once under kill -9
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ALL)
def test_kill_9_at_random_steps_over_the_real_protocol(tmp_path, providers, protocol):
    """``test_payments.py``'s kill -9 suite over the provider's own protocol: the
    served gateway kills itself -9 after writing the intent, after the provider
    answered, or before replying; the till retries the same request; every order is
    paid exactly once, and the provider's paid trades are the ledger's. Over ISO 8583
    (no query) a charge whose answer was lost is reversed by advice, and the till's
    retry makes the next attempt."""
    n = int(os.environ.get("LANECORE_PAY_CRASH_N", "200"))
    p = start(providers, "p", protocol)
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"ch": channel("ch", p, 1)},
                 policy={"poll_every_s": 0.2, "give_up_after_s": 30})
    state = run_kill_9(tmp_path, d, n, lambda i: request(protocol, f"r{i}", f"K{i:04d}",
                                                         100 + i))
    gw, charges, ledger_paid, per_order = books_after_recovery(d, p, n)
    try:
        assert state["kills"] >= 10, state                 # the faults really happened
        assert sorted(ledger_paid.values()) == [100 + i for i in range(n)]
        others = {c.state for c in charges if c.state != "paid"}
        assert others <= {"failed", "reversed"}, others    # never charged, or undone
        if protocol == "iso8583":
            # no query: an attempt whose answer was lost was reversed by advice (and
            # is not held at the host: books_after_recovery compared them)
            assert others <= {"reversed"}, others
        print(f"\n{protocol}: {n} payments, gateway started {state['starts']}×, killed "
              f"-9 {state['kills']}×; {len(charges)} charges, {len(ledger_paid)} paid, "
              f"others {sorted(others)}")
    finally:
        gw.ledger.close()


# ----------------------------------------------------------------------------------
# routing's fall-back
# ----------------------------------------------------------------------------------
#: protocol → (a decline about the channel: falls back, and the decline code the
#: ledger keeps; a decline about the payer: final, its code). The simulator answers
#: in the provider's words (WeChat's err_code; Alipay's 40004 with sub_code
#: ACQ.TOTAL_FEE_EXCEED / ACQ.BUYER_BALANCE_NOT_ENOUGH), the connector maps them onto
#: the wallet decline table.
DECLINE_SCRIPTS = {
    "wechatpay-v2": (("EXCEED_LIMIT", "EXCEED_LIMIT"), ("NOTENOUGH", "NOTENOUGH")),
    "alipay": (("EXCEED_LIMIT", "EXCEED_LIMIT"), ("NOTENOUGH", "NOTENOUGH")),
}


@pytest.mark.parametrize("protocol", WALLETS)
def test_a_wallet_decline_that_may_fall_back_does_and_a_final_one_does_not(
        tmp_path, providers, protocol):
    a, b = start(providers, "a", protocol), start(providers, "b", protocol)
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"first": channel("first", a, 1), "second": channel("second", b, 2)})
    gw = PaymentGateway(d)
    (limit, limit_code), (poor, poor_code) = DECLINE_SCRIPTS[protocol]
    try:
        a.conn.configure(next=[limit])                    # the channel's own limit
        r = pay(gw, protocol, "1", "ORD-5", 500)
        assert (r["status"], r["channel"], r["attempt"]) == ("paid", "second", 2), r
        s = gw.handle({"op": "pay.status", "id": "s", "order_no": "ORD-5"},
                      client="till-1")
        assert [(x["channel"], x["state"], x["reason"]) for x in s["attempts"]] == [
            ("first", "failed", limit_code), ("second", "paid", None)]
        a.conn.configure(next=[poor])                     # the payer's money: final
        r = pay(gw, protocol, "2", "ORD-6", 500)
        assert (r["status"], r["decline_code"], r["channel"]) == \
            ("failed", poor_code, "first"), r
        assert b.paid() == {"ORD-5-2": 500} and a.paid() == {}
    finally:
        gw.ledger.close()


def test_a_card_decline_that_may_fall_back_does_and_a_final_one_does_not(
        tmp_path, providers):
    """Two acquirers over ISO 8583: 58 (transaction not permitted to this terminal:
    the channel's contract) goes to the next acquirer; 51 (insufficient funds: the
    payer's) and 55 (wrong PIN) are final."""
    a = start(providers, "a", "iso8583", "--next", "58,51")
    b = start(providers, "b", "iso8583")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"first": channel("first", a, 1), "second": channel("second", b, 2)})
    gw = PaymentGateway(d)
    try:
        r = pay(gw, "iso8583", "1", "C-5", 500)
        assert (r["status"], r["channel"], r["attempt"]) == ("paid", "second", 2), r
        s = gw.handle({"op": "pay.status", "id": "s", "order_no": "C-5"},
                      client="till-1")
        assert [(x["channel"], x["state"], x["reason"]) for x in s["attempts"]] == [
            ("first", "failed", "58"), ("second", "paid", None)]
        r = pay(gw, "iso8583", "2", "C-6", 600)
        assert (r["status"], r["decline_code"], r["channel"]) == ("failed", "51", "first")
        r = pay(gw, "iso8583", "3", "C-7", 700, pin="9999")
        assert (r["status"], r["decline_code"], r["channel"]) == ("failed", "55", "first")
        assert a.paid(d) == {} and b.paid(d) == {"C-5-2": 500}
    finally:
        gw.ledger.close()


def test_fall_back_crosses_protocols(tmp_path, providers):
    """One routing table over mixed links: a WeChat channel over WeChat Pay v2 at its
    limit falls back to a WeChat channel over lanecore's link; a card declined 58 by an
    acquirer over ISO 8583 falls back to a card channel over lanecore's link."""
    wx = start(providers, "wx", "wechatpay-v2")
    acq = start(providers, "acq", "iso8583", "--next", "58")
    wx2, bank = providers("wx2", "wechat"), providers("bank", "bank")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"wx": channel("wx", wx, 1), "wx-zmq": wallet("wx-zmq", wx2, 2),
                     "card": channel("card", acq, 3), "card-zmq": card("card-zmq", bank, 4)})
    gw = PaymentGateway(d)
    try:
        wx.conn.configure(next=["EXCEED_LIMIT"])
        r = pay(gw, "wechatpay-v2", "1", "X-1", 800)
        assert (r["status"], r["channel"], r["attempt"]) == ("paid", "wx-zmq", 2), r
        r = pay(gw, "iso8583", "2", "X-2", 900)
        assert (r["status"], r["channel"], r["attempt"]) == ("paid", "card-zmq", 2), r
        assert wx.paid() == {} and wx2.paid() == {"X-1-2": 800}
        assert acq.paid(d) == {} and bank.paid() == {"X-2-2": 900}
    finally:
        gw.ledger.close()


# ----------------------------------------------------------------------------------
# reconciliation
# ----------------------------------------------------------------------------------
def a_day(gw: PaymentGateway, protocol: str, p, rng: random.Random, n: int) -> dict:
    """``n`` orders with random fates through the gateway: paid, declined, paid then
    partly refunded (once or twice), paid then reversed, paid after the shopper typed
    a password (USERPAYING, polled to paid), and a system error (unknown: queried, and
    whatever the provider holds is what the ledger ends with). Returns the count of
    each fate."""
    fates = {"paid": 0, "declined": 0, "refunded": 0, "reversed": 0, "userpaying": 0,
             "systemerror": 0}
    p.conn.configure(userpaying_delay_s=0.2)
    for i in range(n):
        order, amount = f"D{i:03d}", rng.randint(1, 50_000)
        fate = rng.choices(list(fates), [6, 2, 2, 2, 1, 1])[0]
        if fate in ("declined", "userpaying", "systemerror"):
            p.conn.configure(next=[{"declined": "NOTENOUGH"}.get(fate, fate)])
        r = pay(gw, protocol, f"c{i}", order, amount)
        if fate in ("userpaying", "systemerror"):
            assert r["status"] == "pending", (fate, r)           # unknown: asked later
        if r["status"] == "pending":
            r = settled(gw, order)
        want = {"declined": ("failed",), "systemerror": ("paid", "failed", "reversed")
                }.get(fate, ("paid",))
        assert r["status"] in want, (fate, r)
        if fate == "refunded":
            parts = sorted(rng.sample(range(1, amount), 2)) if amount > 2 else [1]
            for k, part in enumerate(parts[:rng.randint(1, 2)]):
                rf = gw.handle({"op": "pay.refund", "id": f"rf{i}-{k}", "order_no": order,
                                "refund_ref": f"{order}-R{k}", "amount_minor": part},
                               client="till-1")
                assert rf["status"] == "refunded", rf
        elif fate == "reversed":
            rv = gw.handle({"op": "pay.reverse", "id": f"rv{i}", "order_no": order},
                           client="till-1")
            assert rv["status"] == "reversed", rv
        fates[fate] += 1
    return fates


def recon(gw: PaymentGateway, rid: str, channel: str = "ch") -> dict:
    rep = gw.handle({"op": "recon.run", "id": rid, "date": bill_day(gw, channel)},
                    client="till-1")
    assert rep["ok"], rep
    return rep


def findings(rep: dict, kind: str) -> list[str]:
    return sorted(f["merchant_ref"] for f in rep["discrepancies"] if f["finding"] == kind)


@pytest.mark.parametrize("protocol", WALLETS)
def test_reconciliation_on_the_providers_bill_finds_exactly_what_was_injected(
        tmp_path, providers, protocol):
    """A day of charges, refunds and reversals over the wallet's own API; the bill
    downloaded in the provider's format reconciles clean; then, for several random
    injections into the provider's bill (lines dropped, extra, amounts changed,
    duplicated — the property of ``tests/core/pay/test_recon.py`` over the real bill),
    ``recon.run`` finds exactly the injected discrepancies and nothing else."""
    p = start(providers, "p", protocol)
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"ch": channel("ch", p, 1)},
                 policy={"poll_every_s": 0.05, "give_up_after_s": 60})
    gw = PaymentGateway(d)
    try:
        rng = random.Random(17)
        fates = a_day(gw, protocol, p, rng, 40)
        assert all(fates.values()), fates
        clean = recon(gw, "clean")
        assert clean["channels"] == ["ch"] and clean["no_bill"] == [], clean
        assert clean["clean"] is True and clean["discrepancies"] == [], clean
        assert clean["refunds_checked"]
        ledger_paid = {c.merchant_ref: c.amount_minor for c in gw.ledger.charges()
                       if c.state == "paid"}
        assert p.paid() == ledger_paid                     # refunded ones stay paid
        tot = clean["totals"]["ch"]
        assert (tot["ledger_paid"], tot["ledger_paid_minor"]) == \
            (len(ledger_paid), sum(ledger_paid.values())), tot
        for seed in range(6):
            counts = [rng.randint(0, 2) for _ in range(4)]
            spec = dict(zip(("drop", "extra", "amount", "duplicate"), counts), seed=seed)
            record = p.inject_bill(bill_day(gw), spec)
            rep = recon(gw, f"inj{seed}")
            assert findings(rep, "missing_at_provider") == sorted(record["drop"]), rep
            assert findings(rep, "missing_in_ledger") == sorted(record["extra"]), rep
            assert sorted((f["merchant_ref"], f["ledger_amount_minor"],
                           f["bill_amount_minor"]) for f in rep["discrepancies"]
                          if f["finding"] == "amount_mismatch") == \
                sorted((a["merchant_ref"], a["from"], a["to"]) for a in record["amount"])
            assert findings(rep, "duplicate") == sorted(record["duplicate"]), rep
            assert len(rep["discrepancies"]) == sum(counts), (spec, rep)
            # an injection corrupts one download: the next bill is the honest one
        assert recon(gw, "again")["clean"] is True
    finally:
        gw.ledger.close()


def test_cards_over_iso8583_reconcile_by_the_days_totals(tmp_path, providers):
    """ISO 8583 carries no bill: ``recon.run`` lists the card channel under
    ``no_bill`` (NO_BILL) and matches nothing for it. The link's
    reconciliation is the day's totals (0500/0510): after a day of approvals,
    declines, reversals and charges whose answer never came (reversed by advice), the
    host's totals equal the ledger's paid charges; a charge only the host holds (made
    by another terminal id of this merchant, here the test's own connector) is not in
    this terminal's totals."""
    p = start(providers, "acq", "iso8583", "--next", "00,05,noanswer,00,51,00,noanswer")
    d = tmp_path / "gw"
    d.mkdir()
    write_config(d, {"card": channel("card", p, 1, timeout_s=0.5)},
                 policy={"poll_every_s": 0.05, "give_up_after_s": 60})
    gw = PaymentGateway(d)
    try:
        rng = random.Random(8583)
        for i in range(12):
            amount = rng.randint(1, 90_000)
            r = pay(gw, "iso8583", f"c{i}", f"T{i:03d}", amount)
            if r["status"] == "pending":
                r = settled(gw, f"T{i:03d}")
            if r["status"] == "paid" and rng.random() < 0.3:
                rv = gw.handle({"op": "pay.reverse", "id": f"rv{i}", "order_no": f"T{i:03d}"},
                               client="till-1")
                assert rv["status"] == "reversed", rv
        rep = recon(gw, "rc", "card")
        assert rep["channels"] == [] and rep["counts"]["matched"] == 0, rep
        assert [(x["channel"], x["code"]) for x in rep["no_bill"]] == [("card", "NO_BILL")]
        assert rep["clean"] is False            # a channel without its bill: not clean
        ledger = [c for c in gw.ledger.charges() if c.state == "paid"]
        reversed_ = [c for c in gw.ledger.charges() if c.state == "reversed"]
        assert len(reversed_) >= 2                    # the two never answered, at least
        t = gw.connectors["card"].totals(today())
        assert t["agreed"] is True, t
        assert t["host"] == t["ours"] == {"count": len(ledger), "amount_minor": sum(
            c.amount_minor for c in ledger)}
        assert p.paid(d) == {c.merchant_ref: c.amount_minor for c in ledger}
        # another terminal of the merchant: the host keeps the terminals apart
        assert p.conn.charge("OTHER-1", 999, "CNY", card=_card()).status == "paid"
        assert gw.connectors["card"].totals(today())["agreed"] is True
    finally:
        gw.ledger.close()


def _card():
    from lanecore.gateway.payments.providers import Card
    from payfix import PAN
    return Card("nfc", pan=PAN)
