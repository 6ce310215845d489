"""The raw load-cell bridge: the framing codec with byte vectors, the driver end to
end against its simulator on a real pty, and the feeder into a real `lanecore serve`."""

from __future__ import annotations

import os
import queue
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from lanecore.drivers import bridge as B
from lanecore.drivers.bridge import (BridgeDecoder, BridgeDriver, BridgeError, BridgeFault,
                                     BridgeFrame, BridgeInfo, BridgeNak, WeighFeeder)
from lanecore.drivers import link as L
from lanecore.drivers.link import (BAD_FRAME, GARBAGE, NO_ANSWER, PORT_LOST, SEQUENCE_GAP,
                                   UNKNOWN_STATUS, DeviceFault)
from lanecore.drivers.sim import ScriptError
from lanecore.drivers.sim.loadcell import BridgeSim

# The worked example of docs/drivers/loadcell-bridge.md: seq 258, SATURATED,
# samples 50000, 50123, -2, 8388607.
EXAMPLE = bytes.fromhex("a5 5a 01 01 02 01 00 00 04 00 59 23 50 c3 00 00 cb c3 00 00 "
                        "fe ff ff ff ff ff 7f 00 5b 70 a3 2a")
EXAMPLE_SAMPLES = [50000, 50123, -2, 8388607]


def frames(ev):
    return [e for e in ev if isinstance(e, BridgeFrame)]


def faults(ev, code=None):
    return [e for e in ev if isinstance(e, DeviceFault) and (code is None or e.code == code)]


def stream(seqs, n=20, flags=0):
    return b"".join(B.encode_frame(s, np.arange(n) + 1000 * (s % 1000), flags) for s in seqs)


# ------------------------------------------------------------------------------
# The codec
# ------------------------------------------------------------------------------
def test_crc_check_values():
    # the catalogue check values of CRC-16/CCITT-FALSE and CRC-32/ISO-HDLC
    assert B.crc16(b"123456789") == 0x29B1
    assert B.crc32(b"123456789") == 0xCBF43926


def test_worked_example_both_ways():
    assert B.encode_frame(258, EXAMPLE_SAMPLES, B.F_SATURATED) == EXAMPLE
    out = BridgeDecoder().feed(EXAMPLE, now=5.0)
    assert len(out) == 1
    f = out[0]
    assert (f.seq, f.flags, f.samples.tolist(), f.at) == (258, 1, EXAMPLE_SAMPLES, 5.0)
    assert f.saturated and not f.adc_timeout and not f.stream_start
    assert f.samples.dtype == np.dtype("<i4")
    d = f.to_dict()
    assert d["n"] == 4 and d["samples"] == EXAMPLE_SAMPLES and d["saturated"] is True


def test_command_vectors():
    assert B.hello(1) == bytes.fromhex("a55a 10 00 01000000 0000 2a49 1cdce568")
    assert B.start(2) == bytes.fromhex("a55a 11 00 02000000 0000 19c0 75eea769")
    assert B.stop(3) == bytes.fromhex("a55a 12 00 03000000 0000 cc4d 2f9b7c21")
    assert B.set_rate(4, 2000, 20) == bytes.fromhex(
        "a55a 13 00 04000000 0200 3ca4 d0070000 14000000 23a5724c")


def test_info_and_nak_vectors():
    info = bytes.fromhex(
        "a55a 02 00 01000000 0b00 c227 01000000 d0070000 14000000 01000000 02010000 "
        "01000000 18000000 6c616e65636f72652d73696d00000000 a10f8544")
    assert B.encode_info(1, fs_hz=2000, samples_per_frame=20, streaming=True,
                         next_seq=258, adc=1, bits=24, name="lanecore-sim") == info
    (i,) = BridgeDecoder().feed(info, 1.0)
    assert i == BridgeInfo(1, 1, 2000, 20, True, 258, "HX711", 24, "lanecore-sim", 1.0)
    nak = bytes.fromhex("a55a 03 00 04000000 0200 8899 02000000 13000000 ab82fa26")
    assert B.encode_nak(4, B.NAK_BAD_RATE, B.C_SET_RATE) == nak
    assert BridgeDecoder().feed(nak) == [BridgeNak(4, "BAD_RATE", 0x13, 0.0)]


