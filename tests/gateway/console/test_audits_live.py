"""The audits page and the alarm history against a real `lanecore serve --curve`: an
alarm resolved (with a finding) before the console started is on /alarms with who did
what (``alarm.list``); a handheld's order picked by ``audit.decide`` reaches the
console's floor as an ``audit`` event, is on /audits with its items, is recorded
through the page's form, and ``audit.get`` at the service shows the console user as
``staff`` with the finding."""

from __future__ import annotations

import shutil
import time

import pytest
from consolefix import csrf_of, login, wait_for
from curvefix import enrol
from starlette.testclient import TestClient

from lanecore.gateway.net.client import Client, CurveKeys

pytestmark = pytest.mark.slow


@pytest.fixture
def store(serve, tmp_path, store_template):
    """A --curve service (store risk high) with the console enrolled (attendant,
    manager) and a test identity for the handheld, the lane and the payments;
    (served, console keys, test client, a client as the console)."""
    d = tmp_path / "svc"
    shutil.copytree(store_template[0], d)
    keys = enrol(d, tmp_path / "console-keys", "console", "attendant,manager")
    s = serve("--store-risk", "high", data_dir=d, curve_roles="lane,handheld,payments")
    console = CurveKeys(*keys)
    with Client(s.endpoint, curve=CurveKeys(*s.curve), timeout_s=10.0) as c, \
            Client(s.endpoint, curve=console, timeout_s=10.0) as staff:
        yield s, console, c, staff


def _paid_order(s, c, device: str = "HH-7") -> tuple[str, list[dict]]:
    items = s.items(2)
    basket = c.basket_open(device)["basket"]["basket_id"]
    c.basket_add(basket, [it["gtin"] for it in items])
    order_no = c.basket_submit(basket)["order_no"]
    c.call("order.status", order_no=order_no, status="paid")
    return order_no, items


def test_history_audit_queue_and_a_result_recorded_in_the_page(store, make_app):
    s, console, c, staff = store
    # before the console starts: an exit alarm, overridden with a finding
    order_no, items = _paid_order(s, c)
    expected = sum(float(it["unit_weight_g"]) for it in items)
    c.weigh_config("EXIT-4", fs_hz=1000, e_g=5)
    assert c.verify_order("EXIT-4", order_no=order_no,
                          measured_g=expected + 700.0)["verdict"] == "over"
    staff.call("alarm.resolve", lane="EXIT-4", order_no=order_no, action="override",
               reason="a bag under the trolley", finding="theft", staff="zoe")

    app, _ = make_app(service=s.endpoint, events=s.events, curve=console)
    with TestClient(app) as web:
        hub = app.state.hub
        wait_for(lambda: hub.seeded, "the history was read")
        wait_for(lambda: hub.connected, "the events socket connected")
        login(web, "ann")
        page = web.get("/alarms").text
        assert f'data-testid="alarm-row" data-order="{order_no}"' in page
        row = page.split(f'data-order="{order_no}"')[1].split("</tr>")[0]
        assert 'data-action="override" data-staff="zoe"' in row
        assert "a bag under the trolley" in row and "theft" in row
        time.sleep(0.3)             # a SUB joins asynchronously: let it subscribe

        # a handheld's paid orders until the service picks one for a check
        picked = None
        for _ in range(80):
            no, bought = _paid_order(s, c)
            got = c.call("audit.decide", order_no=no, shopper="S-42")["audit"]
            if got["state"] == "pending":
                picked = got
                break
        assert picked is not None, "no order was picked for an audit in 80"
        no = picked["order_no"]
        wait_for(lambda: no in hub.floor.audits, "the audit event reached the console")
        page = web.get("/audits")
        assert f'data-testid="audit-row" data-order="{no}" data-state="pending"' in page.text
        for it in picked["items"]:          # a rescan's lines (a visual check: none)
            assert it["gtin"] in page.text
        gtin = bought[0]["gtin"]
        r = web.post("/audits/record", data={
            "csrf": csrf_of(page.text), "order_no": no, "outcome": "discrepancy",
            "finding": "theft", "found_gtin": [gtin, ""], "found_qty": ["1", ""]},
            follow_redirects=False)
        assert r.status_code == 303, r.text[-2000:]
        audit = c.call("audit.get", order_no=no)["audit"]
        assert audit["state"] == "done" and audit["staff"] == "ann"
        assert audit["outcome"] == "discrepancy" and audit["finding"] == "theft"
        assert audit["found"] == [{"gtin": gtin.zfill(14), "qty": 1}]   # GTIN-14
        done = web.get("/audits").text
        assert f'data-testid="audit-done" data-order="{no}"' in done
        assert f'data-testid="audit-row" data-order="{no}"' not in done
        # the same again: the service answers the first record; another result is
        # refused and the page shows the code
        r = web.post("/audits/record", data={
            "csrf": csrf_of(done), "order_no": no, "outcome": "clean"},
            follow_redirects=False)
        assert r.headers.get("x-error-code") == "AUDIT_CONFLICT", r.text[-1500:]
        assert 'data-code="AUDIT_CONFLICT"' in r.text
        wait_for(lambda: hub.floor.audits[no].get("state") == "done", "the recorded event")
