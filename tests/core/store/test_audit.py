"""Scan-and-go audits (core/store/audit.py): the probability curve, seeded decisions that
reproduce, k of n within its bounds, visual checks of small baskets, the audit rate
against its configured probability over 20,000 decisions, the trust formula, and the
audits table (idempotent by order number) with its effect on trust."""

from __future__ import annotations

import math
import random
import sqlite3
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lanecore.core.store.audit import (DEFAULT_POLICY, SAP_GK_FALLBACK, AuditDecision,
                                       AuditError, AuditPolicy, Audits, TrustScore,
                                       audit_probability, decide, rescan_count,
                                       update_trust)
from lanecore.core.errors import LanecoreError

pytestmark = pytest.mark.kernel_free

T0 = 1_700_000_000.0


def order_of(n_lines: int, qty: int = 1) -> dict:
    """An order as BasketStore.submit returns it (only what decide reads matters)."""
    lines = [{"line_no": i + 1, "gtin": f"{i:014d}", "qty": qty} for i in range(n_lines)]
    return {"order_no": "HH07-231114-0001", "lines": lines, "n_items": n_lines * qty}


def code_of(fn, *args, **kw) -> AuditError:
    with pytest.raises(AuditError) as info:
        fn(*args, **kw)
    assert isinstance(info.value, LanecoreError)
    return info.value


@pytest.fixture
def con():
    c = sqlite3.connect(":memory:", isolation_level=None)
    yield c
    c.close()


# --------------------------------------------------------------------------------------
# The curve
# --------------------------------------------------------------------------------------

def test_full_trust_is_audited_at_the_stores_rate():
    assert audit_probability(1.0, "low") == 0.05
    assert audit_probability(1.0, "medium") == 0.10
    assert audit_probability(1.0, "high") == 0.15
    assert audit_probability(1.0, None) == 0.05        # SAP/GK offline fallback


def test_at_or_below_the_floor_every_order_is_audited():
    p = DEFAULT_POLICY
    for t in (0.0, p.trust_floor / 2, p.trust_floor):
        assert audit_probability(t, "low") == 1.0
    assert audit_probability(p.trust_floor + 1e-9, "low") == pytest.approx(1.0)


def test_the_curve_between():
    # t = 0.625 is half-way from the floor 0.25 to 1: r + (1 − r)·0.5²
    assert audit_probability(0.625, "medium") == pytest.approx(0.10 + 0.90 * 0.25)
    linear = AuditPolicy(curve_power=1.0)
    assert audit_probability(0.625, "medium", linear) == pytest.approx(0.10 + 0.90 * 0.5)


@given(st.floats(0, 1), st.floats(0, 1), st.sampled_from(["low", "medium", "high", None]))
def test_probability_never_falls_as_trust_falls(a, b, risk):
    lo, hi = sorted((a, b))
    p_lo, p_hi = audit_probability(lo, risk), audit_probability(hi, risk)
    assert 0 <= p_hi <= p_lo <= 1


def test_bad_trust_and_risk():
    for t in (-0.01, 1.01, float("nan"), "1", None, True):
        assert code_of(audit_probability, t, "low").code == "BAD_TRUST"
    e = code_of(audit_probability, 1.0, "extreme")
    assert e.code == "BAD_RISK" and e.details == {"store_risk": "extreme"}


@pytest.mark.parametrize("kw", [
    {"base_rate": 1.5}, {"risk_rates": {}}, {"risk_rates": {"low": -0.1}},
    {"rescan_share": 2}, {"min_items": 0}, {"max_items": 0}, {"min_items": 3, "max_items": 2},
    {"small_basket_items": -1}, {"trust_floor": 1.0}, {"curve_power": 0},
    {"void_penalty": 1.1}, {"clean_gain": -0.1}, {"min_items": 1.5},
])
def test_bad_policy(kw):
    assert code_of(AuditPolicy, **kw).code == "BAD_POLICY"


def test_policy_keeps_its_own_copy_of_the_rates():
    rates = {"low": 0.05}
    p = AuditPolicy(risk_rates=rates)
    rates["low"] = 0.9
    assert p.rate("low") == 0.05


# --------------------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------------------

