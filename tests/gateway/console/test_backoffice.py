"""The rest of the merchant's back office (issue 15, Build 4): coupons (issuers,
definitions, the clearing report and its CSV) and members at a real coupon gateway in
process, called as the console's identity; POS terminals in a real payment gateway's
registry (its ledger database, given as ``--ledger-db``). Each change is recorded
with the staff name; an attendant is refused; a form without its CSRF token is
refused and nothing is done; a terminal added in the page signs requests the payment
gateway accepts, and its key is in no console file and no log."""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import itertools
import logging
import re

import msgpack
import pytest
from consolefix import Clock, csrf_of, login, route_coupons_to
from lanecore.core.scan.catalog import import_csv
from lanecore.gateway.coupons import CouponGateway
from lanecore.gateway.net.identity import Principal
from lanecore.gateway.payments import terminals as T
from lanecore.gateway.payments.gateway import LEDGER_FILE, PaymentGateway
from starlette.testclient import TestClient

SHAMPOO = "06901234567892"
SOAP = "06901234567809"
CONSOLE = Principal("key:console", frozenset({"attendant", "manager"}), "curve")
T0 = dt.datetime(2027, 3, 10, 12, 0).timestamp()


@pytest.fixture
def coupons(tmp_path, monkeypatch):
    """A coupon gateway in process; the console's coupon Upstream calls it as
    ``key:console`` (as ``--coupons`` with the console's key does over ZeroMQ)."""
    d = tmp_path / "coupons"
    d.mkdir()
    (d / "catalog.csv").write_text("gtin,name,price_minor,unit_weight_g,weight_sd_g,flags\n"
                                   f"{SHAMPOO},Shampoo,3000,420,4,\n"
                                   f"{SOAP},Soap,250,100,2,\n")
    assert import_csv(d, d / "catalog.csv").rows_bad == 0
    (d / "coupons.toml").write_text('currency = "GBP"\nstore_id = "RM-01"\n')
    clock = Clock(T0)
    gw = CouponGateway(d, clock=clock)
    route_coupons_to(monkeypatch, gw, CONSOLE)
    gw.clock_ = clock
    yield gw
    gw.close()


@pytest.fixture
def payments(tmp_path):
    """A payment gateway that authenticates every request (``[pos] auth = "hmac"``),
    and the opener of its registry the command line gives the console."""
    d = tmp_path / "pay"
    d.mkdir()
    (d / "payments.toml").write_text('[pos]\nauth = "hmac"\n')
    (d / "payments.toml").chmod(0o600)
    gw = PaymentGateway(d)
    gw.opener = functools.partial(T.open_registry, d / LEDGER_FILE)

    def ask(req: dict, terminal: str, key: bytes) -> dict:
        payload = msgpack.packb(req, use_bin_type=True)
        reply = gw.on_frames([b"\x00peer", payload, T.auth_frame(terminal, key, payload)])
        return msgpack.unpackb(reply[-1], raw=False)
    gw.ask = ask
    yield gw
    gw.ledger.close()


def token_of(c, path: str) -> str:
    r = c.get(path)
    assert r.status_code == 200, r.text[:500]
    return csrf_of(r.text)


def actions(app, prefix: str) -> list[tuple]:
    return [(a["staff"], a["action"], a["target"], a["result"])
            for a in app.state.staff.actions(prefix=prefix)]


# --------------------------------------------------------------------------------------
# Coupons
# --------------------------------------------------------------------------------------

