"""The customer QR display's register-supplied QR and result messages (issue 17,
dynamic QR): SHOW_QR (0x14: draw a wallet's code URL) and SHOW_RESULT (0x15: how the
payment ended; the QR comes down) — their bytes, their checks and codes, the
simulator's rules, and the register's driver end to end over a real pty."""

from __future__ import annotations

import time

import msgpack
import pytest

from lanecore.drivers import qrdisplay as Q
from lanecore.drivers.qrdisplay import (PaymentData, ProtocolError, QrDisplayDriver,
                                        QrDisplayError, QrShown, ShowQr, ShowResult,
                                        encode_frame, pack_body)
from lanecore.drivers.sim.qrdisplay import QrDisplaySim

pytestmark = pytest.mark.kernel_free

H = bytes.fromhex
CODE_URL = "weixin://wxpay/bizpayurl?pr=abc123"
DATA = PaymentData("A0001", "07", 1234, "CNY")

# docs/drivers/qr-display.md walks through these two frames byte by byte
VECTORS = [
    (5, ShowQr("A0001", CODE_URL, 1234, "CNY"),
     "02 05 14 00 50 97 84 a5 6f 72 64 65 72 a5 41 30 30 30 31 a7 63 6f 6e 74 65 6e 74 "
     "d9 22 77 65 69 78 69 6e 3a 2f 2f 77 78 70 61 79 2f 62 69 7a 70 61 79 75 72 6c 3f "
     "70 72 3d 61 62 63 31 32 33 a6 61 6d 6f 75 6e 74 cd 04 d2 a8 63 75 72 72 65 6e 63 "
     "79 a3 43 4e 59 0b a0 03"),
    (6, ShowResult("A0001", "paid", 1234, "CNY", "微信支付 OK"),
     "02 06 16 00 45 9f 85 a5 6f 72 64 65 72 a5 41 30 30 30 31 a6 72 65 73 75 6c 74 a4 "
     "70 61 69 64 a6 61 6d 6f 75 6e 74 cd 04 d2 a8 63 75 72 72 65 6e 63 79 a3 43 4e 59 "
     "a4 74 65 78 74 af e5 be ae e4 bf a1 e6 94 af e4 bb 98 20 4f 4b be b2 03"),
]


def frame(seq, msg) -> bytes:
    return encode_frame(seq, msg.TYPE, pack_body(msg.to_body()))


def raw(seq, mtype, body: dict) -> bytes:
    return encode_frame(seq, mtype, msgpack.packb(body))


@pytest.mark.parametrize("seq,msg,hexframe", VECTORS)
def test_vectors_both_ways(seq, msg, hexframe):
    assert frame(seq, msg) == H(hexframe)
    display = Q.DisplayProtocol()
    events = display.feed(H(hexframe), 0.0)
    assert [e.message for e in events if isinstance(e, Q.Command)] == [msg]


@pytest.mark.parametrize("mtype,body,code", [
    (Q.T_SHOW_QR, {"order": "A0001", "amount": 1234, "currency": "CNY"}, "MISSING_FIELD"),
    (Q.T_SHOW_QR, {"order": "A0001", "content": "short", "amount": 1234,
                   "currency": "CNY"}, "BAD_FIELD"),
    (Q.T_SHOW_QR, {"order": "A0001", "content": "weixin://has a space", "amount": 1234,
                   "currency": "CNY"}, "BAD_FIELD"),
    (Q.T_SHOW_QR, {"order": "A0001", "content": CODE_URL, "amount": 12.34,
                   "currency": "CNY"}, "BAD_AMOUNT"),
    (Q.T_SHOW_QR, {"order": "A0001", "content": CODE_URL, "amount": 1234,
                   "currency": "XXX"}, "BAD_CURRENCY"),
    (Q.T_SHOW_RESULT, {"order": "A0001", "result": "maybe", "amount": 1234,
                       "currency": "CNY"}, "BAD_FIELD"),
    (Q.T_SHOW_RESULT, {"order": "A0001", "result": "paid", "amount": 0,
                       "currency": "CNY"}, "BAD_AMOUNT"),
    (Q.T_SHOW_RESULT, {"order": "A0001", "result": "paid", "amount": 1234,
                       "currency": "CNY", "text": "x" * 41}, "BAD_FIELD"),
    (Q.T_SHOW_RESULT, {"order": "A0001", "result": "failed", "amount": 1234,
                       "currency": "CNY", "text": "bell\x07"}, "BAD_FIELD"),
    (Q.T_SHOW_RESULT, {"result": "paid", "amount": 1234, "currency": "CNY"},
     "MISSING_FIELD"),
])
def test_bad_bodies_are_refused_with_their_code(mtype, body, code):
    display = Q.DisplayProtocol()
    events = display.feed(raw(3, mtype, body), 0.0)
    assert not [e for e in events if isinstance(e, Q.Command)]
    nak = Q.FrameDecoder().feed(display.take_output())[0][0]
    assert (nak.mtype, nak.seq, msgpack.unpackb(nak.body)["code"]) == (Q.T_NAK, 3, code)


def test_the_messages_check_themselves():
    with pytest.raises(ProtocolError) as e:
        ShowResult("A0001", "refunded", 100)
    assert e.value.code == "BAD_FIELD"
    with pytest.raises(ProtocolError) as e:
        ShowQr("A0001", CODE_URL, -5)
    assert e.value.code == "BAD_AMOUNT"