def test_decisions_reproduce_with_a_seed():
    orders = [order_of(n) for n in range(1, 40)]

    def run(seed):
        rng = random.Random(seed)
        return [decide(o, shopper_trust=0.5, store_risk="high", rng=rng) for o in orders]

    assert run(7) == run(7)
    assert run(7) != run(8)
    assert any(d.kind == "rescan" for d in run(7))


def test_one_draw_per_decision_then_the_sample():
    rng, twin = random.Random(3), random.Random(3)
    d = decide(order_of(20), shopper_trust=0.0, store_risk="low", rng=rng)
    assert d.audit and d.kind == "rescan" and d.reason == "trust_floor"
    twin.random()
    assert d.items == sorted(twin.sample(range(20), 6))
    assert rng.random() == twin.random()                 # the streams stay aligned
    rng, twin = random.Random(4), random.Random(4)
    d = decide(order_of(20), shopper_trust=1.0, store_risk="low", rng=rng)
    assert not d.audit and twin.random() >= 0.05
    assert rng.getstate() == twin.getstate()            # not chosen: exactly one draw


@pytest.mark.parametrize("n, k", [(1, 1), (2, 1), (3, 1), (4, 2), (7, 3), (10, 3),
                                  (11, 4), (20, 6), (30, 9), (33, 10), (34, 10),
                                  (500, 10)])
def test_rescan_count_is_30_percent_within_1_and_10(n, k):
    assert rescan_count(n) == k


def test_sap_gk_fallback_rescans_half_min_1_max_5():
    assert [rescan_count(n, SAP_GK_FALLBACK) for n in (1, 2, 3, 5, 9, 10, 11, 40)] == \
        [1, 1, 2, 3, 5, 5, 5, 5]
    assert audit_probability(1.0, None, SAP_GK_FALLBACK) == 0.05
    d = decide(order_of(2), shopper_trust=0.0, store_risk=None, rng=random.Random(1),
               policy=SAP_GK_FALLBACK)
    assert d.kind == "rescan" and len(d.items) == 1    # no visual checks in this policy


@given(st.integers(0, 600), st.floats(0, 1), st.integers(1, 20), st.integers(0, 30))
def test_rescan_count_bounds(n, share, lo, extra):
    p = AuditPolicy(rescan_share=share, min_items=lo, max_items=lo + extra)
    k = rescan_count(n, p)
    if n == 0:
        assert k == 0
    else:
        assert 1 <= k <= n
        assert k <= p.max_items and (k >= p.min_items or k == n)
        assert k >= min(n, p.min_items, math.ceil(share * n - 1e-6))


@given(st.integers(4, 120), st.integers(0, 2 ** 32 - 1))
def test_rescanned_lines_are_k_distinct_lines_of_the_order(n, seed):
    d = decide(order_of(n), shopper_trust=0.0, store_risk="medium", rng=random.Random(seed))
    assert d.audit and d.kind == "rescan"
    assert len(d.items) == rescan_count(n) == len(set(d.items))
    assert d.items == sorted(d.items) and all(0 <= i < n for i in d.items)


def test_small_baskets_get_a_visual_check():
    rng = random.Random(1)
    for order in (order_of(1), order_of(3), order_of(1, qty=3),
                  {"lines": [{"qty": 2}, {"qty": 1}]}):
        d = decide(order, shopper_trust=0.0, store_risk="low", rng=rng)
        assert (d.audit, d.kind, d.items) == (True, "visual", [])
    # four items on one line is no longer small: one line rescanned
    d = decide(order_of(1, qty=4), shopper_trust=0.0, store_risk="low", rng=rng)
    assert (d.kind, d.items) == ("rescan", [0])


def test_not_chosen_and_empty_orders():
    d = decide(order_of(5), shopper_trust=1.0, store_risk="low",
               rng=random.Random(0))              # first draw 0.844 > 0.05
    assert d == AuditDecision(False, "none", [], "not_selected", 0.05)
    d = decide({"lines": []}, shopper_trust=0.0, store_risk="low", rng=random.Random(0))
    assert (d.audit, d.kind, d.reason) == (False, "none", "empty_order")


