"""EAS deactivator and gate: the line protocol with byte vectors, both drivers end to
end against their simulators on real ptys (drivers/eas.py, drivers/sim/eas.py)."""

from __future__ import annotations

import threading
import time
from functools import reduce

import pytest

from lanecore.drivers.eas import (ERR_REASONS, DeactAnswer, DeactivatorProtocol,
                                  DeactResult, EasDeactivator, EasGate, GateAlarm,
                                  GateClear, GateError, GateHeartbeat, GateProtocol,
                                  GateReply, TagInField, checksum, frame)
from lanecore.drivers.link import (BAD_FRAME, GARBAGE, NO_ANSWER, PORT_LOST,
                                   SEQUENCE_GAP, UNKNOWN_STATUS, DeviceFault)
from lanecore.drivers.sim import ScriptError
from lanecore.drivers.sim.eas import DeactivatorSim, GateSim

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

# Worked by hand: XOR of the bytes between '$' and '*'.
VECTORS = {
    b"$OK 12*27\r\n": ("OK", "12"),
    b"$NOTAG 12*70\r\n": ("NOTAG", "12"),
    b"$ERR 12 BUSY*5B\r\n": ("ERR", "12", "BUSY"),
    b"$TAG*52\r\n": ("TAG",),
    b"$DEACT 12 3000*57\r\n": ("DEACT", "12", "3000"),
    b"$ALARM G1 A 7*73\r\n": ("ALARM", "G1", "A", "7"),
    b"$CLEAR G1 A 8*76\r\n": ("CLEAR", "G1", "A", "8"),
    b"$HB 9*13\r\n": ("HB", "9"),
    b"$SILENCE G1*0D\r\n": ("SILENCE", "G1"),
    b"$ACK G1*1F\r\n": ("ACK", "G1"),
    b"$SILENCED G1 10*68\r\n": ("SILENCED", "G1", "10"),
    b"$ACKED G1 11*3E\r\n": ("ACKED", "G1", "11"),
    b"$ERR 0 BAD_COMMAND*2A\r\n": ("ERR", "0", "BAD_COMMAND"),
}


def kinds(events):
    return [e.code if isinstance(e, DeviceFault) else type(e).__name__ for e in events]


def strip_at(events):
    return [e.code if isinstance(e, DeviceFault) else
            {k: v for k, v in e.to_dict().items() if k != "at"} for e in events]


# -- framing -------------------------------------------------------------------------------

@pytest.mark.parametrize("wire,fields", list(VECTORS.items()))
def test_frame_vectors(wire, fields):
    assert frame(*fields) == wire
    body = wire[1:wire.index(b"*")]
    assert checksum(body) == reduce(lambda a, b: a ^ b, body) == int(wire[-4:-2], 16)


@pytest.mark.parametrize("fields", [(), ("A*B",), ("$OK",), ("OK\r",), ("x" * 77,)])
def test_frame_refuses_what_cannot_be_a_line(fields):
    with pytest.raises(ValueError):
        frame(*fields)


# -- deactivator protocol ---------------------------------------------------------------------

def test_deactivator_answers():
    p = DeactivatorProtocol()
    out = p.feed(b"$OK 12*27\r\n$NOTAG 12*70\r\n$TAG*52\r\n", at=3.0)
    assert out == [DeactAnswer("OK", 12, None, 3.0), DeactAnswer("NOTAG", 12, None, 3.0),
                   TagInField(3.0)]


@pytest.mark.parametrize("reason", ERR_REASONS)
def test_deactivator_every_err_reason(reason):
    out = DeactivatorProtocol().feed(frame("ERR", 41, reason), at=1.0)
    assert out == [DeactAnswer("ERR", 41, reason, 1.0)]


def test_deactivator_unknown_reason_is_an_answer_and_a_fault():
    out = DeactivatorProtocol().feed(frame("ERR", 41, "MELTED"))
    assert kinds(out) == ["DeactAnswer", UNKNOWN_STATUS]
    assert out[0].reason == "MELTED"