@pytest.mark.parametrize("reason,name", [(1, "UNKNOWN_COMMAND"), (2, "BAD_RATE"),
                                         (3, "BAD_ARGUMENT"), (77, "NAK_77")])
def test_every_nak_reason(reason, name):
    (n,) = BridgeDecoder().feed(B.encode_nak(9, reason, 0x10))
    assert n.reason == name and n.seq == 9 and n.command == 0x10


@pytest.mark.parametrize("flag,attr", [(B.F_SATURATED, "saturated"),
                                       (B.F_ADC_TIMEOUT, "adc_timeout"),
                                       (B.F_STREAM_START, "stream_start")])
def test_every_known_flag(flag, attr):
    (f,) = BridgeDecoder().feed(B.encode_frame(7, [1, 2, 3], flag))
    assert getattr(f, attr) is True
    others = {"saturated", "adc_timeout", "stream_start"} - {attr}
    assert not any(getattr(f, a) for a in others)


@pytest.mark.parametrize("bit", [0x08, 0x10, 0x20, 0x40, 0x80])
def test_unknown_flag_is_reported_and_its_samples_counted_lost(bit):
    d = BridgeDecoder()
    out = d.feed(stream([1]) + B.encode_frame(2, np.zeros(20), bit) + stream([3]))
    assert [f.seq for f in frames(out)] == [1, 3]        # no gap reported for 2
    (u,) = faults(out)
    assert u.code == UNKNOWN_STATUS and (u.frames_lost, u.samples_lost, u.seq) == (1, 20, 2)
    assert (d.samples, d.samples_lost) == (40, 20)


def test_unknown_packet_type_is_unknown_status_and_skipped():
    d = BridgeDecoder()
    out = d.feed(stream([1]) + B.encode_packet(0x55, 0, 0, b"abcd") + stream([2]))
    assert [f.seq for f in frames(out)] == [1, 2]
    (u,) = faults(out)
    assert u.code == UNKNOWN_STATUS and u.frames_lost == 0 and "0x55" in u.message


def test_byte_at_a_time_and_partial_frames():
    data = stream(range(5))
    d = BridgeDecoder()
    out = []
    for k in range(len(data)):
        out += d.feed(data[k:k + 1])
    assert [f.seq for f in out] == list(range(5)) and not faults(out)
    # half a frame, then the port goes away: the half is forgotten
    d.feed(stream([5])[:30])
    d.clear()
    out = d.feed(stream([6]))
    assert faults(out, SEQUENCE_GAP)[0].frames_lost == 1 and frames(out)[0].seq == 6


def test_a_tail_cut_by_the_port_flush_is_not_garbage_but_more_is():
    d = BridgeDecoder()
    d.feed(stream([0]))
    d.clear()                                   # a reopened port
    tail = stream([1])[50:]
    out = d.feed(tail[:20]) + d.feed(tail[20:] + stream([2]))
    assert [f.seq for f in frames(out)] == [2] and not faults(out, GARBAGE)
    assert d.resync_bytes == len(tail) and d.garbage_bytes == 0
    assert faults(out, SEQUENCE_GAP)[0].frames_lost == 1
    d.clear()
    out = d.feed(bytes(B.OVERHEAD + 4 * B.MAX_WORDS + 7))     # longer than any packet
    assert sum(f.bytes_skipped for f in faults(out, GARBAGE)) == 7


GARBAGE_BYTES = b"\x00\xff\xa5\x5a\x01\x00junk\xa5\xa5\x5a\x13\x37\xa5"