# --------------------------------------------------------------------------------------
# The simulator's rules, bytes in by hand
# --------------------------------------------------------------------------------------

@pytest.fixture
def bare_sim():
    sim = QrDisplaySim()
    yield sim
    sim.stop()


def answers(sim) -> list:
    import os
    data = b""
    os.set_blocking(sim._slave, False)
    while True:
        try:
            chunk = os.read(sim._slave, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return Q.FrameDecoder().feed(data)[0]


def naks(frames) -> list:
    return [(f.seq, msgpack.unpackb(f.body)["code"]) for f in frames if f.mtype == Q.T_NAK]


@pytest.mark.parametrize("steps,code", [
    ([frame(1, ShowQr("A0001", CODE_URL, 1234))], "NO_PAYMENT_DATA"),
    ([frame(1, ShowResult("A0001", "paid", 1234))], "NO_PAYMENT_DATA"),
    ([frame(1, DATA), frame(2, ShowQr("B0002", CODE_URL, 1234))], "ORDER_MISMATCH"),
    ([frame(1, DATA), frame(2, ShowQr("A0001", CODE_URL, 999))], "AMOUNT_MISMATCH"),
    ([frame(1, DATA), frame(2, ShowResult("A0001", "paid", 1234, "USD"))],
     "AMOUNT_MISMATCH"),
])
def test_the_display_refuses_out_of_turn(bare_sim, steps, code):
    for s in steps:
        bare_sim.on_bytes(s)
    assert naks(answers(bare_sim))[-1] == (len(steps), code)
    assert bare_sim.payload is None


def test_show_qr_then_result_takes_the_qr_down_and_closes_the_order(bare_sim):
    sim = bare_sim
    sim.on_bytes(frame(1, DATA) + frame(2, ShowQr("A0001", CODE_URL, 1234)))
    sim.on_bytes(frame(2, ShowQr("A0001", CODE_URL, 1234)))      # resent: lost ACK
    got = answers(sim)
    assert [f.seq for f in got if f.mtype == Q.T_ACK] == [1, 2, 2]
    shown = [QrShown.from_body(msgpack.unpackb(f.body)) for f in got
             if f.mtype == Q.T_QR_SHOWN]
    assert [(s.payload, s.attempt) for s in shown] == [(CODE_URL, 1)]
    assert (sim.state, sim.payload, sim.register_qr) == ("SHOWING_QR", CODE_URL, True)
    sim.do("pay")                       # the shopper pays the wallet, not the display
    assert sim.last_result is None and sim.state == "SHOWING_QR"
    sim.on_bytes(frame(3, ShowResult("A0001", "paid", 1234, "CNY", "paid by WeChat")))
    assert (sim.state, sim.payload) == ("RESULT", None)
    assert sim.shown_result == ShowResult("A0001", "paid", 1234, "CNY", "paid by WeChat")
    # paid: never shown again, never reloaded
    sim.on_bytes(frame(4, ShowQr("A0001", CODE_URL, 1234)) + frame(5, DATA)
                 + frame(6, ShowResult("A0001", "expired", 1234)))
    assert naks(answers(sim)) == [(4, "ORDER_DONE"), (5, "ORDER_DONE"), (6, "ORDER_DONE")]
    assert sim.payload is None


# --------------------------------------------------------------------------------------
# End to end over a real pty
# --------------------------------------------------------------------------------------

@pytest.fixture
def rig():
    events: list = []
    sim = QrDisplaySim().start()
    drv = QrDisplayDriver(sim.path, on_event=events.append).start()
    yield sim, drv
    drv.stop()
    sim.stop()


def wait_for(pred, timeout_s=5.0) -> bool:
    end = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("result,text", [("paid", "WeChat Pay"), ("expired", ""),
                                         ("cancelled", "cashier"), ("failed", "USERCANCEL")])
def test_the_display_shows_the_result_over_a_pty(rig, result, text):
    sim, drv = rig
    drv.send_payment(DATA)
    shown = drv.show_qr(CODE_URL)
    assert (shown.order_no, shown.payload, shown.amount_minor) == ("A0001", CODE_URL, 1234)
    assert sim.payload == CODE_URL and drv.status().state == "SHOWING_QR"
    drv.show_result(result, text=text)
    assert wait_for(lambda: sim.shown_result is not None)
    assert sim.shown_result == ShowResult("A0001", result, 1234, "CNY", text)
    assert sim.payload is None                      # the QR is down
    st = drv.status()
    assert (st.state, st.order_no) == ("RESULT", "A0001")
    again = drv.show_qr if result != "paid" else None
    if again is None:
        with pytest.raises(QrDisplayError) as e:
            drv.show_qr(CODE_URL)
        assert e.value.code == "ORDER_DONE"
    else:                                           # not paid: a new QR may go up
        assert again("https://qr.alipay.com/bax01234").attempt == 2


def test_driver_refuses_before_sending(rig):
    sim, drv = rig
    with pytest.raises(QrDisplayError) as e:
        drv.show_result("paid")
    assert e.value.code == "NO_PAYMENT_DATA"
    drv.send_payment(DATA)
    with pytest.raises(QrDisplayError) as e:
        drv.show_result("refunded")
    assert e.value.code == "BAD_FIELD"
    with pytest.raises(QrDisplayError) as e:
        drv.show_qr("tiny")
    assert e.value.code == "BAD_FIELD"
    assert sim.payload is None and not [c for c in sim.commands
                                        if isinstance(c, (ShowQr, ShowResult))]
