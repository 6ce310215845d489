"""Reconciliation of the ledger against provider bills (core/pay/recon.py) and
`lanecore recon`."""

from __future__ import annotations

import csv
import json
import random
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lanecore.cli import main
from lanecore.core.pay import recon
from lanecore.core.pay.ledger import Ledger
from lanecore.core.pay.recon import BillRow, ReconError, inject, parse_bill, reconcile

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

T = "2026-03-04T10:00:00Z"


def charge(ref, amount, state="paid", channel="wechat"):
    return {"merchant_ref": ref, "channel": channel, "amount_minor": amount,
            "currency": "CNY", "state": state}


def line(ref, amount, status="SUCCESS", type_="charge", channel="wechat", fee=0,
         refund_ref=""):
    return BillRow(T, ref, "P" + ref, type_, amount, "CNY", status, fee, refund_ref, channel)


def day(rng: random.Random, n: int, channels=("wechat", "alipay", "bank")):
    """A random honest day: ledger rows and the bills the providers would write."""
    ledger, bill = [], []
    for i in range(n):
        ch = rng.choice(channels)
        ref = f"O{i}-{rng.randint(1, 3)}"
        amount = rng.randint(1, 200_000)
        fate = rng.choices(["paid", "failed", "reversed_paid", "reversed_unpaid", "open",
                            "refunded"], [10, 3, 2, 1, 1, 2])[0]
        fee = amount * 6 // 1000
        if fate == "paid":
            ledger.append(charge(ref, amount, "paid", ch))
            bill.append(line(ref, amount, "SUCCESS", channel=ch, fee=fee))
        elif fate == "failed":
            ledger.append(charge(ref, amount, "failed", ch))
        elif fate == "open":
            ledger.append(charge(ref, amount, rng.choice(["sent", "unknown", "queried"]), ch))
        elif fate == "reversed_unpaid":
            ledger.append(charge(ref, amount, "reversed", ch))
        elif fate == "reversed_paid":
            ledger.append(charge(ref, amount, "reversed", ch))
            bill.append(line(ref, amount, "REVERSED", channel=ch, fee=fee))
            bill.append(line(ref, amount, "SUCCESS", "reverse", ch, fee=-fee))
        else:
            part = rng.randint(1, amount)
            ledger.append(charge(ref, amount, "paid", ch))
            ledger.append({**charge(ref, part, "paid", ch), "type": "refund",
                           "refund_ref": ref + "-r1"})
            bill.append(line(ref, amount, "REFUND", channel=ch, fee=fee))
            bill.append(line(ref, part, "SUCCESS", "refund", ch, refund_ref=ref + "-r1"))
    rng.shuffle(bill)
    return ledger, bill


# ----------------------------------------------------------------------------------

def test_an_honest_day_is_clean_and_totals_add_up():
    ledger = [charge("A-1", 1000), charge("B-1", 500, "reversed"), charge("C-1", 300, "failed"),
              charge("D-1", 700), {**charge("D-1", 200), "type": "refund", "refund_ref": "D-r"}]
    bill = [line("A-1", 1000, fee=6), line("B-1", 500, "REVERSED", fee=3),
            line("B-1", 500, type_="reverse", fee=-3), line("D-1", 700, "REFUND", fee=4),
            line("D-1", 200, type_="refund", refund_ref="D-r")]
    r = reconcile(ledger, bill)
    assert r.clean and not r.discrepancies
    assert len(r.matched) == 4
    t = r.totals["wechat"]
    assert (t.charges, t.charged_minor, t.reversed_minor, t.refunded_minor, t.fee_minor) == \
        (3, 2200, 500, 200, 10)
    assert t.net_minor == 2200 - 500 - 200 - 10
    assert (t.ledger_paid, t.ledger_paid_minor) == (2, 1700)
    assert "clean" in r.summary()