def test_garbage_at_every_split_point():
    data = stream([0]) + GARBAGE_BYTES + stream([1, 2])
    for k in range(len(data) + 1):
        d = BridgeDecoder()
        out = d.feed(data[:k]) + d.feed(data[k:])
        assert [f.seq for f in frames(out)] == [0, 1, 2], k
        assert [f.samples.tolist() for f in frames(out)] == \
            [list(range(20)), list(range(1000, 1020)), list(range(2000, 2020))]
        g = faults(out)
        assert g and all(f.code == GARBAGE for f in g), (k, g)
        assert sum(f.bytes_skipped for f in g) == len(GARBAGE_BYTES), k
        assert d.samples_lost == 0


def test_a_frame_ending_in_a5_is_not_half_a_sync():
    seq = next(k for k in range(10_000) if B.encode_frame(k, [k])[-1] == 0xA5)
    d = BridgeDecoder()
    out = d.feed(B.encode_frame(seq, [seq])) + d.feed(B.encode_frame(seq + 1, [1]))
    assert len(frames(out)) == 2 and not faults(out) and d.garbage_bytes == 0


def test_leading_garbage_and_a_trailing_half_sync():
    d = BridgeDecoder()
    out = d.feed(b"noise" + stream([0]) + b"\xa5")
    assert [f.seq for f in frames(out)] == [0]
    assert faults(out)[0].bytes_skipped == 5
    assert not faults(d.feed(b"\x5a"[:0]))           # the 0xA5 waits for its partner


def test_corrupted_length_does_not_swallow_good_frames():
    good = stream([0, 1, 2, 3])
    size = B.OVERHEAD + 80
    bad = bytearray(good)
    bad[size + 8:size + 10] = struct.pack("<H", 1000)    # frame 1 claims 1000 samples
    d = BridgeDecoder()
    out = d.feed(bytes(bad))
    # frame 2 comes out at once: the length was not trusted (header CRC-16 failed)
    assert [f.seq for f in frames(out)] == [0, 2, 3]
    gap = faults(out, SEQUENCE_GAP)
    assert len(gap) == 1 and (gap[0].frames_lost, gap[0].samples_lost) == (1, 20)
    assert sum(f.bytes_skipped for f in faults(out, GARBAGE)) == size


def test_a_lying_length_with_a_good_header_crc_still_does_not_swallow_frames():
    # a false packet whose header passes its CRC and claims 200 bytes of payload
    liar = B.encode_packet(B.T_SAMPLES, 0, 1, bytes(200))[:B.HEADER_LEN]
    d = BridgeDecoder()
    out = d.feed(stream([0]) + liar + stream([1, 2, 3, 4]))
    assert [f.seq for f in frames(out)] == [0, 1, 2, 3, 4]
    assert faults(out, BAD_FRAME) and not faults(out, SEQUENCE_GAP)


def test_bad_crc32_is_bad_frame_then_a_gap():
    data = bytearray(stream([0, 1, 2]))
    data[B.OVERHEAD + 80 + 20] ^= 0x40                   # a sample of frame 1
    d = BridgeDecoder()
    out = d.feed(bytes(data))
    assert [type(e).__name__ + (getattr(e, "code", "")) for e in out] == [
        "BridgeFrame", "BridgeFaultBAD_FRAME", "BridgeFaultSEQUENCE_GAP", "BridgeFrame"]
    assert out[1].seq == 1 and out[2].frames_lost == 1 and out[2].samples_lost == 20
    assert not faults(out, GARBAGE)          # the bad frame's bytes are not garbage again
    assert (d.frames, d.samples, d.frames_lost, d.samples_lost, d.bad_frames) == (2, 40, 1, 20, 1)


def test_sequence_wraps():
    top = B.SEQ_MOD - 1
    d = BridgeDecoder()
    out = d.feed(stream([top - 1, top, 0, 1]))
    assert [f.seq for f in out] == [top - 1, top, 0, 1]
    out = BridgeDecoder().feed(stream([top, 2]))      # top, (0, 1 lost), 2
    (g,) = faults(out)
    assert (g.code, g.frames_lost, g.samples_lost, g.seq) == (SEQUENCE_GAP, 2, 40, 0)


