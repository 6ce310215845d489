"""The customer QR display (drivers/qrdisplay.py, drivers/sim/qrdisplay.py): every
message as a hex vector, framing faults, acknowledgements and resends, refusals with
their codes, and the register's driver end to end against the simulator on a pty."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import msgpack
import pytest

from lanecore.core.pay.emvqr import MerchantQr, parse
from lanecore.drivers import link as L
from lanecore.drivers import qrdisplay as Q
from lanecore.drivers.qrdisplay import (Acked, Cancel, CardRead, Command, DisplayProtocol,
                                        DisplayStatus, GaveUp, Item, PaymentData, PayResult,
                                        ProtocolError, QrDisplayDriver, QrDisplayError,
                                        QrPay, QrShown, RegisterProtocol, Rejected,
                                        StatusRequest, encode_frame, pack_body)
from lanecore.drivers.sim import parse_script
from lanecore.drivers.sim import qrdisplay as simmod
from lanecore.drivers.sim.qrdisplay import QrDisplaySim

#: Pure Python, no kernel: the twins pass of `make test` leaves it out.
pytestmark = pytest.mark.kernel_free

H = bytes.fromhex
DATA = PaymentData("A0001", "07", 1234, "CNY", (Item("Apples", 2, 1000), Item("Milk", 1, 234)))

# (seq, message, the frame in hex) -- docs/drivers/qr-display.md walks through these.
TO_DISPLAY = [
    (1, DATA,
     "02 01 10 00 6c 83 85 a5 6f 72 64 65 72 a5 41 30 30 30 31 a8 72 65 67 69 73 74 65 72 "
     "a2 30 37 a6 61 6d 6f 75 6e 74 cd 04 d2 a8 63 75 72 72 65 6e 63 79 a3 43 4e 59 a5 69 "
     "74 65 6d 73 92 83 a4 6e 61 6d 65 a6 41 70 70 6c 65 73 a3 71 74 79 02 a6 61 6d 6f 75 "
     "6e 74 cd 03 e8 83 a4 6e 61 6d 65 a4 4d 69 6c 6b a3 71 74 79 01 a6 61 6d 6f 75 6e 74 "
     "cc ea 6e 4f 03"),
    (2, QrPay("A0001"), "02 02 11 00 0d e0 81 a5 6f 72 64 65 72 a5 41 30 30 30 31 80 0f 03"),
    (3, Cancel("A0001"), "02 03 12 00 0d de 81 a5 6f 72 64 65 72 a5 41 30 30 30 31 fa 2c 03"),
    (4, StatusRequest(), "02 04 13 00 00 e9 74 76 03"),
]
TO_REGISTER = [
    (1, QrShown("A0001", "000201016304ABCD", 1234, "CNY", 1),
     "02 01 20 00 46 99 85 a5 6f 72 64 65 72 a5 41 30 30 30 31 a7 70 61 79 6c 6f 61 64 b0 "
     "30 30 30 32 30 31 30 31 36 33 30 34 41 42 43 44 a6 61 6d 6f 75 6e 74 cd 04 d2 a8 63 "
     "75 72 72 65 6e 63 79 a3 43 4e 59 a7 61 74 74 65 6d 70 74 01 f2 4f 03"),
    (2, PayResult("A0001", True, "", "T1", 1234, "CNY", "QR", 1),
     "02 02 21 00 41 9c 87 a5 6f 72 64 65 72 a5 41 30 30 30 31 a2 6f 6b c3 a4 70 61 69 64 "
     "cd 04 d2 a8 63 75 72 72 65 6e 63 79 a3 43 4e 59 a7 63 68 61 6e 6e 65 6c a2 51 52 a7 "
     "61 74 74 65 6d 70 74 01 a3 74 78 6e a2 54 31 eb 10 03"),
    (3, PayResult("A0001", False, "DECLINED", "", 0, "CNY", "QR", 1),
     "02 03 21 00 48 94 87 a5 6f 72 64 65 72 a5 41 30 30 30 31 a2 6f 6b c2 a4 70 61 69 64 "
     "00 a8 63 75 72 72 65 6e 63 79 a3 43 4e 59 a7 63 68 61 6e 6e 65 6c a2 51 52 a7 61 74 "
     "74 65 6d 70 74 01 a6 72 65 61 73 6f 6e a8 44 45 43 4c 49 4e 45 44 4a 35 03"),
    (4, CardRead("NFC", "621700******1234", "A0001"),
     "02 04 22 00 2b af 83 a4 6b 69 6e 64 a3 4e 46 43 a3 70 61 6e b0 36 32 31 37 30 30 2a "
     "2a 2a 2a 2a 2a 31 32 33 34 a5 6f 72 64 65 72 a5 41 30 30 30 31 c2 49 03"),
    (5, DisplayStatus("IDLE", None, True, "QRD-0001", "SN1", "MART", None),
     "02 05 23 00 4f 89 87 a5 73 74 61 74 65 a4 49 44 4c 45 a5 6f 72 64 65 72 c0 ab 63 61 "
     "72 64 5f 72 65 61 64 65 72 c3 a9 64 65 76 69 63 65 5f 69 64 a8 51 52 44 2d 30 30 30 "
     "31 a6 73 65 72 69 61 6c a3 53 4e 31 a5 73 74 6f 72 65 a4 4d 41 52 54 a4 6c 61 73 74 "
     "c0 84 cf 03"),
]
ACK_2 = "02 02 06 00 00 f8 1c 01 03"
NAK_2 = ("02 02 15 00 1c cd 82 a4 63 6f 64 65 af 4e 4f 5f 50 41 59 4d 45 4e 54 5f 44 41 54 41 "
         "a3 6d 73 67 a1 78 18 8b 03")


def frame(seq, msg) -> bytes:
    return encode_frame(seq, msg.TYPE, pack_body(msg.to_body()))


def raw(seq, mtype, body) -> bytes:
    return encode_frame(seq, mtype, msgpack.packb(body) if isinstance(body, dict) else body)


def codes(events):
    return [e.code for e in events if isinstance(e, L.DeviceFault)]


def messages(events):
    return [e for e in events if not isinstance(e, L.DeviceFault)]


def nak_code(out: bytes) -> tuple[int, str]:
    fr = Q.FrameDecoder().feed(out)[0][-1]
    assert fr.mtype == Q.T_NAK
    return fr.seq, msgpack.unpackb(fr.body)["code"]


# --------------------------------------------------------------------------------------
# Frames and messages as byte strings
# --------------------------------------------------------------------------------------

def test_crc_is_ccitt_false():
    assert Q.crc16(b"123456789") == 0x29B1


@pytest.mark.parametrize("seq,msg,hexframe", TO_DISPLAY, ids=lambda v: type(v).__name__)
def test_register_to_display_vectors(seq, msg, hexframe):
    assert frame(seq, msg) == H(hexframe)
    d = DisplayProtocol()
    assert d.feed(H(hexframe)) == [Command(seq, msg)]
    d.accept(Command(seq, msg))
    assert d.take_output() == encode_frame(seq, Q.T_ACK)


@pytest.mark.parametrize("seq,msg,hexframe", TO_REGISTER, ids=lambda v: type(v).__name__)
def test_display_to_register_vectors(seq, msg, hexframe):
    assert frame(seq, msg) == H(hexframe)
    r = RegisterProtocol()
    assert r.feed(H(hexframe), 5.0) == [type(msg)(**{**msg.__dict__, "at": 5.0})]
    assert r.take_output() == encode_frame(seq, Q.T_ACK)       # acknowledged at once


def test_ack_and_nak_vectors():
    r = RegisterProtocol()
    assert r.send(QrPay("A0001"), 0.0) == 1
    assert r.send(StatusRequest(), 0.0) == 2
    assert r.take_output() == frame(1, QrPay("A0001"))       # one frame in flight
    assert r.feed(encode_frame(1, Q.T_ACK)) == [Acked(1)]
    assert r.take_output() == frame(2, StatusRequest())      # the next goes once 1 is done
    assert encode_frame(2, Q.T_ACK) == H(ACK_2)
    nak = encode_frame(2, Q.T_NAK, pack_body({"code": "NO_PAYMENT_DATA", "msg": "x"}))
    assert nak == H(NAK_2)
    assert r.feed(nak) == [Rejected(2, "NO_PAYMENT_DATA", "x")]
    assert not r.busy


def test_a_stream_split_at_every_byte():
    stream = b"".join(H(h) for _, _, h in TO_REGISTER)
    want = [m for _, m, _ in TO_REGISTER]
    for cut in range(len(stream) + 1):
        r = RegisterProtocol()
        got = r.feed(stream[:cut]) + r.feed(stream[cut:])
        assert [type(m)(**{**m.__dict__, "at": 0.0}) for m in got] == want, cut


def test_byte_at_a_time():
    d = DisplayProtocol()
    got = []
    for b in b"".join(H(h) for _, _, h in TO_DISPLAY):
        got += d.feed(bytes([b]))
    assert [c.message for c in got] == [m for _, m, _ in TO_DISPLAY]


def test_garbage_is_skipped_and_reported():
    noise = b"\x00\xff#noise\x02\x07\x7f\x02\x00\x10\xff\xff\x03"   # STX bytes, a fake length
    stream = noise + H(TO_REGISTER[0][2]) + b"\x02\x02\x02" + H(TO_REGISTER[1][2])
    r = RegisterProtocol()
    events = r.feed(stream)
    assert [type(m) for m in messages(events)] == [QrShown, PayResult]
    assert L.GARBAGE in codes(events)
    # noise whose header check happens to pass, announcing 8192 bytes: the frames
    # behind it come out once the announced frame is overdue
    r = RegisterProtocol()
    fake = bytes([0x02, 0x01, 0x20, 0x20, 0x00, Q.header_check(0x01, 0x20, 0x2000)])
    assert r.feed(fake + H(TO_REGISTER[1][2]), 0.0) == []
    events = r.poll(0.6)
    assert L.BAD_FRAME in codes(events)
    assert [type(m) for m in messages(events)] == [PayResult]


def test_bad_crc_is_refused_with_a_nak_and_resent():
    bad = bytearray(H(TO_DISPLAY[1][2]))
    bad[10] ^= 0x20
    d = DisplayProtocol()
    events = d.feed(bytes(bad))
    assert messages(events) == []
    assert codes(events) == [L.BAD_FRAME] and "BAD_CRC" in events[0].message
    assert nak_code(d.take_output()) == (0, "BAD_CRC")
    # the sender resends the frame in flight on NAK BAD_CRC
    r = RegisterProtocol()
    r.send(QrPay("A0001"), 0.0)
    first = r.take_output()
    assert r.feed(encode_frame(0, Q.T_NAK, pack_body({"code": "BAD_CRC"})), 0.01) == []
    assert r.take_output() == first


def test_a_partial_frame_times_out():
    r = RegisterProtocol()
    whole = H(TO_REGISTER[1][2])
    assert r.feed(whole[:12], 0.0) == []
    events = r.poll(1.0)
    assert L.BAD_FRAME in codes(events)              # and its tail is garbage
    assert any("incomplete" in e.message for e in events)
    assert [type(m) for m in messages(r.feed(whole, 1.1))] == [PayResult]


def test_resend_with_the_same_sequence_number_then_give_up():
    r = RegisterProtocol(ack_timeout_s=0.25, max_tries=3)
    seq = r.send(QrPay("A0001"), 0.0)
    first = r.take_output()
    assert r.poll(0.2) == [] and r.take_output() == b""
    assert r.poll(0.25) == [] and r.take_output() == first       # same bytes, same SEQ
    assert r.poll(0.5) == [] and r.take_output() == first
    events = r.poll(0.75)
    assert GaveUp(seq, 3) in events and codes(events) == [L.NO_ANSWER]
    assert not r.busy


def test_a_repeated_frame_is_answered_but_not_acted_on():
    d = DisplayProtocol()
    f = frame(7, QrPay("A0001"))
    [cmd] = d.feed(f)
    d.accept(cmd)
    ack = d.take_output()
    assert d.feed(f) == [] and d.take_output() == ack            # ACK lost: same answer
    [cmd] = d.feed(frame(8, QrPay("A0001")))                       # a new frame is new
    d.reject(cmd, "ORDER_DONE")
    nak = d.take_output()
    assert nak_code(nak) == (8, "ORDER_DONE")
    assert d.feed(frame(8, QrPay("A0001"))) == [] and d.take_output() == nak
    # the same SEQ with other content is a new message (the register restarted)
    assert d.feed(frame(8, QrPay("B0002"))) == [Command(8, QrPay("B0002"))]


def test_the_register_acknowledges_a_repeated_result_once_delivered():
    r = RegisterProtocol()
    f = H(TO_REGISTER[1][2])
    assert len(r.feed(f)) == 1
    ack = r.take_output()
    assert r.feed(f) == [] and r.take_output() == ack


@pytest.mark.parametrize("body,code", [
    ({**DATA.to_body(), "amount": 0}, "BAD_AMOUNT"),
    ({**DATA.to_body(), "amount": -5}, "BAD_AMOUNT"),
    ({**DATA.to_body(), "amount": 12.34}, "BAD_AMOUNT"),
    ({**DATA.to_body(), "amount": "1234"}, "BAD_AMOUNT"),
    ({**DATA.to_body(), "amount": True}, "BAD_AMOUNT"),
    ({**DATA.to_body(), "amount": 10 ** 10}, "BAD_AMOUNT"),
    ({k: v for k, v in DATA.to_body().items() if k != "order"}, "MISSING_FIELD"),
    ({**DATA.to_body(), "order": "A 0001"}, "BAD_FIELD"),
    ({**DATA.to_body(), "order": "A" * 26}, "BAD_FIELD"),
    ({**DATA.to_body(), "register": ""}, "BAD_FIELD"),
    ({**DATA.to_body(), "currency": "XXX"}, "BAD_CURRENCY"),
    ({**DATA.to_body(), "amount": 1235}, "ITEMS_MISMATCH"),
    ({**DATA.to_body(), "items": [{"name": "x", "qty": 0, "amount": 1234}]}, "BAD_FIELD"),
    ({**DATA.to_body(), "items": [{"name": "", "qty": 1, "amount": 1234}]}, "BAD_FIELD"),
    ({**DATA.to_body(), "items": "Apples"}, "BAD_FIELD"),
    (b"\x92\x01\x02", "BAD_BODY"),                    # an array, not a map
    (b"\xc1", "BAD_BODY"),                            # not MessagePack
    (b"\x81\xa1a\x01\x00", "BAD_BODY"),               # bytes after the map
])
def test_bad_payment_data_is_refused_with_its_code(body, code):
    d = DisplayProtocol()
    events = d.feed(raw(9, Q.T_PAYMENT_DATA, body))
    assert messages(events) == [] and codes(events) == [L.BAD_FRAME]
    assert nak_code(d.take_output()) == (9, code)


def test_unknown_type_is_refused():
    d = DisplayProtocol()
    events = d.feed(raw(3, 0x7F, {}))
    assert codes(events) == [L.BAD_FRAME]
    assert nak_code(d.take_output()) == (3, "UNKNOWN_TYPE")
    r = RegisterProtocol()                    # nor does the register take commands
    r.feed(frame(3, QrPay("A0001")))
    assert nak_code(r.take_output()) == (3, "UNKNOWN_TYPE")


def test_payment_data_checks_itself():
    for kw in ({"amount_minor": 0}, {"amount_minor": 1.5}, {"currency": "ABC"},
               {"order_no": ""}, {"amount_minor": 999}):
        with pytest.raises(ProtocolError):
            PaymentData(**{**DATA.__dict__, **kw})
    assert PaymentData("B1", "1", 1).items == ()


@pytest.mark.parametrize("pan", ["6217001234561234", "6217 00** **** 1234", "1234",
                                 "62170012****1234", ""])
def test_a_clear_card_number_is_refused_and_never_delivered(pan):
    r = RegisterProtocol()
    events = r.feed(raw(4, Q.T_CARD_READ, {"kind": "CARD", "pan": pan}))
    assert messages(events) == []
    assert nak_code(r.take_output()) == (4, "CLEAR_PAN")


def test_unknown_reason_and_state_are_faults_not_silence():
    r = RegisterProtocol()
    body = {**TO_REGISTER[2][1].to_body(), "reason": "SOLAR_FLARE"}
    events = r.feed(raw(6, Q.T_PAY_RESULT, body))
    assert codes(events) == [L.UNKNOWN_STATUS]
    [res] = messages(events)
    assert res.reason == "UNKNOWN" and not res.ok
    assert r.take_output() == encode_frame(6, Q.T_ACK)        # intact: acknowledged
    events = r.feed(raw(7, Q.T_STATUS, {**TO_REGISTER[4][1].to_body(), "state": "ON_FIRE"}))
    assert codes(events) == [L.UNKNOWN_STATUS] and messages(events)[0].state == "UNKNOWN"


def test_sequence_numbers_wrap_and_skip_zero():
    r = RegisterProtocol()
    seqs = []
    for _ in range(256):
        seqs.append(r.next_seq())
    assert seqs[:2] == [1, 2] and seqs[254] == 255 and seqs[255] == 1 and 0 not in seqs


# --------------------------------------------------------------------------------------
# The simulator's rules, without a driver
# --------------------------------------------------------------------------------------

@pytest.fixture
def bare_sim():
    sim = QrDisplaySim()          # not started: bytes go in by hand, answers pile up
    yield sim
    sim.stop()


def answers(sim) -> list:
    """Frames the display wrote (read from the pty's other side)."""
    data = b""
    while True:
        try:
            os.set_blocking(sim._slave, False)
            chunk = os.read(sim._slave, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return Q.FrameDecoder().feed(data)[0]


def test_qr_pay_twice_starts_one_payment(bare_sim):
    sim = bare_sim
    sim.on_bytes(frame(1, DATA))
    sim.on_bytes(frame(2, QrPay("A0001")))
    sim.on_bytes(frame(2, QrPay("A0001")))      # resent: the ACK was lost
    sim.on_bytes(frame(3, QrPay("A0001")))      # asked again under a new SEQ
    assert sim.payments_started == 1 and sim.attempt == 1
    assert [type(c) for c in sim.commands] == [PaymentData, QrPay, QrPay]
    got = answers(sim)
    acks = [f.seq for f in got if f.mtype == Q.T_ACK]
    assert acks == [1, 2, 2, 3]
    shown = [f for f in got if f.mtype == Q.T_QR_SHOWN]
    assert len({f.body for f in shown}) == 1          # the same QR, attempt 1, both times


@pytest.mark.parametrize("steps,code", [
    ([frame(1, QrPay("A0001"))], "NO_PAYMENT_DATA"),
    ([frame(1, Cancel("A0001"))], "NO_PAYMENT_DATA"),
    ([frame(1, DATA), frame(2, QrPay("B0002"))], "ORDER_MISMATCH"),
    ([frame(1, DATA), frame(2, QrPay("A0001")), frame(3, DATA)], "BUSY"),
])
def test_the_display_refuses_out_of_turn(bare_sim, steps, code):
    for s in steps:
        bare_sim.on_bytes(s)
    nak = [f for f in answers(bare_sim) if f.mtype == Q.T_NAK][-1]
    assert (nak.seq, msgpack.unpackb(nak.body)["code"]) == (len(steps), code)


def test_a_paid_order_is_not_taken_again(bare_sim):
    sim = bare_sim
    sim.on_bytes(frame(1, DATA) + frame(2, QrPay("A0001")))
    sim.do("pay")
    sim.tick(time.monotonic() + 1)
    sim.on_bytes(frame(3, QrPay("A0001")) + frame(4, DATA) + frame(5, Cancel("A0001")))
    naks = [(f.seq, msgpack.unpackb(f.body)["code"]) for f in answers(sim)
            if f.mtype == Q.T_NAK]
    assert naks == [(3, "ORDER_DONE"), (4, "ORDER_DONE"), (5, "ORDER_DONE")]
    # not even after another order came between
    sim.on_bytes(frame(6, PaymentData("B0002", "07", 500)) + frame(7, DATA))
    naks = [(f.seq, msgpack.unpackb(f.body)["code"]) for f in answers(sim)
            if f.mtype == Q.T_NAK]
    assert naks == [(7, "ORDER_DONE")]
    assert sim.payments_started == 1


def test_script_actions_are_checked(bare_sim):
    for bad in (("fail",), ("card", "12"), ("delay", "x"), ("dance",)):
        with pytest.raises(simmod.ScriptError):
            bare_sim.do(*bad)
    assert [s.action for s in parse_script("0.1 pay; 0.2 fail DECLINED; 1 card 1234 nfc")] \
        == ["pay", "fail", "card"]


# --------------------------------------------------------------------------------------
# End to end over a real pty
# --------------------------------------------------------------------------------------

class Rig:
    def __init__(self, **sim_kw):
        self.events: list = []
        self.sim = QrDisplaySim(**sim_kw).start()
        self.drv = QrDisplayDriver(self.sim.path, on_event=self.events.append).start()

    def close(self):
        self.drv.stop()
        self.sim.stop()

    def of(self, cls):
        return [e for e in list(self.events) if isinstance(e, cls)]

    def faults(self):
        return [e.code for e in self.of(L.DeviceFault)]


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


def test_payment_data_qr_pay_result(rig):
    rig.drv.send_payment(DATA)
    shown = rig.drv.qr_pay()
    qr = MerchantQr.from_payload(shown.payload)
    assert (qr.amount_minor, qr.currency, qr.order_no, qr.register) == (1234, "CNY", "A0001", "07")
    assert (qr.device_id, qr.hardware_serial) == (rig.sim.device_id, rig.sim.serial)
    assert parse(shown.payload)["54"] == "12.34" and rig.sim.payload == shown.payload
    assert rig.drv.status().state == "SHOWING_QR"
    rig.sim.do("pay")
    res = rig.drv.wait_result(5)
    assert res.ok and res.order_no == "A0001" and res.paid_minor == 1234
    assert res.txn_ref and res.channel == "QR" and res.unix_time > 1e9
    assert rig.of(PayResult) == [res]
    st = rig.drv.status()
    assert (st.state, st.order_no, st.card_reader) == ("RESULT", "A0001", True)
    assert st.last_result.txn_ref == res.txn_ref


def test_failure_with_reason_then_a_new_attempt(rig):
    rig.drv.send_payment(DATA)
    rig.drv.qr_pay()
    rig.sim.do("fail", "INSUFFICIENT_FUNDS")
    res = rig.drv.wait_result(5)
    assert (res.ok, res.reason, res.paid_minor, res.attempt) == (False, "INSUFFICIENT_FUNDS", 0, 1)
    shown = rig.drv.qr_pay()                        # the shopper tries again
    assert shown.attempt == 2
    with pytest.raises(QrDisplayError) as e:
        rig.drv.wait_result(0.3)                    # the old failure is not the answer
    assert e.value.code == "TIMEOUT"
    rig.sim.do("pay")
    res = rig.drv.wait_result(5)
    assert res.ok and res.attempt == 2 and rig.sim.payments_started == 2


def test_cancel(rig):
    rig.drv.send_payment(DATA)
    rig.drv.qr_pay()
    res = rig.drv.cancel()
    assert (res.ok, res.reason, res.order_no) == (False, "CANCELLED", "A0001")
    assert rig.drv.status().state == "RESULT"
    assert rig.drv.cancel() == res                  # ORDER_DONE: the same final result
    rig.sim.do("pay")                               # too late: nothing is shown
    time.sleep(0.1)
    assert rig.of(PayResult) == [res]


def test_paid_before_the_cancel_arrived(rig):
    rig.drv.send_payment(DATA)
    rig.drv.qr_pay()
    rig.sim.do("pay")
    rig.drv.wait_result(5)
    res = rig.drv.cancel()
    assert res.ok and res.paid_minor == 1234        # the register records the sale


def test_refusals_reach_the_caller_with_their_code(rig):
    with pytest.raises(QrDisplayError) as e:
        rig.drv.qr_pay()
    assert e.value.code == "NO_PAYMENT_DATA"
    rig.drv.send_payment(DATA)
    rig.drv.qr_pay()
    with pytest.raises(QrDisplayError) as e:
        rig.drv.send_payment(PaymentData("B0002", "07", 500))
    assert e.value.code == "BUSY"


def test_amount_paid_differs(rig):
    rig.drv.send_payment(DATA)
    rig.drv.qr_pay()
    rig.sim.do("pay", "1000")
    res = rig.drv.wait_result(5)
    assert (res.ok, res.reason, res.paid_minor) == (False, "AMOUNT_MISMATCH", 1000)


def test_card_at_the_reader(rig):
    rig.drv.send_payment(DATA)
    rig.drv.qr_pay()
    rig.sim.do("card", "4321", "nfc")
    res = rig.drv.wait_result(5)
    assert res.ok and res.channel == "CARD"
    [card] = rig.of(CardRead)
    assert (card.kind, card.pan_masked, card.order_no) == ("NFC", "621700******4321", "A0001")


def test_lost_ack_means_a_resend_not_a_second_payment(rig):
    rig.drv.send_payment(DATA)
    rig.sim.do("drop-acks", "1")
    shown = rig.drv.qr_pay()
    assert shown.attempt == 1 and rig.sim.payments_started == 1
    assert sum(isinstance(c, QrPay) for c in rig.sim.commands) == 1
    assert rig.sim.received.count(frame(2, QrPay("A0001"))) == 2     # sent twice, same SEQ


def test_muted_display_times_out_without_hanging(rig):
    rig.drv.send_payment(DATA)
    rig.sim.do("mute")
    t0 = time.monotonic()
    with pytest.raises(QrDisplayError) as e:
        rig.drv.qr_pay(timeout_s=10)
    assert e.value.code == "NO_ANSWER"
    assert time.monotonic() - t0 < 5                # ack timeout x tries, not the 10 s
    assert L.NO_ANSWER in rig.faults()
    with pytest.raises(QrDisplayError) as e:
        rig.drv.wait_result(0.2)
    assert e.value.code == "TIMEOUT"
    rig.sim.do("unmute")
    assert rig.drv.status().state == "DATA_LOADED"  # the driver is still alive


def test_garbage_on_the_line(rig):
    rig.drv.send_payment(DATA)
    rig.sim.do("garbage")
    rig.sim.do("garbage", "02000102ff03")
    assert rig.drv.qr_pay().order_no == "A0001"
    deadline = time.monotonic() + 3
    while L.GARBAGE not in rig.faults() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert L.GARBAGE in rig.faults()


def wait_for(pred, timeout_s=5.0):
    end = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("display_gave_up", [False, True])
def test_unplug_mid_payment_the_result_arrives_once(rig, display_gave_up):
    rig.drv.send_payment(DATA)
    rig.drv.qr_pay()
    rig.sim.do("unplug")
    assert wait_for(lambda: L.PORT_LOST in rig.faults())
    rig.sim.do("pay")                               # paid while the cable is out
    assert wait_for(lambda: rig.sim.last_result is not None)
    if display_gave_up:
        # the display's resend timer runs out while the cable is out (the pty base
        # does not tick an unplugged device, so run the timer here)
        with rig.sim._lock:
            for k in range(1, 10):
                rig.sim.proto.poll(time.monotonic() + k)
            rig.sim.proto.take_output()
        assert not rig.sim.proto.busy
    rig.sim.do("replug")
    res = rig.drv.wait_result(5)                    # resent, or recovered from STATUS
    assert res.ok and res.order_no == "A0001" and res.paid_minor == 1234
    if display_gave_up:
        assert any(s.last_result is not None and s.last_result.txn_ref == res.txn_ref
                   for s in rig.of(DisplayStatus))
    time.sleep(0.3)
    assert rig.of(PayResult) == [res]               # once, however it came
    assert rig.drv.link.opens >= 2


def test_after_a_replug_an_old_result_is_not_the_new_one(rig):
    rig.drv.send_payment(DATA)
    rig.drv.qr_pay()
    rig.sim.do("pay")
    first = rig.drv.wait_result(5)
    rig.sim.do("unplug")
    assert wait_for(lambda: L.PORT_LOST in rig.faults())
    rig.sim.do("replug")
    assert wait_for(lambda: rig.drv.link.opens >= 2)
    rig.drv.send_payment(PaymentData("B0002", "07", 500))
    rig.drv.qr_pay()
    with pytest.raises(QrDisplayError) as e:
        rig.drv.wait_result(0.3)
    assert e.value.code == "TIMEOUT"
    rig.sim.do("pay")
    second = rig.drv.wait_result(5)
    assert second.order_no == "B0002" and second.txn_ref != first.txn_ref
    assert [r.order_no for r in rig.of(PayResult)] == ["A0001", "B0002"]


def test_unplugged_when_asked(rig):
    rig.sim.do("unplug")
    with pytest.raises(QrDisplayError) as e:
        rig.drv.send_payment(DATA, timeout_s=0.5)
    assert e.value.code == "NO_ANSWER"
    rig.sim.do("replug")
    assert wait_for(lambda: rig.drv.link.is_open)
    rig.drv.send_payment(DATA)
    assert rig.drv.qr_pay().order_no == "A0001"


def test_stop_is_prompt_and_leaves_no_thread():
    r = Rig()
    r.drv.send_payment(DATA)
    r.close()
    assert not any(t.name in ("qrdisplay", "sim-qrdisplay") and t.is_alive()
                   for t in threading.enumerate())
    with pytest.raises(QrDisplayError) as e:
        r.drv.status()
    assert e.value.code == "NOT_STARTED"


def test_cli_sim_prints_its_port_and_takes_a_script():
    p = subprocess.run([sys.executable, "-m", "lanecore", "sim", "qrdisplay", "--duration",
                        "0.5", "--store", "QR MART", "--script", "0.1 delay 0.2; 0.2 card 1234"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    line = json.loads(p.stdout.splitlines()[0])
    assert line["device"] == "qrdisplay" and line["path"].endswith("qrdisplay")


def test_sim_build_from_options():
    import argparse
    ap = argparse.ArgumentParser()
    simmod.add_arguments(ap)
    dev = simmod.build(ap.parse_args(["--no-card-reader", "--device-id", "D9",
                                      "--auto-pay", "0.1"]), None)
    try:
        assert (dev.card_reader, dev.device_id, dev.auto_pay_s) == (False, "D9", 0.1)
    finally:
        dev.stop()


def test_auto_pay_and_terminal_art():
    import io
    out = io.StringIO()
    r = Rig(auto_pay_s=0.05, show="qr", out=out)
    try:
        r.drv.send_payment(DATA)
        r.drv.qr_pay()
        assert r.drv.wait_result(5).ok
        assert "\u2588" in out.getvalue() and "Apples" in out.getvalue()
    finally:
        r.close()


def test_unknown_reason_end_to_end(rig):
    rig.drv.send_payment(DATA)
    rig.drv.qr_pay()
    rig.sim.do("fail", "SOLAR_FLARE")
    res = rig.drv.wait_result(5)
    assert (res.ok, res.reason) == (False, "UNKNOWN")
    assert L.UNKNOWN_STATUS in rig.faults()


def test_every_event_serialises():
    for _, msg, _ in TO_DISPLAY + TO_REGISTER:
        d = msg.to_dict()
        assert json.loads(json.dumps(d, ensure_ascii=False)) == d
        assert d["message"] == type(msg).__name__


def test_a_long_list_fits_and_a_slow_line_waits_longer():
    items = tuple(Item("苹果" * 20, 1, 100) for _ in range(100))
    big = PaymentData("A0001", "07", 10_000, "CNY", items)
    f = frame(1, big)
    assert len(f) > 10_000
    [cmd] = DisplayProtocol().feed(f)
    assert cmd.message == big
    slow = RegisterProtocol(ack_timeout_s=0.25, byte_time_s=10 / 9600)
    slow.send(big, 0.0)
    slow.take_output()
    assert slow.poll(10.0) == [] and slow.take_output() == b""   # still on the wire
    assert slow.poll(20.0) == [] and slow.take_output() == f
    with pytest.raises(ProtocolError) as e:
        encode_frame(1, Q.T_PAYMENT_DATA, b"\x00" * (Q.MAX_BODY + 1))
    assert e.value.code == "BAD_BODY"


def test_the_documented_frames_are_frames():
    import re
    from pathlib import Path
    doc = (Path(Q.__file__).parent.parent / "docs" / "drivers" / "qr-display.md").read_text(
        encoding="utf-8")
    hexes = re.findall(r"`(02 [0-9a-f ]+ 03)`", doc)
    assert len(hexes) >= 10
    for h in hexes:
        frames, garbage = Q.FrameDecoder().feed(H(h))
        assert garbage == 0 and len(frames) == 1 and isinstance(frames[0], Q.Frame), h
    assert H(TO_DISPLAY[1][2]).hex(" ") in doc and H(TO_REGISTER[1][2]).hex(" ") in doc
