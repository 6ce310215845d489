"""A lane controller wired to a real `lanecore serve`, every device a simulator on a
real pty (gateway/lane.py, docs/store/lanes.md)."""

from __future__ import annotations

import time

import msgpack
import pytest
import zmq

from lanecore import cli
from lanecore.drivers.sim.eas import DeactivatorSim, GateSim
from lanecore.drivers.sim.loadcell import BridgeSim
from lanecore.drivers.sim.printer import PrinterSim
from lanecore.drivers.sim.scale import ScaleSim
from lanecore.drivers.sim.scanner import ScannerSim
from lanecore.gateway.lane import LaneConfigError, LaneController, LaneSetup


def wait_for(pred, timeout_s: float = 10.0, what: str = "condition"):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def of(lane: LaneController, kind: str, **match) -> list[dict]:
    return [r for r in list(lane.records) if r["record"] == kind
            and all(r.get(k) == v for k, v in match.items())]


class Sub:
    def __init__(self, address: str, *topics: str):
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        for t in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        self.sock.connect(address)
        time.sleep(0.3)            # slow joiner
        self.got: list[tuple[str, dict]] = []

    def wait(self, pred, timeout_s: float = 10.0) -> dict:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            for topic, ev in self.got:
                if pred(topic, ev):
                    return ev
            if self.sock.poll(100):
                topic, body = self.sock.recv_multipart()
                self.got.append((topic.decode(), msgpack.unpackb(body)))
        raise AssertionError(f"no matching event; got {self.got}")

    def close(self):
        self.sock.close(0)


@pytest.fixture
def sims():
    made = []

    def make(cls, *args, **kw):
        d = cls(*args, **kw).start()
        made.append(d)
        return d
    yield make
    for d in made:
        d.stop()


def basket_qr(served, items) -> tuple[str, str, float]:
    """Scan `items` on a handheld, submit: (order_no, order QR, expected grams)."""
    r = served.call({"op": "basket.open", "id": "o1", "device": "HH1"})
    assert r["ok"], r
    b = r["basket"]["basket_id"]
    r = served.call({"op": "basket.add", "id": "a1", "basket": b,
                     "scans": [{"code": it["gtin"]} for it in items]})
    assert r["ok"], r
    s = served.call({"op": "basket.submit", "id": "s1", "basket": b})
    assert s["ok"], s
    return s["order_no"], s["qr"], sum(float(it["unit_weight_g"]) for it in items)


def test_config_errors_name_the_key(tmp_path):
    good = {"lane": {"name": "EXIT-1"}, "scanner": {"port": "/dev/ttyACM0"}}
    assert LaneSetup.from_dict(good).devices == {"scanner": {"port": "/dev/ttyACM0"}}
    for bad, word in (({}, "[lane]"),
                      ({"lane": {"name": ""}}, "lane.name"),
                      ({"lane": {"name": "A", "role": "kiosk"}}, "lane.role"),
                      ({"lane": {"name": "A", "colour": "red"}}, "colour"),
                      ({"lane": {"name": "A"}, "toaster": {"port": "x"}}, "toaster"),
                      ({"lane": {"name": "A"}, "scale": {}}, "[scale]"),
                      ({"lane": {"name": "A"}, "scale": {"port": "x", "baud": 1}}, "baud"),
                      ({"lane": {"name": "A"}, "scale": {"port": "x", "timeout_s": "1"}},
                       "timeout_s"),
                      ({"lane": {"name": "A"}, "scale": {"port": "x"},
                        "bridge": {"port": "y"}}, "not both"),
                      ({"lane": {"name": "A", "server_key": "k"}}, "client_secret")):
        with pytest.raises(LaneConfigError) as e:
            LaneSetup.from_dict(bad)
        assert e.value.code == "BAD_LANE_CONFIG" and word in e.value.message, e.value
    p = tmp_path / "lane.toml"
    p.write_text('[lane]\nname = "X"\n[scanner\n')
    with pytest.raises(LaneConfigError):
        LaneSetup.load(p)
    assert cli.main(["lane", "run", str(tmp_path / "missing.toml")]) != 0


