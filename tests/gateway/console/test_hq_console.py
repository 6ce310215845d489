"""The console across stores (`lanecore console --hq postgresql://…`): HQ's tables as
HQ's own ingest writes them (``Ingest.apply``, not raw SQL) and the chain's coupon
clearing written through the coupon book, shown on /hq per store — sales per day,
exit verdicts, alarms, thefts and mistakes caught, clearing per manufacturer — each a
table, a pygal chart and a CSV; the manager role; a console of HQ only hides the
store's pages. Real PostgreSQL (tests/helpers/chainfix.py)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re

import pytest
from consolefix import login
from starlette.testclient import TestClient

from chainfix import chain_root, pg_server, pg_url  # noqa: F401

D1 = dt.datetime(2026, 3, 4, 10, tzinfo=dt.timezone.utc).timestamp()
D2 = dt.datetime(2026, 3, 5, 23, 30, tzinfo=dt.timezone.utc).timestamp()


def _ev(store, kind, row, **body):
    return (f"{store}/{kind}/{row}", store, kind, {"id": row, **body})


def _pay(store, row, ref, amount, at, kind="payment"):
    return _ev(store, kind, row, merchant_ref=ref, order_no=ref.rsplit("-", 1)[0],
               attempt=1, amount_minor=amount, currency="CNY", method="auth_code",
               channel="wx", terminal="T1", scope="", at=at)


@pytest.fixture
def hq_db(pg_url):  # noqa: F811
    """HQ's database with two stores' events applied by HQ's ingest, and two stores'
    coupon redemptions in the chain's coupon book."""
    from lanecore.core.promo.coupons import CouponBook, Definition
    from lanecore.gateway.chain.hq import Ingest
    from lanecore.gateway.db.pg import CHAIN_LOCK, connect
    ing = Ingest(pg_url)
    events = [
        _pay("s1", 1, "s1o1-1", 1000, D1), _pay("s1", 2, "s1o2-1", 500, D1 + 60),
        _pay("s1", 3, "s1o2-1", 500, D1 + 120, kind="reversal"),
        _ev("s1", "refund", "s1o1-R1", refund_ref="s1o1-R1", merchant_ref="s1o1-1",
            order_no="s1o1", amount_minor=200, currency="CNY", channel="wx", at=D1 + 300),
        _pay("s1", 4, "s1o3-1", 700, D2), _pay("s2", 1, "s2o1-1", 2500, D2 + 60),
        _ev("s1", "verdict", 1, at=D1, gate="G1", order_no="s1o1", measured_g=500.0,
            verdict="ok", z=0.1, expected_g=500.0, band_g=20.0),
        _ev("s1", "verdict", 2, at=D1, gate="G1", order_no="s1o2", measured_g=300.0,
            verdict="short", z=-4.0, expected_g=400.0, band_g=20.0),
        _ev("s2", "verdict", 1, at=D2, gate="G9", order_no="s2o1", measured_g=900.0,
            verdict="ok", z=0.0, expected_g=900.0, band_g=20.0),
        _ev("s1", "alarm", 1, at=D1, lane="L1", order_no="s1o2", action="override",
            reason="weighed again", weight_g=None, staff="kim", principal="key:console",
            finding="theft"),
        _ev("s2", "alarm", 1, at=D2, lane="L9", order_no="s2o1", action="ack", reason="",
            weight_g=None, staff="lee", principal="key:console", finding="false_alarm"),
        _ev("s2", "audit", 1, order_no="s2o1", audit_kind="visual", outcome="discrepancy",
            reason="random", probability=0.05, at=D2, staff="lee", finding="mistake"),
        _ev("s2", "audit", 2, order_no="s2o2", audit_kind="visual", outcome="clean",
            reason="random", probability=0.05, at=D2, staff="lee", finding=None),
    ]
    assert ing.apply(events) == len(events)
    ing.close()
    con = connect(pg_url, lock_key=CHAIN_LOCK)
    book = CouponBook(con)
    book.add_issuer("M1", "Acme Foods")
    book.define(Definition(coupon_def_id="D1", issuer_id="M1", target_family="F1",
                           amount_off_minor=150, currency="CNY", valid_from=0,
                           valid_until=2**31 - 1))
    for store, order, cid, t in (("s1", "s1o1", "C1", int(D1)), ("s2", "s2o1", "C2", int(D2)),
                                 ("s2", "s2o9", "C3", int(D2))):
        book.issue("D1", f"cust-{cid}", coupon_id=cid, now=t - 10)
        book.reserve([cid], order_no=order, customer_id=f"cust-{cid}", now=t - 5)
        book.commit(order, {cid: 150}, store_id=store, now=t)
    book.reverse("s2o9", now=int(D2) + 10)
    con.close()
    return pg_url