def test_a_manager_adds_an_issuer_and_defines_a_coupon_recorded_with_her_name(
        make_app, coupons):
    app, _ = make_app(coupons="test://coupons", clock=coupons.clock_)
    with TestClient(app) as c:
        login(c, "max")
        token = token_of(c, "/coupons")
        r = c.post("/coupons/issuer", data={"csrf": token, "issuer_id": "ACME",
                                            "name": "Acme Soap Co"}, follow_redirects=False)
        assert r.status_code == 303, r.text[:500]
        r = c.post("/coupons/define", data={
            "csrf": token, "coupon_def_id": "ACME-50", "issuer_id": "ACME",
            "target_gtin": SOAP, "amount": "0.50", "currency": "GBP",
            "valid_from": "2027-03-01", "valid_until": "2027-03-31", "min_qty": "2"},
            follow_redirects=False)
        assert r.status_code == 303, r.text[:500]
        page = c.get("/coupons").text
        assert 'data-testid="issuer-row" data-issuer="ACME"' in page
        assert 'data-testid="coupon-def-row" data-coupon-def="ACME-50"' in page
        # a definition the gateway refuses: its code on the page, recorded
        r = c.post("/coupons/define", data={
            "csrf": token, "coupon_def_id": "NOBODY-1", "issuer_id": "NOBODY",
            "target_gtin": SOAP, "amount": "1", "valid_from": "2027-03-01",
            "valid_until": "2027-03-31"})
        assert r.status_code == 400 and r.headers["x-error-code"] == "UNKNOWN_ISSUER"
        r = c.post("/coupons/define", data={
            "csrf": token, "coupon_def_id": "ACME-X", "issuer_id": "ACME",
            "target_gtin": SOAP, "amount": "0.505", "valid_from": "2027-03-01",
            "valid_until": "2027-03-31"})
        assert r.status_code == 400 and r.headers["x-error-code"] == "BAD_FIELD"
    d = coupons.book.definition("ACME-50")
    assert (d.issuer_id, d.target_gtin, d.amount_off_minor, d.currency, d.min_qty) == \
        ("ACME", SOAP, 50, "GBP", 2)
    assert d.valid_from == int(dt.datetime(2027, 3, 1).timestamp())
    assert d.valid_until == int(dt.datetime(2027, 4, 1).timestamp())     # 31st included
    assert [i.issuer_id for i in coupons.book.issuers()] == ["ACME"]
    assert actions(app, "coupon.") == [
        ("max", "coupon.define", "ACME-X", "BAD_FIELD"),
        ("max", "coupon.define", "NOBODY-1", "UNKNOWN_ISSUER"),
        ("max", "coupon.define", "ACME-50", "ok"),
        ("max", "coupon.issuer.add", "ACME", "ok")]


def _redeem(gw, coupon_def_id: str, n: int, amount: int, at: float) -> list[str]:
    book, out = gw.book, []
    for _i in range(n):
        k = next(_serial)
        cid = f"C{k}"
        book.issue(coupon_def_id, f"cust{k}", coupon_id=cid, now=int(at))
        book.reserve([cid], order_no=f"O{k}", customer_id=f"cust{k}", now=int(at))
        book.commit(f"O{k}", {cid: amount}, store_id="RM-01", now=int(at))
        out.append(cid)
    return out


_serial = itertools.count(1)


def test_the_clearing_report_per_manufacturer_and_its_csv_agree(make_app, coupons):
    app, _ = make_app(coupons="test://coupons", clock=coupons.clock_)
    with TestClient(app) as c:
        login(c, "max")
        token = token_of(c, "/coupons")
        for issuer, name, gtin in (("ACME", "Acme Soap", SOAP), ("SUDS", "Suds Ltd",
                                                                 SHAMPOO)):
            assert c.post("/coupons/issuer", data={"csrf": token, "issuer_id": issuer,
                                                   "name": name},
                          follow_redirects=False).status_code == 303
            assert c.post("/coupons/define", data={
                "csrf": token, "coupon_def_id": f"{issuer}-1", "issuer_id": issuer,
                "target_gtin": gtin, "amount": "0.40" if issuer == "ACME" else "1.25",
                "valid_from": "2027-03-01", "valid_until": "2027-04-30"},
                follow_redirects=False).status_code == 303
        in_range = _redeem(coupons, "ACME-1", 3, 40, T0) + \
            _redeem(coupons, "SUDS-1", 2, 125, T0 + 86400)
        later = _redeem(coupons, "ACME-1", 1, 40, T0 + 20 * 86400)      # 30 March
        q = {"from": "2027-03-10", "to": "2027-03-11"}
        page = c.get("/coupons", params=q)
        assert page.status_code == 200
        rows = re.findall(r'data-testid="clearing-row" data-coupon="([^"]+)" '
                          r'data-issuer="([^"]+)" data-minor="(\d+)"', page.text)
        assert sorted(r[0] for r in rows) == sorted(in_range)
        totals = dict(re.findall(r'data-testid="clearing-total" data-issuer="([^"]+)" '
                                 r'data-minor="(\d+)"', page.text))
        assert totals == {"ACME": "120", "SUDS": "250"}
        exported = c.get("/coupons/clearing.csv", params=q)
        assert exported.status_code == 200
        assert exported.headers["content-type"].startswith("text/csv")
        table = list(csv.DictReader(io.StringIO(exported.text)))
        assert [(r["coupon_id"], r["issuer_id"], r["amount_minor"]) for r in table] == \
            [(cid, iss, minor) for cid, iss, minor in rows]
        assert {r["amount"] for r in table} == {"0.40", "1.25"}
        per: dict = {}
        for r in table:
            per[r["issuer_id"]] = per.get(r["issuer_id"], 0) + int(r["amount_minor"])
        assert {k: str(v) for k, v in per.items()} == totals
        # one manufacturer, the whole time: the page and the CSV still agree
        q = {"issuer": "ACME"}
        page = c.get("/coupons", params=q).text
        acme = re.findall(r'data-testid="clearing-row" data-coupon="([^"]+)"', page)
        assert acme == in_range[:3] + later
        table = list(csv.DictReader(io.StringIO(
            c.get("/coupons/clearing.csv", params=q).text)))
        assert [r["coupon_id"] for r in table] == acme
        assert c.get("/coupons", params={"from": "10/03/2027"}).headers[
            "x-error-code"] == "BAD_DATE"
    assert ("max", "coupon.clearing.csv", "ACME", "ok") in actions(app, "coupon.clearing")


