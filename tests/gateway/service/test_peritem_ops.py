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
