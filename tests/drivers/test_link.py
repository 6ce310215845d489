"""The port layer under every driver (drivers/link.py), the pty device base
(drivers/pty.py) and simulator scripts (drivers/sim/__init__.py)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from lanecore.drivers import link as L
from lanecore.drivers.link import Link, LinkDown, LineSettings
from lanecore.drivers.sim import ScriptedDevice, ScriptError, parse_script, run_script

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free


class Upper(ScriptedDevice):
    """Answers every byte string in upper case."""

    name = "upper"

    def on_bytes(self, data: bytes) -> None:
        self.send(data.upper())


def read_until(link: Link, want: bytes, timeout_s: float = 3.0) -> bytes:
    got = b""
    end = time.monotonic() + timeout_s
    while want not in got and time.monotonic() < end:
        got += link.read()
    return got


@pytest.fixture
def dev():
    d = Upper().start()
    yield d
    d.stop()


def test_line_settings():
    assert LineSettings.parse("9600 7E1") == LineSettings(9600, 7, "E", 1)
    assert LineSettings.parse("19200 8n2") == LineSettings(19200, 8, "N", 2)
    assert LineSettings.parse("9600 7O1").kwargs() == {
        "baudrate": 9600, "bytesize": 7, "parity": "O", "stopbits": 1}
    for bad in ("9600", "9600 9E1", "9600 7X1", "fast 7E1", "9600 7E3"):
        with pytest.raises(ValueError):
            LineSettings.parse(bad)


def test_loop_url_works_like_a_port():
    with Link("loop://") as link:
        link.write(b"abc")
        assert read_until(link, b"abc") == b"abc"
        assert link.opens == 1 and link.faults == []


def test_pty_round_trip_and_stable_path(dev):
    assert os.path.islink(dev.path)
    with Link(dev.path) as link:
        link.write(b"hello")
        assert read_until(link, b"HELLO") == b"HELLO"
    assert bytes(dev.received) == b"hello"


def test_unplug_is_a_fault_and_replug_reconnects(dev):
    faults = []
    link = Link(dev.path, on_fault=faults.append, backoff_max_s=0.2)
    try:
        assert link.wait_open(2)
        dev.unplug()
        assert not os.path.exists(dev.path)
        with pytest.raises(LinkDown):
            for _ in range(100):         # the failure shows on the next read
                link.read()
        assert [f.code for f in faults] == [L.PORT_LOST]
        assert not link.is_open
        with pytest.raises(LinkDown):    # still gone: open fails, reported once
            for _ in range(5):
                link.write(b"x")
                time.sleep(0.05)
        dev.replug()
        t0 = time.monotonic()
        assert link.wait_open(2)
        assert time.monotonic() - t0 < 2
        link.write(b"again")
        assert read_until(link, b"AGAIN").endswith(b"AGAIN")
        assert link.opens == 2
        assert [f.code for f in faults] == [L.PORT_LOST]   # one outage, one fault
    finally:
        link.close()


def test_backoff_doubles_to_its_ceiling_and_resets(tmp_path):
    now = [100.0]
    faults = []
    missing = str(tmp_path / "no-such-port")
    link = Link(missing, backoff_min_s=0.1, backoff_max_s=0.4, clock=lambda: now[0],
                on_fault=faults.append)
    waits = []
    for _ in range(5):
        assert not link.open()
        waits.append(round(link._next_try - now[0], 6))
        assert not link.open()           # before the backoff: not even tried
        now[0] = link._next_try
    assert waits == [0.1, 0.2, 0.4, 0.4, 0.4]
    assert [f.code for f in faults] == [L.PORT_OPEN_FAILED]   # reported once per outage
    assert missing in faults[0].message


def test_reopen_discards_what_was_queued_before(dev):
    """A reading queued while nobody listened is stale by the time we open."""
    dev.send(b"OLD WEIGHT\r")
    time.sleep(0.1)
    with Link(dev.path) as link:
        link.write(b"new")
        got = read_until(link, b"NEW")
        assert b"OLD" not in got and got.endswith(b"NEW")


def test_parse_script():
    steps = parse_script("0.5 weight 1500; 2 unplug\n# a comment\n1 garbage 00ff;")
    assert [(s.at_s, s.action, s.args) for s in steps] == [
        (0.5, "weight", ("1500",)), (1.0, "garbage", ("00ff",)), (2.0, "unplug", ())]
    for bad in ("soon unplug", "1", "-1 unplug"):
        with pytest.raises(ScriptError):
            parse_script(bad)


def test_generic_actions_and_run_script(dev):
    with pytest.raises(ScriptError):
        dev.do("levitate")
    with pytest.raises(ScriptError):
        dev.do("slow")
    stop = threading.Event()
    run_script(dev, parse_script("0 mute; 0.05 slow 0.01; 0.1 unmute"), stop=stop)
    assert dev.muted is False and dev.slow_s == 0.01
    run_script(dev, parse_script("0 unplug"))
    assert not dev.plugged
    dev.do("replug")
    assert dev.plugged and os.path.islink(dev.path)
    # a stopped script does not run the rest
    stop.set()
    run_script(dev, parse_script("5 unplug"), stop=stop)
    assert dev.plugged


def test_muted_device_answers_nothing(dev):
    dev.do("mute")
    with Link(dev.path, read_timeout_s=0.02) as link:
        link.write(b"anyone?")
        end = time.monotonic() + 0.3
        got = b""
        while time.monotonic() < end:
            got += link.read()
        assert got == b""
    assert bytes(dev.received) == b"anyone?"
