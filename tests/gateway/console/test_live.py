"""The console against a real `lanecore serve --curve` (the `serve` fixture of
tests/gateway/conftest.py): alarms from the service's events, their ack, override
and rescan recorded in console.db and in the service's alarm_actions, and the
server-sent event stream of a real uvicorn server delivering settled and verdict
events after a weigh.frame sequence."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time

import httpx
import numpy as np
import pytest
from consolefix import csrf_of, login, wait_for
from curvefix import enrol
from starlette.testclient import TestClient

from lanecore.gateway.net.client import Client, CurveKeys

pytestmark = pytest.mark.slow


def _frames(weight_g: float, n_frames: int = 12, *, n: int = 50, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [weight_g + rng.normal(0.0, 0.3, n) for _ in range(n_frames)]


@pytest.fixture
def store(serve, tmp_path, store_template):
    """A --curve service with the console enrolled (attendant, manager) and a test
    identity for the lane and the handheld; (served, console keys, test client)."""
    d = tmp_path / "svc"
    shutil.copytree(store_template[0], d)
    keys = enrol(d, tmp_path / "console-keys", "console", "attendant,manager")
    s = serve(data_dir=d, curve_roles="lane,handheld")
    console = CurveKeys(*keys)
    with Client(s.endpoint, curve=CurveKeys(*s.curve), timeout_s=10.0) as c:
        yield s, console, c


def _alarmed_order(s, c, lane: str) -> str:
    items = s.items(2)
    basket = c.basket_open("HH-1")["basket"]["basket_id"]
    c.basket_add(basket, [it["gtin"] for it in items])
    order_no = c.basket_submit(basket)["order_no"]
    expected = sum(float(it["unit_weight_g"]) for it in items)
    c.weigh_config(lane, fs_hz=1000, e_g=5)
    verdict = c.verify_order(lane, order_no=order_no, measured_g=expected + 800.0)
    assert verdict["verdict"] == "over"
    return order_no


def test_alarm_ack_override_rescan_are_recorded_here_and_at_the_service(store, make_app):
    s, console, c = store
    app, _ = make_app(service=s.endpoint, events=s.events, curve=console)
    with TestClient(app) as web:
        hub = app.state.hub
        wait_for(lambda: hub.connected, "the events socket connected")
        time.sleep(0.3)            # a SUB joins asynchronously: let it subscribe
        order_no = _alarmed_order(s, c, "EXIT-9")
        alarm = wait_for(lambda: hub.floor.alarm("EXIT-9", order_no), "the alarm arrived")
        assert alarm["cause"] == "weight_over" and alarm["explanations"]
        login(web, "ann")
        page = web.get("/alarms")
        assert f'data-testid="alarm-row" data-order="{order_no}"' in page.text
        assert 'data-testid="alarm-ack"' in page.text
        assert 'data-testid="alarm-override"' in page.text
        token = csrf_of(page.text)
        form = {"lane": "EXIT-9", "order_no": order_no, "csrf": token}
        r = web.post("/alarms/resolve", data={**form, "action": "ack"},
                     follow_redirects=False)
        assert r.status_code == 303
        r = web.post("/alarms/resolve", data={**form, "action": "override"})
        assert r.status_code == 400 and r.headers["x-error-code"] == "REASON_REQUIRED"
        r = web.post("/alarms/resolve", data={**form, "action": "override",
                                              "reason": "bag of the shop's own",
                                              "weight_g": "1234.5"},
                     follow_redirects=False)
        assert r.status_code == 303
        r = web.post("/alarms/resolve", data={**form, "action": "rescan"},
                     headers={"accept": "application/json"})
        assert r.status_code == 200 and r.json()["resolved"]["staff"] == "ann"
        r = web.post("/alarms/resolve", data={**form, "lane": "EXIT-9",
                                              "order_no": "NO-SUCH-ORDER", "action": "ack"})
        assert r.headers["x-error-code"] == "UNKNOWN_ORDER"
        assert "ann" in web.get("/alarms").text
        # a manager too; an attendant's session cannot reach a manager page
        assert web.get("/products", follow_redirects=False).status_code == 403
    con = sqlite3.connect(s.data_dir / "store.db")
    rows = con.execute("SELECT lane, order_no, action, reason, weight_g, staff, principal "
                       "FROM alarm_actions ORDER BY action_id").fetchall()
    con.close()
    assert rows == [
        ("EXIT-9", order_no, "ack", "", None, "ann", "key:console"),
        ("EXIT-9", order_no, "override", "bag of the shop's own", 1234.5, "ann",
         "key:console"),
        ("EXIT-9", order_no, "rescan", "", None, "ann", "key:console")]
    acts = [(a["staff"], a["role"], a["action"], a["target"], a["detail"],
             a["result"].split(" ")[0]) for a in reversed(app.state.staff.actions(
                 prefix="alarm."))]
    assert acts == [
        ("ann", "attendant", "alarm.ack", f"EXIT-9/{order_no}", None, "ok"),
        ("ann", "attendant", "alarm.override", f"EXIT-9/{order_no}", None,
         "REASON_REQUIRED"),
        ("ann", "attendant", "alarm.override", f"EXIT-9/{order_no}",
         "bag of the shop's own", "ok"),
        ("ann", "attendant", "alarm.rescan", f"EXIT-9/{order_no}", None, "ok"),
        ("ann", "attendant", "alarm.ack", "EXIT-9/NO-SUCH-ORDER", None, "UNKNOWN_ORDER")]
    assert alarm["status"] == "rescan" and [a["staff"] for a in alarm["actions"]] == \
        ["ann"] * 3


def test_the_event_stream_delivers_settled_and_verdict_from_a_real_service(store, make_app):
    import uvicorn
    s, console, c = store
    app, _ = make_app(service=s.endpoint, events=s.events, curve=console)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                            lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, "uvicorn started")
        port = server.servers[0].sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30.0) as web:
            assert web.get("/healthz").json()["ok"] is True
            # the stream needs a session
            assert web.get("/events/stream", follow_redirects=False).status_code == 303
            login(web, "ann")
            wait_for(lambda: app.state.hub.connected, "the events socket connected")
            seen: dict = {}

            def read():
                with web.stream("GET", "/events/stream") as r:
                    assert r.headers["content-type"].startswith("text/event-stream")
                    topic = None
                    for line in r.iter_lines():
                        if line.startswith("event: "):
                            topic = line[7:]
                        elif line.startswith("data: ") and topic:
                            seen.setdefault(topic, []).append(json.loads(line[6:]))
                            if "verdict" in seen:
                                return
            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            wait_for(lambda: "snapshot" in seen, "the stream's snapshot")
            time.sleep(0.3)
            items = s.items(1)
            basket = c.basket_open("HH-2")["basket"]["basket_id"]
            c.basket_add(basket, [items[0]["gtin"]])
            order_no = c.basket_submit(basket)["order_no"]
            c.weigh_config("EXIT-7", fs_hz=1000, e_g=5)
            weight = float(items[0]["unit_weight_g"])
            for k, x in enumerate(_frames(weight)):
                c.weigh_frame("EXIT-7", k, samples=x)
            c.verify_order("EXIT-7", order_no=order_no)
            reader.join(30)
            assert not reader.is_alive(), seen.keys()
        settled = [m for m in seen["settled"] if m["event"]["lane"] == "EXIT-7"]
        assert settled and abs(settled[-1]["lane"]["weight_g"] - weight) < 1.0
        assert settled[-1]["lane"]["lane"] == "EXIT-7"
        verdict = seen["verdict"][-1]
        assert verdict["event"]["order_no"] == order_no
        assert verdict["lane"]["verdict"] == "ok" and verdict["lane"]["order_no"] == order_no
    finally:
        server.should_exit = True
        thread.join(20)