@pytest.mark.parametrize("wire,code", [
    (frame("HELLO", 1), UNKNOWN_STATUS),
    (frame("OK"), BAD_FRAME), (frame("OK", 1, 2), BAD_FRAME), (frame("TAG", 1), BAD_FRAME),
    (frame("OK", "x1"), BAD_FRAME), (frame("OK", 100_000_000), BAD_FRAME),
    (frame("ERR", 1), BAD_FRAME), (frame("ERR", 1, "NO/SUCH"), BAD_FRAME),
    (b"$OK 12*28\r\n", BAD_FRAME),                      # checksum off by one
    (b"$OK 12*2\r\n", BAD_FRAME), (b"$OK 12\r\n", BAD_FRAME), (b"$OK 12*ZZ\r\n", BAD_FRAME),
    (b"$OK\x0112*26\r\n", BAD_FRAME),                   # a control character inside
    (b"OK 12*27\r\n", GARBAGE),                         # no '$'
])
def test_deactivator_bad_lines(wire, code):
    assert kinds(DeactivatorProtocol().feed(wire)) == [code]


def test_lowercase_checksum_and_bare_lf_are_accepted():
    assert kinds(DeactivatorProtocol().feed(b"$TAG*52\n$OK 12*27\r\n$TAG*52\r\n")) == \
        ["TagInField", "DeactAnswer", "TagInField"]
    assert DeactivatorProtocol().feed(b"$ERR 12 BUSY*5b\r\n") == \
        [DeactAnswer("ERR", 12, "BUSY", 0.0)]
    # tokens are case-sensitive data: "g1" is its own gate (and its own checksum)
    assert GateProtocol().feed(b"$SILENCED g1 10*48\r\n") == \
        [GateReply("SILENCED", "g1", 10, 0.0)]


def test_garbage_before_a_line_is_skipped_and_the_line_kept():
    out = DeactivatorProtocol().feed(b"\x00\xff#noise\x7f$OK 12*27\r\n")
    assert kinds(out) == [GARBAGE, "DeactAnswer"]
    # noise holding a '$' of its own: the last '$' starts the line
    assert kinds(DeactivatorProtocol().feed(b"$O$$OK 12*27\r\n")) == [GARBAGE, "DeactAnswer"]


def test_a_line_without_end_is_dropped_and_the_stream_resyncs():
    p = DeactivatorProtocol()
    out = p.feed(b"\xaa" * 200)
    assert kinds(out) == [GARBAGE]
    out = p.feed(b"\xaa" * 10 + b"$OK 12*27\r\n")
    assert kinds(out)[-1] == "DeactAnswer" and set(kinds(out)[:-1]) <= {GARBAGE}
    # a '$' near the end of a long run of noise is kept as the start of a line
    p = DeactivatorProtocol()
    out = p.feed(b"\xaa" * 100 + b"$NOTAG 1")
    assert kinds(out) == [GARBAGE]
    assert p.feed(b"2*70\r\n") == [DeactAnswer("NOTAG", 12, None, 0.0)]


def test_deactivator_stream_split_at_every_byte():
    stream = (frame("OK", 1) + frame("TAG") + frame("ERR", 2, "COIL_FAULT")
              + frame("NOTAG", 99_999_999))
    want = strip_at(DeactivatorProtocol().feed(stream))
    assert kinds(DeactivatorProtocol().feed(stream)) == \
        ["DeactAnswer", "TagInField", "DeactAnswer", "DeactAnswer"]
    for cut in range(len(stream) + 1):
        p = DeactivatorProtocol()
        assert strip_at(p.feed(stream[:cut]) + p.feed(stream[cut:])) == want, cut
    p = DeactivatorProtocol()
    assert strip_at([e for b in stream for e in p.feed(bytes([b]))]) == want


def test_deact_command():
    assert DeactivatorProtocol.deact(12, 3000) == b"$DEACT 12 3000*57\r\n"
    assert DeactivatorProtocol.deact(99_999_999, 1).startswith(b"$DEACT 99999999 1*")
    for bad in ((0, 3000), (100_000_000, 3000), (1, 0), (1, 60_001)):
        with pytest.raises(ValueError):
            DeactivatorProtocol.deact(*bad)


# -- gate protocol --------------------------------------------------------------------------

def test_gate_messages():
    p = GateProtocol()
    stream = b"".join(w for w, f in VECTORS.items()
                      if f[0] in ("ALARM", "CLEAR", "HB", "SILENCED", "ACKED"))
    assert p.feed(stream, at=2.0) == [
        GateAlarm("G1", "A", 7, 2.0), GateClear("G1", "A", 8, 2.0), GateHeartbeat(9, 2.0),
        GateReply("SILENCED", "G1", 10, 2.0), GateReply("ACKED", "G1", 11, 2.0)]
    assert p.feed(frame("ERR", 0, "BAD_COMMAND") + frame("ERR", 0, "BAD_ARG"), at=2.0) == \
        [GateError("BAD_COMMAND", 2.0), GateError("BAD_ARG", 2.0)]


