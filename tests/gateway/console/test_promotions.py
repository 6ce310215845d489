"""The promotions page (/promotions): a manager creates, schedules and ends
promotions at the coupon gateway (here a real CouponGateway in process, called as the
console's identity), each recorded in the console's actions log with the staff name;
an attendant is refused; a form without its CSRF token is refused and nothing is
created."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from consolefix import Clock, csrf_of, login, route_coupons_to
from lanecore.core.scan.catalog import import_csv
from lanecore.gateway.coupons import CouponGateway
from lanecore.gateway.net.identity import Principal
from starlette.testclient import TestClient

SHAMPOO = "06901234567892"
CONSOLE = Principal("key:console", frozenset({"attendant", "manager"}), "curve")
TILL = Principal("key:till", frozenset({"till"}), "curve")


@pytest.fixture
def coupons(tmp_path, monkeypatch):
    """A coupon gateway in process; the console's coupon Upstream calls it as
    ``key:console`` (what ``--coupons`` with the console's key does over ZeroMQ)."""
    d = tmp_path / "coupons"
    d.mkdir()
    (d / "catalog.csv").write_text("gtin,name,price_minor,unit_weight_g,weight_sd_g,flags\n"
                                   f"{SHAMPOO},Shampoo,3000,420,4,\n")
    assert import_csv(d, d / "catalog.csv").rows_bad == 0
    (d / "coupons.toml").write_text('currency = "GBP"\n')
    clock = Clock()
    gw = CouponGateway(d, clock=clock)
    route_coupons_to(monkeypatch, gw, CONSOLE)
    ids = itertools.count()
    gw.clock_ = clock

    def total(qty=1):
        r = gw.handle({"op": "price.basket", "id": f"t{next(ids)}",
                       "lines": [{"code": SHAMPOO, "qty": qty}]}, "till", TILL)
        assert r["ok"], r
        return r["priced"]["total_minor"]
    gw.total = total
    yield gw
    gw.close()


def page_csrf(c) -> str:
    r = c.get("/promotions")
    assert r.status_code == 200, r.text[:300]
    return csrf_of(r.text)


def test_a_manager_creates_and_ends_a_promotion_recorded_with_her_name(make_app, coupons):
    app, _ = make_app(coupons="test://coupons", clock=coupons.clock_)
    with TestClient(app) as c:
        login(c, "max")
        token = page_csrf(c)
        assert coupons.total() == 3000
        r = c.post("/promotions", data={"csrf": token, "kind": "item_percent",
                                        "gtin": SHAMPOO[1:], "percent": "12.5",
                                        "promo_id": "SH-12"}, follow_redirects=False)
        assert r.status_code == 303, r.text[:500]
        assert coupons.total() == 2625                 # the very next basket
        page = c.get("/promotions").text
        assert 'data-testid="promo-row" data-promo="SH-12" data-state="active"' in page
        assert 'data-testid="promo-create"' in page and 'data-testid="promo-end"' in page
        r = c.post("/promotions/end", data={"csrf": token, "promo_id": "SH-12"},
                   follow_redirects=False)
        assert r.status_code == 303
        assert coupons.total() == 3000
        assert 'data-promo="SH-12" data-state="ended"' in c.get("/promotions").text
    acts = [(a["staff"], a["action"], a["target"], a["result"])
            for a in app.state.staff.actions(prefix="promo.")]
    assert acts == [("max", "promo.end", "SH-12", "ok"), ("max", "promo.create", "SH-12", "ok")]
    row = coupons.con.execute("SELECT staff, created_by, ended_by FROM promotions").fetchone()
    assert row == ("max", "key:console", "key:console (max)")


def test_a_scheduled_promotion_starts_at_its_time(make_app, coupons):
    app, _ = make_app(coupons="test://coupons", clock=coupons.clock_)
    start = dt.datetime.fromtimestamp(coupons.clock_.t) + dt.timedelta(hours=2)
    until = start + dt.timedelta(hours=1)
    with TestClient(app) as c:
        login(c, "ada")                                    # admin: every page
        r = c.post("/promotions", data={
            "csrf": page_csrf(c), "kind": "item_amount", "gtin": SHAMPOO, "amount": "2.50",
            "valid_from": start.strftime("%Y-%m-%dT%H:%M"),
            "valid_until": until.strftime("%Y-%m-%dT%H:%M")}, follow_redirects=False)
        assert r.status_code == 303, r.text[:500]
        assert 'data-state="scheduled"' in c.get("/promotions").text
    assert coupons.total(2) == 6000
    coupons.clock_.t = start.replace(second=0).timestamp()
    assert coupons.total(2) == 5500
    coupons.clock_.t = until.replace(second=0).timestamp()
    assert coupons.total(2) == 6000


def test_a_post_without_its_csrf_token_is_refused_and_nothing_is_created(make_app, coupons):
    app, _ = make_app(coupons="test://coupons", clock=coupons.clock_)
    with TestClient(app) as c:
        login(c, "max")
        page_csrf(c)
        r = c.post("/promotions", data={"kind": "item_percent", "gtin": SHAMPOO,
                                        "percent": "50"})
        assert r.status_code == 403 and r.headers["x-error-code"] == "CSRF"
        r = c.post("/promotions", data={"csrf": "not-the-token", "kind": "item_percent",
                                        "gtin": SHAMPOO, "percent": "50"})
        assert r.status_code == 403 and r.headers["x-error-code"] == "CSRF"
        r = c.post("/promotions/end", data={"promo_id": "X"})
        assert r.status_code == 403 and r.headers["x-error-code"] == "CSRF"
    assert coupons.con.execute("SELECT COUNT(*) FROM promotions").fetchone() == (0,)
    assert coupons.total() == 3000
    results = {a["result"] for a in app.state.staff.actions() if a["action"].startswith(
        "refused POST /promotions")}
    assert results == {"CSRF"}


def test_an_attendant_may_not_see_or_post(make_app, coupons):
    app, _ = make_app(coupons="test://coupons", clock=coupons.clock_)
    with TestClient(app) as c:
        login(c, "ann")
        token = csrf_of(c.get("/lanes").text)
        assert 'href="/promotions"' not in c.get("/lanes").text
        r = c.get("/promotions")
        assert r.status_code == 403 and r.headers["x-error-code"] == "FORBIDDEN"
        r = c.post("/promotions", data={"csrf": token, "kind": "item_percent",
                                        "gtin": SHAMPOO, "percent": "50"})
        assert r.status_code == 403 and r.headers["x-error-code"] == "FORBIDDEN"
        r = c.post("/promotions/end", data={"csrf": token, "promo_id": "X"})
        assert r.status_code == 403 and r.headers["x-error-code"] == "FORBIDDEN"
        login(c, "max")
        assert 'href="/promotions"' in c.get("/lanes").text
    assert coupons.con.execute("SELECT COUNT(*) FROM promotions").fetchone() == (0,)


def test_bad_forms_and_refusals_show_their_code_and_are_recorded(make_app, coupons):
    app, _ = make_app(coupons="test://coupons", clock=coupons.clock_)
    with TestClient(app) as c:
        login(c, "max")
        token = page_csrf(c)
        for data, code in (
                ({"kind": "item_percent", "gtin": "12AB", "percent": "5"}, "BAD_FIELD"),
                ({"kind": "item_percent", "gtin": SHAMPOO, "percent": "five"}, "BAD_FIELD"),
                ({"kind": "nope", "gtin": SHAMPOO, "percent": "5"}, "BAD_FIELD"),
                ({"kind": "item_percent", "gtin": SHAMPOO, "percent": "150"},
                 "BAD_PROMOTION"),
                ({"kind": "multibuy", "gtin": SHAMPOO, "buy_qty": "2", "pay_qty": "2"},
                 "BAD_PROMOTION")):
            r = c.post("/promotions", data={"csrf": token, **data})
            assert r.status_code == 400 and r.headers["x-error-code"] == code, (data, r.text)
            assert f'data-testid="promo-problem" data-code="{code}"' in r.text
        r = c.post("/promotions/end", data={"csrf": token, "promo_id": "NOPE"})
        assert r.status_code == 400 and r.headers["x-error-code"] == "UNKNOWN_PROMOTION"
        ok = {"csrf": token, "kind": "multibuy", "gtin": SHAMPOO, "buy_qty": "2",
              "pay_qty": "1", "promo_id": "TWO"}
        assert c.post("/promotions", data=ok, follow_redirects=False).status_code == 303
        r = c.post("/promotions", data=ok)
        assert r.status_code == 400 and r.headers["x-error-code"] == "PROMO_EXISTS"
    assert coupons.total(2) == 3000
    results = [a["result"] for a in app.state.staff.actions(prefix="promo.")]
    assert results == ["PROMO_EXISTS", "ok", "UNKNOWN_PROMOTION", "BAD_PROMOTION",
                       "BAD_PROMOTION", "BAD_FIELD", "BAD_FIELD", "BAD_FIELD"]
    assert all(a["staff"] == "max" for a in app.state.staff.actions(prefix="promo."))


def test_without_a_coupon_gateway_the_page_says_so(make_app):
    app, _ = make_app()
    with TestClient(app) as c:
        login(c, "max")
        r = c.get("/promotions")
        assert r.status_code == 200 and r.headers["x-error-code"] == "UNAVAILABLE"
        r = c.post("/promotions", data={"csrf": csrf_of(r.text), "kind": "item_percent",
                                        "gtin": SHAMPOO, "percent": "5"})
        assert r.status_code == 502 and r.headers["x-error-code"] == "UNAVAILABLE"


def test_a_coupons_toml_promotion_is_ended_from_the_page(make_app, coupons, tmp_path,
                                                        monkeypatch):
    """A promotion of coupons.toml shows "End now" too: the gateway records the end
    and prices the next basket without it (no restart, the file untouched)."""
    d = tmp_path / "coupons"
    text = (f'currency = "GBP"\n[[promotions]]\nid = "FILE-10"\nkind = "item"\n'
            f'gtin = "{SHAMPOO}"\npercent_bp = 1000\n')
    (d / "coupons.toml").write_text(text)
    gw = CouponGateway(d, clock=coupons.clock_)        # the file read at start-up
    route_coupons_to(monkeypatch, gw, CONSOLE)
    ids = itertools.count()

    def total() -> int:
        r = gw.handle({"op": "price.basket", "id": f"f{next(ids)}",
                       "lines": [{"code": SHAMPOO}]}, "till", TILL)
        assert r["ok"], r
        return r["priced"]["total_minor"]
    try:
        app, _ = make_app(coupons="test://coupons", clock=coupons.clock_)
        with TestClient(app) as c:
            login(c, "max")
            page = c.get("/promotions").text
            assert 'data-testid="promo-configured" data-promo="FILE-10" ' \
                'data-state="active" data-source="file"' in page
            assert total() == 2700
            r = c.post("/promotions/end", data={"csrf": csrf_of(page),
                                                "promo_id": "FILE-10"},
                       follow_redirects=False)
            assert r.status_code == 303, r.text[:500]
            assert total() == 3000                              # the very next basket
            page = c.get("/promotions").text
            row = page.split('data-promo="FILE-10"')[1].split("</tr>")[0]
            assert 'data-state="ended"' in row and "promo-end" not in row
            assert "key:console (max)" in row
            # again: the same answer, no error
            r = c.post("/promotions/end", data={"csrf": csrf_of(page),
                                                "promo_id": "FILE-10"},
                       follow_redirects=False)
            assert r.status_code == 303
        assert (d / "coupons.toml").read_text() == text
        acts = [(a["staff"], a["action"], a["target"], a["result"])
                for a in app.state.staff.actions(prefix="promo.")]
        assert acts == [("max", "promo.end", "FILE-10", "ok")] * 2
    finally:
        gw.close()
