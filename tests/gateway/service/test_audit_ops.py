"""The handheld audit queue and the alarm history at the verification service:
``audit.decide`` / ``audit.get`` / ``audit.list`` / ``audit.record``, ``alarm.list``
and ``alarm.resolve``'s ``finding`` (docs/protocol.md), answered by a Service in this
process as each role's identity, over a store with a generated catalogue."""

from __future__ import annotations

import itertools
import random
import sqlite3

import pytest
from storefix import stock_store

from lanecore.gateway.net.identity import Principal
from lanecore.gateway.service import Service

HANDHELD = Principal("key:handheld", frozenset({"handheld"}))
ATTENDANT = Principal("key:console", frozenset({"attendant"}))
MANAGER = Principal("key:boss", frozenset({"manager"}))
PAYMENTS = Principal("key:payments", frozenset({"payments"}))
LANE = Principal("key:lane-A", frozenset({"lane"}))
_ids = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("audit-store")
    rows = stock_store(d, 300, seed=5)
    return d, [r for r in rows if not r["flags"] and r["unit_weight_g"]]


@pytest.fixture
def svc(store, tmp_path):
    import shutil
    d = tmp_path / "data"
    shutil.copytree(store[0], d)
    events: list = []
    s = Service(d, store_risk="high", publish=lambda t, e: events.append((t, e)))
    s.events = events
    s.goods = store[1]
    yield s
    s.close()


def call(svc, who, op, **fields) -> dict:
    return svc.handle({"op": op, "id": f"t{next(_ids)}", **fields}, "test", who)


def ok(svc, who, op, **fields) -> dict:
    r = call(svc, who, op, **fields)
    assert r["ok"], r
    return r


def code(svc, who, op, **fields) -> str:
    r = call(svc, who, op, **fields)
    assert not r["ok"], r
    return r["error"]["code"]


def order(svc, n_lines: int = 5, *, paid: bool = True, void: bool = False) -> dict:
    """A handheld order of ``n_lines`` plain items (paid, unless told)."""
    goods = svc.goods[:n_lines + 1]
    b = ok(svc, HANDHELD, "basket.open", device="HH-01")["basket"]["basket_id"]
    ok(svc, HANDHELD, "basket.add", basket=b, scans=[{"code": g["gtin"]} for g in goods[:n_lines]])
    if void:      # scanned, then put back: a whole line gone
        ok(svc, HANDHELD, "basket.add", basket=b, scans=[{"code": goods[-1]["gtin"]}])
        ok(svc, HANDHELD, "basket.remove", basket=b, items=[{"gtin": goods[-1]["gtin"]}])
    o = ok(svc, HANDHELD, "basket.submit", basket=b)
    if paid:
        ok(svc, PAYMENTS, "order.status", order_no=o["order_no"], status="paid")
    return o


def distrusted(svc, shopper: str) -> str:
    """A shopper at the trust floor: every order of theirs is audited."""
    svc.audits.trust.note(shopper, "discrepancy", 2)
    return shopper


class CountingRng(random.Random):
    def __init__(self):
        super().__init__(7)
        self.draws = 0

    def random(self):
        self.draws += 1
        return super().random()


AUDIT_KEYS = {"order_no", "audit", "kind", "items", "reason", "probability", "state",
              "outcome", "finding", "found", "staff", "requested_at", "recorded_at"}


def test_decide_is_made_once_per_order_never_drawn_again(svc):
    svc.audit_rng = rng = CountingRng()
    o = order(svc)
    first = ok(svc, HANDHELD, "audit.decide", order_no=o["order_no"], shopper="anon-1")["audit"]
    assert AUDIT_KEYS <= set(first) and first["order_no"] == o["order_no"]
    assert first["state"] in ("none", "pending") and rng.draws == 1
    for _ in range(20):      # the shopper asks again (and again): the same answer
        again = ok(svc, HANDHELD, "audit.decide", order_no=o["order_no"].lower(),
                   shopper="anon-1")["audit"]
        assert again == first
    assert rng.draws == 1
    assert ok(svc, HANDHELD, "audit.get", order_no=o["order_no"])["audit"] == first


def test_decide_refuses_unpaid_and_unknown_orders_and_bad_shoppers(svc):
    o = order(svc, paid=False)
    assert code(svc, HANDHELD, "audit.decide", order_no=o["order_no"],
                shopper="anon-2") == "NOT_PAID"
    assert code(svc, HANDHELD, "audit.get", order_no=o["order_no"]) == "UNKNOWN_AUDIT"
    assert code(svc, HANDHELD, "audit.decide", order_no="NOPE-1",
                shopper="anon-2") == "UNKNOWN_ORDER"
    paid = order(svc)
    assert code(svc, HANDHELD, "audit.decide", order_no=paid["order_no"],
                shopper="not a shopper id") == "BAD_FIELD"
    assert code(svc, HANDHELD, "audit.get", order_no="nothing here") == "UNKNOWN_AUDIT"