def test_bad_orders_and_rng():
    rng = random.Random(0)
    for order in (None, "lines", {"lines": "abc"}, {"lines": [{"qty": 0}]},
                  {"lines": [{"qty": 1}], "n_items": -1}, [{"qty": "2"}]):
        assert code_of(decide, order, shopper_trust=1, store_risk="low",
                       rng=rng).code == "BAD_ORDER"
    assert code_of(decide, order_of(3), shopper_trust=1, store_risk="low",
                   rng=None).code == "BAD_REQUEST"


def test_decision_dict_round_trip():
    d = decide(order_of(12), shopper_trust=0.1, store_risk="high", rng=random.Random(5))
    assert AuditDecision.from_dict(d.to_dict()) == d
    assert code_of(AuditDecision.from_dict, {"audit": True}).code == "BAD_REQUEST"
    bad = {**d.to_dict(), "kind": "none"}
    assert code_of(AuditDecision.from_dict, bad).code == "BAD_REQUEST"


@pytest.mark.parametrize("trust", [1.0, 0.8, 0.5, 0.3])
def test_audit_rate_matches_the_configured_probability(trust):
    """20,000 seeded decisions: the audit rate is within 4 standard errors of p."""
    n = 20_000
    p = audit_probability(trust, "medium")
    rng = random.Random(20_000 + int(trust * 100))
    order = order_of(12)
    audited = sum(decide(order, shopper_trust=trust, store_risk="medium", rng=rng).audit
                  for _ in range(n))
    se = math.sqrt(p * (1 - p) / n)
    assert abs(audited / n - p) <= 4 * se, (audited / n, p, se)


def test_every_line_is_equally_likely_to_be_rescanned():
    n_lines, runs = 10, 6_000
    rng = random.Random(11)
    seen = Counter()
    for _ in range(runs):
        seen.update(decide(order_of(n_lines), shopper_trust=0.0, store_risk="low",
                           rng=rng).items)
    q = rescan_count(n_lines) / n_lines             # 3 of 10
    se = math.sqrt(q * (1 - q) / runs)
    for i in range(n_lines):
        assert abs(seen[i] / runs - q) <= 4 * se


# --------------------------------------------------------------------------------------
# Trust
# --------------------------------------------------------------------------------------

def test_trust_formula():
    assert update_trust(1.0, "void") == pytest.approx(0.98)
    assert update_trust(1.0, "void", 3) == pytest.approx(0.98 ** 3)
    assert update_trust(1.0, "unknown_item") == pytest.approx(0.95)
    assert update_trust(1.0, "weigh_alarm") == pytest.approx(0.85)
    assert update_trust(1.0, "discrepancy") == pytest.approx(0.5)
    assert update_trust(0.5, "clean_audit") == pytest.approx(0.55)
    assert update_trust(0.5, "clean_audit", 2) == pytest.approx(1 - 0.5 * 0.81)
    assert update_trust(0.7, "void", 0) == 0.7
    # two failed audits reach the floor: every later trip audited
    t = update_trust(update_trust(1.0, "discrepancy"), "discrepancy")
    assert audit_probability(t, "low") == 1.0
    assert code_of(update_trust, 1.0, "smile").code == "BAD_EVENT"
    assert code_of(update_trust, 1.0, "void", -1).code == "BAD_REQUEST"


@given(st.lists(st.tuples(st.sampled_from(["void", "unknown_item", "weigh_alarm",
                                           "discrepancy", "clean_audit"]),
                          st.integers(0, 50)), max_size=60))
def test_trust_stays_in_0_1_and_moves_the_right_way(events):
    t = 1.0
    for event, n in events:
        after = update_trust(t, event, n)
        assert 0.0 <= after <= 1.0
        if event == "clean_audit":
            assert after >= t
        else:
            assert after <= t
        t = after


def test_trust_score_table(con):
    ts = TrustScore(con, clock=lambda: T0)
    assert ts.score("M1") == 1.0
    assert ts.note("M1", "void", 2) == pytest.approx(0.98 ** 2)
    assert ts.note("M1", "unknown_item") == pytest.approx(0.98 ** 2 * 0.95)
    low = ts.score("M1")
    assert ts.note("M1", "clean_audit") > low
    got = ts.get("M1")
    assert (got["voids"], got["unknown_items"], got["clean_audits"]) == (2, 1, 1)
    assert got["updated_at"] == T0
    assert ts.get("M2") == {"shopper": "M2", "score": 1.0, "voids": 0, "unknown_items": 0,
                            "weigh_alarms": 0, "discrepancies": 0, "clean_audits": 0,
                            "updated_at": None}