@pytest.mark.parametrize("wire,code", [
    (frame("ERR", 0, "ON_FIRE"), UNKNOWN_STATUS), (frame("BEEP", 1), UNKNOWN_STATUS),
    (frame("ERR", 3, "BAD_ARG"), BAD_FRAME), (frame("HB"), BAD_FRAME),
    (frame("HB", 65_536), BAD_FRAME), (frame("ALARM", "G1", "A"), BAD_FRAME),
    (frame("ALARM", "GATE-1234", "A", 1), BAD_FRAME),   # gate ids are 1-8 characters
    (frame("CLEAR", "G1", "A/B", 1), BAD_FRAME), (frame("SILENCED", "G1"), BAD_FRAME),
])
def test_gate_bad_lines(wire, code):
    assert kinds(GateProtocol().feed(wire)) == [code]


def test_gate_sequence_gap_wrap_and_reset():
    p = GateProtocol()
    assert kinds(p.feed(frame("HB", 65_534) + frame("HB", 65_535) + frame("HB", 0)
                        + frame("ALARM", "G1", "L", 1))) == ["GateHeartbeat"] * 3 + ["GateAlarm"]
    out = p.feed(frame("HB", 5))
    assert kinds(out) == [SEQUENCE_GAP, "GateHeartbeat"] and "3 lines lost" in out[0].message
    assert kinds(p.feed(frame("HB", 5))) == [SEQUENCE_GAP, "GateHeartbeat"]   # repeated
    p.reset()
    assert kinds(p.feed(frame("HB", 40_000))) == ["GateHeartbeat"]
    # ERR carries no seq and does not disturb the count
    assert kinds(p.feed(frame("ERR", 0, "BAD_ARG") + frame("HB", 40_001))) == \
        ["GateError", "GateHeartbeat"]


def test_gate_stream_split_at_every_byte():
    stream = (frame("HB", 1) + frame("ALARM", "G1", "R", 2) + b"\x07junk"
              + frame("SILENCED", "G1", 3) + frame("CLEAR", "G1", "R", 4))
    want = strip_at(GateProtocol().feed(stream))
    assert kinds(GateProtocol().feed(stream)) == \
        ["GateHeartbeat", "GateAlarm", GARBAGE, "GateReply", "GateClear"]
    for cut in range(len(stream) + 1):
        p = GateProtocol()
        assert strip_at(p.feed(stream[:cut]) + p.feed(stream[cut:])) == want, cut


def test_gate_commands():
    assert GateProtocol.silence("G1") == b"$SILENCE G1*0D\r\n"
    assert GateProtocol.ack("G1") == b"$ACK G1*1F\r\n"
    with pytest.raises(ValueError):
        GateProtocol.ack("G 1")


def test_to_dict():
    assert DeactResult("OK", 5, None, 1.0).to_dict() == {
        "event": "deact_result", "outcome": "OK", "request_id": 5, "reason": None, "at": 1.0}
    assert DeactResult("OK", 5, None, 1.0).ok and not DeactResult("NOTAG", 5, None, 1.0).ok
    assert GateAlarm("G1", "A", 3, 2.0).to_dict() == {
        "event": "gate_alarm", "gate": "G1", "aisle": "A", "seq": 3, "at": 2.0}


# -- end to end -----------------------------------------------------------------------------

class Collector:
    def __init__(self) -> None:
        self.events: list = []
        self.cv = threading.Condition()

    def __call__(self, event) -> None:
        with self.cv:
            self.events.append(event)
            self.cv.notify_all()

    def wait_for(self, pred, timeout_s: float = 5.0, n: int = 1):
        end = time.monotonic() + timeout_s
        with self.cv:
            while True:
                hits = [e for e in self.events if pred(e)]
                if len(hits) >= n:
                    return hits
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; events: {self.events!r}")
                self.cv.wait(left)

    def of(self, cls):
        with self.cv:
            return [e for e in self.events if isinstance(e, cls)]

    def fault_codes(self):
        with self.cv:
            return [e.code for e in self.events if isinstance(e, DeviceFault)]


