"""The audits page, the alarm finding and the alarm history against a stand-in for the
service (the console's Upstream routed to a fake that answers ``audit.list``,
``audit.record``, ``alarm.list`` and ``alarm.resolve`` as docs/protocol.md says):
role gating and CSRF on the result form, what the console sends (``staff`` is the
session's user), service errors shown with their code, the Floor seeded from
``alarm.list`` before any event, and the audit events folded in live."""

from __future__ import annotations

import copy
import html
import time

import pytest
from consolefix import csrf_of, login
from starlette.testclient import TestClient

from lanecore.gateway.console.app import Upstream
from lanecore.gateway.console.live import Floor
from lanecore.gateway.net.client import ServiceError

T0 = 1_800_000_000.0


def _audit(order_no, state="pending", **kw):
    a = {"order_no": order_no, "audit": True, "kind": "rescan",
         "items": [{"line": 1, "gtin": "05000000000012", "name": "Tea", "qty": 2},
                   {"line": 3, "gtin": "05000000000029", "name": "Jam", "qty": 1}],
         "reason": "random", "probability": 0.1, "state": state, "outcome": None,
         "finding": None, "found": [], "staff": None, "requested_at": T0,
         "recorded_at": None}
    a.update(kw)
    return a


class FakeService:
    """What the verification service answers, for the ops the console calls."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.audits = {"HH1-0001": _audit("HH1-0001"),
                       "HH1-0002": _audit("HH1-0002", kind="visual"),
                       "HH1-0000": _audit("HH1-0000", "done", outcome="discrepancy",
                                          finding="mistake", staff="zoe",
                                          found=[{"gtin": "05000000000029", "qty": 1}],
                                          recorded_at=T0 - 60)}
        self.fail: dict[str, str] = {}
        self.alarms = {"alarms": [{
            "verdict_id": 11, "at": T0 - 3600, "lane": "EXIT-2", "order_no": "HH1-0100",
            "verdict": "over", "measured_g": 1800.0, "expected_g": 1000.0, "band_g": 20.0,
            "z": 9.1, "explanations": [{"kind": "extra", "gtin": "05000000000036",
                                        "qty": 1, "score": 0.8}],
            "actions": [{"action_id": 5, "at": T0 - 3500, "lane": "EXIT-2",
                         "order_no": "HH1-0100", "action": "ack", "reason": "",
                         "staff": "zoe", "principal": "key:console", "finding": None},
                        {"action_id": 6, "at": T0 - 3400, "lane": "EXIT-2",
                         "order_no": "HH1-0100", "action": "override",
                         "reason": "receipt checked", "staff": "bob",
                         "principal": "key:console", "finding": "false_alarm"}]}],
            "device_alarms": [{"event_id": 77, "at": T0 - 1800, "lane": "EXIT-3",
                               "device": "eas_gate", "kind": "alarm", "code": "EAS",
                               "message": "live tag"}]}

    def __call__(self, op: str, fields: dict) -> dict:
        self.calls.append((op, copy.deepcopy(fields)))
        if op in self.fail:
            code = self.fail[op]
            raise ServiceError(code, f"the service says {code}", {"code": code})
        if op == "audit.list":
            state = fields.get("state", "pending")
            out = [a for a in self.audits.values() if state == "all" or a["state"] == state]
            done = [a for a in self.audits.values() if a["state"] == "done"]
            bad = sum(a["outcome"] == "discrepancy" for a in done)
            return {"ok": True, "audits": out[::-1], "stats": {
                "audits": len(done), "discrepancies": bad,
                "rate": bad / len(done) if done else 0.0, "by_kind": {}}}
        if op == "audit.record":
            a = self.audits[fields["order_no"]]
            a.update(state="done", outcome=fields["outcome"], found=fields["found"],
                     finding=fields.get("finding"), staff=fields["staff"],
                     recorded_at=T0 + 10)
            return {"ok": True, "audit": copy.deepcopy(a)}
        if op == "alarm.list":
            return {"ok": True, **copy.deepcopy(self.alarms)}
        if op == "alarm.resolve":
            return {"ok": True, "resolved": {"action_id": 99, "at": T0, "principal":
                                             "key:console", **fields}}
        raise ServiceError("UNKNOWN_OP", op)


@pytest.fixture
def fake(monkeypatch):
    svc = FakeService()

    def call(self, op, fields):
        assert self.endpoint == "test://service"
        return svc(op, fields)
    monkeypatch.setattr(Upstream, "_call", call)
    return svc


def _seeded(app, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while app.state.hub.seeded == 0:
        assert time.monotonic() < deadline, "the history was never read"
        time.sleep(0.02)


def _record(c, order_no, **form):
    page = c.get("/audits")
    data = {"csrf": csrf_of(page.text), "order_no": order_no, **form}
    return c.post("/audits/record", data=data, follow_redirects=False)


def test_the_page_shows_the_queue_the_recorded_and_the_stats(make_app, fake):
    app, _ = make_app(service="test://service")
    with TestClient(app) as c:
        login(c, "ann")
        page = c.get("/audits")
        assert page.status_code == 200
        text = page.text
        for no in ("HH1-0001", "HH1-0002"):
            assert f'data-testid="audit-row" data-order="{no}" data-state="pending"' in text
        assert "05000000000012" in text and "Tea" in text and "× 2" in text
        assert 'data-testid="audit-record"' in text and 'name="found_gtin"' in text
        done = text.split('data-testid="audit-done" data-order="HH1-0000"')[1]
        assert 'data-finding="mistake"' in done[:200]
        assert ">zoe<" in done.split("</tr>")[0]
        stats = text.split('data-testid="audit-stats"')[1].split("</p>")[0]
        assert 'data-field="audits">1<' in stats and 'data-field="rate">100.0<' in stats
        assert ("audit.list", {"state": "pending", "limit": 200}) in fake.calls


@pytest.mark.parametrize("user", ["ann", "max"])
def test_an_attendant_and_a_manager_record_a_result_as_themselves(make_app, fake, user):
    app, _ = make_app(service="test://service")
    with TestClient(app) as c:
        login(c, user)
        r = _record(c, "HH1-0001", outcome="clean",
                    found_gtin=["05000000000012", "05000000000029", ""],
                    found_qty=["", "", ""], finding="")
        assert r.status_code == 303 and r.headers["location"] == "/audits?recorded=HH1-0001"
        assert fake.calls[-1] == ("audit.record", {"order_no": "HH1-0001",
                                                   "outcome": "clean", "found": [],
                                                   "staff": user})
        r = _record(c, "HH1-0002", outcome="discrepancy", finding="theft",
                    found_gtin=["05000000000012", "05000000000029", "04000000000015"],
                    found_qty=["3", "0", "1"])
        assert r.status_code == 303
        assert fake.calls[-1] == ("audit.record", {
            "order_no": "HH1-0002", "outcome": "discrepancy", "staff": user,
            "finding": "theft", "found": [{"gtin": "05000000000012", "qty": 3},
                                          {"gtin": "04000000000015", "qty": 1}]})
        # the floor has it (the page's live copy), and the actions log the staff
        assert app.state.hub.floor.audits["HH1-0002"]["staff"] == user
        acts = [a for a in app.state.staff.actions(limit=20) if a["action"] == "audit.record"]
        assert acts and all(a["staff"] == user for a in acts)
        page = c.get("/audits?recorded=HH1-0002").text
        assert 'data-testid="audit-recorded" data-order="HH1-0002"' in page
        assert 'data-testid="audit-row" data-order="HH1-0002"' not in page


def test_the_result_form_needs_its_token_a_session_and_a_valid_result(make_app, fake):
    app, _ = make_app(service="test://service")
    with TestClient(app) as c:
        r = c.post("/audits/record", data={"order_no": "HH1-0001", "outcome": "clean"},
                   follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login"
        login(c, "ann")
        r = c.post("/audits/record", data={"order_no": "HH1-0001", "outcome": "clean",
                                           "csrf": "forged"}, follow_redirects=False)
        assert r.status_code == 403 and r.headers["x-error-code"] == "CSRF"
        for form, code in (
                ({"outcome": "discrepancy", "found_gtin": "05000000000012",
                  "found_qty": "1"}, "FINDING_REQUIRED"),
                ({"outcome": "discrepancy", "finding": "theft", "found_gtin": "",
                  "found_qty": ""}, "FOUND_REQUIRED"),
                ({"outcome": "discrepancy", "finding": "false_alarm",
                  "found_gtin": "05000000000012", "found_qty": "1"}, "FINDING_REQUIRED"),
                ({"outcome": "clean", "finding": "theft"}, "BAD_FIELD"),
                ({"outcome": "discrepancy", "finding": "theft", "found_gtin": "12AB",
                  "found_qty": "1"}, "BAD_FIELD"),
                ({"outcome": "maybe"}, "BAD_FIELD")):
            r = _record(c, "HH1-0001", **form)
            assert r.status_code == 400 and r.headers["x-error-code"] == code, (form, r.text)
            assert f'data-code="{code}"' in r.text
        assert not [op for op, _f in fake.calls if op == "audit.record"]


def test_a_service_error_is_shown_with_its_code(make_app, fake):
    app, _ = make_app(service="test://service")
    with TestClient(app) as c:
        login(c, "ann")
        fake.fail["audit.record"] = "AUDIT_CONFLICT"
        r = _record(c, "HH1-0001", outcome="clean")
        assert r.status_code == 409 and r.headers["x-error-code"] == "AUDIT_CONFLICT"
        assert 'data-testid="audit-problem" data-code="AUDIT_CONFLICT"' in r.text
        assert "<code>AUDIT_CONFLICT</code>" in r.text
        fake.fail["audit.record"] = "SOMETHING_NEW"
        r = _record(c, "HH1-0001", outcome="clean")
        assert r.status_code == 400 and "SOMETHING_NEW" in r.text
        r = c.post("/audits/record", data={"csrf": csrf_of(c.get("/audits").text),
                                           "order_no": "HH1-0001", "outcome": "clean"},
                   headers={"accept": "application/json"})
        assert r.json()["error"]["code"] == "SOMETHING_NEW"
        fake.fail["audit.list"] = "UNREACHABLE"
        page = c.get("/audits").text
        assert 'data-code="UNREACHABLE" data-testid="audit-unavailable"' in page


def test_without_a_service_the_page_says_unavailable(make_app):
    app, _ = make_app()
    with TestClient(app) as c:
        login(c, "ann")
        page = c.get("/audits")
        assert page.status_code == 200
        assert 'data-code="UNAVAILABLE" data-testid="audit-unavailable"' in page.text


def test_the_alarm_forms_send_a_finding(make_app, fake):
    app, _ = make_app(service="test://service")
    with TestClient(app) as c:
        login(c, "ann")
        _seeded(app)
        page = c.get("/alarms").text
        assert 'data-testid="alarm-finding"' in page and 'value="false_alarm"' in page
        token = csrf_of(page)
        r = c.post("/alarms/resolve", data={
            "csrf": token, "lane": "EXIT-2", "order_no": "HH1-0100", "action": "override",
            "reason": "bag checked", "finding": "theft"}, follow_redirects=False)
        assert r.status_code == 303
        assert fake.calls[-1] == ("alarm.resolve", {
            "lane": "EXIT-2", "order_no": "HH1-0100", "action": "override",
            "staff": "ann", "reason": "bag checked", "finding": "theft"})
        r = c.post("/alarms/resolve", data={
            "csrf": token, "lane": "EXIT-2", "order_no": "HH1-0100", "action": "ack",
            "finding": ""}, follow_redirects=False)
        assert r.status_code == 303 and "finding" not in fake.calls[-1][1]
        r = c.post("/alarms/resolve", data={
            "csrf": token, "lane": "EXIT-2", "order_no": "HH1-0100", "action": "ack",
            "finding": "aliens"}, follow_redirects=False)
        assert r.status_code == 400 and r.headers["x-error-code"] == "BAD_FIELD"
        alarm = app.state.hub.floor.alarm("EXIT-2", "HH1-0100")
        assert [(a["action_id"], a["finding"]) for a in alarm["actions"]] == [
            (5, None), (6, "false_alarm"), (99, "theft")]


def test_the_floor_is_seeded_from_alarm_list_before_any_event(make_app, fake):
    app, _ = make_app(service="test://service")
    with TestClient(app) as c:
        _seeded(app)
        assert ("alarm.list", {"limit": 500}) in fake.calls
        login(c, "ann")
        page = c.get("/alarms").text
        assert 'data-testid="alarm-row" data-order="HH1-0100" data-lane="EXIT-2"' in page
        assert 'data-lane="EXIT-3"' in page                    # the EAS gate's alarm
        row = page.split('data-order="HH1-0100"')[1].split("</tr>")[0]
        assert 'data-testid="alarm-action" data-action="ack" data-staff="zoe"' in row
        override = row.split('data-action="override" data-staff="bob"')[1]
        assert "receipt checked" in override and "false alarm" in html.unescape(override)
        assert "No recent alarm." not in page
        # the live copy of an action it already has is not added twice; a reseed
        # (a reconnect) adds nothing either
        hub = app.state.hub
        hub.feed("alarm", {"resolved": fake.alarms["alarms"][0]["actions"][1]})
        c.portal.call(hub.seed)
        alarm = hub.floor.alarm("EXIT-2", "HH1-0100")
        assert [a["action_id"] for a in alarm["actions"]] == [5, 6]
        assert alarm["status"] == "override"
        snap = c.get("/floor.json").json()
        assert {a["order_no"] for a in snap["audits"]} == {"HH1-0000", "HH1-0001",
                                                           "HH1-0002"}


def test_the_history_is_read_again_while_the_service_is_away(make_app, fake, monkeypatch):
    from lanecore.gateway.console.live import Hub
    monkeypatch.setattr(Hub, "HISTORY_RETRY_S", (0.05, 0.05, 0.05))
    fake.fail["alarm.list"] = "UNREACHABLE"
    app, _ = make_app(service="test://service")
    with TestClient(app):
        time.sleep(0.08)
        assert app.state.hub.seeded == 0
        del fake.fail["alarm.list"]
        _seeded(app)
        assert app.state.hub.floor.alarm("EXIT-2", "HH1-0100") is not None


def test_the_floor_folds_audit_events():
    floor = Floor(lambda: T0)
    msg = floor.apply("audit", {"requested": _audit("HH1-7")})
    assert msg["audit"]["state"] == "pending" and msg["topic"] == "audit"
    msg = floor.apply("audit", {"recorded": _audit("HH1-7", "done", outcome="clean",
                                                   staff="ann")})
    assert msg["audit"]["staff"] == "ann"
    floor.seed_audits({"audits": [_audit("HH1-8"), _audit("HH1-7")]})   # an old read
    assert floor.audits["HH1-7"]["state"] == "done"                     # not undone
    assert [a["order_no"] for a in floor.snapshot()["audits"]] == ["HH1-8", "HH1-7"]
    assert floor.apply("audit", {"requested": "nonsense"}) == {
        "topic": "audit", "event": {"requested": "nonsense"}}


def test_the_caught_view_is_shown_in_chinese(make_app):
    class Caught:
        def views(self):
            return [("caught", "Thefts and mistakes caught")]

        def view(self, name, since, until):
            return {"title": "Thefts and mistakes caught", "columns": ["source", "finding",
                                                                      "n"],
                    "rows": [["audit", "theft", 2], ["exit", "false_alarm", 1]],
                    "svg": '<svg><text class="title">Thefts and mistakes caught</text>'
                           '<text>theft</text></svg>'}
    app, _ = make_app(analytics=Caught())
    with TestClient(app) as c:
        login(c, "max")
        c.post("/lang", data={"csrf": csrf_of(c.get("/lanes").text), "lang": "zh_Hans"})
        page = c.get("/analytics").text
        assert "Thefts and mistakes caught" not in page
        assert "查获的盗窃与失误" in page and "<td>盗窃</td>" in page and "<text>盗窃</text>" in page
        assert "误报" in page


def test_the_history_is_read_again_when_the_events_socket_reconnects(tmp_path):
    """A restarted service (its PUB socket gone and bound again): events were lost
    meanwhile, so the hub reads alarm.list and audit.list again."""
    import asyncio

    import zmq
    import zmq.asyncio

    from lanecore.gateway.console.live import Hub

    endpoint = f"ipc://{tmp_path}/events.ipc"
    asked: list[str] = []

    async def history(op, **fields):
        asked.append(op)
        return {"alarms": [], "device_alarms": []} if op == "alarm.list" else {
            "audits": [_audit("HH1-9")], "stats": {}}

    async def main():
        ctx = zmq.asyncio.Context()
        pub = ctx.socket(zmq.PUB)
        pub.bind(endpoint)
        hub = Hub(endpoint, floor=Floor(lambda: T0), ctx=ctx, history=history)
        await hub.start()
        try:
            async def until(pred, what):
                for _ in range(400):
                    if pred():
                        return
                    await asyncio.sleep(0.025)
                raise AssertionError(what)
            await until(lambda: hub.seeded == 1 and hub.connected, "first read")
            await asyncio.sleep(0.3)
            assert asked == ["alarm.list", "audit.list"]
            pub.close(0)                                   # the service stops …
            await asyncio.sleep(0.3)
            pub = ctx.socket(zmq.PUB)                      # … and comes back
            pub.bind(endpoint)
            await until(lambda: hub.seeded == 2, "read again after the reconnect")
            assert asked == ["alarm.list", "audit.list"] * 2
            assert "HH1-9" in hub.floor.audits
        finally:
            await hub.stop()
            pub.close(0)
            ctx.term()
    asyncio.run(main())
