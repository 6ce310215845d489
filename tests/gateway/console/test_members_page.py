"""The members page's list, tier change and points adjustment, and the coupons page's
every kind of coupon definition — at a real coupon gateway in process, called as the
console's identity; every change recorded with the staff name; CSRF and the manager
role on every new form."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from consolefix import Clock, csrf_of, login, route_coupons_to
from lanecore.gateway.coupons import CouponGateway
from lanecore.gateway.net.identity import Principal
from starlette.testclient import TestClient

SHAMPOO = "06901234567892"
SOAP = "06901234567809"
CONSOLE = Principal("key:console", frozenset({"attendant", "manager"}), "curve")
TILL = Principal("key:till", frozenset({"till"}), "curve")
T0 = dt.datetime(2027, 3, 10, 12, 0).timestamp()


@pytest.fixture
def coupons(tmp_path, monkeypatch):
    d = tmp_path / "coupons"
    d.mkdir()
    (d / "coupons.toml").write_text('currency = "GBP"\nstore_id = "RM-01"\n'
                                    f'[families]\nsoap = ["{SOAP}"]\n')
    clock = Clock(T0)
    gw = CouponGateway(d, clock=clock)
    route_coupons_to(monkeypatch, gw, CONSOLE)
    gw.clock_ = clock
    yield gw
    gw.close()


def enrol(gw, n: int, **fields) -> dict:
    r = gw.handle({"op": "member.enrol", "id": f"e{n}", **fields}, "till", TILL)
    assert r["ok"], r
    return r["member"]


def actions(app, prefix: str) -> list[tuple]:
    return [(a["staff"], a["action"], a["target"], a["result"], a["detail"])
            for a in app.state.staff.actions(prefix=prefix)]


def ref_of(html: str) -> str:
    return re.search(r'name="ref" value="([^"]+)"', html).group(1)


def test_the_list_searches_and_pages(make_app, coupons):
    made = []
    for i in range(23):
        coupons.clock_.t = T0 + i
        made.append(enrol(coupons, i, card_no=f"62001234{i:05d}", name=f"Name {i:02d}",
                          tier="gold" if i % 5 == 0 else "basic"))
    app, _ = make_app(coupons="test://coupons", clock=coupons.clock_)
    with TestClient(app) as c:
        login(c, "max")
        page = c.get("/members").text
        rows = re.findall(r'data-testid="member-row" data-member="([^"]+)"', page)
        assert rows == [m["member_id"] for m in reversed(made)][:20]     # newest first
        assert 'data-total="23"' in page and 'data-testid="member-next"' in page
        assert 'data-testid="member"' not in page                 # nobody in full
        page2 = c.get("/members", params={"page": "2"}).text
        assert re.findall(r'data-testid="member-row" data-member="([^"]+)"', page2) == \
            [m["member_id"] for m in reversed(made)][20:]
        assert 'data-testid="member-prev"' in page2 and "member-next" not in page2
        # a prefix: the list, no error; the tier filter
        r = c.get("/members", params={"q": "620012340001"})
        assert "x-error-code" not in r.headers and 'data-total="10"' in r.text
        r = c.get("/members", params={"tier": "gold"})
        assert 'data-total="5"' in r.text
        # a name matching one member: that member in full
        r = c.get("/members", params={"q": "name 07"})
        assert f'data-testid="member" data-member="{made[7]["member_id"]}"' in r.text
        r = c.get("/members", params={"id": made[3]["member_id"]})
        assert f'data-testid="member" data-member="{made[3]["member_id"]}"' in r.text
        r = c.get("/members", params={"q": "zzz"})
        assert r.headers["x-error-code"] == "UNKNOWN_MEMBER" and 'data-total="0"' in r.text


def test_a_manager_changes_a_tier_and_adjusts_points_recorded_with_her_name(
        make_app, coupons):
    m = enrol(coupons, 1, card_no="6200123456789", name="Li Lei")
    mid = m["member_id"]
    app, _ = make_app(coupons="test://coupons", clock=coupons.clock_)
    with TestClient(app) as c:
        login(c, "max")
        page = c.get("/members", params={"id": mid}).text
        token, ref = csrf_of(page), ref_of(page)
        assert 'data-testid="member-points-form"' in page
        r = c.post("/members/tier", data={"csrf": token, "member_id": mid, "tier": "gold"},
                   follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == f"/members?id={mid}"
        assert coupons.members.find(mid).tier == "gold"
        form = {"csrf": token, "member_id": mid, "points": "+150",
                "reason": "lost receipt", "ref": ref}
        r = c.post("/members/points", data=form, follow_redirects=False)
        assert r.status_code == 303, r.text[:500]
        assert coupons.members.balance(mid) == 150
        # the same form sent twice (a double click): the same adjustment
        assert c.post("/members/points", data=form, follow_redirects=False
                      ).status_code == 303
        assert coupons.members.balance(mid) == 150
        # the same form with other terms: refused, nothing moved
        r = c.post("/members/points", data={**form, "points": "151"})
        assert r.status_code == 400 and r.headers["x-error-code"] == "REF_CONFLICT"
        page = c.get("/members", params={"id": mid}).text
        assert 'data-testid="member-points">150<' in page
        assert 'data-testid="member-tier">gold<' in page
        move = page.split('data-testid="member-move"')[1].split("</tr>")[0]
        assert 'data-kind="adjust" data-points="150"' in move
        assert "lost receipt" in move and "max (key:console)" in move
        # below zero: refused with its code on the page
        r = c.post("/members/points", data={"csrf": token, "member_id": mid,
                                            "points": "-151", "reason": "typo",
                                            "ref": ref_of(page)})
        assert r.status_code == 400 and r.headers["x-error-code"] == "INSUFFICIENT_POINTS"
        assert 'data-code="INSUFFICIENT_POINTS"' in r.text
        assert f'data-testid="member" data-member="{mid}"' in r.text
        for bad, field in (({"points": "0"}, "points"), ({"points": "1.5"}, "points"),
                           ({"points": "x"}, "points"), ({"reason": " "}, "reason"),
                           ({"ref": "a b"}, "ref"), ({"member_id": ""}, "member_id")):
            r = c.post("/members/points", data={"csrf": token, "member_id": mid,
                                                "points": "5", "reason": "ok",
                                                "ref": "web-x", **bad})
            assert r.status_code == 400 and r.headers["x-error-code"] == "BAD_FIELD", bad
            assert f"<code>{field}</code>" in r.text
        r = c.post("/members/tier", data={"csrf": token, "member_id": mid,
                                          "tier": "no tier"})
        assert r.status_code == 400 and r.headers["x-error-code"] == "BAD_FIELD"
        r = c.post("/members/tier", data={"csrf": token, "member_id": "Mnobody",
                                          "tier": "gold"})
        assert r.status_code == 400 and r.headers["x-error-code"] == "UNKNOWN_MEMBER"
        # JSON callers get the reply
        r = c.post("/members/points", data={"csrf": token, "member_id": mid,
                                            "points": "-50", "reason": "fix",
                                            "ref": "web-json"},
                   headers={"accept": "application/json"})
        assert r.status_code == 200 and r.json()["member"]["points"] == 100
    assert coupons.members.balance(mid) == 100
    acts = actions(app, "member.")
    assert acts[0] == ("max", "member.points", mid, "ok", "-50 points: fix")
    assert ("max", "member.points", mid, "ok", "+150 points: lost receipt") in acts
    assert ("max", "member.points", mid, "REF_CONFLICT", "+151 points: lost receipt") \
        in acts
    assert ("max", "member.points", mid, "INSUFFICIENT_POINTS", "-151 points: typo") in acts
    assert ("max", "member.tier", mid, "ok", "tier gold") in acts
    move = [mv for mv in coupons.members.moves(mid) if mv.ref == f"adjust:{ref}"][0]
    assert move.terms["staff"] == "max" and move.terms["principal"] == "key:console"


NEW_POSTS = {
    "/members/tier": {"member_id": "M1", "tier": "gold"},
    "/members/points": {"member_id": "M1", "points": "5", "reason": "x", "ref": "web-1"},
}


def test_the_new_forms_need_csrf_and_a_manager(make_app, coupons):
    m = enrol(coupons, 1, card_no="6200123456789")
    posts = {p: {**f, "member_id": m["member_id"]} for p, f in NEW_POSTS.items()}
    app, _ = make_app(coupons="test://coupons", clock=coupons.clock_)
    with TestClient(app) as c:
        login(c, "max")
        csrf_of(c.get("/members").text)
        for path, form in posts.items():
            for bad in ({}, {"csrf": "not-the-token"}):
                r = c.post(path, data={**form, **bad})
                assert r.status_code == 403 and r.headers["x-error-code"] == "CSRF", path
        login(c, "ann")
        token = csrf_of(c.get("/lanes").text)
        for path, form in posts.items():
            r = c.post(path, data={**form, "csrf": token})
            assert r.status_code == 403 and r.headers["x-error-code"] == "FORBIDDEN", path
    found = coupons.members.find(m["member_id"])
    assert (found.tier, found.points) == ("basic", 0)


# --------------------------------------------------------------------------------------
# Coupons: every kind the coupon book's Definition has
# --------------------------------------------------------------------------------------

BASE = {"issuer_id": "ACME", "currency": "GBP", "valid_from": "2027-03-01",
        "valid_until": "2027-03-31"}


@pytest.mark.parametrize("form, want", [
    ({"applies_to": "item", "target_gtin": SOAP, "discount": "amount", "amount": "0.30"},
     {"target_gtin": SOAP, "target_family": None, "amount_off_minor": 30,
      "percent_bp": None}),
    ({"applies_to": "item", "target_gtin": SOAP[1:], "discount": "percent",
      "percent": "12.5"},
     {"target_gtin": SOAP, "target_family": None, "amount_off_minor": None,
      "percent_bp": 1250}),
    ({"applies_to": "family", "target_family": "soap", "discount": "amount",
      "amount": "1", "min_qty": "2"},
     {"target_gtin": None, "target_family": "soap", "amount_off_minor": 100,
      "percent_bp": None, "min_qty": 2}),
    ({"applies_to": "family", "target_family": "soap", "discount": "percent",
      "percent": "20", "per_customer_limit": "1"},
     {"target_gtin": None, "target_family": "soap", "amount_off_minor": None,
      "percent_bp": 2000, "per_customer_limit": 1}),
    # without the selects, the filled field decides
    ({"target_family": "soap", "percent": "5"},
     {"target_family": "soap", "percent_bp": 500}),
])
def test_the_page_defines_every_kind_of_coupon(make_app, coupons, form, want):
    coupons.book.add_issuer("ACME", "Acme")
    app, _ = make_app(coupons="test://coupons", clock=coupons.clock_)
    with TestClient(app) as c:
        login(c, "max")
        token = csrf_of(c.get("/coupons").text)
        r = c.post("/coupons/define", data={"csrf": token, "coupon_def_id": "K-1",
                                            **BASE, **form}, follow_redirects=False)
        assert r.status_code == 303, r.text[:800]
        assert 'data-coupon-def="K-1"' in c.get("/coupons").text
    d = coupons.book.definition("K-1").to_dict()
    assert {k: d[k] for k in want} == want


@pytest.mark.parametrize("form, code, field", [
    ({"applies_to": "family", "target_family": "no family!", "discount": "amount",
      "amount": "1"}, "BAD_COUPON_DEF", "target_family"),
    ({"applies_to": "item", "target_gtin": "06901234567890", "discount": "amount",
      "amount": "1"}, "BAD_COUPON_DEF", "target_gtin"),                 # check digit
    ({"applies_to": "item", "target_gtin": SOAP, "discount": "percent",
      "percent": "150"}, "BAD_COUPON_DEF", "percent_bp"),
    ({"applies_to": "item", "target_gtin": SOAP, "discount": "percent",
      "percent": "1.234"}, "BAD_FIELD", "percent"),
    ({"applies_to": "family", "target_family": "", "discount": "amount",
      "amount": "1"}, "BAD_FIELD", "target_family"),
    ({"applies_to": "shelf", "target_gtin": SOAP, "amount": "1"}, "BAD_FIELD",
     "applies_to"),
    ({"applies_to": "item", "target_gtin": SOAP, "discount": "free", "amount": "1"},
     "BAD_FIELD", "discount"),
])
def test_refusals_are_shown_with_the_field(make_app, coupons, form, code, field):
    coupons.book.add_issuer("ACME", "Acme")
    app, _ = make_app(coupons="test://coupons", clock=coupons.clock_)
    with TestClient(app) as c:
        login(c, "max")
        token = csrf_of(c.get("/coupons").text)
        r = c.post("/coupons/define", data={"csrf": token, "coupon_def_id": "K-1",
                                            **BASE, **form})
        assert r.status_code == 400 and r.headers["x-error-code"] == code, r.text[:800]
        assert f'data-code="{code}" data-field="{field}"' in r.text
        # the form keeps what was typed
        for k, v in form.items():
            if v and k not in ("applies_to", "discount"):
                assert f'value="{v}"' in r.text, k
    assert coupons.book.definitions() == []