def test_trust_note_with_a_ref_is_idempotent(con):
    ts = TrustScore(con)
    first = ts.note("M1", "void", ref="B1:3", now=T0)
    assert ts.note("M1", "void", ref="B1:3", now=T0 + 1) == first
    assert ts.get("M1")["voids"] == 1
    assert code_of(ts.note, "M1", "unknown_item", ref="B1:3").code == "REF_CONFLICT"
    assert code_of(ts.note, "M1", "frown").code == "BAD_EVENT"
    assert code_of(ts.note, "", "void").code == "BAD_REQUEST"


# --------------------------------------------------------------------------------------
# Recording audits
# --------------------------------------------------------------------------------------

def rescan_decision() -> AuditDecision:
    return AuditDecision(True, "rescan", [1, 4, 7], "spot_check", 0.1)


def test_record_is_idempotent_by_order_no(con):
    a = Audits(con, clock=lambda: T0)
    rec = a.record("HH07-231114-0001", rescan_decision(), "discrepancy", [4],
                   shopper="M1", now=T0)
    assert rec["outcome"] == "discrepancy" and rec["found"] == [4] and rec["items"] == [1, 4, 7]
    assert (rec["trust_before"], rec["trust_after"]) == (1.0, 0.5)
    again = a.record("HH07-231114-0001", rescan_decision().to_dict(), "discrepancy", [4],
                     shopper="M1", now=T0 + 50)
    assert again == rec
    assert a.trust.score("M1") == 0.5                   # moved once, not twice
    assert a.trust.get("M1")["discrepancies"] == 1
    e = code_of(a.record, "HH07-231114-0001", rescan_decision(), "clean", shopper="M1")
    assert e.code == "AUDIT_CONFLICT"
    assert a.get("HH07-231114-0001") == rec
    assert a.get("HH07-231114-0099") is None
    assert con.execute("SELECT count(*) FROM audits").fetchone()[0] == 1


def test_clean_audits_raise_trust_slowly(con):
    a = Audits(con)
    a.trust.note("M1", "discrepancy", now=T0)
    scores = [a.trust.score("M1")]
    for i in range(5):
        a.record(f"O-{i}", rescan_decision(), "clean", shopper="M1", now=T0 + i)
        scores.append(a.trust.score("M1"))
    assert scores == sorted(scores) and scores[-1] < 0.75   # 0.5 → 1 − 0.5·0.9⁵ ≈ 0.705


def test_record_refusals(con):
    a = Audits(con)
    none = AuditDecision(False, "none", [], "not_selected", 0.1)
    assert code_of(a.record, "O-1", none, "clean").code == "NOT_AUDITED"
    assert code_of(a.record, "O-1", rescan_decision(), "maybe").code == "BAD_OUTCOME"
    assert code_of(a.record, "O-1", rescan_decision(), "clean", [2]).code == "BAD_OUTCOME"
    assert code_of(a.record, "O-1", rescan_decision(), "discrepancy", "abc").code \
        == "BAD_REQUEST"
    assert code_of(a.record, "O-1", rescan_decision(), "discrepancy", [object()]).code \
        == "BAD_REQUEST"
    assert code_of(a.record, "", rescan_decision(), "clean").code == "BAD_REQUEST"
    assert code_of(a.record, "O-1", "yes", "clean").code == "BAD_REQUEST"
    assert code_of(a.record, "O-1", {"audit": True, "kind": "none", "items": [],
                                     "reason": "x"}, "clean").code == "BAD_REQUEST"
    assert a.stats()["audits"] == 0