def test_each_kind_of_discrepancy():
    ledger = [charge("A-1", 1000), charge("B-1", 500), charge("C-1", 300),
              charge("D-1", 400, "unknown"), charge("E-1", 600, "reversed"),
              charge("F-1", 800), charge("G-1", 900)]
    bill = [line("A-1", 1000), line("A-1", 1000),          # duplicated
            line("B-1", 501),                              # amount
            line("D-1", 400),                              # the ledger never saw it paid
            line("E-1", 600),                              # reversed here, paid there
            line("F-1", 800, "REVERSED"),                  # paid here, reversed there
            line("Z-1", 50),                               # nobody's
            line("G-1", 900)]
    r = reconcile(ledger, bill)
    assert [f.merchant_ref for f in r.duplicates] == ["A-1"]
    assert [(f.merchant_ref, f.ledger_amount_minor, f.bill_amount_minor)
            for f in r.amount_mismatch] == [("B-1", 500, 501)]
    assert [f.merchant_ref for f in r.missing_at_provider] == ["C-1"]
    assert {(f.merchant_ref, f.ledger_state) for f in r.missing_in_ledger} == \
        {("D-1", "unknown"), ("Z-1", None)}
    assert {f.merchant_ref for f in r.status_mismatch} == {"E-1", "F-1"}
    assert {f.merchant_ref for f in r.matched} == {"A-1", "G-1"}
    assert r.totals["wechat"].charged_minor == 1000 + 501 + 400 + 600 + 800 + 50 + 900
    assert not r.clean and "DISCREPANCIES" in r.summary()
    assert len(r.rows()) == 7 + 2


def test_channels_without_a_bill_and_unchecked_refunds():
    ledger = [charge("A-1", 100), charge("K-1", 100, channel="cash"),
              charge("K-2", 200, channel="cash"),
              {**charge("A-1", 10), "type": "refund", "refund_ref": "A-r"}]
    r = reconcile(ledger, [line("A-1", 100)])
    assert r.unreconciled == {"cash": 2}
    # The refund the ledger made has no line in the bill.
    assert [(f.merchant_ref, f.refund_ref) for f in r.missing_at_provider] == [("A-1", "A-r")]
    r = reconcile(ledger[:1], [line("A-1", 100), line("A-1", 10, type_="refund",
                                                       refund_ref="A-r")])
    assert [f.refund_ref for f in r.missing_in_ledger] == ["A-r"]
    r = reconcile(ledger[:1], [line("A-1", 100), line("A-1", 10, type_="refund",
                                                       refund_ref="A-r")], check_refunds=False)
    assert r.clean and r.totals["wechat"].refunded_minor == 10
    assert "not reconciled" in r.summary()


def test_an_empty_bill_is_still_a_bill():
    ledger = [charge("A-1", 100)]
    assert reconcile(ledger, []).unreconciled == {"wechat": 1}
    r = reconcile(ledger, [], channels=["wechat"])
    assert [f.merchant_ref for f in r.missing_at_provider] == ["A-1"] and not r.unreconciled


def test_bad_bills_and_injections_are_refused():
    good = {"trade_time": T, "merchant_ref": "A-1", "provider_ref": "P", "type": "charge",
            "amount_minor": "100", "currency": "CNY", "status": "SUCCESS", "fee_minor": "1",
            "refund_ref": ""}
    assert parse_bill([good], "wechat")[0].amount_minor == 100
    for bad in ({"amount_minor": "1.5"}, {"type": "gift"}, {"refund_ref": "R"},
                {"merchant_ref": ""}):
        with pytest.raises(ReconError) as exc:
            parse_bill([good, {**good, **bad}], "wechat")
        assert exc.value.code == "BAD_BILL" and "line 2" in exc.value.message
    rows = [line("A-1", 100), line("B-1", 100, "REVERSED")]
    for spec in ({"drop": 2}, {"amount": 1, "duplicate": 1}, {"explode": 1}, {"drop": -1}):
        with pytest.raises(ReconError) as exc:
            inject(rows, spec)
        assert exc.value.code == "BAD_INJECT"
    with pytest.raises(ReconError):
        recon.check_date("2026-3-4")


def test_injection_is_reproducible_by_seed():
    _, bill = day(random.Random(3), 60)
    spec = {"drop": 2, "extra": 2, "amount": 2, "duplicate": 2, "seed": 42}
    assert inject(bill, spec) == inject(bill, spec)
    assert inject(bill, spec)[1] != inject(bill, {**spec, "seed": 43})[1]
    assert inject(bill, {})[0] == bill


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 32), n=st.integers(0, 80),
       counts=st.tuples(*[st.integers(0, 4)] * 4))
