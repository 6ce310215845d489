"""Per-item exit mode at the verification service: ``verify.step`` (each settled step's
verdict as it happens) and ``verify.clear`` (the order's, recorded like verify.order's),
over a store with a generated catalogue, answered by a Service in this process
(docs/protocol.md "Per-item exit mode")."""

from __future__ import annotations

import itertools
import shutil

import pytest
from storefix import stock_store

from lanecore.gateway.net.identity import Principal
from lanecore.gateway.service import Service

HANDHELD = Principal("key:handheld", frozenset({"handheld"}))
PAYMENTS = Principal("key:payments", frozenset({"payments"}))
LANE = Principal("key:lane-A", frozenset({"lane"}))
ATTENDANT = Principal("key:console", frozenset({"attendant"}))
_ids = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("peritem-store")
    rows = stock_store(d, 300, seed=5)
    goods = sorted((r for r in rows if not r["flags"] and r["unit_weight_g"]
                    and 100 <= float(r["unit_weight_g"]) <= 3000),
                   key=lambda r: float(r["unit_weight_g"]))
    # four items whose weights are far apart (each > 1.6× the one before): no two of
    # them, nor any pair's sum, can be taken for another
    picked = [goods[0]]
    for r in goods:
        if float(r["unit_weight_g"]) > 1.6 * float(picked[-1]["unit_weight_g"]):
            picked.append(r)
    assert len(picked) >= 4, [g["unit_weight_g"] for g in goods]
    return d, picked[:4]


