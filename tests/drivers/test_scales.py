"""Scale protocol classes (drivers/scales.py) against byte strings: every documented
status of every protocol, partial frames split at every byte, garbage, unknown
statuses. No ports, no threads: the end-to-end tests are in test_scale_pty.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lanecore.drivers import link as L
from lanecore.drivers.link import DeviceFault
from lanecore.drivers.scales import (PROTOCOLS, Cas, Magellan, Sasi, ScaleError,
                                     ScaleReading, ScanReading, Toledo8217, make_protocol)


def summary(events):
    """Events as comparable tuples: ('w', weight, stable, status), ('scan', ...), code."""
    out = []
    for ev in events:
        if isinstance(ev, ScaleReading):
            out.append(("w", ev.weight_g, ev.stable, ev.status))
        elif isinstance(ev, ScanReading):
            out.append(("scan", ev.code, ev.symbology, ev.label_id))
        else:
            assert isinstance(ev, DeviceFault)
            out.append(ev.code)
    return out


def feed(proto, data: bytes):
    return summary(proto.feed(data, 5.0))


# ----------------------------------------------------------------------------------
# Toledo 8217
# ----------------------------------------------------------------------------------

TOLEDO = [
    (b"\x0201.500\r", [("w", 1500.0, True, ())]),
    (b"\x02  1.500\r", [("w", 1500.0, True, ())]),
    (b"\x0201.500N\r", [("w", 1500.0, True, ("net",))]),
    (b"\x0200.000\r", [("w", 0.0, True, ("zero",))]),
    (b"\x0200.000N\r", [("w", 0.0, True, ("net", "zero"))]),
    (b"\x0212.345\r\n", [("w", 12345.0, True, ())]),        # LF after CR tolerated
    (b"\x0212.345\r\x03", [("w", 12345.0, True, ())]),      # so is ETX
    # the status bit field, one bit at a time (bit 6 set: the character is a letter)
    (b"\x02?A\r", [("w", None, False, ("motion",))]),
    (b"\x02?B\r", [("w", None, False, ("over_capacity",))]),
    (b"\x02?D\r", [("w", None, False, ("under_zero",))]),
    (b"\x02?H\r", [("w", None, False, ("outside_zero_capture",))]),
    (b"\x02?P\r", [("w", None, False, ("centre_of_zero",))]),
    (b"\x02?`\r", [("w", None, False, ("net",))]),
    (b"\x02?@\r", [("w", None, False, ("bad_command",))]),
    # combinations
    (b"\x02?C\r", [("w", None, False, ("motion", "over_capacity"))]),
    (b"\x02?a\r", [("w", None, False, ("motion", "net"))]),
    (b"\x02?I\r", [("w", None, False, ("motion", "outside_zero_capture"))]),
    (b"\x02?e\r", [("w", None, False, ("motion", "under_zero", "net"))]),
    # statuses that are not the protocol's: never a guessed state
    (b"\x02?F\r", [L.UNKNOWN_STATUS]),      # over capacity and under zero at once
    (b"\x02?T\r", [L.UNKNOWN_STATUS]),      # under zero at the centre of zero
    (b"\x02?R\r", [L.UNKNOWN_STATUS]),      # over capacity at the centre of zero
    (b"\x02?1\r", [L.UNKNOWN_STATUS]),      # bit 6 clear: not a status character
    (b"\x02?\x7f\r", [L.UNKNOWN_STATUS]),
    (b"\x02?\x00\r", [L.UNKNOWN_STATUS]),
    # broken frames
    (b"\x02?AB\r", [L.BAD_FRAME]),
    (b"\x02?\r", [L.BAD_FRAME]),
    (b"\x021.2.3\r", [L.BAD_FRAME]),
    (b"\x02-0.100\r", [L.BAD_FRAME]),
    (b"\x02abc\r", [L.BAD_FRAME]),
    (b"\x02\xe901.500\r", [L.BAD_FRAME]),
    (b"\x0201.5\x0202.000\r", [L.BAD_FRAME, ("w", 2000.0, True, ())]),   # cut short
    # garbage before a frame is reported when the frame starts
    (b"\x00\xff#noise\x7f\x0201.500\r", [L.GARBAGE, ("w", 1500.0, True, ())]),
    (b"1.500\r\x0201.500\r", [L.GARBAGE, ("w", 1500.0, True, ())]),
    # the probe's echo: STX E CR, then the echoed text
    (b"\x02E\r", []),
]


@pytest.mark.parametrize("data,want", TOLEDO, ids=[repr(d) for d, _ in TOLEDO])
def test_toledo_vectors(data, want):
    assert feed(Toledo8217(), data) == want


def test_toledo_bits_and_sasi_letters_differ_from_C_on():
    """?A and ?B mean the same under both readings; ?C and ?D do not."""
    for char in b"AB":
        frame = b"\x02?" + bytes([char]) + b"\r"
        assert feed(Toledo8217(), frame) == feed(Sasi(), frame)
    assert feed(Toledo8217(), b"\x02?C\r") == [
        ("w", None, False, ("motion", "over_capacity"))]
    assert feed(Sasi(), b"\x02?C\r") == [("w", None, False, ("under_zero",))]
    assert feed(Toledo8217(), b"\x02?D\r") == [("w", None, False, ("under_zero",))]
    assert feed(Sasi(), b"\x02?D\r") == [("w", None, False, ("outside_zero_capture",))]


def test_toledo_units_and_commands():
    assert feed(Toledo8217("g"), b"\x0201500\r") == [("w", 1500.0, True, ())]
    lb = Toledo8217("lb").feed(b"\x0202.00\r")[0]
    assert lb.weight_g == pytest.approx(907.18474)
    t = Toledo8217()
    assert (t.weight_request(), t.zero_request(), t.tare_request(), t.clear_request()) == \
        (b"W", b"Z", b"T", b"C")
    assert (t.probe_request(), t.probe_finish()) == (b"Ehello", b"F")
    assert t.probe_matches(b"\x02E\rhello")
    assert not t.probe_matches(b"\x0201.500\r")
    assert t.line.kwargs() == {"baudrate": 9600, "bytesize": 7, "parity": "E",
                               "stopbits": 1}
    with pytest.raises(ScaleError) as exc:
        Toledo8217("oz")
    assert exc.value.code == "BAD_UNIT"


def test_toledo_echo_then_weights():
    t = Toledo8217()
    assert feed(t, b"\x02E\rhello") == []
    assert feed(t, b"\x0201.000\r") == [L.GARBAGE, ("w", 1000.0, True, ())]


def test_stx_frame_without_cr_is_bad_and_the_stream_recovers():
    t = Toledo8217()
    assert feed(t, b"\x02" + b"1" * 40) == [L.BAD_FRAME]
    assert feed(t, b"\r\x0201.000\r") == [L.GARBAGE, ("w", 1000.0, True, ())]


def test_endless_noise_is_reported_in_chunks():
    t = Toledo8217()
    out = t.feed(b"\x01" * 200, 1.0)
    assert [e.code for e in out] == [L.GARBAGE] * 3          # 64, 128, 192 bytes
    assert "skipped 64 bytes" in out[0].message and out[0].at == 1.0


def test_reset_forgets_half_a_frame():
    t = Toledo8217()
    assert feed(t, b"\x0209.9") == []
    t.reset()
    assert feed(t, b"99\r\x0201.000\r") == [L.GARBAGE, ("w", 1000.0, True, ())]


# ----------------------------------------------------------------------------------
# SASI
# ----------------------------------------------------------------------------------

SASI = [
    (b"\x0201.500\r", [("w", 1500.0, True, ())]),
    (b"\x0200.000\r", [("w", 0.0, True, ("zero",))]),
    (b"\x02?A\r", [("w", None, False, ("motion",))]),
    (b"\x02?B\r", [("w", None, False, ("over_capacity",))]),
    (b"\x02?C\r", [("w", None, False, ("under_zero",))]),
    (b"\x02?D\r", [("w", None, False, ("outside_zero_capture",))]),
    (b"\x02?E\r", [L.UNKNOWN_STATUS]),
    (b"\x02?@\r", [L.UNKNOWN_STATUS]),
    (b"\x02?a\r", [L.UNKNOWN_STATUS]),
    (b"\x0201.500N\r", [L.BAD_FRAME]),        # no net marker in SASI
    (b"\x02?AA\r", [L.BAD_FRAME]),
    (b"junk\x0201.500\r", [L.GARBAGE, ("w", 1500.0, True, ())]),
]


@pytest.mark.parametrize("data,want", SASI, ids=[repr(d) for d, _ in SASI])
def test_sasi_vectors(data, want):
    assert feed(Sasi(), data) == want


def test_sasi_commands():
    s = Sasi()
    assert (s.weight_request(), s.zero_request(), s.tare_request()) == (b"W", b"Z", None)
    assert s.probe_matches(b"\x02?A\r") and s.probe_matches(b"\x02?Q\r")
    assert not s.probe_matches(b"ST,GS,+  1.500kg\r\n")


# ----------------------------------------------------------------------------------
# Datalogic Magellan (single cable)
# ----------------------------------------------------------------------------------

MAGELLAN = [
    (b"S1101500\r", [("w", 1500.0, True, ())]),
    (b"S110125\r", [("w", 125.0, True, ())]),
    (b"S1100000\r", [("w", 0.0, True, ("zero",))]),
    (b"S140\r", [("w", None, False, ("zero_not_captured",))]),
    (b"S141\r", [("w", None, False, ("motion",))]),
    (b"S142\r", [("w", None, False, ("over_capacity",))]),
    (b"S143\r", [("w", 0.0, True, ("zero",))]),
    (b"S14401500\r", [("w", 1500.0, True, ())]),
    (b"S145\r", [("w", None, False, ("under_zero",))]),
    (b"S146\r", [L.UNKNOWN_STATUS]),
    (b"S14A\r", [L.UNKNOWN_STATUS]),
    (b"S99\r", [L.UNKNOWN_STATUS]),
    (b"S14\r", [L.BAD_FRAME]),
    (b"S1\r", [L.BAD_FRAME]),
    (b"S144\r", [L.BAD_FRAME]),
    (b"S1441500000\r", [L.BAD_FRAME]),
    (b"S1411\r", [L.BAD_FRAME]),
    (b"S11ABCDE\r", [L.BAD_FRAME]),
    (b"S08A012345678905\r", [("scan", "012345678905", "upc_a", "A")]),
    (b"S08E04252614\r", [("scan", "04252614", "upc_e", "E")]),
    (b"S08F5012345678900\r", [("scan", "5012345678900", "ean13", "F")]),
    (b"S08FF96385074\r", [("scan", "96385074", "ean8", "FF")]),
    (b"S08R40100012345678905\r", [("scan", "0100012345678905", "gs1_databar", "R4")]),
    (b"S08B1CODE-39\r", [("scan", "CODE-39", "code39", "B1")]),
    (b"S08B21234567890\r", [("scan", "1234567890", "interleaved_2of5", "B2")]),
    (b"S08B3Hello 128\r", [("scan", "Hello 128", "code128", "B3")]),
    (b"S08Zxyz\r", [("scan", "Zxyz", "unknown", "")]),
    (b"S08\r", [L.BAD_FRAME]),
    (b"\x00\xff#noise\x7fS14401500\r", [L.GARBAGE, ("w", 1500.0, True, ())]),
    (b"SxS141\r", [L.GARBAGE, ("w", None, False, ("motion",))]),      # false start
    (b"S14\x0101\rS141\r", [L.GARBAGE, ("w", None, False, ("motion",))]),  # broken
    (b"\r\nS141\r", [("w", None, False, ("motion",))]),                 # stray CR/LF
]


@pytest.mark.parametrize("data,want", MAGELLAN, ids=[repr(d) for d, _ in MAGELLAN])
def test_magellan_vectors(data, want):
    assert feed(Magellan(), data) == want


def test_magellan_commands_and_digit_size():
    m = Magellan()
    assert (m.weight_request(), m.stable_weight_request(), m.beep_request(),
            m.reset_request()) == (b"S14\r", b"S11\r", b"S334\r", b"S10\r")
    assert m.zero_request() is None and m.tare_request() is None
    assert m.probe_request() == b"\rS14\r"
    assert m.probe_matches(b"S141\r") and m.probe_matches(b"S147\r")
    assert not m.probe_matches(b"\x02?A\r")
    assert m.line.parity == "O" and m.line.bytesize == 7
    hundredths_lb = Magellan(digit_g=4.5359237).feed(b"S110125\r")[0]
    assert hundredths_lb.weight_g == pytest.approx(566.99, abs=0.01)


# ----------------------------------------------------------------------------------
# CAS
# ----------------------------------------------------------------------------------

CAS = [
    (b"ST,GS,+  1.500kg\r\n", [("w", 1500.0, True, ())]),
    (b"US,GS,+  1.500kg\r\n", [("w", 1500.0, False, ("motion",))]),
    (b"OL,GS,+  --.---kg\r\n", [("w", None, False, ("over_capacity",))]),
    (b"ST,NT,+  0.500kg\r\n", [("w", 500.0, True, ("net",))]),
    (b"ST,GS,+  0.000kg\r\n", [("w", 0.0, True, ("zero",))]),
    (b"US,GS,+  0.000kg\r\n", [("w", 0.0, False, ("motion",))]),
    (b"ST,GS,-  0.100kg\r\n", [("w", -100.0, True, ("under_zero",))]),
    (b"ST,NT,-  0.100kg\r\n", [("w", -100.0, True, ("net", "under_zero"))]),
    (b"ST,GS,+   1500g\r\n", [("w", 1500.0, True, ())]),
    (b"ST,GS,+   1500 g\r\n", [("w", 1500.0, True, ())]),
    (b"ST,GS,+  3.000lb\r", [("w", pytest.approx(1360.77711), True, ())]),
    (b"ST,GS,+  1.500kg\n", [("w", 1500.0, True, ())]),
    (b"XX,GS,+  1.500kg\r\n", [L.UNKNOWN_STATUS]),
    (b"ST,TR,+  1.500kg\r\n", [L.UNKNOWN_STATUS]),
    (b"ST,GS,+  1.500oz\r\n", [L.BAD_FRAME]),
    (b"ST,GS,1.500kg\r\n", [L.BAD_FRAME]),
    (b"ST,GS,+ abc kg\r\n", [L.BAD_FRAME]),
    (b"#noise ST,GS,+  1.500kg\r\n", [L.GARBAGE, ("w", 1500.0, True, ())]),
    (b"\x00\xffST,GS,+  1.500kg\r\n", [L.GARBAGE, ("w", 1500.0, True, ())]),
    (b"hello\r\nST,GS,+  1.500kg\r\n", [L.GARBAGE, ("w", 1500.0, True, ())]),
]


@pytest.mark.parametrize("data,want", CAS, ids=[repr(d) for d, _ in CAS])
def test_cas_vectors(data, want):
    assert feed(Cas(), data) == want


def test_cas_line_too_long_is_bad_and_the_stream_recovers():
    c = Cas()
    assert feed(c, b"ST,GS,+" + b" " * 60) == [L.BAD_FRAME]
    assert feed(c, b"\r\nST,GS,+  1.000kg\r\n")[-1] == ("w", 1000.0, True, ())


# ----------------------------------------------------------------------------------
# Every protocol: splits, noise, the reading's shape
# ----------------------------------------------------------------------------------

STREAMS = {
    "toledo": b"".join(d for d, _ in TOLEDO),
    "sasi": b"".join(d for d, _ in SASI),
    "magellan": b"".join(d for d, _ in MAGELLAN),
    "cas": b"".join(d for d, _ in CAS),
}
GOOD_FRAME = {
    "toledo": (b"\x0201.500\r", ("w", 1500.0, True, ())),
    "sasi": (b"\x0201.500\r", ("w", 1500.0, True, ())),
    "magellan": (b"\rS14401500\r", ("w", 1500.0, True, ())),
    "cas": (b"\r\nST,GS,+  1.500kg\r\n", ("w", 1500.0, True, ())),
}


def _faults_and_readings(events):
    return [(e.code, e.message) if isinstance(e, DeviceFault) else e for e in events]


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_a_stream_split_at_every_byte_decodes_the_same(name):
    stream = STREAMS[name]
    whole = _faults_and_readings(make_protocol(name).feed(stream, 1.0))
    assert whole, "the stream decodes to something"
    for cut in range(len(stream) + 1):
        p = make_protocol(name)
        parts = p.feed(stream[:cut], 1.0) + p.feed(stream[cut:], 1.0)
        assert _faults_and_readings(parts) == whole, f"split at {cut}"
    p = make_protocol(name)
    bytewise = [e for i in range(len(stream)) for e in p.feed(stream[i:i + 1], 1.0)]
    assert _faults_and_readings(bytewise) == whole


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_each_frame_split_at_every_byte(name):
    frame, want = GOOD_FRAME[name]
    for cut in range(len(frame) + 1):
        p = make_protocol(name)
        assert feed(p, frame[:cut]) + feed(p, frame[cut:]) == [want]


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
@given(noise=st.binary(max_size=80))
def test_after_any_noise_a_good_frame_is_read(name, noise):
    frame, want = GOOD_FRAME[name]
    p = make_protocol(name)
    events = summary(p.feed(noise, 0.0) + p.feed(frame, 0.0))
    assert events[-1] == want
    readings = [e for e in events if isinstance(e, tuple)]
    assert all(r[0] in ("w", "scan") for r in readings)


def test_reading_and_scan_to_dict():
    r = Toledo8217().feed(b"\x0201.500N\r", 7.5)[0]
    assert r.to_dict() == {"weight_g": 1500.0, "stable": True, "status": ["net"], "at": 7.5,
                           "protocol": "toledo"}
    s = Magellan().feed(b"S08F5012345678900\r", 2.0)[0]
    assert s.to_dict() == {"scan": "5012345678900", "symbology": "ean13", "label_id": "F",
                           "at": 2.0, "protocol": "magellan"}


def test_unknown_protocol_is_a_stable_error():
    with pytest.raises(ScaleError) as exc:
        make_protocol("nci")
    assert exc.value.code == "UNKNOWN_PROTOCOL"