def _table(html: str, view: str) -> list[list[str]]:
    sec = html.split(f'data-view="hq-{view}"', 1)[1].split("</section>", 1)[0]
    body = sec.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [re.findall(r"<td>(.*?)</td>", tr) for tr in re.findall(r"<tr>(.*?)</tr>", body)]


def test_the_hq_page_shows_every_store(make_app, hq_db):
    from lanecore.gateway.console.hqviews import HQAnalytics
    hq = HQAnalytics(hq_db)
    app, _ = make_app(hq=hq)
    with TestClient(app) as c:
        r = login(c, "max")
        assert r.status_code == 303 and r.headers["location"] == "/hq"
        page = c.get("/hq")
        assert page.status_code == 200
        html = page.text
        assert _table(html, "sales") == [
            ["2026-03-04", "s1", "2", "1500", "500", "200", "800"],
            ["2026-03-05", "s1", "1", "700", "0", "0", "700"],
            ["2026-03-05", "s2", "1", "2500", "0", "0", "2500"]]
        assert _table(html, "verdicts") == [["s1", "ok", "1"], ["s1", "short", "1"],
                                            ["s2", "ok", "1"]]
        assert _table(html, "alarms") == [["s1", "override", "1"], ["s2", "ack", "1"]]
        # the page says the codes as words (as the store's view does), the CSV keeps them
        assert _table(html, "caught") == [["s1", "exit lane", "theft", "1"],
                                          ["s2", "audit", "mistake", "1"],
                                          ["s2", "exit lane", "false alarm", "1"]]
        assert list(csv.reader(io.StringIO(c.get("/hq/caught.csv").text)))[1:] == [
            ["s1", "exit", "theft", "1"], ["s2", "audit", "mistake", "1"],
            ["s2", "exit", "false_alarm", "1"]]
        assert _table(html, "clearing") == [
            ["M1", "Acme Foods", "s1", "CNY", "1", "150", "0", "0"],
            ["M1", "Acme Foods", "s2", "CNY", "1", "150", "1", "150"]]
        for view in ("sales", "verdicts", "alarms", "caught", "clearing"):
            assert f'<svg data-testid="chart-hq-{view}"' in html, view
        svgs = re.findall(r"<svg\b.*?</svg>", html, flags=re.DOTALL)
        assert len(svgs) == 5
        for svg in svgs:          # static: no script, no pygal credits with their URLs
            assert "<script" not in svg and "<!--" not in svg

        # one day only (UTC days)
        day = c.get("/hq", params={"from": "2026-03-05", "to": "2026-03-05"}).text
        assert [r[1] for r in _table(day, "sales")] == ["s1", "s2"]
        assert _table(day, "clearing") == [
            ["M1", "Acme Foods", "s2", "CNY", "1", "150", "1", "150"]]

        got = c.get("/hq/sales.csv")
        assert got.status_code == 200 and got.headers["content-type"].startswith("text/csv")
        assert list(csv.reader(io.StringIO(got.text))) == [
            ["day", "store", "payments", "payment_minor", "reversal_minor", "refund_minor",
             "net_minor"],
            ["2026-03-04", "s1", "2", "1500", "500", "200", "800"],
            ["2026-03-05", "s1", "1", "700", "0", "0", "700"],
            ["2026-03-05", "s2", "1", "2500", "0", "0", "2500"]]
        cl = list(csv.reader(io.StringIO(c.get("/hq/clearing.csv").text)))
        assert cl[1:] == [["M1", "Acme Foods", "s1", "CNY", "1", "150", "0", "0"],
                          ["M1", "Acme Foods", "s2", "CNY", "1", "150", "1", "150"]]
        assert c.get("/hq/nothing.csv").status_code == 404
        assert c.get("/hq", params={"from": "2026-13-01"}).status_code == 400

        # HQ only: the store's pages are hidden and answer 404
        assert 'href="/hq"' in html and 'href="/lanes"' not in html
        assert 'href="/analytics"' not in html
        for path in ("/lanes", "/alarms", "/analytics", "/products", "/floor.json"):
            assert c.get(path).status_code == 404, path
        assert c.get("/", follow_redirects=False).headers["location"] == "/hq"

        # the manager role: an attendant may not see it
        login(c, "ann")
        assert c.get("/hq").status_code == 403
        assert c.get("/hq/sales.csv").status_code == 403