def test_duplicate_and_late_frames_are_dropped_not_delivered_again():
    d = BridgeDecoder()
    out = d.feed(stream([5, 6, 6, 9, 7, 10]))
    assert [f.seq for f in frames(out)] == [5, 6, 9, 10]
    dup, gap, late = faults(out)
    assert dup.code == BAD_FRAME and "duplicate" in dup.message
    assert gap.code == SEQUENCE_GAP and gap.frames_lost == 2
    assert late.code == BAD_FRAME and "2 frames before the last" in late.message
    assert d.samples + d.samples_lost == 20 * 6        # seqs 5..10


def test_stream_start_begins_a_new_count():
    out = BridgeDecoder().feed(stream([40]) + stream([0], flags=B.F_STREAM_START) + stream([1]))
    assert [f.seq for f in out] == [40, 0, 1]


def test_info_reports_tail_loss_and_restarts():
    info = lambda nxt: B.encode_info(1, fs_hz=2000, samples_per_frame=20, streaming=False,
                                     next_seq=nxt)
    d = BridgeDecoder()
    out = d.feed(stream([0, 1]) + info(5))
    g = faults(out)[0]
    assert (g.code, g.frames_lost, g.samples_lost) == (SEQUENCE_GAP, 3, 60)
    out = d.feed(info(5))
    assert not faults(out)
    out = d.feed(info(0))                               # behind: the bridge restarted
    g = faults(out)[0]
    assert g.code == SEQUENCE_GAP and g.frames_lost is None and d.unknown_loss == 1
    assert frames(d.feed(stream([0])))[0].seq == 0


def test_encoders_refuse_what_cannot_be_framed():
    for bad in ([], np.zeros(1025), np.zeros((2, 2))):
        with pytest.raises(ValueError):
            B.encode_frame(0, bad)
    with pytest.raises(ValueError):
        B.encode_packet(B.T_INFO, 0, 0, b"abc")
    assert B.rate_ok(2000, 20) and not B.rate_ok(2000, 1) and not B.rate_ok(40_000, 100)


# ------------------------------------------------------------------------------
# The driver against the simulator on a pty
# ------------------------------------------------------------------------------
class Collector:
    def __init__(self):
        self.events = []

    def __call__(self, ev):
        self.events.append(ev)

    def wait(self, pred, timeout_s=5.0):
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if pred(list(self.events)):
                return True
            time.sleep(0.01)
        return False


@pytest.fixture
def sim():
    devices = []

    def make(**kw):
        d = BridgeSim(**kw).start()
        devices.append(d)
        return d
    yield make
    for d in devices:
        d.stop()


def accounted(drv, sim):
    """Stop, then check no sample vanished without a report."""
    info = drv.stop_streaming(timeout_s=3)
    d = drv.decoder
    assert info.next_seq == sim.seq
    assert d.samples + d.samples_lost == sim.samples_numbered
    return d


def test_driver_streams_answers_and_refuses_bad_rates(sim):
    dev = sim(fs_hz=1000, samples_per_frame=10)
    got = Collector()
    with BridgeDriver(dev.path, on_event=got) as drv:
        assert got.wait(lambda ev: len(frames(ev)) >= 10)
        info = drv.hello()
        assert (info.fs_hz, info.samples_per_frame, info.adc, info.streaming) == \
            (1000, 10, "HX711", True)
        with pytest.raises(BridgeError) as exc:
            drv.set_rate(2000, 1)
        assert exc.value.code == "BAD_RATE"
        drv.set_rate(2000, 40)
        assert got.wait(lambda ev: any(len(f.samples) == 40 for f in frames(ev)))
        d = accounted(drv, dev)
    fr = frames(got.events)
    assert [f.seq for f in fr] == list(range(fr[0].seq, fr[0].seq + len(fr)))
    assert not faults(got.events) and d.samples_lost == 0
    # counts around zero_counts: the signal is the physics turned into raw counts
    assert abs(np.mean(fr[0].samples) - 50_000) < 100