def test_a_chosen_order_is_queued_recorded_and_moves_trust(svc):
    shopper = distrusted(svc, "8888000001")
    o = order(svc, 6)
    a = ok(svc, HANDHELD, "audit.decide", order_no=o["order_no"], shopper=shopper)["audit"]
    assert a["audit"] and a["state"] == "pending" and a["kind"] == "rescan"
    assert a["reason"] == "trust_floor" and a["probability"] == 1.0
    lines = {ln["line_no"]: ln for ln in o["lines"]}
    assert a["items"] and all(
        {"line", "gtin", "name", "qty"} == set(x) and lines[x["line"]]["gtin"] == x["gtin"]
        for x in a["items"])
    assert ("audit", {"requested": a}) in svc.events
    listed = ok(svc, ATTENDANT, "audit.list")
    assert [x["order_no"] for x in listed["audits"]] == [o["order_no"]]
    assert listed["stats"]["audits"] == 0
    before = svc.audits.trust.score(shopper)
    gtin = svc.goods[10]["gtin"]
    rec = ok(svc, ATTENDANT, "audit.record", order_no=o["order_no"], outcome="discrepancy",
             found=[{"gtin": gtin, "qty": 1}], finding="theft", staff="Ann")["audit"]
    assert rec["state"] == "done" and rec["outcome"] == "discrepancy"
    assert rec["finding"] == "theft" and rec["staff"] == "Ann"
    assert rec["principal"] == "key:console" and rec["recorded_at"] is not None
    assert rec["found"] == [{"gtin": gtin.zfill(14), "qty": 1}]
    assert svc.audits.trust.score(shopper) == pytest.approx(before * 0.5)
    assert ("audit", {"recorded": rec}) in svc.events
    assert ok(svc, ATTENDANT, "audit.list")["audits"] == []
    done = ok(svc, MANAGER, "audit.list", state="done", limit=5)
    assert done["audits"] == [rec] and done["stats"]["discrepancies"] == 1
    assert ok(svc, HANDHELD, "audit.get", order_no=o["order_no"])["audit"] == rec
    # the same terms again: the same record, trust moved once; other terms refused
    again = ok(svc, MANAGER, "audit.record", order_no=o["order_no"], outcome="discrepancy",
               found=[{"gtin": gtin, "qty": 1}], finding="theft", staff="Ann")["audit"]
    assert again == rec and svc.audits.trust.score(shopper) == pytest.approx(before * 0.5)
    assert code(svc, ATTENDANT, "audit.record", order_no=o["order_no"],
                outcome="discrepancy", found=[{"gtin": gtin, "qty": 1}],
                finding="mistake", staff="Ann") == "AUDIT_CONFLICT"
    assert code(svc, ATTENDANT, "audit.record", order_no=o["order_no"], outcome="clean",
                staff="Ann") == "AUDIT_CONFLICT"
    # a later decide of the same order answers the recorded audit
    assert ok(svc, HANDHELD, "audit.decide", order_no=o["order_no"],
              shopper=shopper)["audit"] == rec


def test_a_clean_audit_and_the_finding_rules(svc):
    shopper = distrusted(svc, "anon-3")
    o = order(svc, 2)
    a = ok(svc, HANDHELD, "audit.decide", order_no=o["order_no"], shopper=shopper)["audit"]
    assert a["kind"] == "visual" and a["items"] == []
    n = o["order_no"]
    gtin = svc.goods[0]["gtin"]
    assert code(svc, ATTENDANT, "audit.record", order_no=n, outcome="discrepancy",
                found=[{"gtin": gtin, "qty": 1}], staff="Ann") == "MISSING_FIELD"
    assert code(svc, ATTENDANT, "audit.record", order_no=n, outcome="clean",
                finding="mistake", staff="Ann") == "BAD_FIELD"
    assert code(svc, ATTENDANT, "audit.record", order_no=n, outcome="clean",
                found=[{"gtin": gtin, "qty": 1}], staff="Ann") == "BAD_FIELD"
    for bad in ([{"gtin": gtin}], [{"gtin": "12ab", "qty": 1}], [{"gtin": gtin, "qty": 0}],
                ["x"], [{"gtin": gtin, "qty": 1, "more": 1}]):
        assert code(svc, ATTENDANT, "audit.record", order_no=n, outcome="discrepancy",
                    found=bad, finding="mistake", staff="Ann") == "BAD_FIELD", bad
    assert code(svc, ATTENDANT, "audit.record", order_no=n, outcome="clean",
                finding="false_alarm", staff="Ann") == "BAD_FIELD"
    before = svc.audits.trust.score(shopper)
    rec = ok(svc, ATTENDANT, "audit.record", order_no=n, outcome="clean",
             staff="Ann")["audit"]
    assert rec["outcome"] == "clean" and rec["finding"] is None and rec["found"] == []
    assert svc.audits.trust.score(shopper) > before