@pytest.fixture
def svc(store, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(store[0], d)
    events: list = []
    s = Service(d, publish=lambda t, e: events.append((t, e)))
    s.events, s.goods, s.dir = events, store[1], d
    yield s
    s.close()


def call(svc, who, op, **fields) -> dict:
    return svc.handle({"op": op, "id": f"t{next(_ids)}", **fields}, "test", who)


def ok(svc, who, op, **fields) -> dict:
    r = call(svc, who, op, **fields)
    assert r["ok"], r
    return r


def paid_order(svc, goods) -> str:
    b = ok(svc, HANDHELD, "basket.open", device="HH-01")["basket"]["basket_id"]
    ok(svc, HANDHELD, "basket.add", basket=b, scans=[{"code": g["gtin"]} for g in goods])
    o = ok(svc, HANDHELD, "basket.submit", basket=b)["order_no"]
    ok(svc, PAYMENTS, "order.status", order_no=o, status="paid")
    return o


def step(svc, order_no, seq, delta_g, lane="EXIT-A") -> dict:
    return ok(svc, LANE, "verify.step", lane=lane, order_no=order_no, seq=seq,
              delta_g=float(delta_g), sigma_g=1.0)["item"]


def w(g) -> float:
    return float(g["unit_weight_g"])


def gtin(g) -> str:
    """The catalogue's GTIN-14 of a stocked item (its code may be a GTIN-13)."""
    return g["gtin"].zfill(14)


def test_an_honest_order_item_by_item(svc):
    a, b, c, _ = svc.goods
    o = paid_order(svc, [a, b, c])
    items = [step(svc, o, i, w(g)) for i, g in enumerate([b, a, c])]
    assert [(v["kind"], v["gtins"]) for v in items] == [
        ("ok", [gtin(b)]), ("ok", [gtin(a)]), ("ok", [gtin(c)])]
    v = ok(svc, LANE, "verify.clear", lane="EXIT-A", order_no=o)
    assert (v["verdict"], v["mode"], v["explanations"]) == ("ok", "per_item", [])
    assert v["order_status"] == "paid" and len(v["items"]) == 3
    assert v["measured_g"] == pytest.approx(w(a) + w(b) + w(c), abs=0.1)
    topics = [t for t, _ in svc.events]
    assert topics.count("verdict") == 4 and "alarm" not in topics
    # recorded as a verdict, as verify.order's are
    (n,) = svc.con.execute("SELECT COUNT(*) FROM verdicts WHERE order_no = ? AND "
                           "verdict = 'ok'", (o,)).fetchone()
    assert n == 1


def test_a_missing_item_is_named(svc):
    a, b, c, _ = svc.goods
    o = paid_order(svc, [a, b, c])
    step(svc, o, 0, w(a))
    step(svc, o, 1, w(c))
    v = ok(svc, LANE, "verify.clear", lane="EXIT-A", order_no=o)
    assert v["verdict"] == "short"
    assert v["explanations"][0]["kind"] == "missing"
    assert v["explanations"][0]["gtin"] == gtin(b)
    assert ("alarm", "short") in [(t, e.get("verdict")) for t, e in svc.events]


def test_an_unscanned_item_alarms_at_once_with_its_candidates(svc):
    a, b, _, d = svc.goods
    o = paid_order(svc, [a, b])
    step(svc, o, 0, w(a))
    extra = step(svc, o, 1, w(d))
    assert extra["kind"] == "unscanned"
    assert gtin(d) in [gtin(c) for c in extra["candidates"]]
    assert [e["item"]["kind"] for t, e in svc.events if t == "alarm"] == ["unscanned"]
    step(svc, o, 2, w(b))
    v = ok(svc, LANE, "verify.clear", lane="EXIT-A", order_no=o)
    assert v["verdict"] == "over" and v["explanations"][0]["kind"] == "unscanned"


def test_two_at_once_and_a_lifted_item_are_not_alarmed(svc):
    a, b, c, _ = svc.goods
    o = paid_order(svc, [a, b, c])
    assert step(svc, o, 0, w(a) + w(c))["kind"] == "merged"
    assert step(svc, o, 1, w(b))["kind"] == "ok"
    assert step(svc, o, 2, -w(b))["kind"] == "lifted"
    assert step(svc, o, 3, w(b))["kind"] == "ok"
    v = ok(svc, LANE, "verify.clear", lane="EXIT-A", order_no=o)
    assert v["verdict"] == "ok", v
    assert not [t for t, _ in svc.events if t == "alarm"]


def test_steps_are_numbered_retried_and_survive_a_restart(svc):
    a, b, c, _ = svc.goods
    o = paid_order(svc, [a, b, c])
    first = step(svc, o, 0, w(a))
    assert step(svc, o, 0, w(a)) == first                  # a retry: the stored verdict
    r = call(svc, LANE, "verify.step", lane="EXIT-A", order_no=o, seq=2, delta_g=w(b),
             sigma_g=1.0)
    assert r["error"]["code"] == "BAD_SEQ"
    step(svc, o, 1, w(b))
    svc.close()
    again = Service(svc.dir)                # the steps so far come back from item_steps
    try:
        step(again, o, 2, w(c))
        v = ok(again, LANE, "verify.clear", lane="EXIT-A", order_no=o)
        assert v["verdict"] == "ok" and len(v["items"]) == 3
    finally:
        again.close()


def test_who_may_call_and_what_is_refused(svc):
    a, *_ = svc.goods
    o = paid_order(svc, [a])
    r = call(svc, ATTENDANT, "verify.step", lane="EXIT-A", order_no=o, seq=0,
             delta_g=w(a), sigma_g=1.0)
    assert r["error"]["code"] == "FORBIDDEN"
    r = call(svc, LANE, "verify.step", lane="EXIT-A", order_no="NOPE", seq=0,
             delta_g=w(a), sigma_g=1.0)
    assert r["error"]["code"] == "UNKNOWN_ORDER"
    r = call(svc, LANE, "verify.step", lane="EXIT-A", order_no=o, seq=0, delta_g=0.0,
             sigma_g=1.0)
    assert r["error"]["code"] == "BAD_STEP"
    r = call(svc, LANE, "verify.step", lane="EXIT-A", order_no=o, seq=0, delta_g=w(a),
             sigma_g=-1.0)
    assert r["error"]["code"] == "BAD_FIELD"


def test_an_order_whose_whole_is_outside_its_band_is_never_ok(svc):
    """Two paid items and an unpaid third of a third their weight put down together
    as one step: whatever the matching makes of that step, the steps' sum is weighed
    as a whole basket too, and it is over."""
    a, b, c, _ = svc.goods
    o = paid_order(svc, [a, b, c])
    step(svc, o, 0, w(a) + w(c) + w(a) / 3)
    step(svc, o, 1, w(b))
    v = ok(svc, LANE, "verify.clear", lane="EXIT-A", order_no=o)
    assert v["verdict"] == "over", v
    assert v["band_g"] > 0 and v["z"] > 3, v
    assert v["measured_g"] == pytest.approx(w(a) * 4 / 3 + w(b) + w(c), abs=0.1)


# ----------------------------------------------------------------------------------
# kiosk bagging-scale mode: bag.event, bag.override

KIOSK = Principal("key:kiosk-B1", frozenset({"kiosk"}))


def bag(svc, session, seq, kind, t_s, **fields) -> dict:
    return ok(svc, KIOSK, "bag.event", kiosk="KIOSK-B1", session=session, seq=seq,
              kind=kind, t_s=float(t_s), **fields)


def test_kiosk_scans_and_bags_honestly(svc):
    a, b, *_ = svc.goods
    r = bag(svc, "S1", 0, "scan", 10.0, gtin=a["gtin"])
    assert r["scan"]["kind"] == "await" and r["scan"]["gtin"] == gtin(a)
    r = bag(svc, "S1", 1, "delta", 11.5, delta_g=w(a), sigma_g=0.8)
    assert (r["delta"]["kind"], r["delta"]["gtins"]) == ("ok", [gtin(a)])
    bag(svc, "S1", 2, "scan", 13.0, gtin=b["gtin"])
    assert bag(svc, "S1", 3, "delta", 14.0, delta_g=w(b), sigma_g=0.8)["delta"]["kind"] == "ok"
    r = bag(svc, "S1", 4, "finish", 20.0)
    assert r["alarms"] == [] and r["open"] == []
    assert not [t for t, _ in svc.events if t == "alarm"]


def test_unexpected_item_and_item_not_placed_and_the_override(svc):
    a, b, _, d = svc.goods
    bag(svc, "S2", 0, "scan", 10.0, gtin=a["gtin"])
    r = bag(svc, "S2", 1, "delta", 11.0, delta_g=w(d), sigma_g=0.8)   # not what was scanned
    assert r["delta"]["kind"] == "unexpected"
    (alarm,) = r["alarms"]
    assert alarm["kind"] == "unexpected"
    assert gtin(d) in [c["gtin"] for c in alarm["explanation"]["candidates"]]
    assert [e["alarm"]["kind"] for t, e in svc.events if t == "alarm"] == ["unexpected"]
    bag(svc, "S2", 2, "scan", 12.0, gtin=b["gtin"])
    r = bag(svc, "S2", 3, "tick", 40.0)                  # nothing placed for b in time
    assert {x["kind"] for x in r["alarms"]} >= {"not_placed"}
    not_placed = [x for x in r["alarms"] if x["kind"] == "not_placed"]
    assert any(x["explanation"]["gtin"] == gtin(b) for x in not_placed), not_placed
    # the attendant: the unexpected delta was the scanned item a after all → learned
    o = ok(svc, ATTENDANT, "bag.override", kiosk="KIOSK-B1", session="S2",
           alarm=alarm["no"], gtin=a["gtin"], staff="Ann")
    assert o["gtin"] == gtin(a) and o["learning"]["gtin"] == gtin(a)
    assert alarm["no"] not in [x["no"] for x in o["open"]]
    r = call(svc, ATTENDANT, "bag.override", kiosk="KIOSK-B1", session="S2",
             alarm=alarm["no"], staff="Ann")
    assert r["error"]["code"] == "BAD_ALARM"            # accepted once


def test_kiosk_events_are_numbered_and_survive_a_restart(svc):
    a, b, *_ = svc.goods
    first = bag(svc, "S3", 0, "scan", 10.0, gtin=a["gtin"])
    again0 = bag(svc, "S3", 0, "scan", 10.0, gtin=a["gtin"])           # a retry
    assert {**again0, "id": None} == {**first, "id": None}
    r = call(svc, KIOSK, "bag.event", kiosk="KIOSK-B1", session="S3", seq=5, kind="tick",
             t_s=11.0)
    assert r["error"]["code"] == "BAD_SEQ"
    r = call(svc, KIOSK, "bag.event", kiosk="KIOSK-B1", session="S3", seq=1, kind="scan",
             t_s=11.0)
    assert r["error"]["code"] == "MISSING_FIELD"
    bag(svc, "S3", 1, "delta", 11.0, delta_g=w(a), sigma_g=0.8)
    bag(svc, "S3", 2, "scan", 12.0, gtin=b["gtin"])
    svc.close()
    again = Service(svc.dir)        # the session comes back from bag_events
    try:
        r = bag(again, "S3", 3, "delta", 13.0, delta_g=w(b), sigma_g=0.8)
        assert r["delta"]["kind"] == "ok" and r["delta"]["gtins"] == [gtin(b)]
        assert bag(again, "S3", 4, "finish", 14.0)["open"] == []
    finally:
        again.close()


def test_who_may_call_the_bagging_ops(svc):
    a, *_ = svc.goods
    r = call(svc, LANE, "bag.event", kiosk="KIOSK-B1", session="S4", seq=0, kind="scan",
             t_s=1.0, gtin=a["gtin"])
    assert r["error"]["code"] == "FORBIDDEN"
    r = call(svc, KIOSK, "bag.override", kiosk="KIOSK-B1", session="S4", alarm=0,
             staff="Ann")
    assert r["error"]["code"] == "FORBIDDEN"


def test_a_weight_no_item_comes_near_is_never_a_paid_item(svc):
    """A step or a delta far beyond every catalogue item (a 40 kg sack on the belt, in
    the bag) is unscanned / unexpected, not the scanned item's far tail."""
    a, *_ = svc.goods
    o = paid_order(svc, [a])
    assert step(svc, o, 0, 40_000.0)["kind"] == "unscanned"
    bag(svc, "S5", 0, "scan", 1.0, gtin=a["gtin"])
    r = bag(svc, "S5", 1, "delta", 2.0, delta_g=40_000.0, sigma_g=1.0)
    assert r["delta"]["kind"] == "unexpected" and r["alarms"][0]["kind"] == "unexpected"