def test_property_finds_every_injected_discrepancy_and_nothing_else(seed, n, counts):
    rng = random.Random(seed)
    ledger, bill = day(rng, n)
    clean = reconcile(ledger, bill, channels={x["channel"] for x in ledger})
    assert not clean.discrepancies and not clean.unreconciled
    spec = dict(zip(("drop", "extra", "amount", "duplicate"), counts), seed=seed)
    eligible = sum(1 for r in bill if r.type == "charge" and r.status == "SUCCESS")
    if counts[0] + counts[2] + counts[3] > eligible:
        with pytest.raises(ReconError):
            inject(bill, spec)
        return
    if not bill and counts[1]:
        return   # an extra line needs a channel to land in
    corrupted, record = inject(bill, spec)
    r = reconcile(ledger, corrupted, channels={x["channel"] for x in ledger})
    assert sorted(f.merchant_ref for f in r.missing_at_provider) == sorted(record["drop"])
    assert sorted(f.merchant_ref for f in r.missing_in_ledger) == sorted(record["extra"])
    assert sorted((f.merchant_ref, f.ledger_amount_minor, f.bill_amount_minor)
                  for f in r.amount_mismatch) == \
        sorted((a["merchant_ref"], a["from"], a["to"]) for a in record["amount"])
    assert sorted(f.merchant_ref for f in r.duplicates) == sorted(record["duplicate"])
    assert not r.status_mismatch and not r.unreconciled
    assert len(r.discrepancies) == sum(counts)


# ----------------------------------------------------------------------------------
# lanecore recon
# ----------------------------------------------------------------------------------

def _ledger_day(path, date: str):
    """A ledger database with charges paid on ``date``; returns it closed."""
    noon = datetime.strptime(date, "%Y-%m-%d").replace(
        tzinfo=timezone.utc).timestamp() + 12 * 3600
    clock = iter(noon + i for i in range(1000))
    led = Ledger.open(path, clock=lambda: next(clock))
    for i, (channel, amount, final) in enumerate([
            ("wechat", 1000, "paid"), ("wechat", 2500, "paid"), ("alipay", 700, "paid"),
            ("alipay", 300, "failed"), ("cash", 5000, "paid")]):
        c, _ = led.create(f"ORD{i}", 1, amount, "CNY",
                          "cash" if channel == "cash" else "auth_code", channel, "T1")
        led.move(c.merchant_ref, "sent")
        led.move(c.merchant_ref, final)
    led.close()


def _write_bill(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=recon.BILL_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow(r.to_csv())


def test_cli_recon_summary_csv_and_exit_codes(tmp_path, capsys):
    date = "2026-03-04"
    _ledger_day(tmp_path / "ledger.sqlite", date)
    bills = tmp_path / "bills"
    bills.mkdir()
    _write_bill(bills / f"wechat-{date}.csv", [line("ORD0-1", 1000, fee=6),
                                               line("ORD1-1", 2500, fee=15)])
    _write_bill(bills / f"alipay-{date}.csv", [line("ORD2-1", 700, channel="alipay")])
    _write_bill(bills / "wechat-2026-03-05.csv", [line("ORD9-1", 1)])   # another day
    args = ["recon", "--date", date, "--ledger", str(tmp_path / "ledger.sqlite"),
            "--bills", str(bills)]
    # Cash has no provider bill: reported as not reconciled, so not clean.
    assert main(args + ["--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["counts"]["matched"] == 3 and not out["discrepancies"]
    assert out["unreconciled"] == {"cash": 1}
    assert out["totals"]["wechat"]["net_minor"] == 3500 - 21

    _write_bill(bills / f"cash-{date}.csv", [line("ORD4-1", 5000, channel="cash")])
    assert main(args) == 0
    assert "clean" in capsys.readouterr().out

    _write_bill(bills / f"wechat-{date}.csv", [line("ORD0-1", 1001), line("X-1", 5)])
    assert main(args + ["--out", str(tmp_path / "found.csv")]) == 1
    text = capsys.readouterr().out
    assert "amount_mismatch" in text and "missing_at_provider" in text \
        and "missing_in_ledger" in text
    with open(tmp_path / "found.csv", newline="") as fh:
        found = {(r["finding"], r["merchant_ref"]) for r in csv.DictReader(fh)}
    assert {("amount_mismatch", "ORD0-1"), ("missing_in_ledger", "X-1"),
            ("missing_at_provider", "ORD1-1"), ("matched", "ORD2-1")} <= found

    assert main(["recon", "--date", "2026-01-01", "--ledger", str(tmp_path / "ledger.sqlite"),
                 "--bills", str(bills)]) == 2
    assert "NO_BILL" in capsys.readouterr().err
    assert main(["recon", "--date", "04/03/2026", "--ledger", "x", "--bills", "y"]) == 2
    assert "BAD_DATE" in capsys.readouterr().err