# --------------------------------------------------------------------------------------
# Members
# --------------------------------------------------------------------------------------

def test_a_manager_enrols_a_member_and_sees_tier_points_and_history(make_app, coupons):
    app, _ = make_app(coupons="test://coupons", clock=coupons.clock_)
    with TestClient(app) as c:
        login(c, "max")
        token = token_of(c, "/members")
        r = c.post("/members/enrol", data={"csrf": token, "card_no": "6200123456789",
                                           "name": "Li Lei", "tier": "gold"},
                   follow_redirects=False)
        assert r.status_code == 303, r.text[:500]
        member = coupons.members.find("6200123456789")
        assert r.headers["location"] == f"/members?q={member.member_id}"
        coupons.members.record_purchase(member.member_id, "ORD-7", 1234, "GBP",
                                        [{"gtin": SOAP, "qty": 2}], 12, 0, now=T0)
        page = c.get("/members", params={"q": "6200123456789"}).text
        assert 'data-testid="member-tier">gold<' in page
        assert 'data-testid="member-points">0<' in page
        assert 'data-testid="member-purchase" data-order="ORD-7"' in page
        r = c.post("/members/enrol", data={"csrf": token, "card_no": "6200123456789"})
        assert r.status_code == 400 and r.headers["x-error-code"] == "CARD_TAKEN"
        r = c.post("/members/enrol", data={"csrf": token, "name": "nobody"})
        assert r.status_code == 400 and r.headers["x-error-code"] == "BAD_FIELD"
        r = c.get("/members", params={"q": "6200999999999"})
        assert r.headers["x-error-code"] == "UNKNOWN_MEMBER"
    assert actions(app, "member.") == [
        ("max", "member.enrol", None, "BAD_FIELD"),
        ("max", "member.enrol", "6200123456789", "CARD_TAKEN"),
        ("max", "member.enrol", member.member_id, "ok")]


# --------------------------------------------------------------------------------------
# POS terminals
# --------------------------------------------------------------------------------------

