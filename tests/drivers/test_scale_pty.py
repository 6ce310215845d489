"""Scale drivers end to end: ScaleDriver and probe against the simulator over real
ptys, faults (unplug/replug, mute, garbage, unknown status), and the
`lanecore device probe/read` and `lanecore sim scale` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from lanecore import cli
from lanecore.drivers import link as L
from lanecore.drivers.link import DeviceFault
from lanecore.drivers.scales import (PROTOCOLS, ScaleDriver, ScaleError, ScaleReading,
                                     ScanReading, probe)
from lanecore.drivers.sim.scale import ScaleSim

ALL = sorted(PROTOCOLS)
# a raw status each protocol does not know (docs/drivers/scales.md, "status HEX")
UNKNOWN_RAW = {"toledo": "46", "sasi": "45", "magellan": "39", "cas": "5858"}


class Events:
    """Thread-safe list of everything a driver reported, with a wait."""

    def __init__(self):
        self.items: list = []
        self.cond = threading.Condition()

    def __call__(self, ev):
        with self.cond:
            self.items.append(ev)
            self.cond.notify_all()

    def wait_for(self, pred, timeout_s: float = 5.0):
        end = time.monotonic() + timeout_s
        with self.cond:
            while True:
                for ev in self.items:
                    if pred(ev):
                        return ev
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def snapshot(self) -> list:
        with self.cond:
            return list(self.items)


@pytest.fixture
def scale():
    """scale(protocol, **sim_options) -> a started ScaleSim, stopped afterwards."""
    sims = []

    def make(protocol, **kw):
        kw.setdefault("motion_s", 0.0)
        sim = ScaleSim(protocol, **kw).start()
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        sim.stop()


@pytest.fixture
def driver():
    """driver(url, protocol, **options) -> an open ScaleDriver, stopped afterwards."""
    drivers = []

    def make(url, protocol, **kw):
        kw.setdefault("timeout_s", 1.0)
        d = ScaleDriver(url, protocol, **kw).open()
        drivers.append(d)
        return d

    yield make
    for d in drivers:
        d.stop()


def weight(r) -> float | None:
    assert isinstance(r, ScaleReading), r
    return r.weight_g


# ----------------------------------------------------------------------------------
# Readings
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ALL)
def test_read_weights_motion_and_states(scale, driver, protocol):
    sim = scale(protocol, weight_g=1234)
    d = driver(sim.path, protocol)
    r = d.read()
    assert (weight(r), r.stable, r.protocol) == (1234.0, True, protocol)

    sim.do("weight", "2000")
    sim.do("motion", "60")
    r = d.read()
    assert r.stable is False and "motion" in r.status
    sim.do("motion", "0")
    assert (weight(d.read()), d.read().stable) == (2000.0, True)

    sim.do("overload")
    r = d.read()
    assert (r.weight_g, r.stable, "over_capacity" in r.status) == (None, False, True)
    sim.do("underzero")
    r = d.read()
    assert "under_zero" in r.status and r.stable is (protocol == "cas")
    assert r.weight_g is None or r.weight_g < 0

    sim.do("weight", "0")
    r = d.read()
    assert (weight(r), r.stable, "zero" in r.status) == (0.0, True, True)


@pytest.mark.parametrize("protocol", ALL)
def test_the_same_weight_read_twice_is_two_answers(scale, driver, protocol):
    sim = scale(protocol, weight_g=750)
    d = driver(sim.path, protocol)
    first, second = d.read(), d.read()
    assert weight(first) == weight(second) == 750.0
    assert second.at > first.at
    assert sim.requests == 2                       # no cache: the scale was asked twice


@pytest.mark.parametrize("protocol", ALL)
def test_unknown_status_is_a_fault_not_a_state(scale, driver, protocol):
    sim = scale(protocol, weight_g=500)
    events = Events()
    d = driver(sim.path, protocol, on_event=events)
    sim.do("status", UNKNOWN_RAW[protocol])
    r = d.read()                # the answer to the request is the fault itself
    assert isinstance(r, DeviceFault) and r.code == L.UNKNOWN_STATUS
    assert events.wait_for(lambda e: getattr(e, "code", "") == L.UNKNOWN_STATUS, 1)
    sim.do("status", "off")
    assert weight(d.read()) == 500.0


def test_toledo_zero_tare_and_clear(scale, driver):
    sim = scale("toledo", weight_g=200)
    d = driver(sim.path, "toledo")
    assert d.zero() is None
    deadline = time.monotonic() + 3
    while weight(d.read()) != 0.0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sim.zero_offset_g == 200.0
    sim.do("weight", "700")                        # a 500 g tray on the zeroed scale
    assert weight(d.read()) == 500.0
    assert d.tare() is None
    while "net" not in d.read().status and time.monotonic() < deadline:
        time.sleep(0.02)
    r = d.read()
    assert (r.weight_g, r.status) == (0.0, ("net", "zero"))
    sim.do("weight", "1000")                       # 300 g of goods in the tray
    r = d.read()
    assert (r.weight_g, r.status) == (300.0, ("net",))
    assert d.clear_tare() is None
    while d.read().status == ("net",) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert weight(d.read()) == 800.0


def test_unsupported_commands_raise(scale, driver):
    sim = scale("cas", weight_g=1)
    d = driver(sim.path, "cas")
    for call in (d.zero, d.tare, d.beep, d.read_stable):
        with pytest.raises(ScaleError) as exc:
            call()
        assert exc.value.code == "UNSUPPORTED"


def test_magellan_scans_stable_weight_and_beep(scale, driver):
    sim = scale("magellan", weight_g=321)
    events = Events()
    d = driver(sim.path, "magellan", on_event=events)
    assert weight(d.read()) == 321.0               # the port is open: scans reach us
    sim.do("scan", "5012345678900")
    sim.do("scan", "012345678905", "upc_a")
    scans = [events.wait_for(lambda e, c=c: isinstance(e, ScanReading) and e.code == c)
             for c in ("5012345678900", "012345678905")]
    assert [(s.symbology, s.label_id) for s in scans] == [("ean13", "F"), ("upc_a", "A")]
    r = d.read_stable()
    assert (weight(r), r.stable) == (321.0, True)
    sim.do("motion", "60")
    assert d.read_stable().status == ("motion",)   # S11 in motion: the S14 status
    assert d.beep() is None
    deadline = time.monotonic() + 3
    while sim.beeps < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sim.beeps == 1


def test_an_answer_that_came_before_the_request_is_not_the_answer(scale, driver):
    sim = scale("toledo", weight_g=1500)
    events = Events()
    d = driver(sim.path, "toledo", on_event=events)
    assert weight(d.read()) == 1500.0
    sim.send(b"\x0209.999\r")                      # nobody asked: a stale frame
    deadline = time.monotonic() + 3
    while d.unsolicited < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert d.unsolicited == 1
    assert weight(d.read()) == 1500.0
    assert all(getattr(e, "weight_g", None) != 9999.0 for e in events.snapshot())


# ----------------------------------------------------------------------------------
# Faults
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ALL)
def test_replug_mid_read_recovers_and_never_reports_the_old_weight(scale, driver, protocol):
    """Unplugged while polling, the load changes, plugged back: the driver reports the
    loss, is reading again within 2 s of the replug, and every weight after the loss
    is the new one."""
    sim = scale(protocol, weight_g=1000)
    events = Events()
    d = driver(sim.path, protocol, on_event=events, timeout_s=0.3)
    d.start(0.03)
    assert events.wait_for(lambda e: getattr(e, "weight_g", None) == 1000.0)

    sim.unplug()
    sim.set_weight(2500)                           # changed while nobody could see it
    lost = events.wait_for(lambda e: isinstance(e, DeviceFault)
                           and e.code in (L.PORT_LOST, L.PORT_OPEN_FAILED), 3)
    assert lost is not None, "the unplug was reported"
    time.sleep(0.4)
    sim.replug()
    replugged = time.monotonic()
    back = events.wait_for(lambda e: getattr(e, "weight_g", None) == 2500.0, 5)
    assert back is not None and back.at - replugged < 2.0
    time.sleep(0.2)                                # a few more polls on the new port
    d.stop()

    seen = events.snapshot()
    after = seen[seen.index(lost):]
    readings = [e for e in after if isinstance(e, ScaleReading)]
    assert len(readings) >= 2
    assert all(r.weight_g == 2500.0 and r.stable for r in readings), readings
    assert d.link.opens >= 2


def test_read_while_unplugged_returns_a_port_fault_in_time(scale, driver):
    sim = scale("toledo", weight_g=1000)
    d = driver(sim.path, "toledo", timeout_s=0.3)
    assert weight(d.read()) == 1000.0
    sim.unplug()
    for _ in range(3):
        t0 = time.monotonic()
        r = d.read()
        assert time.monotonic() - t0 < 1.5
        assert isinstance(r, DeviceFault)
        assert r.code in (L.PORT_LOST, L.PORT_OPEN_FAILED, L.NO_ANSWER)
    assert any(f.code == L.PORT_LOST for f in d.link.faults)
    sim.replug()
    deadline = time.monotonic() + 3
    r = d.read()
    while not isinstance(r, ScaleReading) and time.monotonic() < deadline:
        r = d.read()
    assert weight(r) == 1000.0


@pytest.mark.parametrize("protocol", ["toledo", "magellan"])
def test_a_muted_scale_is_no_answer_and_the_driver_does_not_hang(scale, driver, protocol):
    sim = scale(protocol, weight_g=400)
    events = Events()
    d = driver(sim.path, protocol, on_event=events, timeout_s=0.25)
    sim.do("mute")
    t0 = time.monotonic()
    r = d.read()
    assert time.monotonic() - t0 < 2.0
    assert isinstance(r, DeviceFault) and r.code == L.NO_ANSWER
    assert events.wait_for(lambda e: getattr(e, "code", "") == L.NO_ANSWER, 1)
    sim.do("unmute")
    assert weight(d.read()) == 400.0


@pytest.mark.parametrize("protocol", ALL)
def test_garbage_is_reported_then_good_readings(scale, driver, protocol):
    sim = scale(protocol, weight_g=900)
    events = Events()
    d = driver(sim.path, protocol, on_event=events)
    assert weight(d.read()) == 900.0
    sim.do("garbage")
    sim.do("garbage", "0001fe7f")
    assert weight(d.read()) == 900.0
    assert events.wait_for(lambda e: getattr(e, "code", "") == L.GARBAGE, 1)
    assert weight(d.read()) == 900.0


def test_a_slow_scale_times_out_without_blocking(scale, driver):
    sim = scale("sasi", weight_g=100)
    d = driver(sim.path, "sasi", timeout_s=0.2)
    sim.do("slow", "0.6")
    t0 = time.monotonic()
    r = d.read()
    assert time.monotonic() - t0 < 1.0
    assert isinstance(r, DeviceFault) and r.code == L.NO_ANSWER
    sim.do("slow", "0")
    time.sleep(0.7)                                # the late answer lands unasked
    assert d.unsolicited >= 1
    assert weight(d.read()) == 100.0


def test_no_port_at_all(tmp_path):
    events = Events()
    d = ScaleDriver(str(tmp_path / "nothing"), "toledo", on_event=events, timeout_s=0.2)
    try:
        r = d.read()
        assert isinstance(r, DeviceFault) and r.code == L.PORT_OPEN_FAILED
        assert d.read().code == L.PORT_OPEN_FAILED
        assert [e.code for e in events.snapshot()] == [L.PORT_OPEN_FAILED]   # once
    finally:
        d.stop()


# ----------------------------------------------------------------------------------
# Probe and the CLI
# ----------------------------------------------------------------------------------

def test_probe_finds_each_protocol(scale):
    sims = {p: scale(p, weight_g=1500) for p in ALL}
    assert {p: probe(s.path) for p, s in sims.items()} == {p: p for p in ALL}
    deadline = time.monotonic() + 3
    while sims["toledo"].echo and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not sims["toledo"].echo                 # the probe ended the echo (F)
    assert bytes(sims["toledo"].received).startswith(b"EhelloF")


def test_probe_finds_nothing_on_a_muted_port(scale, tmp_path):
    sim = scale("toledo")
    sim.do("mute")
    assert probe(sim.path, timeout_s=0.15) is None
    assert probe(str(tmp_path / "nothing"), timeout_s=0.15) is None


def test_cli_device_probe(scale, capsys):
    sim = scale("magellan", weight_g=10)
    assert cli.main(["device", "probe", sim.path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"port": sim.path, "protocol": "magellan"}
    assert cli.main(["device", "probe", sim.path]) == 0
    assert capsys.readouterr().out.strip() == "magellan"
    sim.do("mute")
    assert cli.main(["device", "probe", sim.path, "--json", "--timeout", "0.15"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out) == {"port": sim.path, "protocol": None, "fault": "NO_SCALE"}
    assert "NO_SCALE" in err


def test_cli_device_read(scale, capsys):
    sim = scale("cas", weight_g=1500)
    assert cli.main(["device", "read", sim.path, "--protocol", "cas", "--count", "3",
                     "--interval", "0.05", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == [{"weight_g": 1500.0, "stable": True, "status": []}] * 3

    sim.do("weight", "250")
    sim.do("motion", "60")
    assert cli.main(["device", "read", sim.path, "--protocol", "cas", "--count", "1"]) == 0
    assert capsys.readouterr().out.split() == ["250.0", "g", "unstable", "motion"]

    sim.do("mute")
    assert cli.main(["device", "read", sim.path, "--protocol", "cas", "--count", "1",
                     "--timeout", "0.2", "--json"]) == 1
    row = json.loads(capsys.readouterr().out)
    assert row["fault"] == "NO_ANSWER" and sim.path in row["message"]


def test_cli_device_read_ends_on_a_dead_port(tmp_path, capsys):
    t0 = time.monotonic()
    assert cli.main(["device", "read", str(tmp_path / "gone"), "--protocol", "toledo",
                     "--count", "2", "--interval", "0.05", "--timeout", "0.1",
                     "--json"]) == 1
    assert time.monotonic() - t0 < 5
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["fault"] for r in rows] == ["PORT_OPEN_FAILED"] * 2


def test_lanecore_sim_scale_command():
    """`lanecore sim scale` prints its path; a driver reads the weight it was given and
    the script's changes."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lanecore", "sim", "scale", "--protocol", "sasi",
         "--weight-g", "750", "--motion-s", "0", "--duration", "20",
         "--script", "1.5 weight 1250"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        info = json.loads(line)
        assert info["device"] == "scale"
        with ScaleDriver(info["path"], "sasi", timeout_s=1.0) as d:
            assert weight(d.read()) in (750.0, 1250.0)
            deadline = time.monotonic() + 10
            r = d.read()
            while getattr(r, "weight_g", None) != 1250.0 and time.monotonic() < deadline:
                time.sleep(0.05)
                r = d.read()
            assert weight(r) == 1250.0
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_a_failing_on_event_does_not_stop_the_driver(scale, driver):
    sim = scale("cas", weight_g=42)
    calls = []

    def broken(ev):
        calls.append(ev)
        raise RuntimeError("the caller's bug")

    d = driver(sim.path, "cas", on_event=broken)
    assert weight(d.read()) == 42.0
    assert weight(d.read()) == 42.0
    assert len(calls) == 2


def test_ptys_are_opened_8n1_real_ports_with_the_protocol_line(scale):
    from lanecore.drivers.scales import Toledo8217, line_for
    sim = scale("toledo")
    assert line_for(sim.path, Toledo8217.line).kwargs() == {
        "baudrate": 9600, "bytesize": 8, "parity": "N", "stopbits": 1}
    for url in ("/dev/ttyUSB0", "socket://127.0.0.1:9", "loop://"):
        assert line_for(url, Toledo8217.line) == Toledo8217.line


def test_a_read_during_polling_keeps_its_own_deadline(scale, driver):
    sim = scale("sasi", weight_g=60)
    events = Events()
    d = driver(sim.path, "sasi", on_event=events, timeout_s=0.3)
    d.start(0.01)
    assert events.wait_for(lambda e: getattr(e, "weight_g", None) == 60.0)
    assert weight(d.read()) == 60.0                # answered between polls
    sim.do("mute")                                 # now every poll holds the scale 0.3 s
    for _ in range(3):
        t0 = time.monotonic()
        r = d.read()
        assert time.monotonic() - t0 < 1.0
        assert isinstance(r, DeviceFault) and r.code == L.NO_ANSWER