def test_exit_lane_with_scale_scanner_gate_and_printer(serve, sims):
    served = serve()
    items = served.items(3)
    order_no, qr, grams = basket_qr(served, items)
    scanner = sims(ScannerSim)
    scale = sims(ScaleSim, "toledo", weight_g=grams, motion_s=0.0)
    gate = sims(GateSim, gate="G1", heartbeat_s=0.2)
    printer = sims(PrinterSim)
    setup = LaneSetup.from_dict({
        "lane": {"name": "EXIT-1", "role": "exit", "service": served.endpoint},
        "scanner": {"port": scanner.path},
        "scale": {"port": scale.path, "protocol": "toledo", "interval_s": 0.2},
        "eas_gate": {"port": gate.path, "heartbeat_timeout_s": 1.0},
        "printer": {"port": printer.path}})
    sub = Sub(served.events, "device", "verdict", "alarm")
    try:
        with LaneController(setup) as lane:
            wait_for(lambda: lane.drivers["scanner"].connected.is_set(), what="scanner")
            # an item scanned at the exit is looked up, not verified
            scanner.scan(items[0]["gtin"])
            rec = wait_for(lambda: of(lane, "scan"), what="scan record")[0]
            assert rec["name"] == items[0]["name"] and rec["lane"] == "EXIT-1"
            scanner.scan("5000000000000")       # a bad check digit
            err = wait_for(lambda: of(lane, "scan_error"), what="scan error")[0]
            assert err["code"] == "BAD_CHECK_DIGIT"
            # the honest exit: the order QR, the scale holding the order's weight
            scanner.scan(qr)
            v = wait_for(lambda: of(lane, "verdict"), what="verdict")[0]
            assert (v["order_no"], v["verdict"]) == (order_no, "ok")
            assert v["measured_g"] == pytest.approx(round(grams), abs=0.6)
            # an unscanned 600 g item in the bag: OVER, an alarm, a slip printed
            scale.do("weight", str(grams + 600))
            scanner.scan(qr)
            wait_for(lambda: len(of(lane, "verdict")) == 2, what="second verdict")
            assert of(lane, "verdict")[1]["verdict"] == "over"
            sub.wait(lambda t, e: t == "alarm" and e["order_no"] == order_no)
            wait_for(lambda: of(lane, "printed"), what="slip printed")
            wait_for(lambda: any("OVER" in ln for ln in printer.printed.lines),
                     what="OVER on the printed slip")
            # the EAS gate alarms: published to attendants
            gate.alarm()
            ev = sub.wait(lambda t, e: t == "device" and e["kind"] == "alarm")
            assert ev["lane"] == "EXIT-1" and ev["device"] == "eas_gate"
            # the scanner is unplugged: one fault event; back: recovered
            scanner.unplug()
            sub.wait(lambda t, e: t == "device" and e["device"] == "scanner"
                     and e["kind"] == "fault")
            time.sleep(0.5)
            scanner.replug()
            wait_for(lambda: lane.drivers["scanner"].link.opens >= 2, what="reopen")
            scanner.scan(items[1]["gtin"])
            sub.wait(lambda t, e: t == "device" and e["device"] == "scanner"
                     and e["kind"] == "recovered")
            wait_for(lambda: of(lane, "scan", gtin=lane.records[-1].get("gtin"))
                     and any(r.get("name") == items[1]["name"] for r in of(lane, "scan")),
                     what="scan after the replug")
            faults = [e for t, e in sub.got if t == "device" and e["device"] == "scanner"
                      and e["kind"] == "fault"]
            assert len(faults) == 1, faults      # one outage, said once
    finally:
        sub.close()