@pytest.fixture
def deact():
    got = Collector()
    with DeactivatorSim() as sim, EasDeactivator(sim.path, on_event=got) as drv:
        assert drv.wait_connected(5)
        yield sim, drv, got


def test_deactivate_ok_notag_err(deact):
    sim, drv, got = deact
    sim.do("tag")
    got.wait_for(lambda e: isinstance(e, TagInField))
    r1 = drv.deactivate(1.0)
    assert r1.outcome == "OK" and r1.ok and sim.deactivated == 1
    r2 = drv.deactivate(0.2)
    assert (r2.outcome, r2.request_id) == ("NOTAG", r1.request_id + 1)
    sim.do("fail", "OVERHEAT")
    r3 = drv.deactivate(1.0)
    assert (r3.outcome, r3.reason) == ("ERR", "OVERHEAT")
    sim.do("fail", "MELTED")
    assert drv.deactivate(1.0).reason == "MELTED"
    assert got.fault_codes() == [UNKNOWN_STATUS]
    assert [c[0] for c in sim.commands] == ["DEACT"] * 4
    assert sim.commands[1] == ["DEACT", str(r2.request_id), "200"]


def test_deactivate_waits_for_a_tag_that_arrives_late(deact):
    sim, drv, _ = deact
    timer = threading.Timer(0.3, sim.do, args=("tag",))
    timer.start()
    try:
        t0 = time.monotonic()
        r = drv.deactivate(3.0)
        assert r.outcome == "OK" and time.monotonic() - t0 < 3.0
    finally:
        timer.join()


def test_a_late_answer_is_never_taken_for_the_current_request(deact):
    sim, drv, got = deact
    sim.do("tag")
    sim.slow_s = 0.6                       # the device answers the first request late
    drv.answer_margin_s = 0.1
    r1 = drv.deactivate(0.1)
    assert r1.outcome == NO_ANSWER
    assert got.fault_codes() == [NO_ANSWER]
    sim.slow_s = 0.0
    drv.answer_margin_s = 2.0
    r2 = drv.deactivate(0.5)               # meanwhile "OK <r1>" arrives: not ours
    assert (r2.outcome, r2.request_id) == ("NOTAG", r1.request_id + 1)
    late = [a for a in got.of(DeactAnswer) if a.request_id == r1.request_id]
    assert [a.outcome for a in late] == ["OK"]


def test_unplug_fails_the_request_and_replug_recovers(deact):
    sim, drv, got = deact
    timer = threading.Timer(0.2, sim.do, args=("unplug",))
    timer.start()
    t0 = time.monotonic()
    r = drv.deactivate(3.0)
    timer.join()
    assert r.outcome == PORT_LOST and time.monotonic() - t0 < 2.0
    assert PORT_LOST in got.fault_codes()
    sim.do("replug")
    sim.do("tag", "1")
    r2 = drv.deactivate(3.0)
    assert r2.outcome == "OK" and r2.request_id > r.request_id
    assert drv.link.opens == 2


def test_deactivate_on_a_missing_port_returns_in_time(tmp_path):
    got = Collector()
    with EasDeactivator(str(tmp_path / "nothing"), on_event=got) as drv:
        t0 = time.monotonic()
        r = drv.deactivate(0.3)
        assert r.outcome == PORT_LOST and time.monotonic() - t0 < 2.0
    assert got.fault_codes()[0] == "PORT_OPEN_FAILED"


def test_deactivator_sim_answers_busy_and_bad_requests(deact):
    sim, drv, got = deact
    drv.send(frame("DEACT", 7, 5000))
    drv.send(frame("DEACT", 8, 100))
    drv.send(frame("DEACT", 9, 0))
    drv.send(frame("FLY", 1))
    got.wait_for(lambda e: isinstance(e, DeactAnswer), n=3)
    answers = [(a.outcome, a.request_id, a.reason) for a in got.of(DeactAnswer)]
    assert answers == [("ERR", 8, "BUSY"), ("ERR", 9, "BAD_ARG"), ("ERR", 0, "BAD_COMMAND")]
    sim.do("tag")
    got.wait_for(lambda e: isinstance(e, DeactAnswer) and e.request_id == 7)
    with pytest.raises(ScriptError):
        sim.do("tag", "many")