def test_hq_beside_a_store_and_no_hq(make_app, hq_db, tmp_path):
    from lanecore.gateway.console.hqviews import HQAnalytics
    app, _ = make_app(hq=HQAnalytics(hq_db), store_db=tmp_path / "store.db",
                      data_dir=tmp_path / "c1")
    with TestClient(app) as c:
        login(c, "max")
        lanes = c.get("/lanes")
        assert lanes.status_code == 200
        assert 'href="/hq"' in lanes.text and 'href="/analytics"' in lanes.text
        assert len(_table(c.get("/hq").text, "sales")) == 3
    app, _ = make_app(data_dir=tmp_path / "c2")
    with TestClient(app) as c:
        login(c, "max")
        assert 'href="/hq"' not in c.get("/lanes").text
        assert c.get("/hq").status_code == 404


def test_hq_unreachable_is_shown_not_crashed(make_app):
    from lanecore.gateway.console.hqviews import HQAnalytics
    app, _ = make_app(hq=HQAnalytics("postgresql://nobody:secret@127.0.0.1:1/none"))
    with TestClient(app) as c:
        login(c, "max")
        page = c.get("/hq")
        assert page.status_code == 200
        assert 'data-code="DB_UNAVAILABLE"' in page.text and "secret" not in page.text
        r = c.get("/hq/sales.csv")
        assert r.status_code == 503 and "secret" not in r.text


def test_lanecore_console_hq_serves_the_chain(tmp_path, hq_db):
    """`lanecore console --hq URL` as a process: the ready line, a manager's login
    landing on /hq, the store's pages hidden, the password nowhere; a URL that is not
    PostgreSQL's is BAD_DB_URL."""
    import json
    import os
    import subprocess
    import sys

    import httpx
    from clirun import lanecore
    from consolefix import csrf_of
    pw = tmp_path / "pw"
    pw.write_text("a long enough secret\n")
    os.chmod(pw, 0o600)
    d = tmp_path / "console"
    lanecore("console", "user", "add", "zoe", "--role", "manager", "--password-file", pw,
             "--data-dir", d)
    bad = lanecore("console", "--hq", "sqlite:///x.db", "--data-dir", d, check=False)
    assert bad.returncode == 2 and "BAD_DB_URL" in bad.stderr
    log = tmp_path / "console.log"
    proc = subprocess.Popen([sys.executable, "-m", "lanecore", "console", "--hq", hq_db,
                             "--bind", "127.0.0.1:0", "--json", "--data-dir", str(d)],
                            stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True)
    try:
        ready = json.loads(proc.stdout.readline() or "{}")
        assert ready.get("ready") is True, log.read_text()
        with httpx.Client(base_url=ready["url"], timeout=10) as c:
            page = c.get("/login")
            r = c.post("/login", data={"username": "zoe", "password": "a long enough secret",
                                       "csrf": csrf_of(page.text)})
            assert r.status_code == 303 and r.headers["location"] == "/hq"
            hq = c.get("/hq")
            assert hq.status_code == 200 and _table(hq.text, "sales")[0][:2] == [
                "2026-03-04", "s1"]
            assert c.get("/lanes").status_code == 404
    finally:
        proc.terminate()
        proc.wait(10)
    creds = hq_db.split("://", 1)[1].split("@", 1)[0]       # user:password
    assert ":" in creds and creds.partition(":")[2]
    for text in (log.read_text(), json.dumps(ready)):
        assert creds + "@" not in text and hq_db not in text
