"""The simulated store of `lanecore demo` (gateway/store.py): real processes on ipc
sockets — the verification service, provider simulators, the payment gateway with
authenticated POS terminals, the coupon gateway — and every journey at once, with
thefts and mistakes injected; the summary must reconcile."""

from __future__ import annotations

import json
import sqlite3

import pytest

from lanecore.gateway.store import Store, StoreSpec, checks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("store")
    spec = StoreSpec(shoppers=60, seed=11, theft_rate=0.3, mistake_rate=0.25, concurrency=6)
    out = open(d / "report.txt", "w")
    with Store(d / "store", spec, out=out) as store:
        store.start()
        summary = store.run()
    out.close()
    return store, summary


def test_every_journey_ran_and_the_summary_reconciles(run):
    store, s = run
    assert checks(s) == [], checks(s)
    assert set(s["journeys"]) == {"handheld", "kiosk", "coupons", "pos", "till", "unattended",
                                  "abandon"}
    assert s["journey_errors"] == 0
    assert s["paid"] == s["exited"] + s["inside"]
    assert s["orders"] == s["paid"] + s["payments_failed"]
    assert sum(v["count"] for v in s["payments_by_channel"].values()) == s["paid"]
    assert {"wechat", "alipay", "card", "cash", "display_qr"} <= set(s["payments_by_channel"])
    assert s["abandoned"] == s["goodbyes"] == s["journeys"]["abandon"]


def test_thefts_mistakes_and_honest_shoppers_at_the_lanes(run):
    store, s = run
    assert s["injected_thefts"] >= 5 and s["mistakes"] >= 2 and s["honest_exits"] >= 5
    assert s["thefts_visible_alarmed"] == s["thefts_visible"] > 0
    assert s["alarms"]["eas"] >= 1                       # a tagged item walked out
    assert s["honest_alarmed"] <= s["honest_alarms_bound"]
    assert s["inside"] == s["thefts_alarmed"] + s["thefts_caught_by_audit"]   # held: thieves
    # every alarm reached the service: a verdict row per exit, a device event per EAS
    con = sqlite3.connect(store.dir / "store" / "store.db")
    verdicts = dict(con.execute("SELECT verdict, COUNT(*) FROM verdicts GROUP BY verdict"))
    eas = con.execute("SELECT COUNT(*) FROM device_events WHERE kind = 'alarm'").fetchone()[0]
    statuses = dict(con.execute("SELECT status, COUNT(*) FROM orders GROUP BY status"))
    con.close()
    assert verdicts.get("over", 0) == s["alarms"]["weight_over"]
    assert verdicts.get("short", 0) == s["alarms"]["weight_short"]
    assert eas == s["alarms"]["eas"]
    exits_at_lanes = s["journeys"]["handheld"] + s["journeys"]["kiosk"]
    assert statuses.get("exited", 0) + statuses.get("paid", 0) == exits_at_lanes


def test_the_books_balance_and_receipts_went_out(run):
    store, s = run
    b = s["books"]
    assert b["recon_clean"] and b["ledger_paid_minor"] == b["provider_paid_minor"] | {
        "cash": b["ledger_paid_minor"].get("cash", 0)}
    sms = [json.loads(x) for x in (store.dir / "sms.jsonl").read_text().splitlines()]
    assert len(sms) == s["sms_receipts"] > 0
    for m in sms:                           # one per paid POS order, to its phone
        # receipt-<merchant_ref>-<phone digits>; merchant_ref = <order_no>-<attempt>
        order_no = m["msg_ref"].split("-", 1)[1].rsplit("-", 2)[0]
        assert f"Order {order_no}" in m["text"] and m["phone"].startswith("+4477009")
        assert m["segments"] == 1 and "Verify " in m["text"]
    assert s["receipts_printed"] >= s["journeys"]["kiosk"]
    # the kiosks' receipts came out of their printers (simulators on ptys): one cut
    # each, with the order's total on paper
    cuts = sum(sim.printed.cuts for sim, _ in store.printer.values())
    assert cuts == s["journeys"]["kiosk"] > 0
    # the paid tags were each deactivated over the deactivator's serial line
    assert s["tags_deactivated"] > 0 and s["tags_not_deactivated"] == 0
    assert s["gate_silent"] == 0
    assert s["coupons_redeemed"] > 0 and s["coupon_savings_minor"] > 0
    assert s["latency_ms"]["n"] > 500 and 0 < s["latency_ms"]["p50"] <= s["latency_ms"]["p99"]


def test_the_till_display_and_the_unattended_exit_passes(run):
    store, s = run
    # seed 002: every till sale went over the serial line and is in the store database
    con = sqlite3.connect(store.dir / "store" / "store.db")
    till = con.execute("SELECT status, COUNT(*), SUM(amount_minor) FROM till_transactions "
                       "GROUP BY status").fetchall()
    con.close()
    assert till == [("paid", s["till_sales"], s["payments_by_channel"]["display_qr"][
        "amount_minor"])] and s["till_sales"] == s["journeys"]["till"]
    # seed 003: each paid list opened the gate once; a second try was refused
    assert s["exit_passes"] == s["journeys"]["unattended"] > 0
    assert s["exit_pass_reused"] == 0 and s["exit_pass_reuse_refused"] >= 1
    assert s["venue_extra_checks"] >= 1
    con = sqlite3.connect(store.dir / "venue.db")
    assert con.execute("SELECT COUNT(*) FROM venue_settlements WHERE status = 'paid'"
                       ).fetchone()[0] == s["exit_passes"]
    con.close()
    # the handhelds all came back, none left outside with a basket
    fleet = store.handhelds.status()
    assert fleet["in_use"] == 0 and fleet["total"] == 40