def test_a_rate_given_to_the_driver_is_set_on_open(sim):
    with pytest.raises(ValueError):
        BridgeDriver("loop://", on_event=print, fs_hz=2000)
    with pytest.raises(ValueError):
        BridgeDriver("loop://", on_event=print, fs_hz=5000, samples_per_frame=1)
    dev = sim(fs_hz=2000, samples_per_frame=20)
    got = Collector()
    with BridgeDriver(dev.path, on_event=got, fs_hz=1000, samples_per_frame=10) as drv:
        assert got.wait(lambda ev: len(frames(ev)) >= 3 and len(frames(ev)[-1].samples) == 10)
        assert (dev.fs_hz, dev.samples_per_frame) == (1000, 10)
        accounted(drv, dev)


def test_unplug_replug_reports_port_lost_then_the_gap_then_resumes(sim):
    dev = sim()
    got = Collector()
    with BridgeDriver(dev.path, on_event=got, backoff_max_s=0.2) as drv:
        assert got.wait(lambda ev: len(frames(ev)) >= 5)
        dev.do("unplug")
        assert got.wait(lambda ev: faults(ev, PORT_LOST))
        time.sleep(0.3)                                   # frames numbered, never sent
        dev.do("replug")
        assert got.wait(lambda ev: faults(ev, SEQUENCE_GAP)
                        and ev.index(faults(ev, SEQUENCE_GAP)[0]) < len(ev) - 5
                        and len(frames(ev[ev.index(faults(ev, SEQUENCE_GAP)[0]):])) >= 5)
        d = accounted(drv, dev)
    ev = got.events
    i_lost = ev.index(faults(ev, PORT_LOST)[0])
    i_gap = ev.index(faults(ev, SEQUENCE_GAP)[0])
    assert i_lost < i_gap and faults(ev, SEQUENCE_GAP)[0].samples_lost > 0
    seqs = [f.seq for f in frames(ev)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)   # nothing old again
    assert d.samples_lost > 0


def test_silence_is_no_answer_and_the_gap_is_reported_after(sim):
    dev = sim(fs_hz=500, samples_per_frame=10)
    got = Collector()
    with BridgeDriver(dev.path, on_event=got, stall_s=0.3) as drv:
        assert got.wait(lambda ev: len(frames(ev)) >= 3)
        dev.do("mute")
        assert got.wait(lambda ev: faults(ev, NO_ANSWER))
        dev.do("unmute")
        assert got.wait(lambda ev: faults(ev, SEQUENCE_GAP))
        accounted(drv, dev)
    ev = got.events
    # reported once per silence (a loaded machine may pause the simulator again later)
    assert ev.index(faults(ev, NO_ANSWER)[0]) < ev.index(faults(ev, SEQUENCE_GAP)[0])
    assert not faults(ev, NO_ANSWER)[1:] or \
        ev.index(faults(ev, NO_ANSWER)[1]) > ev.index(faults(ev, SEQUENCE_GAP)[0])


def test_an_idle_bridge_is_started_and_faults_are_exactly_the_injected_ones(sim):
    dev = sim(streaming=False, first_seq=B.SEQ_MOD - 30)     # wraps on the way
    got = Collector()
    with BridgeDriver(dev.path, on_event=got) as drv:
        assert got.wait(lambda ev: len(frames(ev)) >= 3)
        assert frames(got.events)[0].stream_start
        for action in (("drop", "3"), ("corrupt",), ("garbage", "a55a0000ffa5"),
                       ("drop", "1"), ("corrupt",)):
            dev.do(*action)
            time.sleep(0.05)
        assert got.wait(lambda ev: drv.decoder.samples_lost >= 20 * 6
                        and frames(ev)[-1].seq > 5)
        d = accounted(drv, dev)
    assert d.samples_lost == 20 * (3 + 1 + 1 + 1) and dev.frames_corrupted == 2
    assert len(faults(got.events, BAD_FRAME)) == 2
    assert sum(f.bytes_skipped for f in faults(got.events, GARBAGE)) == 6