def test_stats(con):
    a = Audits(con)
    visual = AuditDecision(True, "visual", [], "spot_check", 0.1)
    for i in range(40):
        bad = i % 20 == 0                               # 2 of 40: the trade's 2-3 %
        a.record(f"O-{i}", rescan_decision() if i % 2 else visual,
                 "discrepancy" if bad else "clean", ["short"] if bad else [],
                 now=T0 + i)
    s = a.stats()
    assert (s["audits"], s["discrepancies"]) == (40, 2) and s["rate"] == 0.05
    assert s["by_kind"]["visual"] == {"audits": 20, "discrepancies": 2, "rate": 0.1}
    assert s["by_kind"]["rescan"] == {"audits": 20, "discrepancies": 0, "rate": 0.0}
    assert a.stats(since=T0 + 30)["audits"] == 10
    assert Audits(sqlite3.connect(":memory:", isolation_level=None)).stats() == {
        "audits": 0, "discrepancies": 0, "rate": 0.0, "by_kind": {}}


def test_audits_decide_uses_the_stored_trust(con):
    a = Audits(con, policy=AuditPolicy())
    a.trust.note("M1", "discrepancy", 2, now=T0)         # to the floor
    d = a.decide(order_of(12), shopper="M1", store_risk="low", rng=random.Random(0))
    assert d.audit and d.reason == "trust_floor" and d.probability == 1.0
    d = a.decide(order_of(12), shopper="M2", store_risk="low", rng=random.Random(0))
    assert not d.audit and d.probability == 0.05


def test_record_rolls_back_whole_inside_the_callers_transaction(con):
    a = Audits(con)
    con.execute("BEGIN IMMEDIATE")
    a.record("O-1", rescan_decision(), "clean", shopper="M1", now=T0)
    code_of(a.record, "O-1", rescan_decision(), "discrepancy", [1], shopper="M1")
    con.execute("ROLLBACK")
    assert a.get("O-1") is None and a.trust.score("M1") == 1.0


def _lines(n: int) -> dict:
    return {"lines": [{"line_no": i + 3, "gtin": f"{i:014d}", "name": f"item {i}", "qty": 1}
                      for i in range(n)]}


def test_the_queue_decides_once_and_resolves_once(con):
    a = Audits(con)
    a.trust.note("M1", "discrepancy", 2, now=T0)          # at the floor: always chosen
    rng = random.Random(3)
    entry, new = a.request("O-1", _lines(8), shopper="M1", store_risk="low", rng=rng,
                           voids=1, by="key:hh", now=T0)
    assert new and entry["state"] == "pending" and entry["kind"] == "rescan"
    shown = [x["line"] for x in entry["items"]]      # the order's line numbers, not indices
    assert len(shown) == 3 and shown == sorted(set(shown)) and set(shown) <= set(range(3, 11))
    assert entry["items"][0]["gtin"] == f"{shown[0] - 3:014d}"
    assert a.trust.get("M1")["voids"] == 1
    state = rng.getstate()
    again, new = a.request("O-1", _lines(8), shopper="M1", store_risk="low", rng=rng,
                           voids=5, now=T0 + 9)
    assert not new and again == entry and rng.getstate() == state   # no draw, no voids
    assert a.trust.get("M1")["voids"] == 1
    assert [e["order_no"] for e in a.queue()] == ["O-1"] and a.queue("done") == []
    done, new = a.resolve("O-1", "discrepancy", [{"gtin": "1", "qty": 1}], finding="theft",
                          staff="Ann", principal="key:console", now=T0 + 60)
    assert new and done["state"] == "done" and done["finding"] == "theft"
    assert (done["staff"], done["principal"], done["recorded_at"]) == ("Ann", "key:console",
                                                                       T0 + 60)
    same, new = a.resolve("O-1", "discrepancy", [{"gtin": "1", "qty": 1}], finding="theft",
                          staff="Ann", now=T0 + 99)
    assert not new and same == done
    assert code_of(a.resolve, "O-1", "discrepancy", [], finding="mistake").code == \
        "AUDIT_CONFLICT"
    assert code_of(a.resolve, "O-9", "clean").code == "UNKNOWN_AUDIT"
    assert a.entry("O-9") is None and a.entry("not an id") is None
    assert code_of(a.record, "O-2", VISUAL_DECISION, "clean", finding="theft").code == \
        "BAD_OUTCOME"
    assert [e["order_no"] for e in a.queue("all")] == ["O-1"]


VISUAL_DECISION = AuditDecision(True, "visual", [], "spot_check", 0.1)