@pytest.fixture
def gate():
    got = Collector()
    with GateSim(heartbeat_s=0.1, alarm_s=0.3) as sim, \
            EasGate(sim.path, on_event=got, heartbeat_timeout_s=1.0,
                    backoff_max_s=0.2) as drv:
        assert drv.wait_connected(5)
        yield sim, drv, got


def test_gate_alarm_silence_ack_and_self_clear(gate):
    sim, drv, got = gate
    got.wait_for(lambda e: isinstance(e, GateHeartbeat), n=2)
    sim.do("alarm", "R")
    alarm = got.wait_for(lambda e: isinstance(e, GateAlarm))[0]
    assert (alarm.gate, alarm.aisle) == ("G1", "R")
    got.wait_for(lambda e: isinstance(e, GateClear) and e.aisle == "R")   # after 0.3 s
    sim.alarm_s = 0                                                       # until ACK
    sim.do("alarm")
    got.wait_for(lambda e: isinstance(e, GateAlarm) and e.aisle == "A")
    drv.silence("G1")
    got.wait_for(lambda e: isinstance(e, GateReply) and e.what == "SILENCED")
    assert sim.silenced and sim.alarms
    drv.acknowledge("G1")
    got.wait_for(lambda e: isinstance(e, GateClear) and e.aisle == "A")
    assert [r.what for r in got.of(GateReply)] == ["SILENCED", "ACKED"]
    drv.acknowledge("G2")
    got.wait_for(lambda e: isinstance(e, GateError))
    assert got.fault_codes() == []
    seqs = [e.seq for e in got.events if hasattr(e, "seq")]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_gate_deaf_is_no_answer_then_reconnect_then_heartbeats_again(gate):
    sim, drv, got = gate
    got.wait_for(lambda e: isinstance(e, GateHeartbeat))
    sim.do("deaf")
    got.wait_for(lambda e: isinstance(e, DeviceFault) and e.code == NO_ANSWER, timeout_s=5)
    end = time.monotonic() + 5
    while drv.link.opens < 2 and time.monotonic() < end:
        time.sleep(0.02)
    assert drv.link.opens >= 2                         # it reopened the port
    with got.cv:
        n = len(got.events)
    sim.do("undeaf")
    got.wait_for(lambda e: got.events.index(e) >= n and isinstance(e, GateHeartbeat), n=3)


def test_gate_sequence_gap_and_garbage_are_reported(gate):
    sim, drv, got = gate
    got.wait_for(lambda e: isinstance(e, GateHeartbeat))
    sim.do("skip", "5")
    got.wait_for(lambda e: isinstance(e, DeviceFault) and e.code == SEQUENCE_GAP)
    sim.do("garbage", "00ff7f")
    sim.do("alarm")
    got.wait_for(lambda e: isinstance(e, GateAlarm))
    assert GARBAGE in got.fault_codes()


def test_gate_unplug_replug_no_stale_line(gate):
    sim, drv, got = gate
    got.wait_for(lambda e: isinstance(e, GateHeartbeat))
    sim.deaf = True
    time.sleep(0.15)
    sim.send(b"$ALARM G1 A")                # half a line, then the cable goes
    time.sleep(0.2)
    sim.do("unplug")
    got.wait_for(lambda e: isinstance(e, DeviceFault) and e.code == PORT_LOST)
    sim.alarm()                             # nobody hears this one
    sim.do("replug")
    sim.deaf = False
    end = time.monotonic() + 5
    while drv.link.opens < 2 and time.monotonic() < end:
        time.sleep(0.02)
    with got.cv:
        n = len(got.events)
    got.wait_for(lambda e: got.events.index(e) >= n and isinstance(e, GateHeartbeat), n=2)
    sim.do("alarm", "L")
    got.wait_for(lambda e: isinstance(e, GateAlarm))
    assert [(a.aisle) for a in got.of(GateAlarm)] == ["L"]
    assert set(got.fault_codes()) == {PORT_LOST}


def test_gate_sim_refuses_ids_its_lines_cannot_carry():
    with pytest.raises(ScriptError):
        GateSim(gate="GATE NUMBER 1")
    with GateSim() as sim:
        with pytest.raises(ScriptError):
            sim.do("alarm", "A/B")
        with pytest.raises(ScriptError):
            sim.do("skip", "x")
