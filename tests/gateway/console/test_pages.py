"""The pages that read: analytics against a stand-in with the Analytics interface
(date filter, chart hook, CSV), the live floor state from events fed to the hub
(the audits page: test_audits.py)."""

from __future__ import annotations

import datetime as dt

from consolefix import login
from starlette.testclient import TestClient


class StandIn:
    """What ``lanecore.gateway.console.analytics.Analytics`` offers."""

    def __init__(self):
        self.asked = []

    def views(self):
        return [("sales_by_day", "Sales by day"), ("alarms_per_lane", "Alarms per lane")]

    def view(self, name, since, until):
        self.asked.append((name, since, until))
        return {"title": dict(self.views())[name], "columns": ["day", "orders"],
                "rows": [["2026-12-01", 3], ["2026-12-02", 5]],
                "svg": f'<svg xmlns="http://www.w3.org/2000/svg" data-v="{name}"></svg>'}

    def csv(self, name, since, until):
        return "day,orders\n2026-12-01,3\n"


def test_analytics_lists_views_with_charts_filter_and_csv(make_app):
    stand_in = StandIn()
    app, _ = make_app(analytics=stand_in)
    with TestClient(app) as c:
        login(c, "max")
        page = c.get("/analytics?from=2026-12-01&to=2026-12-31")
        assert page.status_code == 200
        for name in ("sales_by_day", "alarms_per_lane"):
            assert f'data-testid="chart-{name}"' in page.text
            assert f'data-v="{name}"' in page.text
            assert f"/analytics/{name}.csv?from=2026-12-01&amp;to=2026-12-31" in page.text
        assert stand_in.asked[-1] == ("alarms_per_lane", dt.date(2026, 12, 1),
                                      dt.date(2026, 12, 31))
        r = c.get("/analytics/sales_by_day.csv?from=2026-12-01")
        assert r.status_code == 200 and r.text.startswith("day,orders")
        assert r.headers["content-type"].startswith("text/csv")
        assert c.get("/analytics/nothing.csv").headers["x-error-code"] == "UNKNOWN_VIEW"
        assert c.get("/analytics?from=yesterday").headers["x-error-code"] == "BAD_DATE"


def test_the_floor_follows_fed_events(make_app):
    app, _ = make_app()
    hub = app.state.hub
    hub.feed("settled", {"lane": "L2", "event": "settled", "weight_g": 812.4,
                         "sigma_g": 0.1, "t": 1.0, "sample": 10, "n_samples": 200})
    hub.feed("device", {"event_id": 7, "at": 1800000000.0, "lane": "L2",
                        "device": "eas_gate", "kind": "alarm", "code": None,
                        "message": "live tag"})
    hub.feed("device", {"event_id": 8, "at": 1800000001.0, "lane": "L2",
                        "device": "printer", "kind": "fault", "code": "PORT_LOST",
                        "message": None})
    with TestClient(app) as c:
        login(c, "ann")
        lanes = c.get("/lanes").text
        assert 'data-testid="lane-card" data-lane="L2"' in lanes
        weight = lanes.split('data-testid="lane-weight" data-field="weight">')[1]
        assert weight.startswith("812.4<")
        assert "PORT_LOST" in lanes
        alarms = c.get("/alarms").text
        assert 'data-testid="alarm-row" data-order="-"' in alarms
        devices = c.get("/devices").text
        assert 'data-lane="L2" data-device="printer"' in devices
        snap = c.get("/floor.json").json()
        assert snap["lanes"][0]["eas"] == "alarm"