def test_never_decided_and_not_chosen_orders_cannot_be_recorded(svc):
    o = order(svc)
    assert code(svc, ATTENDANT, "audit.record", order_no=o["order_no"], outcome="clean",
                staff="Ann") == "UNKNOWN_AUDIT"

    class Never(random.Random):
        def random(self):
            return 0.999999
    svc.audit_rng = Never()
    a = ok(svc, HANDHELD, "audit.decide", order_no=o["order_no"], shopper="anon-4")["audit"]
    assert a["audit"] is False and a["state"] == "none" and a["kind"] is None
    assert a["reason"] == "not_selected"
    assert code(svc, ATTENDANT, "audit.record", order_no=o["order_no"], outcome="clean",
                staff="Ann") == "NOT_AUDITED"
    assert not any(t == "audit" for t, _ in svc.events)      # nothing queued


def test_voids_come_from_the_basket_the_service_saw(svc):
    o = order(svc, 3, void=True)
    ok(svc, HANDHELD, "audit.decide", order_no=o["order_no"], shopper="anon-5")
    t = svc.audits.trust.get("anon-5")
    assert t["voids"] == 1 and t["score"] == pytest.approx(0.98)
    o = order(svc, 3)
    ok(svc, HANDHELD, "audit.decide", order_no=o["order_no"], shopper="anon-6")
    assert svc.audits.trust.get("anon-6")["voids"] == 0


def test_who_may_call_the_audit_ops(svc):
    o = order(svc)
    n = o["order_no"]
    for who, op, fields in (
            (HANDHELD, "audit.list", {}),
            (HANDHELD, "audit.record", {"order_no": n, "outcome": "clean", "staff": "x"}),
            (HANDHELD, "alarm.list", {}),
            (ATTENDANT, "audit.decide", {"order_no": n, "shopper": "anon-7"}),
            (MANAGER, "audit.decide", {"order_no": n, "shopper": "anon-7"}),
            (LANE, "audit.get", {"order_no": n}),
            (PAYMENTS, "audit.list", {})):
        assert code(svc, who, op, **fields) == "FORBIDDEN", (who.id, op)


def test_alarm_list_and_resolve_with_a_finding(svc):
    o = order(svc, 2)
    expected = sum(float(svc.goods[i]["unit_weight_g"]) for i in range(2))
    v_ok = ok(svc, LANE, "verify.order", gate="EXIT-A", order_no=o["order_no"],
              measured_g=expected)
    assert v_ok["verdict"] == "ok"
    v = ok(svc, LANE, "verify.order", gate="EXIT-A", order_no=o["order_no"],
           measured_g=expected + 900)
    assert v["verdict"] == "over"
    ok(svc, LANE, "device.event", lane="EXIT-A", device="eas_gate", kind="alarm",
       code="TAG_ACTIVE", message="aisle 3")
    ok(svc, LANE, "device.event", lane="EXIT-A", device="scale", kind="fault")
    r = ok(svc, ATTENDANT, "alarm.resolve", lane="EXIT-A", order_no=o["order_no"],
           action="ack", staff="Ann", finding="theft")["resolved"]
    assert r["finding"] == "theft" and r["principal"] == "key:console"
    assert code(svc, ATTENDANT, "alarm.resolve", lane="EXIT-A", order_no=o["order_no"],
                action="ack", staff="Ann", finding="fraud") == "BAD_FIELD"
    got = ok(svc, MANAGER, "alarm.list")
    assert len(got["alarms"]) == 1
    a = got["alarms"][0]
    assert {"verdict_id", "at", "lane", "order_no", "verdict", "measured_g", "expected_g",
            "band_g", "z", "explanations", "actions"} == set(a)
    assert a["verdict"] == "over" and a["lane"] == "EXIT-A" and a["order_no"] == o["order_no"]
    assert isinstance(a["explanations"], list) and a["actions"] == [r]
    assert [(d["device"], d["code"]) for d in got["device_alarms"]] == [
        ("eas_gate", "TAG_ACTIVE")]
    assert set(got["device_alarms"][0]) == {"event_id", "at", "lane", "device", "kind",
                                            "code", "message"}
    later = ok(svc, ATTENDANT, "alarm.list", since=a["at"] + 3600, limit=1)
    assert later == {"ok": True, "id": later["id"], "alarms": [], "device_alarms": []}
    assert code(svc, ATTENDANT, "alarm.list", limit=0) == "BAD_FIELD"


def test_findings_roll_up_by_day_and_source(svc):
    shopper = distrusted(svc, "anon-8")
    o = order(svc, 2)
    ok(svc, HANDHELD, "audit.decide", order_no=o["order_no"], shopper=shopper)
    ok(svc, ATTENDANT, "audit.record", order_no=o["order_no"], outcome="discrepancy",
       found=[{"gtin": svc.goods[5]["gtin"], "qty": 2}], finding="theft", staff="Ann")
    for finding in ("false_alarm", "false_alarm", None, "mistake"):
        ok(svc, ATTENDANT, "alarm.resolve", lane="EXIT-A", order_no=o["order_no"],
           action="ack", staff="Ann", **({"finding": finding} if finding else {}))
    con = sqlite3.connect(svc.data_dir / "store.db")
    rows = sorted(con.execute("SELECT source, finding, n FROM ru_finding_day"))
    months = sorted(con.execute("SELECT source, finding, n FROM ru_finding_month"))
    con.close()
    assert rows == months == [("audit", "theft", 1), ("exit", "false_alarm", 2),
                              ("exit", "mistake", 1)]