def test_till_deactivates_tagged_items(serve, sims):
    served = serve()
    tagged = next(r for r in served.rows if "eas_tagged" in r["flags"].split("|"))
    plain = served.items(1)[0]
    scanner = sims(ScannerSim)
    deact = sims(DeactivatorSim)
    setup = LaneSetup.from_dict({
        "lane": {"name": "TILL-3", "role": "till", "service": served.endpoint},
        "scanner": {"port": scanner.path},
        "eas_deactivator": {"port": deact.path, "timeout_s": 1.0}})
    with LaneController(setup) as lane:
        wait_for(lambda: lane.drivers["scanner"].connected.is_set(), what="scanner")
        scanner.scan(plain["gtin"])
        wait_for(lambda: of(lane, "scan"), what="plain scan")
        deact.do("tag")
        scanner.scan(tagged["gtin"])
        d = wait_for(lambda: of(lane, "deactivated"), what="deactivation")[0]
        assert d["ok"] is True and d["outcome"] == "OK" and d["gtin"].endswith(
            tagged["gtin"])
        assert len(of(lane, "deactivated")) == 1     # the plain item needed none


def test_bridge_lane_feeds_frames_and_verifies_on_settled_weight(serve, sims):
    served = serve()
    items = served.items(2)
    order_no, qr, grams = basket_qr(served, items)
    bridge = sims(BridgeSim, fs_hz=1000, samples_per_frame=20, counts_per_g=50.0,
                  zero_counts=1000.0)
    scanner = sims(ScannerSim)
    setup = LaneSetup.from_dict({
        "lane": {"name": "EXIT-2", "role": "exit", "service": served.endpoint},
        "scanner": {"port": scanner.path},
        "bridge": {"port": bridge.path, "fs_hz": 1000, "samples_per_frame": 20,
                   "counts_per_g": 50.0, "zero_counts": 1000.0}})
    with LaneController(setup) as lane:
        wait_for(lambda: lane.feeder is not None and lane.feeder.sent_frames > 5,
                 timeout_s=15, what="frames to the service")
        bridge.do("place", str(grams))
        wait_for(lambda: [r for r in of(lane, "weigh", event="settled")
                          if abs(r["weight_g"] - grams) < 5], timeout_s=15,
                 what="settled at the order's weight")
        scanner.scan(qr)
        v = wait_for(lambda: of(lane, "verdict"), what="verdict")[0]
        assert v["order_no"] == order_no and v["verdict"] == "ok"
        assert v["measured_g"] == pytest.approx(grams, abs=5)


def test_lane_run_command_prints_json_lines(serve, sims, tmp_path, capsys):
    import json
    import threading

    served = serve()
    item = served.items(1)[0]
    scanner = sims(ScannerSim)
    cfg = tmp_path / "lane.toml"
    cfg.write_text(f'[lane]\nname = "TILL-9"\nrole = "till"\n'
                   f'[scanner]\nport = "{scanner.path}"\nsuffix = "CR"\n')
    timer = threading.Timer(1.0, scanner.scan, args=(item["gtin"],))
    timer.start()
    try:
        assert cli.main(["lane", "run", str(cfg), "--service", served.endpoint,
                         "--duration", "3"]) == 0
    finally:
        timer.cancel()
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["record"] == "started" and rows[0]["devices"] == {
        "scanner": scanner.path}
    scans = [r for r in rows if r["record"] == "scan"]
    assert len(scans) == 1 and scans[0]["name"] == item["name"]


def test_an_event_that_fails_does_not_stop_the_lane(serve, sims):
    served = serve()
    item = served.items(1)[0]
    scanner = sims(ScannerSim)
    setup = LaneSetup.from_dict({
        "lane": {"name": "TILL-5", "role": "till", "service": served.endpoint},
        "scanner": {"port": scanner.path}})
    with LaneController(setup) as lane:
        wait_for(lambda: lane.drivers["scanner"].connected.is_set(), what="scanner")
        real_scan = lane.client.scan
        lane.client.scan = lambda *a, **k: 1 / 0       # a bug on this event's path
        scanner.scan(item["gtin"])
        err = wait_for(lambda: of(lane, "lane_error"), what="lane error")[0]
        assert err["code"] == "INTERNAL" and "ZeroDivisionError" in err["message"]
        lane.client.scan = real_scan
        scanner.scan(item["gtin"])
        rec = wait_for(lambda: of(lane, "scan"), what="the next scan")[0]
        assert rec["name"] == item["name"]
