"""Serial barcode scanners: the protocol with byte vectors, the driver end to end
against the simulator on a real pty (drivers/scanner.py, drivers/sim/scanner.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

import lanecore
from lanecore.drivers.link import GARBAGE, PORT_LOST, DeviceFault
from lanecore.drivers.scanner import (MAX_SCAN_BYTES, ScannerDriver, ScannerProtocol,
                                      ScanRead, aim_identifier)
from lanecore.drivers.sim import ScriptError, parse_script
from lanecore.drivers.sim.scanner import ScannerSim, unescape

GS1_128 = "]C1010950600301004210ABC\x1d17250101"


def reads(events):
    return [(e.code, e.symbology) for e in events if isinstance(e, ScanRead)]


def faults(events):
    return [e.code for e in events if isinstance(e, DeviceFault)]


# -- protocol: byte vectors --------------------------------------------------------------

@pytest.mark.parametrize("suffix,term", [("CR", b"\r"), ("LF", b"\n"), ("CRLF", b"\r\n"),
                                         ("TAB", b"\t"), ("crlf", b"\r\n")])
def test_every_suffix(suffix, term):
    p = ScannerProtocol(suffix)
    out = p.feed(b"5012345678900" + term + b"]E05012345678900" + term, at=7.5)
    assert reads(out) == [("5012345678900", None), ("]E05012345678900", "]E0")]
    assert all(e.at == 7.5 for e in out)
    assert p.pending == 0


@pytest.mark.parametrize("code,symbology", [
    ("]E05012345678900", "]E0"), ("]E40123456789", "]E4"), (GS1_128, "]C1"),
    ("]Q1https://example.com/o/1", "]Q1"), ("]d2\x1d0109506000134352", "]d2"),
    ("]e00109506000134352", "]e0"), ("]I109501101530003", "]I1"),
    ("]C0ABC-123", "]C0"), ("]A0CODE39", "]A0"),
    ("5012345678900", None), ("]", None), ("]E", None), ("]]E0", None), ("]1E", None),
    ("S08F5012345678900", None),       # Magellan label: parse_scan reads it, not us
])
def test_aim_identifier_parsed_and_kept(code, symbology):
    assert aim_identifier(code) == symbology
    out = ScannerProtocol("CR").feed(code.encode("latin-1") + b"\r")
    assert reads(out) == [(code, symbology)]


@pytest.mark.parametrize("suffix", ["CR", "LF", "CRLF", "TAB"])
def test_gs_is_data_never_a_suffix(suffix):
    p = ScannerProtocol(suffix)
    out = p.feed(p.encode(GS1_128) + p.encode("\x1d" + GS1_128[3:] + "\x1d"))
    assert reads(out) == [(GS1_128, "]C1"), ("\x1d" + GS1_128[3:] + "\x1d", None)]
    assert lanecore.parse_scan(reads(out)[0][0]).to_dict()["ais"] == {
        "01": "09506003010042", "10": "ABC", "17": "250101"}


def test_tab_suffix_leaves_cr_and_lf_in_the_data():
    out = ScannerProtocol("TAB").feed(b"AB\rCD\nEF\t")
    assert reads(out) == [("AB\rCD\nEF", None)]


def test_crlf_suffix_needs_both_bytes():
    p = ScannerProtocol("CRLF")
    assert reads(p.feed(b"12\r34\n56\r\n")) == [("12\r34\n56", None)]
    # a CR at the end of one read and the LF in the next still make the suffix
    assert p.feed(b"789\r") == []
    assert reads(p.feed(b"\n")) == [("789", None)]


def test_cr_suffix_with_a_scanner_sending_crlf_shows_the_lf():
    # misconfiguration is visible (the LF leads the next code), not silently eaten
    out = ScannerProtocol("CR").feed(b"5012345678900\r\n4006381333931\r\n")
    assert reads(out) == [("5012345678900", None), ("\n4006381333931", None)]


def test_nul_and_non_ascii_pass_through_as_latin1():
    out = ScannerProtocol("CR").feed(b"\x00123\r4006\xe9\r\xff\x80\r")
    codes = [c for c, _ in reads(out)]
    assert codes == ["\x00123", "4006\xe9", "\xff\x80"]
    assert [c.encode("latin-1") for c in codes] == [b"\x00123", b"4006\xe9", b"\xff\x80"]
    errors = [lanecore.parse_scan(c).to_dict()["error"]["code"] for c in codes]
    assert errors == ["NUL_BYTE", "NON_ASCII", "NON_ASCII"]


def test_doubled_suffix_gives_no_empty_scan():
    assert reads(ScannerProtocol("LF").feed(b"\n\n123\n\n")) == [("123", None)]


def test_stream_split_at_every_byte_gives_the_same_scans():
    for suffix in ("CR", "LF", "CRLF", "TAB"):
        p = ScannerProtocol(suffix)
        codes = ["5012345678900", GS1_128, "]Q1{\"order\":\"A-17\"}", "\x1d0101"]
        stream = b"".join(p.encode(c) for c in codes)
        want = reads(ScannerProtocol(suffix).feed(stream))
        assert [c for c, _ in want] == codes
        for cut in range(len(stream) + 1):
            q = ScannerProtocol(suffix)
            assert reads(q.feed(stream[:cut]) + q.feed(stream[cut:])) == want, (suffix, cut)
        q = ScannerProtocol(suffix)
        assert reads([e for b in stream for e in q.feed(bytes([b]))]) == want


def test_longest_scan_is_accepted():
    code = "]Q1" + "x" * (MAX_SCAN_BYTES - 3)
    assert reads(ScannerProtocol("CR").feed(code.encode() + b"\r")) == [(code, "]Q1")]


def test_overlong_scan_in_one_read_is_dropped_and_the_next_is_clean():
    p = ScannerProtocol("CR")
    out = p.feed(b"9" * (MAX_SCAN_BYTES + 1) + b"\r5012345678900\r")
    assert faults(out) == [GARBAGE]
    assert reads(out) == [("5012345678900", None)]


@pytest.mark.parametrize("suffix", ["CR", "CRLF"])
def test_overlong_scan_streamed_is_reported_once_and_skipped_to_its_suffix(suffix):
    p = ScannerProtocol(suffix)
    out = []
    for _ in range(10):                         # 10 x 1000 bytes, no suffix
        out += p.feed(b"7" * 1000)
    assert faults(out) == [GARBAGE] and reads(out) == []
    assert p.pending < MAX_SCAN_BYTES
    out = p.feed(b"tail of it" + p.terminator + p.encode("4006381333931"))
    assert reads(out) == [("4006381333931", None)] and faults(out) == []


def test_overlong_skip_survives_a_crlf_split_across_reads():
    p = ScannerProtocol("CRLF")
    p.feed(b"7" * (MAX_SCAN_BYTES + 10) + b"\r")
    assert reads(p.feed(b"\n123\r\n")) == [("123", None)]


def test_incomplete_scan_expires_instead_of_joining_the_next():
    p = ScannerProtocol("CR", incomplete_after_s=1.0)
    assert p.feed(b"50123", at=10.0) == []
    assert p.feed(b"", at=10.5) == []                 # still within its time
    out = p.feed(b"", at=11.2)
    assert faults(out) == [GARBAGE] and p.pending == 0
    assert reads(p.feed(b"4006381333931\r", at=11.3)) == [("4006381333931", None)]
    # bytes that keep coming keep the scan alive
    p.feed(b"12", at=20.0)
    p.feed(b"34", at=20.9)
    assert reads(p.feed(b"56\r", at=21.8)) == [("123456", None)]


def test_reset_forgets_a_partial_scan():
    p = ScannerProtocol("CR")
    p.feed(b"half-a-sc")
    p.reset()
    assert reads(p.feed(b"5012345678900\r")) == [("5012345678900", None)]


def test_bad_suffix_is_refused():
    with pytest.raises(ValueError):
        ScannerProtocol("ETX")


def test_scan_read_to_dict():
    r = ScanRead(GS1_128, "]C1", 1.5)
    assert r.to_dict() == {"event": "scan", "code": GS1_128, "symbology": "]C1", "at": 1.5}
    assert json.loads(json.dumps(r.to_dict()))["code"] == GS1_128


# -- simulator ---------------------------------------------------------------------------

def test_unescape():
    assert unescape("]C1010950<GS>10ABC") == b"]C1010950\x1d10ABC"
    assert unescape(r"a\x1db\\c<FS><RS><US><EOT><NUL><TAB><ESC>") == \
        b"a\x1db\\c\x1c\x1e\x1f\x04\x00\t\x1b"
    assert unescape("<XY>") == b"<XY>"
    with pytest.raises(ScriptError):
        unescape("€")


def test_sim_rejects_bad_actions():
    with ScannerSim() as sim:
        for action, args in (("scan", ()), ("suffix", ("ETX",)), ("teleport", ())):
            with pytest.raises(ScriptError):
                sim.do(action, *args)


# -- driver end to end over a pty ----------------------------------------------------------

class Collector:
    def __init__(self) -> None:
        self.events: list = []
        self.cv = threading.Condition()

    def __call__(self, event) -> None:
        with self.cv:
            self.events.append(event)
            self.cv.notify_all()

    def wait_for(self, pred, timeout_s: float = 5.0):
        end = time.monotonic() + timeout_s
        with self.cv:
            while True:
                hits = [e for e in self.events if pred(e)]
                if hits:
                    return hits
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; events: {self.events!r}")
                self.cv.wait(left)

    def scans(self):
        with self.cv:
            return [e.code for e in self.events if isinstance(e, ScanRead)]


@pytest.mark.parametrize("suffix", ["CR", "LF", "CRLF", "TAB"])
def test_driver_reads_scans_from_the_simulator(suffix):
    got = Collector()
    with ScannerSim(suffix=suffix) as sim, \
            ScannerDriver(sim.path, suffix=suffix, on_event=got) as drv:
        assert drv.wait_connected(5)
        sim.do("scan", "]E05012345678900")
        sim.do("scan", "]C1010950600301004210ABC<GS>17250101")
        sim.do("scan", "]Q1" + "Q" * 3000)
        got.wait_for(lambda e: isinstance(e, ScanRead) and e.code.startswith("]Q1"))
        assert got.scans() == ["]E05012345678900", GS1_128, "]Q1" + "Q" * 3000]
        assert lanecore.parse_scan(got.scans()[1]).ok


def test_driver_unplug_replug_reports_reconnects_and_drops_the_partial_scan():
    got = Collector()
    with ScannerSim() as sim, ScannerDriver(sim.path, on_event=got) as drv:
        assert drv.wait_connected(5)
        sim.do("scan", "5012345678900")
        got.wait_for(lambda e: isinstance(e, ScanRead))
        sim.do("partial", "40063813")                 # the cable goes mid-scan
        time.sleep(0.2)
        sim.do("unplug")
        got.wait_for(lambda e: isinstance(e, DeviceFault) and e.code == PORT_LOST)
        assert not sim.scan("9999999999994")         # lost on the floor
        sim.do("replug")
        assert drv.link.opens >= 1
        deadline = time.monotonic() + 5
        while drv.link.opens < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert drv.link.opens == 2 and drv.wait_connected(5)
        sim.do("scan", "4006381333931")
        got.wait_for(lambda e: isinstance(e, ScanRead) and e.code == "4006381333931")
        assert got.scans() == ["5012345678900", "4006381333931"]


def test_driver_garbage_is_passed_to_parse_scan_and_the_next_scan_is_clean():
    got = Collector()
    with ScannerSim() as sim, ScannerDriver(sim.path, on_event=got) as drv:
        assert drv.wait_connected(5)
        sim.do("garbage", "00ff23")
        sim.do("scan", "5012345678900")
        sim.do("scan", "4006381333931")
        got.wait_for(lambda e: isinstance(e, ScanRead) and e.code == "4006381333931")
        first, second = got.scans()
        assert first == "\x00\xff#5012345678900"
        assert lanecore.parse_scan(first).to_dict()["error"]["code"] == "NUL_BYTE"
        assert second == "4006381333931"


def test_driver_reports_a_missing_port_and_connects_when_it_appears(tmp_path):
    got = Collector()
    path = tmp_path / "scanner"
    with ScannerDriver(str(path), on_event=got, backoff_max_s=0.2) as drv:
        got.wait_for(lambda e: isinstance(e, DeviceFault) and e.code == "PORT_OPEN_FAILED")
        with ScannerSim(path) as sim:
            assert drv.wait_connected(5)
            sim.do("scan", "5012345678900")
            got.wait_for(lambda e: isinstance(e, ScanRead))
    assert not os.path.exists(path)


def test_a_failing_callback_does_not_stop_the_driver():
    seen = []

    def cb(event):
        seen.append(event)
        if len(seen) == 1:
            raise RuntimeError("lane bug")

    with ScannerSim() as sim, ScannerDriver(sim.path, on_event=cb) as drv:
        assert drv.wait_connected(5)
        sim.do("scan", "1")
        sim.do("scan", "2")
        end = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < end:
            time.sleep(0.02)
    assert [e.code for e in seen] == ["1", "2"]


def test_script_drives_the_simulator():
    got = Collector()
    with ScannerSim() as sim, ScannerDriver(sim.path, suffix="LF", on_event=got) as drv:
        assert drv.wait_connected(5)
        for step in parse_script("0 suffix LF; 0 scan ']d2<GS>0109506000134352'"):
            sim.do(step.action, *step.args)
        got.wait_for(lambda e: isinstance(e, ScanRead))
        assert got.scans() == ["]d2\x1d0109506000134352"]


@pytest.mark.parametrize("argv", [["scanner", "--suffix", "TAB"],
                                  ["eas", "--role", "gate"], ["printer", "--quiet"]])
def test_cli_sim_prints_its_path(argv):
    proc = subprocess.run([sys.executable, "-m", "lanecore", "sim", argv[0], "--duration",
                           "0.3", *argv[1:]], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout.splitlines()[0])
    assert first["device"] == argv[0] and first["path"]
    assert not os.path.exists(first["path"])          # stopped: the port is gone