def test_a_missing_port_is_reported_once_and_commands_time_out(tmp_path):
    got = Collector()
    with BridgeDriver(str(tmp_path / "nothing"), on_event=got, backoff_max_s=0.1) as drv:
        t0 = time.monotonic()
        with pytest.raises(BridgeError) as exc:
            drv.hello(timeout_s=0.3)
        assert exc.value.code == NO_ANSWER and time.monotonic() - t0 < 2.0
    assert [f.code for f in faults(got.events)] == [L.PORT_OPEN_FAILED]


def test_the_event_callback_cannot_kill_the_loop(sim):
    dev = sim()
    seen = []

    def bad(ev):
        seen.append(ev)
        raise RuntimeError("a consumer's bug")
    with BridgeDriver(dev.path, on_event=bad):
        end = time.monotonic() + 5
        while len(frames(seen)) < 10 and time.monotonic() < end:
            time.sleep(0.01)
    assert len(frames(seen)) >= 10


def test_simulator_script_actions(sim):
    dev = sim(streaming=False)
    for bad in (("place",), ("drop", "-1"), ("rate", "5", "0"), ("bogus",)):
        with pytest.raises(ScriptError):
            dev.do(*bad)
    dev.do("noise", "0")
    dev.do("place", "100")
    assert dev.placements[-1][1] == 100.0
    dev.do("remove", "40")
    assert dev.placements[-1][1] == -40.0
    dev.do("rate", "1000", "10")
    assert (dev.fs_hz, dev.samples_per_frame) == (1000, 10)