def test_a_terminal_added_in_the_page_signs_requests_the_payment_gateway_accepts(
        make_app, payments, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    app, _ = make_app(terminals=payments.opener)
    with TestClient(app) as c:
        login(c, "max")
        token = token_of(c, "/terminals")
        r = c.post("/terminals/add", data={
            "csrf": token, "terminal_id": "POS-7", "roles": ["pos", "till"],
            "max_payment": "50.00", "max_day": "400", "methods": ["card", "cash"]})
        assert r.status_code == 200, r.text[:500]
        assert r.headers["cache-control"] == "no-store"
        text = r.text
        key_text = re.search(r'data-testid="terminal-key">([^<]+)<', text).group(1)
        key = T.parse_key(key_text)
        assert "This key is a secret" in text
        assert 'data-testid="terminal-row" data-terminal="POS-7"' in text
        assert key_text not in c.get("/terminals").text            # shown once
        # the payment gateway's own registry has it, with its roles and limits
        t = payments.terminals.get("POS-7")
        assert t.key == key and t.roles == frozenset({"pos", "till"})
        assert (t.max_payment_minor, t.max_day_minor, t.methods) == \
            (5000, 40000, ("card", "cash"))
        # ... and the gateway accepts a request signed with the key shown
        ok = payments.ask({"op": "pay.list", "id": "r1"}, "POS-7", key)
        assert ok["ok"] is True, ok
        bad = payments.ask({"op": "pay.list", "id": "r2"}, "POS-7", b"\x01" * 32)
        assert bad["error"]["code"] == "AUTH_FAILED"
        # limits changed: key and roles kept
        r = c.post("/terminals/limits", data={"csrf": token, "terminal_id": "POS-7",
                                              "max_payment": "20", "methods": ["card"]},
                   follow_redirects=False)
        assert r.status_code == 303, r.text[:500]
        t = payments.terminals.get("POS-7")
        assert (t.max_payment_minor, t.max_day_minor, t.methods, t.key) == \
            (2000, None, ("card",), key)
        assert payments.ask({"op": "pay.list", "id": "r3"}, "POS-7", key)["ok"] is True
        # disabled: the gateway refuses it from the next request
        r = c.post("/terminals/disable", data={"csrf": token, "terminal_id": "POS-7"},
                   follow_redirects=False)
        assert r.status_code == 303
        assert payments.terminals.get("POS-7").disabled_at is not None
        refused = payments.ask({"op": "pay.list", "id": "r4"}, "POS-7", key)
        assert refused["error"]["code"] == "AUTH_FAILED"
        assert 'data-terminal="POS-7" data-roles="pos,till" data-max-payment="2000" ' \
            'data-max-day="" data-disabled="yes"' in c.get("/terminals").text
        r = c.post("/terminals/disable", data={"csrf": token, "terminal_id": "NOPE"})
        assert r.status_code == 404 and r.headers["x-error-code"] == "UNKNOWN_TERMINAL"
        # a new key (the old one leaked): shown once, roles, limits and state kept
        r = c.post("/terminals/rotate", data={"csrf": token, "terminal_id": "POS-7"})
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        new_text = re.search(r'data-testid="terminal-key">([^<]+)<', r.text).group(1)
        new_key = T.parse_key(new_text)
        assert new_key != key and new_text not in c.get("/terminals").text
        t = payments.terminals.get("POS-7")
        assert (t.key, t.roles, t.max_payment_minor, t.disabled_at is not None) == \
            (new_key, frozenset({"pos", "till"}), 2000, True)
        r = c.post("/terminals/enable", data={"csrf": token, "terminal_id": "POS-7"},
                   follow_redirects=False)
        assert r.status_code == 303 and payments.terminals.get("POS-7").disabled_at is None
        assert payments.ask({"op": "pay.list", "id": "r5"}, "POS-7", new_key)["ok"] is True
        assert payments.ask({"op": "pay.list", "id": "r6"}, "POS-7", key)["error"][
            "code"] == "AUTH_FAILED"
    # no key is in a file of the console or a log line; the log has the id
    for f in (tmp_path / "console").rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            for k, text in ((key, key_text), (new_key, new_text)):
                assert text.encode() not in data and k not in data and \
                    k.hex().encode() not in data, f
    for k, text in ((key, key_text), (new_key, new_text)):
        assert text not in caplog.text and k.hex() not in caplog.text
    assert actions(app, "terminal.") == [
        ("max", "terminal.enable", "POS-7", "ok"),
        ("max", "terminal.rotate", "POS-7", "ok"),
        ("max", "terminal.disable", "NOPE", "UNKNOWN_TERMINAL"),
        ("max", "terminal.disable", "POS-7", "ok"),
        ("max", "terminal.limits", "POS-7", "ok"),
        ("max", "terminal.add", "POS-7", "ok")]
    add = app.state.staff.actions(prefix="terminal.add")[0]
    assert add["detail"] == "roles pos,till; max_payment_minor 5000; max_day_minor 40000; " \
        "methods card,cash"


def test_a_manager_cannot_add_a_staff_or_admin_terminal_nor_reuse_an_id(make_app,
                                                                       payments):
    app, _ = make_app(terminals=payments.opener)
    with TestClient(app) as c:
        login(c, "max")
        token = token_of(c, "/terminals")
        for roles in (["admin"], ["pos", "manager"], ["hq"]):
            r = c.post("/terminals/add", data={"csrf": token, "terminal_id": "X-1",
                                               "roles": roles})
            assert r.status_code == 400 and r.headers["x-error-code"] == "BAD_ROLE"
        assert payments.terminals.get("X-1") is None
        assert c.post("/terminals/add", data={"csrf": token, "terminal_id": "K-1"}
                      ).status_code == 200
        assert payments.terminals.get("K-1").roles == frozenset({"pos"})
        key = payments.terminals.get("K-1").key
        r = c.post("/terminals/add", data={"csrf": token, "terminal_id": "K-1"})
        assert r.status_code == 409 and r.headers["x-error-code"] == "TERMINAL_EXISTS"
        assert payments.terminals.get("K-1").key == key           # not rotated
        r = c.post("/terminals/add", data={"csrf": token, "terminal_id": "K-2",
                                           "max_payment": "-5"})
        assert r.status_code == 400 and r.headers["x-error-code"] == "BAD_LIMIT"
        assert payments.terminals.get("K-2") is None
        # a staff terminal's key would give its roles: not rotated nor enabled here
        _, admin_key = payments.terminals.register("HQ-1", admin=True)
        payments.terminals.disable("HQ-1")
        for action in ("rotate", "enable"):
            r = c.post(f"/terminals/{action}", data={"csrf": token, "terminal_id": "HQ-1"})
            assert r.status_code == 400 and r.headers["x-error-code"] == "BAD_ROLE", action
            assert 'data-testid="terminal-key"' not in r.text
        held = payments.terminals.get("HQ-1")
        assert held.key == admin_key and held.disabled_at is not None
        assert 'data-terminal="HQ-1"' in c.get("/terminals").text
        assert 'value="HQ-1"><button type="submit" data-testid="terminal-rotate"' not in \
            c.get("/terminals").text


def test_without_the_ledger_database_the_terminals_page_says_so(make_app):
    app, _ = make_app()
    with TestClient(app) as c:
        login(c, "max")
        r = c.get("/terminals")
        assert r.status_code == 200 and r.headers["x-error-code"] == "NO_LEDGER_DB"
        r = c.post("/terminals/add", data={"csrf": csrf_of(r.text), "terminal_id": "P1"})
        assert r.status_code == 503 and r.headers["x-error-code"] == "NO_LEDGER_DB"


# --------------------------------------------------------------------------------------
# CSRF and roles, on every new form
# --------------------------------------------------------------------------------------

POSTS = {
    "/coupons/issuer": {"issuer_id": "ACME", "name": "Acme"},
    "/coupons/define": {"coupon_def_id": "D1", "issuer_id": "ACME", "target_gtin": SOAP,
                        "amount": "1", "valid_from": "2027-03-01",
                        "valid_until": "2027-03-31"},
    "/members/enrol": {"card_no": "6200123456789"},
    "/terminals/add": {"terminal_id": "POS-9"},
    "/terminals/disable": {"terminal_id": "POS-1"},
    "/terminals/limits": {"terminal_id": "POS-1", "max_payment": "1"},
}


def _nothing_done(coupons, payments):
    assert coupons.book.issuers() == [] and coupons.book.definitions() == []
    assert coupons.con.execute("SELECT COUNT(*) FROM members").fetchone() == (0,)
    assert [t.id for t in payments.terminals.list()] == ["POS-1"]
    t = payments.terminals.get("POS-1")
    assert t.disabled_at is None and t.max_payment_minor is None


def test_a_post_without_its_csrf_token_is_refused_and_nothing_is_done(make_app, coupons,
                                                                      payments):
    payments.terminals.register("POS-1")
    app, _ = make_app(coupons="test://coupons", clock=coupons.clock_,
                      terminals=payments.opener)
    with TestClient(app) as c:
        login(c, "max")
        token_of(c, "/coupons")
        for path, form in POSTS.items():
            for bad in ({}, {"csrf": "not-the-token"}):
                r = c.post(path, data={**form, **bad})
                assert r.status_code == 403 and r.headers["x-error-code"] == "CSRF", path
    _nothing_done(coupons, payments)
    refused = {a["action"] for a in app.state.staff.actions() if a["result"] == "CSRF"}
    assert refused == {f"refused POST {p}" for p in POSTS}


def test_an_attendant_may_not_see_or_post(make_app, coupons, payments):
    payments.terminals.register("POS-1")
    app, _ = make_app(coupons="test://coupons", clock=coupons.clock_,
                      terminals=payments.opener)
    with TestClient(app) as c:
        login(c, "ann")
        lanes = c.get("/lanes").text
        token = csrf_of(lanes)
        for page in ("/coupons", "/members", "/terminals"):
            assert f'href="{page}"' not in lanes
            r = c.get(page)
            assert r.status_code == 403 and r.headers["x-error-code"] == "FORBIDDEN", page
        r = c.get("/coupons/clearing.csv")
        assert r.status_code == 403 and r.headers["x-error-code"] == "FORBIDDEN"
        for path, form in POSTS.items():
            r = c.post(path, data={**form, "csrf": token})
            assert r.status_code == 403 and r.headers["x-error-code"] == "FORBIDDEN", path
        login(c, "max")
        lanes = c.get("/lanes").text
        assert all(f'href="{p}"' in lanes for p in ("/coupons", "/members", "/terminals"))
        login(c, "ada")                                      # admin: every page
        assert all(c.get(p).status_code == 200 for p in ("/coupons", "/members",
                                                         "/terminals"))
    _nothing_done(coupons, payments)
    assert {a["staff"] for a in app.state.staff.actions() if a["result"] == "FORBIDDEN"} \
        == {"ann"}