def test_lanecore_sim_loadcell_prints_its_path():
    p = subprocess.run([sys.executable, "-m", "lanecore", "sim", "loadcell", "--duration",
                        "0.3", "--fs-hz", "1000", "--samples-per-frame", "10"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert '"device": "loadcell"' in p.stdout and '"path": ' in p.stdout
    p = subprocess.run([sys.executable, "-m", "lanecore", "sim", "loadcell", "--fs-hz", "5000",
                        "--samples-per-frame", "1"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "USAGE" in p.stderr and "Traceback" not in p.stderr


# ------------------------------------------------------------------------------
# The feeder
# ------------------------------------------------------------------------------
class Recorder:
    def __init__(self):
        self.calls = []

    def weigh_frame(self, lane, seq, counts=None):
        self.calls.append((lane, seq, np.asarray(counts).copy()))
        return {"events": [], "stable": False, "settled_g": None}


def frame(seq, start, n=20):
    return BridgeFrame(seq, 0, np.arange(start, start + n, dtype="<i4"))


def test_feeder_batches_and_keeps_seq_consecutive():
    rec = Recorder()
    feeder = WeighFeeder(rec, "EXIT1", fs_hz=2000)            # 50 ms: 100 samples
    for k in range(12):
        feeder.feed(frame(k, 20 * k))
    assert [(c[0], c[1], len(c[2])) for c in rec.calls] == [("EXIT1", 0, 100), ("EXIT1", 1, 100)]
    assert np.array_equal(np.concatenate([c[2] for c in rec.calls]), np.arange(200))
    assert feeder.flush() and rec.calls[-1][1] == 2 and len(rec.calls[-1][2]) == 40


def test_feeder_turns_bridge_gaps_into_service_gaps():
    rec = Recorder()
    feeder = WeighFeeder(rec, "L", fs_hz=2000, frame_s=0.05, first_seq=10)
    for k in range(3):
        feeder.feed(frame(k, 20 * k))
    feeder.feed(BridgeFault(SEQUENCE_GAP, "x", frames_lost=2, samples_lost=40))
    assert [c[1] for c in rec.calls] == [10] and len(rec.calls[0][2]) == 60  # flushed short
    feeder.feed(frame(5, 100))
    assert feeder.seq == 12                                # seq 11 skipped
    feeder.flush()
    # losses in a row add up: 500 samples + an ADC timeout frame of 20 + 80 = 6 frames
    feeder.feed(BridgeFault(SEQUENCE_GAP, "x", frames_lost=25, samples_lost=500))
    feeder.feed(BridgeFrame(31, B.F_ADC_TIMEOUT, np.full(20, 7, dtype="<i4")))
    feeder.feed(BridgeFault(UNKNOWN_STATUS, "x", frames_lost=1, samples_lost=80))
    feeder.feed(BridgeFault(GARBAGE, "x", bytes_skipped=4))   # costs nothing
    assert feeder.seq == 13
    feeder.feed(frame(33, 0))
    assert feeder.seq == 19 and feeder.skipped_seqs == 1 + 6
    feeder.feed(BridgeFault(SEQUENCE_GAP, "x", frames_lost=None, samples_lost=None))
    for k in range(5):
        feeder.feed(frame(k, 0))
    assert [c[1] for c in rec.calls][-2:] == [19, 21] and len(rec.calls[-1][2]) == 100
    assert not any((c[2] == 7).all() for c in rec.calls)    # no ADC-timeout counts sent
    assert feeder.lost_samples == 40 + 500 + 20 + 80
    with pytest.raises(ValueError):
        WeighFeeder(rec, "L", fs_hz=2000, frame_s=3.0)


@pytest.fixture
def served(tmp_path):
    """`lanecore serve` on ipc sockets over an empty store."""
    from lanecore.gateway.net.client import Client, ServiceError
    endpoint = f"ipc://{tmp_path}/s.ipc"
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "lanecore", "serve", "--bind", endpoint,
                             "--events", f"ipc://{tmp_path}/e.ipc", "--data-dir",
                             str(tmp_path / "data")], stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    client = Client(endpoint, timeout_s=1.0, retries=0)
    try:
        end = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                client.hello()
                break
            except ServiceError:
                assert time.monotonic() < end, "lanecore serve did not come up"
                client.close()
                client = Client(endpoint, timeout_s=1.0, retries=0)
        client.close()
        client = Client(endpoint, timeout_s=10.0, retries=2)
        yield client
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_feeder_into_a_real_service_settles_and_shows_the_gap(sim, served):
    served.weigh_config("EXIT1", fs_hz=2000, e_g=2, counts_per_g=100.0, zero_counts=50_000.0)
    dev = sim(fs_hz=2000, samples_per_frame=20, noise_g=0.3)
    q: queue.Queue = queue.Queue()
    feeder = WeighFeeder(served, "EXIT1", fs_hz=2000)

    def pump(until, timeout_s=20.0):
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            try:
                feeder.feed(q.get(timeout=0.1))
            except queue.Empty:
                pass
            if until():
                return True
        return False

    settled = lambda w: [e for e in feeder.events if e["event"] == "settled"
                         and abs(e["weight_g"] - w) < 5]
    with BridgeDriver(dev.path, on_event=q.put):
        assert pump(lambda: settled(0.0))
        dev.do("place", "500")
        assert pump(lambda: settled(500.0)), feeder.events[-5:]
        dev.do("drop", "10")                               # 200 samples: 2 service frames
        assert pump(lambda: any(e["event"] == "fault" and e.get("reason") == "sequence_gap"
                                for e in feeder.events)), feeder.events[-5:]
    gap = [e for e in feeder.events if e.get("reason") == "sequence_gap"][0]
    assert gap["frames"] == 2 and feeder.skipped_seqs == 2
    assert not feeder.errors
